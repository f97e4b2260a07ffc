"""Encoders: a transformers encoder with the pooling, Dense and Normalize modules of a
sentence-transformers model (teacher or student), smaller students of the teacher's own class with
weight inheritance from chosen teacher layers (DistilBERT, Sanh et al. 2019; TinyCLIP, Wu et al.
2023), and a static embedding-bag student (a token table averaged over the sentence).

Every encoder returns `{"embedding": (B, D)}` and, for transformers, `"hidden_states"`: a tuple of
(B, T, H) tensors, index 0 = embedding output, k = after layer k. Queries, keys and values are read
with forward hooks (`distill.taps`) under the names of `layer_module(i, kind)`, found from the
model's own modules (`layers.py`); folders, hub ids and packages are read in `sources.py`, students
written as sentence-transformers folders in `export.py`.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from distill.errors import ConfigError
from distill.families.encoder.layers import find_layers, LayerMap, require_qkv
from distill.families.encoder.losses import mean_pool
from distill.families.encoder.pooling import as_modes, pool


def activation(name: str) -> nn.Module:
    """A torch.nn activation from its class path ("torch.nn.modules.activation.Tanh"); only torch.nn
    classes (nothing else is imported from a model folder)."""
    cls = getattr(nn, name.rsplit(".", 1)[-1], None)
    if not (name.startswith("torch.") and isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ConfigError(f"Dense activation {name!r}: only torch.nn activations are supported (e.g. "
                          "torch.nn.modules.activation.Tanh, torch.nn.modules.linear.Identity).")
    return cls()


class Dense(nn.Module):
    """A sentence-transformers `Dense` module on the sentence embedding: act(W e + b). (B, In) -> (B, Out)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 activation_function: str = "torch.nn.modules.linear.Identity"):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=bias)
        self.activation_function = activation_function
        self.act = activation(activation_function)

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return self.act(self.linear(e))


class SentenceEncoder(nn.Module):
    """A transformers encoder (`backbone`) + pooling (`pooling.MODES`, "+" joins several) + the
    folder's Dense modules (`dense`, from a sentence-transformers teacher) + an optional linear `head`
    to another width (a student's projection) + optional L2 normalisation: the module chain of a
    sentence-transformers model. `source` names the recipe field the model came from (for errors)."""

    is_static = False

    def __init__(self, backbone: nn.Module, pooling: str = "mean", out_dim: int | None = None, *,
                 dense: Sequence[nn.Module] = (), normalize: bool = False, source: str = "teacher.path",
                 max_seq_length: int | None = None):
        super().__init__()
        self.backbone = backbone
        self.pooling = "+".join(as_modes(pooling))
        self.dense = nn.ModuleList(dense)
        dim = self.pooled_dim if not dense else int(dense[-1].linear.out_features)
        self.head = nn.Linear(dim, out_dim) if out_dim and out_dim != dim else None
        self.normalize = normalize
        self.source = source
        self.max_seq_length = max_seq_length
        self._layers: LayerMap | None = None

    @property
    def config(self):
        return self.backbone.config

    @property
    def num_layers(self) -> int:
        return self.backbone.config.num_hidden_layers

    @property
    def num_heads(self) -> int:
        return self.backbone.config.num_attention_heads

    @property
    def pooled_dim(self) -> int:
        return int(self.backbone.config.hidden_size) * len(as_modes(self.pooling))

    @property
    def embedding_dim(self) -> int:
        if self.head is not None:
            return int(self.head.out_features)
        return int(self.dense[-1].linear.out_features) if len(self.dense) else self.pooled_dim

    @property
    def layers(self) -> LayerMap:
        if self._layers is None:
            self._layers = find_layers(self.backbone)
        return self._layers

    def layer_module(self, i: int, kind: str) -> str:
        """Module name (relative to this encoder) of layer i's `query`/`key`/`value` projection, or of
        the whole layer (`layer`), found from the model's own modules (`layers.find_layers`)."""
        if kind == "layer":
            return f"backbone.{self.layers.layer(i)}"
        return f"backbone.{self.layers.layer(i)}.{require_qkv(self.layers, self.backbone, self.source)[kind]}"

    def check_layers(self, attention: bool = True) -> None:
        """Raise a ConfigError now (naming `source`) if the layers, or their q/k/v, cannot be found."""
        if attention:
            require_qkv(self.layers, self.backbone, self.source)
        else:
            self.layers  # noqa: B018  (finds the stack or raises)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, hidden: bool = False) -> dict[str, Any]:
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=hidden)
        e = pool(out.last_hidden_state, attention_mask, self.pooling)      # (B, H * modes)
        for d in self.dense:
            e = d(e)
        if self.head is not None:
            e = self.head(e)
        if self.normalize:
            e = F.normalize(e, dim=-1)
        res: dict[str, Any] = {"embedding": e}
        if hidden:
            res["hidden_states"] = out.hidden_states
        return res


