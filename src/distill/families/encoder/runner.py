"""The encoder family's run: load the teacher and its tokenizer, read and split the text, then one
student per method from the same initialisation (same seed), each trained with the engine and
compared with the teacher on held-out sentences; summary.json and report.md in the run folder.
With a `task:` section, teacher and students carry a classification head (the teacher's is
fine-tuned once and cached) and test accuracy is the primary metric; with `stages:`, one more
student is trained through the stages in order (`stages.py`).

Tabular data (`examples.py`: query/positive/negatives, source/translation rows) feeds the methods that
declare a `data_kind` and `collate` their rows (margin_mse, parallel_mse, cross_encoder_kd); the texts
of those rows are the sentences of every other method and of the agreement evaluation. A method may
build its own kind of student (`new_student`, e.g. a cross-encoder); such a student is evaluated
against `teacher.cross_encoder` on the held-out pairs (`cross_agreement`) and saved as a CrossEncoder
folder.

A `student.path` whose tokenizer is not the teacher's (an XLM-R student under an English teacher)
reads every text in its own ids: training batches carry both tokenizations (`student_input_ids`),
evaluation and the human-judgement sets encode with the student's tokenizer, and the saved folder
holds it. Token-level layer methods need one tokenization and are refused."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable

import torch

from distill.config import TrainConfig
from distill.errors import ConfigError
from distill.engine import Engine
from distill.families.encoder.base import EncoderMethod
from distill.families.encoder.config import EncoderDataConfig, EncoderMethodConfig, EncoderRunConfig
from distill.families.encoder.data import SentenceLoader, read_sentences, split_sentences, tokenize
from distill.families.encoder.cross import load_cross_encoder
from distill.families.encoder.evaluate import agreement, cross_agreement, encode, throughput
from distill.families.encoder.examples import ExampleLoader, Examples, is_tabular, read_examples
from distill.families.encoder.export import save_encoder, save_model2vec
from distill.families.encoder.judgements import judge, load_sets
from distill.families.encoder.students import build_student, count_parameters
from distill.families.encoder.loading import load_encoder_source, load_tokenizer
from distill.families.encoder.sources import added_special_ids
from distill.families.encoder.vocab import VocabTable
from distill.families.encoder.task import TextClassifier, accuracy, build_task, predict_logits, task_teacher
from distill.utils import expand
from distill.families.encoder.stages import run_stages
from distill.registry import methods, register_runner
from distill.teacher import Teacher
from distill.utils import atomic_write_text, seed_everything


def fit(method, loader, cfg: EncoderRunConfig, train_cfg: TrainConfig, weights: dict[str, float],
        out_dir: Path | None, metrics_path: Path | None, label: str) -> Engine:
    """Train `method` on `loader` with the engine's loop (`Engine.fit`)."""
    engine = Engine(cfg.engine, out_dir, seed=cfg.seed, name=label, metrics_path=metrics_path)
    engine.fit(method, loader, train_cfg, weights=weights)
    return engine


