"""Cross-tokenizer benchmark: stories260K (SentencePiece, 512 tokens) into students with other
tokenizers, same data budget for every method, several seeds.

Students: (a) byte-level (256 bytes + specials), (b) a BPE trained here on teacher-written text
(other vocabulary, other boundaries), and the same-tokenizer baseline (the teacher's own
SentencePiece). Metrics: held-out bits per byte on teacher-written text (in domain) and on
tinyshakespeare (out of domain); bits per byte are comparable across tokenizers.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/cross_tokenizer.py --seeds 0 1 2
Results: runs/bench_xtok/results.json and results.md (mean +- std over seeds).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from distill.api import run
from distill.config import read_yaml

RECIPE = "recipes/llm/cross_tokenizer_alm.yaml"
STUDENTS = {
    "byte": ("byte", ["sft", "uld", "hybrid", "alm"]),
    "bpe": (None, ["sft", "uld", "hybrid", "alm"]),  # tokenizer folder filled in at run time
    "same (teacher SP)": ("", ["sft", "token_kd", "alm"]),
}


def train_student_bpe(out: Path, vocab: int, n_texts: int) -> str:
    """A byte-level BPE trained on teacher-written text (a seed the benchmark data never uses)."""
    import torch

    from distill.config import load_config
    from distill.families.llm.cross_tokenizer.byte_tokenizer import train_bpe
    from distill.families.llm.runner import load_teacher, teacher_samples

    if (out / "tokenizer.json").is_file():
        return str(out)
    cfg = load_config(RECIPE, [])
    teacher, tok, _ = load_teacher(cfg, torch.device("cpu"))
    seqs = teacher_samples(teacher, tok, n_texts, 128, 1.0, seed=9999, device="cpu")
    bpe = train_bpe([tok.decode(s, skip_special_tokens=True) for s in seqs], vocab)
    bpe.save_pretrained(out)
    return str(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--students", nargs="+", default=list(STUDENTS))
    ap.add_argument("--out", default="runs/bench_xtok")
    ap.add_argument("--bpe-vocab", type=int, default=384)
    ap.add_argument("overrides", nargs="*", help="recipe overrides, e.g. data.num_samples=200")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    res_path = out / "results.json"
    results = json.loads(res_path.read_text()) if res_path.is_file() else {}
    for student in a.students:
        spec, meths = STUDENTS[student]
        if spec is None:
            spec = train_student_bpe(out / "bpe_tokenizer", a.bpe_vocab, 300)
        for seed in a.seeds:
            key = f"{student}|{seed}"
            if key in results:
                continue
            t0 = time.time()
            recipe = read_yaml(RECIPE)
            recipe.update(seed=seed, name=f"xtok-{student.split()[0]}-s{seed}", output_dir=str(out / "runs"),
                          methods=[{"name": m} for m in meths])
            recipe["student"]["tokenizer"] = spec or None
            summ = run(recipe, a.overrides, overwrite=True, show_table=False, log=lambda m: None)
            results[key] = {"teacher": {k: summ["teacher"][k] for k in ("bits_per_byte", "ood_bits_per_byte")},
                            "students": {n: {k: m[k] for k in ("bits_per_byte", "ood_bits_per_byte")}
                                         for n, m in summ["students"].items()},
                            "seconds": time.time() - t0}
            res_path.write_text(json.dumps(results, indent=2))
            print(key, {n: round(m["bits_per_byte"], 4) for n, m in results[key]["students"].items()},
                  f"{time.time() - t0:.0f}s", flush=True)
    (out / "results.md").write_text(table(results))
    print(table(results))


def table(results: dict) -> str:
    def ms(xs):
        return f"{statistics.mean(xs):.3f} +- {statistics.stdev(xs):.3f}" if len(xs) > 1 else f"{xs[0]:.3f}"

    lines = ["| student tokenizer | method | seeds | bits/byte (held-out, in domain) | bits/byte (tinyshakespeare) |",
             "|---|---|---|---|---|"]
    groups: dict = {}
    teacher = None
    for key, r in results.items():
        student = key.split("|")[0]
        teacher = r["teacher"]
        for n, m in r["students"].items():
            groups.setdefault((student, n), []).append(m)
    for (student, n), ms_ in groups.items():
        lines.append(f"| {student} | {n} | {len(ms_)} | {ms([m['bits_per_byte'] for m in ms_])} | "
                     f"{ms([m['ood_bits_per_byte'] for m in ms_])} |")
    if teacher:
        lines.append(f"| teacher (stories260K) | - | - | {teacher['bits_per_byte']:.3f} | {teacher['ood_bits_per_byte']:.3f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