class StaticEncoder(nn.Module):
    """The fastest encoder: a token-embedding table averaged over the sentence (an embedding bag),
    optionally a linear `head` to another width and L2 normalisation. Token ids in `skip_ids` (the
    special tokens a tokenizer adds, e.g. [CLS] and [SEP]) are left out of the mean, as
    sentence-transformers' `StaticEmbedding` (which tokenizes without them) does."""

    is_static = True
    num_layers = 0

    def __init__(self, vocab_size: int, dim: int, pad_id: int = 0, out_dim: int | None = None, *,
                 normalize: bool = False, skip_ids: Sequence[int] = ()):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=pad_id)
        nn.init.normal_(self.embed.weight, std=0.1)
        self.head = nn.Linear(dim, out_dim) if out_dim and out_dim != dim else None
        self.normalize = normalize
        self.register_buffer("skip_ids", torch.tensor(sorted(set(skip_ids)), dtype=torch.long), persistent=False)
        # (teacher width, dim): the PCA basis of a table built from the teacher's vocabulary (init=vocab);
        # distillation losses compare the teacher's embedding projected on it with this narrower one
        self.register_buffer("teacher_basis", None, persistent=False)

    @property
    def embedding_dim(self) -> int:
        return int(self.head.out_features if self.head is not None else self.embed.embedding_dim)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, hidden: bool = False) -> dict[str, Any]:
        mask = attention_mask
        if self.skip_ids.numel():
            mask = mask * ~torch.isin(input_ids, self.skip_ids)                # (B, T)
        e = mean_pool(self.embed(input_ids), mask)                              # (B, D)
        if self.head is not None:
            e = self.head(e)
        if self.normalize:
            e = F.normalize(e, dim=-1)
        return {"embedding": e}


def uniform_layers(n_teacher: int, n_student: int) -> list[int]:
    """Teacher layers spread evenly, ending at the last: 6 -> 2 gives [2, 5]; 6 -> 3 gives [1, 3, 5]."""
    if n_student > n_teacher:
        raise ConfigError(f"student.num_layers: {n_student} is more than the teacher's {n_teacher} layers.")
    return [round((j + 1) * n_teacher / n_student) - 1 for j in range(n_student)]


def inherit_layers(teacher: nn.Module, student: nn.Module, layers: list[int]) -> None:
    """Copy the teacher's embeddings (and every other tensor outside the layer stack) and its layers
    `layers[j]` into student layer j. The stacks are found in each model (`encoder.layer.N.` in BERT,
    RoBERTa, MPNet; `transformer.layer.N.` in DistilBERT); the shapes must match."""
    t_state = teacher.state_dict()
    s_state = student.state_dict()
    n_t = teacher.config.num_hidden_layers
    if len(layers) != student.config.num_hidden_layers:
        raise ConfigError(f"student.layers: {len(layers)} layers given for a {student.config.num_hidden_layers}-layer student.")
    bad = [i for i in layers if not 0 <= i < n_t]
    if bad:
        raise ConfigError(f"student.layers: {bad} out of range for a {n_t}-layer teacher (0..{n_t - 1}).")
    t_stack, s_stack = find_layers(teacher).stack + ".", find_layers(student).stack + "."
    new = {}
    for name, v in s_state.items():
        src = name
        if name.startswith(s_stack):
            j, rest = name[len(s_stack):].split(".", 1)
            src = f"{t_stack}{layers[int(j)]}.{rest}"
        if src not in t_state or t_state[src].shape != v.shape:
            raise ConfigError(f"student.init=teacher: the teacher ({type(teacher).__name__}) has no tensor {src!r} of "
                              f"shape {tuple(v.shape)}; weight inheritance needs the teacher's hidden, intermediate "
                              "and head sizes.")
        new[name] = t_state[src].clone()
    student.load_state_dict(new)