class Context:
    """What every student of a run shares: tokenizer, teacher, text and task splits, teacher embeddings."""

    def __init__(self, cfg: EncoderRunConfig, log: Callable[[str], None]):
        self.cfg, self.log = cfg, log
        self.device = Engine(cfg.engine, None, seed=cfg.seed).device
        self.tok = load_tokenizer(cfg.teacher.path)
        self.pad_id = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0
        self.s_tok = own_tokenizer(cfg.student, self.tok)  # None: students read the teacher's ids
        self.s_pad_id = self.pad_id if self.s_tok is None else \
            (self.s_tok.pad_token_id if self.s_tok.pad_token_id is not None else 0)
        t = cfg.teacher
        self.encoder = load_encoder_source(t.path, "teacher.path", None if t.pooling == "auto" else t.pooling,
                                           t.normalize).to(self.device)
        if getattr(self.encoder, "is_static", False):
            raise ConfigError(f"teacher.path: {t.path!r} is a static (embedding-bag) model; the teacher must be a "
                              "transformers encoder.")
        self.check_layers()
        self.cross_teacher: Teacher | None = None
        if t.cross_encoder is not None:
            self.cross_teacher = Teacher(load_cross_encoder(t.cross_encoder).to(self.device))
        self._examples: dict[tuple, Examples] = {}
        self._cross_cache: dict[str, Any] = {}  # the teacher's side of `cross_agreement`
        limit = getattr(self.encoder, "max_seq_length", None)
        if limit and cfg.data.max_length > limit:
            log(f"note: data.max_length={cfg.data.max_length} is longer than the teacher folder's max_seq_length={limit}")
        train, held = self.texts(cfg.data)
        n_train = len(train)
        self.train_rows, self.held_rows = self.rows(train), self.rows(held)
        self.s_train_rows, self.s_held_rows = (self.train_rows, self.held_rows) if self.s_tok is None else \
            (self.rows(train, self.s_tok), self.rows(held, self.s_tok))
        self.task = build_task(cfg.task, self.tok, cfg.data.max_length, self.s_tok) if cfg.task else None
        self.teacher_model: torch.nn.Module = self.encoder
        if self.task is not None:
            self.teacher_model, _ = task_teacher(cfg, self.encoder, self.task, self.pad_id, self.device,
                                                 self._fit_teacher, log)
        self.teacher = Teacher(self.teacher_model)
        log(f"teacher: {cfg.teacher.path} ({type(self.encoder.backbone).__name__}, pooling {self.encoder.pooling}"
            f"{', normalised' if self.encoder.normalize else ''}; {count_parameters(self.teacher_model):,} parameters); "
            f"data: {n_train} train / {len(self.held_rows)} held-out sentences"
            + (f"; student tokenizer: its own ({type(self.s_tok).__name__}, {len(self.s_tok):,} tokens)"
               if self.s_tok is not None else "")
            + (f"; cross-encoder: {t.cross_encoder} ({count_parameters(self.cross_teacher.module):,} parameters)"
               if self.cross_teacher is not None else "")
            + (f"; task: {len(self.task.classes)} classes, {len(self.task.train_rows)} train ({self.task.labeled} "
               f"labelled) / {len(self.task.test_rows)} test" if self.task else ""))
        self.e_t = encode(self.teacher_model, self.held_rows, self.pad_id, cfg.data.eval_batch_size, self.device)
        self.judged = load_sets([expand(p) for p in cfg.eval.sts],  # type: ignore[misc]  # human judgements
                                [expand(p) for p in cfg.eval.retrieval])  # type: ignore[misc]
        self.vocab: VocabTable | None = None

    def check_layers(self) -> None:
        """Fail before any training if a recipe's layer method cannot find the teacher's layers."""
        entries = [methods.get(m.name, "encoder").builder for m in
                   [*self.cfg.methods, *(st.method for st in self.cfg.stages)]]
        layered = [m.name for m, b in zip([*self.cfg.methods, *(st.method for st in self.cfg.stages)], entries)
                   if getattr(b, "needs_layers", False)]
        if layered and self.s_tok is not None:
            raise ConfigError(f"student.path: {self.cfg.student.path!r} has its own tokenizer, so its tokens are not "
                              f"the teacher's and the token-level layer methods ({', '.join(sorted(set(layered)))}) "
                              "have nothing to align; use sentence-level methods (embedding_kd, parallel_mse, "
                              "margin_mse, the task's logit methods) or a student with the teacher's tokenizer.")
        if layered:
            self.encoder.check_layers(attention=any(getattr(b, "needs_attention", False) for b in entries))

    def _fit_teacher(self, method, loader, train_cfg, out_dir, label):
        return fit(method, loader, self.cfg, train_cfg, {}, out_dir, None, label)

    def examples(self, d: EncoderDataConfig, kind: str, who: str = "") -> Examples:
        """The tabular rows of `d` as `kind` examples (ranking or parallel), split; read once per kind."""
        paths = [expand(p) for p in d.paths]
        if not is_tabular(paths, d.format):  # type: ignore[arg-type]
            raise ConfigError(f"data.paths: {who or 'this method'} reads rows of columns ({kind} examples) from "
                              ".jsonl, .tsv or .csv files or a datasets folder; {paths} are text files.")
        key = (tuple(paths), d.format, repr(sorted(d.columns.items())), kind, d.eval_sentences, d.split_seed,
               d.max_sentences, tuple(d.column_names or ()), d.collection, d.queries)
        if key not in self._examples:
            self._examples[key] = read_examples(paths, d.format, d.columns, kind, d.eval_sentences,  # type: ignore[arg-type]
                                                d.split_seed, d.max_sentences, column_names=d.column_names,
                                                collection=expand(d.collection) if d.collection else None,
                                                queries=expand(d.queries) if d.queries else None)
        return self._examples[key]

    def rows(self, texts: list[str], tok=None, max_length: int | None = None) -> list[list[int]]:
        """Token ids of `texts` (the teacher's tokenizer unless `tok`), cut at `max_length` (default
        data.max_length)."""
        return tokenize(tok or self.tok, texts, max_length or self.cfg.data.max_length)

    def texts(self, d: EncoderDataConfig) -> tuple[list[str], list[str]]:
        """(train, held-out) texts of `d`: the rows' texts of tabular data, else its sentences."""
        if is_tabular([expand(p) for p in d.paths], d.format):  # type: ignore[misc]  # the rows' texts
            kinds = ["parallel", "ranking"] if {"source", "translation"} & set(d.columns) else ["ranking", "parallel"]
            try:
                ex = self.examples(d, kinds[0])
            except ConfigError as first:  # e.g. parallel rows without explicit columns
                try:
                    ex = self.examples(d, kinds[1])
                except ConfigError:
                    raise first from None
            return ex.texts("train"), ex.texts("held")
        sentences = read_sentences([expand(p) for p in d.paths], d.separator, d.min_chars, d.max_chars)  # type: ignore[misc]
        if d.max_sentences:
            sentences = sentences[: d.max_sentences]
        return split_sentences(sentences, d.eval_sentences, d.split_seed)

    def new_student(self, mcfg: EncoderMethodConfig | None = None) -> torch.nn.Module:
        seed_everything(self.cfg.seed)  # every student starts from the same initialisation
        make = getattr(methods.get(mcfg.name, "encoder").builder, "new_student", None) if mcfg else None
        if make is not None:  # a method with its own kind of student (cross_encoder_kd)
            return make(self, mcfg.params).to(self.device)  # type: ignore[union-attr]
        s, skip = self.cfg.student, added_special_ids(self.tok)
        if s.kind == "static" and s.init == "vocab" and self.vocab is None:  # once per run, for every student
            self.vocab = VocabTable.from_teacher(self.encoder, self.tok, self.train_rows, skip, self.device,
                                                 progress=self.cfg.engine.progress)
            self.log(f"student init: {self.vocab.vectors.shape[0]} vocabulary tokens through the teacher "
                     f"({len(self.vocab.ids)} text tokens ranked for weights={s.token_weights})")
        student = build_student(self.encoder, s, self.pad_id, skip_ids=skip, vocab=self.vocab)
        if self.task is not None:
            student = TextClassifier(student.to(self.device), len(self.task.classes))
        return student.to(self.device)

    def build_method(self, mcfg: EncoderMethodConfig, student) -> EncoderMethod:
        entry = methods.get(mcfg.name, "encoder")
        given = {"cross_teacher": self.cross_teacher, "tokenizer": self.tok, "student_tokenizer": self.s_tok,
                 "max_length": self.cfg.data.max_length}
        extra = {k: given[k] for k in entry.injected if k in given}
        return entry.builder(student, self.teacher if entry.builder.needs_teacher else None, **extra, **mcfg.params)

    def loader(self, method, data: EncoderDataConfig | None = None) -> SentenceLoader | ExampleLoader:
        """Logit methods read the task's texts (labelled or not); pair methods (a `data_kind`) the rows
        of tabular data, made into batches by their `collate`; the others the text stream."""
        kind = getattr(method, "data_kind", None)
        if kind is not None:
            d = data or self.cfg.data
            ex = self.examples(d, kind, type(method).__name__)
            method.check_examples(ex)
            return ExampleLoader(ex.train, d.batch_size, method.collate, seed=self.cfg.seed)
        if getattr(method, "needs_labels", False):
            return self.task.loader(self.cfg.data.batch_size, self.pad_id, self.cfg.seed)  # type: ignore[union-attr]
        if data is None:
            rows, own = self.train_rows, self.s_train_rows
        else:
            train = self.texts(data)[0]
            rows = self.rows(train, max_length=data.max_length)
            own = rows if self.s_tok is None else self.rows(train, self.s_tok, data.max_length)
        return SentenceLoader(rows, (data or self.cfg.data).batch_size, self.pad_id, seed=self.cfg.seed,
                              student_rows=None if self.s_tok is None else own, student_pad_id=self.s_pad_id)

    def evaluate(self, model, timing: bool = True) -> dict[str, Any]:
        cfg, d = self.cfg, self.cfg.data
        if getattr(model, "is_cross_encoder", False):
            ex = self.examples(d, "ranking", "a cross-encoder student")
            m = cross_agreement(model, self.cross_teacher.module if self.cross_teacher else None, ex.held,
                                d.max_length, d.eval_batch_size, timing, self._cross_cache)
            m["params"] = count_parameters(model)
            m["size_mb"] = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
            return m
        own = self.s_tok is not None and model is not self.teacher_model  # a student in its own ids
        tok, pad, held = (self.s_tok, self.s_pad_id, self.s_held_rows) if own else (self.tok, self.pad_id, self.held_rows)
        e = encode(model, held, pad, d.eval_batch_size, self.device)
        m = agreement(e, self.e_t, cfg.eval.pair_sentences, cfg.eval.top_k)
        if self.task is not None:
            test = self.task.student_test_rows if own else self.task.test_rows
            m["accuracy"] = accuracy(predict_logits(model, test, pad, d.eval_batch_size, self.device),
                                     self.task.test_labels)
        if timing and self.judged:  # final evaluations only (not at init or between stages)
            m.update(judge(lambda texts: encode(model, tokenize(tok, texts, d.max_length), pad,
                                                d.eval_batch_size, self.device), self.judged))
        if timing:
            m["sentences_per_s"] = throughput(model, held[: cfg.eval.throughput_sentences], pad,
                                              d.eval_batch_size, self.device)
        m["params"] = count_parameters(model)
        m["size_mb"] = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
        return m


