"""Two teachers with different tokenizers, one byte-level student tokenizer, one ensemble.

Teachers: stories260K (512-token SentencePiece, TinyStories) and a small Llama trained here on the
training part of tinyshakespeare with its own byte-level BPE (benchmarks/shakespeare_teacher.yaml,
`sft`). Each is transferred with `alm` into the same byte-level student (same architecture, same
budget: 2 epochs over about 67K bytes of its own domain: 300 teacher-written stories, or a slice
of the shakespeare teacher's training text). The ensemble averages the two students' next-byte
probabilities (distill.families.llm.ensemble), with fixed equal weights or with weights updated
by Bayes' rule on the text read so far in each window (Bayesian model averaging). Every model is
scored in bits per byte (total nats / ln 2 / UTF-8 bytes of the text) on held-out teacher-written
stories (a sampling seed no training set uses) and on the held-out tail of tinyshakespeare (no
model trains on it). Finished training steps under --out are reused when the script runs again.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/cross_tokenizer_ensemble.py --seeds 0 1 2
Results: runs/bench_xtok_ens/results.json and results.md (mean +- std over seeds).
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch

from distill.api import run
from distill.config import load_config, read_yaml

XTOK = "recipes/llm/cross_tokenizer_alm.yaml"
TEACHER = "benchmarks/shakespeare_teacher.yaml"
ROWS = ["teacher: stories260K (own SP tokens)", "teacher: shakespeare (own BPE tokens)",
        "byte student of stories260K (alm)", "byte student of shakespeare teacher (alm)",
        "ensemble of the two byte students (mean prob.)",
        "ensemble, weights updated by Bayes' rule along each window"]


def split_shakespeare(out: Path, held_fraction: float) -> tuple[Path, Path]:
    """The text cut at a blank line near (1 - held_fraction): (train file, held-out file)."""
    from distill.families.llm.config import expand

    text = Path(expand("$DISTILL_ASSETS/text/tinyshakespeare.txt")).read_text(encoding="utf-8")  # type: ignore[arg-type]
    cut = text.index("\n\n", int(len(text) * (1 - held_fraction)))
    train, held = out / "shakespeare_train.txt", out / "shakespeare_heldout.txt"
    train.write_text(text[:cut].strip() + "\n", encoding="utf-8")
    held.write_text(text[cut:].strip() + "\n", encoding="utf-8")
    return train, held


def student_slice(train: Path, n_chars: int, seed: int, out: Path) -> Path:
    """`n_chars` of the training text from a seed-dependent blank line (the student's own-domain data)."""
    text = train.read_text(encoding="utf-8")
    start = text.index("\n\n", seed * n_chars) + 2 if seed else 0
    end = text.index("\n\n", start + n_chars)
    path = out / f"student_text_s{seed}.txt"
    path.write_text(text[start:end] + "\n", encoding="utf-8")
    return path


def held_out_stories(out: Path, n: int, seed: int) -> list[str]:
    """`n` stories written by stories260K with a sampling seed that no training set uses (cached)."""
    path = out / f"stories_heldout_{n}_s{seed}.json"
    if path.is_file():
        return json.loads(path.read_text())
    from distill.families.llm.runner import load_teacher, teacher_samples

    cfg = load_config(XTOK, [])
    teacher, tok, _ = load_teacher(cfg, torch.device("cpu"))
    texts = [tok.decode(s, skip_special_tokens=True) for s in teacher_samples(teacher, tok, n, 96, 1.0, seed, "cpu")]
    path.write_text(json.dumps(texts))
    return texts


def bits_per_byte(model, tok, texts: list[str], seq_len: int = 256) -> float:
    """Bits per byte of `texts` (each its own document: BOS + text, windows of `seq_len`, no EOS);
    the denominator is the texts' own UTF-8 bytes, the same for every tokenizer."""
    from distill.families.llm.data import windows
    from distill.families.llm.evaluate import lm_metrics

    exs = [e for t in texts for e in windows(tok(t, add_special_tokens=False)["input_ids"], tok, seq_len, 16)]
    m = lm_metrics(model, exs, pad_id=tok.pad_token_id, batch_size=16, seq_len=seq_len, device="cpu")
    return m["loss"] * m["tokens"] / math.log(2) / sum(len(t.encode("utf-8")) for t in texts)


def one_seed(seed: int, out: Path, files: dict, a) -> dict:
    from distill.families.llm.cross_tokenizer.byte_tokenizer import byte_tokenizer
    from distill.families.llm.ensemble import MixtureLM
    from distill.families.llm.models import load_causal_lm, load_tokenizer
    from distill.families.llm.runner import load_teacher

    quiet = dict(overwrite=True, show_table=False, log=lambda m: None)
    times = {}
    # 1. the shakespeare teacher: sft on the training part, with its own BPE
    t0 = time.time()
    sh_teacher = out / "runs" / f"shakespeare-teacher-s{seed}" / "students" / "sft"
    if not (sh_teacher / "result.json").is_file():  # a finished step is reused (delete --out to redo)
        run(TEACHER, [f"seed={seed}", f"name=shakespeare-teacher-s{seed}", f"output_dir={out / 'runs'}",
                      f"data.path={files['train']}", f"data.eval_path={files['held']}", f"student.tokenizer={files['bpe']}",
                      f"train.epochs={a.teacher_epochs}"] + a.teacher_overrides, **quiet)
    times["shakespeare teacher (sft)"] = time.time() - t0

    def transfer(name: str, recipe: dict) -> Path:
        t0 = time.time()
        recipe.update(seed=seed, name=f"{name}-s{seed}", output_dir=str(out / "runs"),
                      methods=[{"name": "alm", "params": {"ce_weight": 0.0}}])
        recipe["student"]["tokenizer"] = "byte"
        recipe["data"].update(ood_path=str(files["held"]), ood_max_chars=4000)
        done = out / "runs" / f"{name}-s{seed}" / "students" / "alm"
        if not (done / "result.json").is_file():
            run(recipe, a.overrides, **quiet)
        times[f"{name} (alm)"] = time.time() - t0
        return done

    # 2. each teacher into the byte-level student, on its own domain
    st_student = transfer("stories-byte", read_yaml(XTOK))
    r = read_yaml(XTOK)
    r["teacher"] = {"path": str(sh_teacher), "tokenizer": str(sh_teacher)}
    r["data"] = {**r["data"], "source": "text", "path": str(student_slice(files["train"], a.student_chars, seed, out)),
                 "eval_path": str(files["held"]), "separator": "\f"}  # one document, as the teacher's
    sh_student = transfer("shakespeare-byte", r)

    # 3. every model on both held-out texts; the ensemble averages the byte students' probabilities
    t0 = time.time()
    byte = byte_tokenizer()
    st_t, st_tok, _ = load_teacher(load_config(XTOK, []), torch.device("cpu"))
    models = [(st_t.module, st_tok), (load_causal_lm(str(sh_teacher)), load_tokenizer(str(sh_teacher)))]
    s1, s2 = load_causal_lm(str(st_student)).eval(), load_causal_lm(str(sh_student)).eval()
    models += [(s1, byte), (s2, byte), (MixtureLM([s1, s2]), byte), (MixtureLM([s1, s2], posterior=True), byte)]
    res = {}
    for row, (m, tok) in zip(ROWS, models):
        res[row] = {"stories": bits_per_byte(m, tok, files["stories"]),
                    "shakespeare": bits_per_byte(m, tok, [files["held"].read_text(encoding="utf-8")])}
    times["evaluation"] = time.time() - t0
    return {"bits_per_byte": res, "seconds": times}


def table(results: dict) -> str:
    def ms(xs):
        return f"{statistics.mean(xs):.3f} +- {statistics.stdev(xs):.3f}" if len(xs) > 1 else f"{xs[0]:.3f}"

    seeds = sorted(results, key=int)
    lines = [f"| model | seeds | bits/byte: held-out stories | bits/byte: held-out tinyshakespeare |", "|---|---|---|---|"]
    for row in ROWS:
        v = [results[s]["bits_per_byte"][row] for s in seeds]
        lines.append(f"| {row} | {len(v)} | {ms([x['stories'] for x in v])} | {ms([x['shakespeare'] for x in v])} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default="runs/bench_xtok_ens")
    ap.add_argument("--held-fraction", type=float, default=0.1, help="tail of tinyshakespeare kept out of training")
    ap.add_argument("--bpe-vocab", type=int, default=1024, help="the shakespeare teacher's BPE vocabulary")
    ap.add_argument("--student-chars", type=int, default=67000,
                    help="shakespeare text for its byte student (about the bytes of the 300 training stories)")
    ap.add_argument("--eval-stories", type=int, default=200)
    ap.add_argument("--teacher-epochs", type=int, default=3)
    ap.add_argument("--teacher-overrides", nargs="*", default=[], help="overrides of the shakespeare teacher recipe")
    ap.add_argument("overrides", nargs="*", help="overrides of both alm transfers, e.g. train.epochs=1")
    a = ap.parse_args()
    out = Path(a.out)
    (out / "data").mkdir(parents=True, exist_ok=True)
    train, held = split_shakespeare(out / "data", a.held_fraction)
    bpe = out / f"shakespeare_bpe_{a.bpe_vocab}"
    if not (bpe / "tokenizer.json").is_file():
        from distill.families.llm.cross_tokenizer.byte_tokenizer import train_bpe
        train_bpe([train.read_text(encoding="utf-8")], a.bpe_vocab).save_pretrained(bpe)
    files = {"train": train, "held": held, "bpe": bpe, "stories": held_out_stories(out / "data", a.eval_stories, 7777)}
    res_path = out / "results.json"
    results = json.loads(res_path.read_text()) if res_path.is_file() else {}
    for seed in a.seeds:
        if all(row in results.get(str(seed), {}).get("bits_per_byte", {}) for row in ROWS):
            continue  # (a seed with a row missing is evaluated again; its finished training steps are reused)
        t0 = time.time()
        old = results.get(str(seed))
        results[str(seed)] = one_seed(seed, out, files, a)
        results[str(seed)]["total_seconds"] = time.time() - t0
        if old:  # training was reused: keep its timings, add the new evaluation's
            results[str(seed)]["seconds"] = {**old["seconds"], "evaluation (again)": results[str(seed)]["seconds"]["evaluation"]}
            results[str(seed)]["total_seconds"] = old["total_seconds"]
        res_path.write_text(json.dumps(results, indent=2))
        print(f"seed {seed}: {time.time() - t0:.0f}s", json.dumps(results[str(seed)], indent=1), flush=True)
    (out / "results.md").write_text(table(results))
    print(table(results))


if __name__ == "__main__":
    main()
