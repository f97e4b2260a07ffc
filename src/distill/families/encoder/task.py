"""A text-classification task on top of an encoder: a linear head on the sentence embedding
(`TextClassifier`), labelled text (files or folders as classes, or JSONL `{"text", "label"}` rows),
a stratified split with an optional labelled budget per class (the other training pieces keep
label -1: unlabeled task text, which logit-KD methods use through the teacher alone, as in the
classifier family), accuracy, and the task teacher: a head fine-tuned on the teacher encoder once and
cached (or loaded from `task.teacher_checkpoint`).
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from distill.errors import ConfigError
from distill.families.encoder.data import read_sentences, SentenceLoader, tokenize
from distill.utils import expand
from distill.utils import atomic_write_text, hash_json, seed_everything

TEACHER_FILE = "teacher_classifier.safetensors"


class TextClassifier(nn.Module):
    """An encoder + a linear head on its sentence embedding. Returns the encoder's outputs plus
    `"logits"` (B, C); the encoder's layers stay reachable (`layer_module`), so the feature methods
    (hidden_mse, attention_kd, ...) run on a classifier exactly as on its encoder."""

    def __init__(self, encoder: nn.Module, num_classes: int, dim: int | None = None):
        super().__init__()
        self.encoder = encoder
        if dim is None:  # the width of the encoder's sentence embedding
            with torch.no_grad():
                was = encoder.training
                encoder.eval()
                dev = next(encoder.parameters()).device
                one = torch.ones(1, 2, dtype=torch.long, device=dev)
                dim = int(encoder(one, one)["embedding"].shape[-1])
                encoder.train(was)
        self.classifier = nn.Linear(dim, num_classes)

    is_static = property(lambda self: getattr(self.encoder, "is_static", False))
    num_layers = property(lambda self: self.encoder.num_layers)
    num_heads = property(lambda self: self.encoder.num_heads)
    config = property(lambda self: self.encoder.config)
    pooling = property(lambda self: self.encoder.pooling)

    def layer_module(self, i: int, kind: str) -> str:
        return "encoder." + self.encoder.layer_module(i, kind)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, hidden: bool = False) -> dict[str, Any]:
        out = dict(self.encoder(input_ids, attention_mask, hidden=hidden))
        out["logits"] = self.classifier(out["embedding"])  # (B, C)
        return out


@dataclass
class TaskData:
    classes: list[str]
    train_rows: list[list[int]]
    train_labels: list[int]  # -1 = unlabeled
    test_rows: list[list[int]]
    test_labels: list[int]
    student_train_rows: list[list[int]] | None = None  # in the student's ids, where its tokenizer differs
    student_test_rows: list[list[int]] | None = None
    student_pad_id: int = 0

    @property
    def labeled(self) -> int:
        return sum(y >= 0 for y in self.train_labels)

    def loader(self, batch_size: int, pad_id: int, seed: int, labeled_only: bool = False,
               student: bool = True) -> SentenceLoader:
        """Batches of the training texts; with the student's own ids too unless `student=False` (the
        teacher's fine-tuning)."""
        keep = [i for i, y in enumerate(self.train_labels) if y >= 0 or not labeled_only]
        own = self.student_train_rows if student else None
        return SentenceLoader([self.train_rows[i] for i in keep], batch_size, pad_id, seed=seed,
                              labels=[self.train_labels[i] for i in keep],
                              student_rows=[own[i] for i in keep] if own is not None else None,
                              student_pad_id=self.student_pad_id)


def read_labelled(paths: list[str], separator: str, min_chars: int, max_chars: int) -> tuple[list[str], dict[str, list[str]]]:
    """(class names in order of appearance, texts per class). A `.jsonl` file gives rows
    {"text", "label"}; any other file or folder is one class named after it (its pieces split by
    `separator`, e.g. a fortune file)."""
    per: dict[str, list[str]] = {}
    seen: set[str] = set()
    for p in paths:
        path = Path(expand(p))  # type: ignore[arg-type]
        if path.suffix == ".jsonl":
            items = []
            for n, line in enumerate(path.read_text().splitlines()):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    items.append((str(row["label"]), " ".join(str(row["text"]).split())[:max_chars]))
                except (ValueError, KeyError, TypeError):
                    raise ConfigError(f"task.paths: {str(path)!r} line {n + 1} is not a JSON object with "
                                      "'text' and 'label'.") from None
        else:
            items = [(path.name, s) for s in read_sentences([path], separator, min_chars, max_chars)]
        for label, text in items:
            if len(text) >= min_chars and text not in seen:
                seen.add(text)
                per.setdefault(label, []).append(text)
    if len(per) < 2:
        raise ConfigError(f"task.paths: a classification task needs at least 2 classes, found {list(per)}.")
    return list(per), per