def same_tokenizer(a, b) -> bool:
    """Whether two tokenizers give the same ids: the same vocabulary, and the same ids for a probe
    text with casing, accents, digits and punctuation (normalisation and special tokens)."""
    if len(a) != len(b) or a.get_vocab() != b.get_vocab():
        return False
    probe = ["Hello World, ça va? 42 x-ray", "the QUICK brown fox"]
    return a(probe)["input_ids"] == b(probe)["input_ids"]


def own_tokenizer(s, teacher_tok):
    """The tokenizer of a `student.path` folder when it is not the teacher's; else None."""
    if s.path is None or s.kind == "static":
        return None
    tok = load_tokenizer(s.path, "student.path")
    return None if same_tokenizer(tok, teacher_tok) else tok


def save_student(student, out: Path, ctx: Context, m: dict[str, Any]) -> None:
    """The student as a sentence-transformers folder (`export.save_encoder`) + its settings and metrics."""
    cfg = ctx.cfg
    if getattr(student, "is_cross_encoder", False):  # CrossEncoder(out).predict(pairs)
        student.save(out, cfg.data.max_length)
        atomic_write_text(out / "result.json", json.dumps(m))
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
        return
    save_encoder(student, out, ctx.s_tok or ctx.tok, cfg.data.max_length, ctx.task.classes if ctx.task else None)
    if cfg.student.kind == "static":  # also for model2vec: StaticModel.from_pretrained(out / "model2vec")
        save_model2vec(student, out / "model2vec", ctx.tok)
    atomic_write_text(out / "student.json", json.dumps(cfg.student.model_dump(mode="json")))
    atomic_write_text(out / "result.json", json.dumps(m))
    shutil.rmtree(out / "checkpoints", ignore_errors=True)


