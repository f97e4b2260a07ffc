"""The student of an encoder recipe (`student:`): a smaller copy of the teacher's own class with
layers inherited from the teacher, a static embedding bag, or a model read from `student.path`."""
from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
from torch import nn

from distill.errors import ConfigError
from distill.families.encoder.loading import load_encoder_source
from distill.families.encoder.models import SentenceEncoder, StaticEncoder, uniform_layers, inherit_layers
from distill.families.encoder.vocab import VocabTable


def student_backbone(teacher: nn.Module, s, pad_id: int) -> nn.Module:
    """A smaller transformers encoder of the teacher's own class (same embeddings, positions and
    vocabulary; BERT for a BERT teacher, DistilBERT for a DistilBERT one), built from a copy of the
    teacher's config with `student:` sizes; init=teacher copies the chosen teacher layers."""
    tcfg = teacher.config
    t_dim, t_inter = int(tcfg.hidden_size), _intermediate(tcfg)
    hidden = s.hidden_size or t_dim
    heads = s.num_heads or (tcfg.num_attention_heads if hidden == t_dim else max(1, hidden // 32))
    inter = s.intermediate_size or (t_inter if hidden == t_dim else 4 * hidden)
    n_t = int(tcfg.num_hidden_layers)
    chosen = s.layers or (uniform_layers(n_t, s.num_layers) if s.init == "teacher" or s.num_layers <= n_t
                          else [i % n_t for i in range(s.num_layers)])  # a deeper random student
    d = tcfg.to_dict()
    amap = getattr(tcfg, "attribute_map", {}) or {}

    def put(names: Sequence[str], value) -> None:  # the first name the config has (through its attribute_map)
        for n in names:
            key = amap.get(n, n)
            if key in d:
                d[key] = value
                return

    put(("num_hidden_layers",), s.num_layers)
    put(("hidden_size",), hidden)
    put(("num_attention_heads",), heads)
    put(("intermediate_size", "hidden_dim"), inter)
    put(("hidden_dropout_prob", "dropout"), s.dropout)
    put(("attention_probs_dropout_prob", "attention_dropout"), s.dropout)
    if isinstance(d.get("layer_types"), list) and len(d["layer_types"]) == n_t:
        d["layer_types"] = [d["layer_types"][i] for i in chosen]  # per-layer settings follow the chosen layers
    if d.get("pad_token_id") is None:
        d["pad_token_id"] = pad_id
    cfg = type(tcfg)(**{k: v for k, v in d.items() if k not in ("transformers_version", "model_type")})
    cfg._attn_implementation = tcfg._attn_implementation
    cls = type(teacher)
    kwargs = {"add_pooling_layer": False} if "add_pooling_layer" in inspect.signature(cls.__init__).parameters else {}
    backbone = cls(cfg, **kwargs)
    if s.init == "teacher":
        if hidden != t_dim or inter != t_inter or heads != tcfg.num_attention_heads:
            raise ConfigError(f"student.init: 'teacher' copies teacher layers, so hidden_size, intermediate_size and "
                              f"num_heads must be the teacher's ({t_dim}, {t_inter}, {tcfg.num_attention_heads}); "
                              "use init=random for a narrower student.")
        inherit_layers(teacher, backbone, chosen)
    return backbone


def _intermediate(cfg) -> int | None:
    for n in ("intermediate_size", "hidden_dim"):
        if getattr(cfg, n, None) is not None:
            return int(getattr(cfg, n))
    return None


def build_student(teacher: SentenceEncoder, s, pad_id: int, skip_ids: Sequence[int] = (),
                  vocab: VocabTable | None = None) -> nn.Module:
    """A student from `student:` settings (`EncoderStudentConfig`), sized against the teacher; it
    pools and normalises as the teacher does (a `student.path` sentence-transformers folder keeps its
    own). `skip_ids`: special-token ids a static student leaves out of its mean; `vocab`: the
    teacher's token vectors for init=vocab (`VocabTable`, computed once per run)."""
    tcfg = teacher.config
    t_dim = int(tcfg.hidden_size)
    match = s.match_teacher_dim if s.match_teacher_dim is not None else not (s.kind == "static" and s.init == "vocab")
    out_dim = teacher.embedding_dim if match else None
    if s.kind == "static":
        if s.init == "vocab":
            if vocab is None:
                raise ValueError("build_student: init=vocab needs the teacher's token vectors (vocab=VocabTable(...))")
            dim = s.hidden_size or teacher.embedding_dim
            table, basis = vocab.table(dim, s.token_weights, s.sif)
            st = StaticEncoder(table.shape[0], dim, pad_id, out_dim, normalize=teacher.normalize, skip_ids=skip_ids)
            st.embed.weight.data.copy_(table)
            if out_dim is None and dim != teacher.embedding_dim:
                st.teacher_basis = basis  # embedding_kd compares the teacher's embedding in this basis
            return st
        dim = s.hidden_size or t_dim
        st = StaticEncoder(tcfg.vocab_size, dim, pad_id, out_dim, normalize=teacher.normalize, skip_ids=skip_ids)
        if s.init == "teacher":
            w = teacher.backbone.get_input_embeddings().weight.detach()  # (V, Dt)
            if dim != t_dim:  # principal directions of the teacher's table
                w = w - w.mean(0)
                _, _, v = torch.pca_lowrank(w, q=dim, center=False)
                w = w @ v[:, :dim]
            st.embed.weight.data.copy_(w)
        return st
    if s.path:
        st = load_encoder_source(s.path, "student.path")
        if not isinstance(st, SentenceEncoder):
            raise ConfigError(f"student.path: {s.path!r} holds a static model; use student.kind=static with init=random "
                              "or teacher, or give a transformers folder.")
        st.source = "student.path"
        if out_dim and out_dim != st.embedding_dim:
            if st.head is not None:
                raise ConfigError(f"student.path: its embedding width {st.embedding_dim} is not the teacher's {out_dim}.")
            st.head = nn.Linear(st.embedding_dim, out_dim)
        return st
    return SentenceEncoder(student_backbone(teacher.backbone, s, pad_id), teacher.pooling, out_dim,
                           normalize=teacher.normalize, source="student")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
