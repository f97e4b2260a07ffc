"""Cross-encoders: a transformers sequence-classification model with one label that reads a (query,
passage) pair as one sequence and gives its relevance logit. Read from a sentence-transformers
`CrossEncoder` folder (`CrossEncoder.save_pretrained`) or a transformers
`AutoModelForSequenceClassification` folder; written so that `CrossEncoder(folder).predict(pairs)`
returns the logits the run evaluated (the saved activation is the identity).

A cross-encoder student is a smaller model of the teacher's own class (`student:` sizes, `init:
teacher` copies the chosen teacher layers and the classification head), or another cross-encoder folder.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill.errors import ConfigError
from distill.families.encoder.examples import tokenize_pairs
from distill.families.encoder.sources import resolve, transformer_dir
from distill.utils import atomic_write_text

IDENTITY = "torch.nn.modules.linear.Identity"


class CrossScorer(nn.Module):
    """(query, passage) pairs -> relevance logits. `forward` takes the pair tensors of `tokenize_pairs`
    and returns `{"score": (N,)}`; `tokenizer` (not a module) makes them (`pairs`)."""

    is_cross_encoder = True
    is_static = False

    def __init__(self, model: nn.Module, tokenizer, source: str = "teacher.cross_encoder"):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.source = source

    @property
    def config(self):
        return self.model.config

    @property
    def num_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)

    def pairs(self, queries, passages, max_length: int) -> dict[str, torch.Tensor]:
        return tokenize_pairs(self.tokenizer, queries, passages, max_length)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> dict[str, Any]:
        kw = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask, **kw).logits  # (N, 1)
        return {"score": logits[:, 0]}

    @torch.no_grad()
    def score(self, queries, passages, max_length: int, batch_size: int = 64) -> torch.Tensor:
        """Logits (N,) of the pairs (queries[i], passages[i]), in eval mode."""
        was = self.training
        self.eval()
        dev = next(self.parameters()).device
        out = []
        for i in range(0, len(queries), batch_size):
            b = self.pairs(queries[i:i + batch_size], passages[i:i + batch_size], max_length)
            out.append(self(**{k: v.to(dev) for k, v in b.items()})["score"].float().cpu())
        self.train(was)
        return torch.cat(out) if out else torch.zeros(0)

    def save(self, folder: Path, max_length: int) -> None:
        """A sentence-transformers CrossEncoder folder: the transformers model and tokenizer (texts cut
        at `max_length` tokens) plus the identity activation, so `predict` returns the logits."""
        folder.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(folder))
        tok = copy.deepcopy(self.tokenizer)  # the run's tokenizer keeps its own limit
        tok.model_max_length = max_length
        tok.save_pretrained(str(folder))
        cfg_file = folder / "config.json"
        cfg = json.loads(cfg_file.read_text())
        cfg["sentence_transformers"] = {"activation_fn": IDENTITY}  # read by CrossEncoder 4 and 5
        atomic_write_text(cfg_file, json.dumps(cfg, indent=2))
        atomic_write_text(folder / "config_sentence_transformers.json",  # read by CrossEncoder 6
                          json.dumps({"model_type": "CrossEncoder", "activation_fn": IDENTITY, "prompts": {},
                                      "default_prompt_name": None}, indent=2))


def load_cross_encoder(path: str, what: str = "teacher.cross_encoder") -> CrossScorer:
    """A cross-encoder from a folder, hub id or `package:NAME`; it must have exactly one output label."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    folder = transformer_dir(resolve(path, what))
    if not (folder / "config.json").is_file():
        raise ConfigError(f"{what}: {str(folder)!r} has no config.json; give a sentence-transformers CrossEncoder "
                          "folder or a transformers sequence-classification folder.")
    try:
        cfg = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    except Exception as e:
        raise ConfigError(f"{what}: cannot read {folder / 'config.json'} ({type(e).__name__}: {e}).") from None
    archs = getattr(cfg, "architectures", None) or []
    if archs and not any(a.endswith("ForSequenceClassification") for a in archs):
        raise ConfigError(f"{what}: {str(folder)!r} holds a {archs[0]}, not a cross-encoder (a "
                          "...ForSequenceClassification model with one label).")
    if int(getattr(cfg, "num_labels", 1)) != 1:
        raise ConfigError(f"{what}: {str(folder)!r} has {cfg.num_labels} labels; a cross-encoder scoring "
                          "(query, passage) pairs has one.")
    try:
        model = AutoModelForSequenceClassification.from_pretrained(str(folder), local_files_only=True,
                                                                   dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as e:
        raise ConfigError(f"{what}: cannot load a cross-encoder from {str(folder)!r} ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}).") from None
    return CrossScorer(model, tok, source=what)


def build_cross_student(teacher: CrossScorer, s, pad_id: int) -> CrossScorer:
    """A smaller cross-encoder of the teacher's class from `student:` settings (`student_backbone`);
    init=teacher also copies the teacher's embeddings and classification head."""
    from distill.families.encoder.students import student_backbone

    model = student_backbone(teacher.model, s, pad_id)
    return CrossScorer(model, teacher.tokenizer, source="student")