@register_runner("encoder")
def run_encoder(cfg: EncoderRunConfig, *, run_dir: Path | None, log: Callable[[str], None] = print) -> dict[str, Any]:
    ctx = Context(cfg, log)
    primary = "accuracy" if ctx.task else "spearman"
    t_metrics = ctx.evaluate(ctx.teacher_model)
    results: dict[str, Any] = {"family": "encoder", "primary_metric": primary, "teacher": t_metrics, "students": {}}
    metrics_path = run_dir / "metrics.jsonl" if run_dir else None
    k = cfg.eval.top_k

    for mcfg in cfg.methods:
        label = mcfg.display
        out = run_dir / "students" / label if run_dir else None
        done = out / "result.json" if out else None
        if done is not None and done.is_file():
            log(f"student {label}: already trained (resumed run), reusing {done}")
            results["students"][label] = json.loads(done.read_text())
            continue
        student = ctx.new_student(mcfg)
        init = ctx.evaluate(student, timing=False) if cfg.eval.at_init else {}
        method = ctx.build_method(mcfg, student)
        engine = fit(method, ctx.loader(method), cfg, mcfg.train or cfg.train, mcfg.weights, out, metrics_path, label)
        m = ctx.evaluate(student)
        m.update({f"init_{c}": init[c] for c in ("spearman", f"top{k}_overlap", "accuracy") if c in init})
        m.update(method=mcfg.name, steps=engine.step_count, last_terms=engine.last_terms)
        m.setdefault("speedup", m["sentences_per_s"] / t_metrics["sentences_per_s"])
        results["students"][label] = m
        if out is not None:
            save_student(student, out, ctx, m)
        log(f"student {label}: " + (f"accuracy {m['accuracy']:.3f}, " if "accuracy" in m else "")
            + f"spearman {m['spearman']:.3f} (init {init.get('spearman', float('nan')):.3f}), "
            + (f"top{k} {m[f'top{k}_overlap']:.3f}, " if f"top{k}_overlap" in m else "pair scores vs the cross-encoder, ")
            + f"{m['speedup']:.1f}x teacher throughput"
            + "".join(f", {key} {m[key]:.2f} (teacher {t_metrics[key]:.2f})" for key in ctx.judged))

    if cfg.stages:
        m = run_stages(ctx, run_dir, metrics_path, fit, save_student)
        m["speedup"] = m["sentences_per_s"] / t_metrics["sentences_per_s"]
        results["students"][cfg.staged_label] = m

    results["best"] = max(results["students"], key=lambda s: results["students"][s][primary])
    results["data"] = {"train": len(ctx.train_rows), "held_out": len(ctx.held_rows)}
    if ctx.task is not None:
        results["task"] = {"classes": ctx.task.classes, "train": len(ctx.task.train_rows),
                           "labelled": ctx.task.labeled, "test": len(ctx.task.test_rows)}
    if run_dir is not None:
        best = results["students"][results["best"]]
        src = Path(best["folder"]) if "folder" in best else run_dir / "students" / results["best"]
        # the best student, ready for SentenceTransformer(run_dir / "student") (or CrossEncoder)
        if (src / "modules.json").is_file() or (src / "config_sentence_transformers.json").is_file():
            shutil.rmtree(run_dir / "student", ignore_errors=True)
            shutil.copytree(src, run_dir / "student", ignore=shutil.ignore_patterns("checkpoints"))
        atomic_write_text(run_dir / "summary.json", json.dumps(results, indent=2))
        atomic_write_text(run_dir / "report.md", report(cfg, results))
    return results