def build_task(tcfg, tok, max_length: int, student_tok=None) -> TaskData:
    """Read, balance (max_per_class), split per class (test_fraction) and keep `labels_per_class`
    training labels per class (the rest -1); all seeded by task.split_seed. `student_tok`: a
    student's own tokenizer (its rows are kept beside the teacher's)."""
    classes, per = read_labelled(tcfg.paths, tcfg.separator, tcfg.min_chars, tcfg.max_chars)
    rng = random.Random(tcfg.split_seed)
    train, test = [], []
    for c, name in enumerate(classes):
        texts = list(per[name])
        rng.shuffle(texts)
        if tcfg.max_per_class:
            texts = texts[: tcfg.max_per_class]
        n_test = max(1, round(tcfg.test_fraction * len(texts)))
        if len(texts) - n_test < 1:
            raise ConfigError(f"task: class {name!r} has {len(texts)} texts, too few to split.")
        test += [(t, c) for t in texts[:n_test]]
        rest = texts[n_test:]
        k = len(rest) if tcfg.labels_per_class is None else min(tcfg.labels_per_class, len(rest))
        train += [(t, c if i < k else -1) for i, t in enumerate(rest)]
    rng.shuffle(train)
    data = TaskData(classes, tokenize(tok, [t for t, _ in train], max_length), [y for _, y in train],
                    tokenize(tok, [t for t, _ in test], max_length), [y for _, y in test])
    if student_tok is not None:
        data.student_train_rows = tokenize(student_tok, [t for t, _ in train], max_length)
        data.student_test_rows = tokenize(student_tok, [t for t, _ in test], max_length)
        data.student_pad_id = student_tok.pad_token_id if student_tok.pad_token_id is not None else 0
    return data


def predict_logits(model: nn.Module, rows: list[list[int]], pad_id: int, batch_size: int, device) -> torch.Tensor:
    """Head logits (N, C) in row order."""
    from distill.families.encoder.evaluate import batched_output

    return batched_output(model, rows, pad_id, batch_size, device, "logits")


def accuracy(logits: torch.Tensor, labels: list[int]) -> float:
    """Share of rows whose arg-max class is the label. (N, C), N labels."""
    return float((logits.argmax(-1) == torch.tensor(labels)).float().mean())


def teacher_key(cfg, classes: list[str]) -> str:
    t = cfg.task
    return hash_json({"teacher": cfg.teacher.model_dump(mode="json"), "classes": classes,
                      "task": t.model_dump(mode="json", exclude={"teacher_checkpoint"}),
                      "max_length": cfg.data.max_length, "batch_size": cfg.data.batch_size})


def task_teacher(cfg, encoder: nn.Module, task: TaskData, pad_id: int, device,
                 fit: Callable[..., Any], log: Callable[[str], None]) -> tuple[TextClassifier, Path]:
    """The teacher classifier: loaded from task.teacher_checkpoint or the cache, else fine-tuned on the
    task's labelled training texts (head only or all weights) and cached. `fit(method, loader, train_cfg,
    out_dir, label)` is the family's training loop."""
    from safetensors.torch import load_file, save_file

    from distill.registry import methods

    model = TextClassifier(encoder, len(task.classes)).to(device)
    t = cfg.task
    folder = Path(expand(t.teacher_checkpoint)) if t.teacher_checkpoint else \
        Path(cfg.cache_dir) / "encoder_teachers" / teacher_key(cfg, task.classes)  # type: ignore[arg-type]
    f = folder / TEACHER_FILE
    if f.is_file():
        state = load_file(str(f))
        if state["classifier.weight"].shape[0] != len(task.classes):
            raise ConfigError(f"task.teacher_checkpoint: {str(folder)!r} has a {state['classifier.weight'].shape[0]}-class "
                              f"head; this task has {len(task.classes)} classes.")
        model.load_state_dict(state)
        log(f"task teacher: loaded {f}")
        return model, folder
    if t.teacher_checkpoint:
        raise ConfigError(f"task.teacher_checkpoint: {str(folder)!r} has no {TEACHER_FILE}.")
    log(f"task teacher: fine-tuning ({t.teacher_finetune}) on {task.labeled} labelled texts, cached in {folder}")
    seed_everything(t.teacher_seed)
    model.classifier.reset_parameters()
    if t.teacher_finetune == "head":
        model.encoder.requires_grad_(False)
    method = methods.get("ce", "encoder").builder(model, None)
    fit(method, task.loader(cfg.data.batch_size, pad_id, t.teacher_seed, labeled_only=True, student=False),
        t.teacher_train,
        folder, "task_teacher")
    model.requires_grad_(True)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(f))
    atomic_write_text(folder / "classes.json", json.dumps(task.classes))
    import shutil

    shutil.rmtree(folder / "checkpoints", ignore_errors=True)
    return model, folder