def report(cfg: EncoderRunConfig, results: dict[str, Any]) -> str:
    k = cfg.eval.top_k
    cols = ["params", "size_mb", "spearman", "init_spearman", f"top{k}_overlap", "sentences_per_s", "speedup",
            *(c for c in results["teacher"] if c.startswith(("sts:", "ndcg@10:")))]
    if "task" in results:
        cols = ["accuracy", "init_accuracy", *cols]
    lines = [f"# {cfg.name}: encoder distillation", "",
             f"Teacher `{cfg.teacher.path}`, student `{cfg.student.kind}` ({cfg.student.num_layers} layers, init "
             f"{cfg.student.init}); {results['data']['train']} train / {results['data']['held_out']} held-out sentences. "
             "Spearman: student vs teacher cosine similarities on held-out pairs; overlap: shared top-k neighbours."
             + (" Against human judgements (x100): `sts:NAME`, Spearman of cosine vs human score; `ndcg@10:NAME`, "
                "nDCG@10 of cosine retrieval." if any(c.startswith(("sts:", "ndcg@10:")) for c in cols) else ""), "",
             "| model | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, m in [("teacher", results["teacher"]), *results["students"].items()]:
        cells = [f"{m[c]:,}" if c == "params" else (f"{m[c]:.3f}" if c in m else "-") for c in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if "task" in results:
        t = results["task"]
        lines += ["", f"Task: {len(t['classes'])} classes ({', '.join(t['classes'])}); {t['train']} training texts, "
                  f"{t['labelled']} of them labelled; accuracy on {t['test']} test texts."]
    for name, m in results["students"].items():
        if "stages" in m:
            lines += ["", f"Stages of `{name}` (each continues from the previous stage's student):", "",
                      "| stage | method | trained on | steps | accuracy | spearman |", "|---|---|---|---|---|---|"]
            for st, v in m["stages"].items():
                acc = f"{v['accuracy']:.3f}" if "accuracy" in v else "-"
                lines.append(f"| {st} | {v['method']} | {v['data']} | {v['steps']} | {acc} | {v['spearman']:.3f} |")
    return "\n".join(lines) + "\n"
