"""Where the layers of a transformers encoder are, found from the model's own module tree, so that
the layer methods (attention_kd, minilm_relations, hidden_mse, mi_alpha) and weight inheritance work
on any Hugging Face encoder, not one hard-coded BERT path.

- the per-layer stack: the `nn.ModuleList` whose length is `config.num_hidden_layers`
  (`encoder.layer` in BERT, RoBERTa, XLM-R and MPNet; `transformer.layer` in DistilBERT);
- inside each layer, the query/key/value projections: three sibling `nn.Linear` modules under the
  names each architecture uses (BERT/RoBERTa: `attention.self.query|key|value`; DistilBERT:
  `attention.q_lin|k_lin|v_lin`; MPNet: `attention.attn.q|k|v`; many others `q_proj|k_proj|v_proj`).

A model whose attention fuses the three projections into one module (e.g. a `Wqkv` Linear) has no
separate query/key modules to tap; it gets a `ConfigError` naming its class.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from distill.errors import ConfigError

# leaf names of the (query, key, value) Linear modules, by architecture family
QKV_NAMES: tuple[tuple[str, str, str], ...] = (
    ("query", "key", "value"),        # BERT, RoBERTa, XLM-R, ELECTRA, MiniLM
    ("q_lin", "k_lin", "v_lin"),      # DistilBERT
    ("q", "k", "v"),                  # MPNet
    ("q_proj", "k_proj", "v_proj"),   # BART/Whisper-style encoders, many newer models
    ("query_proj", "key_proj", "value_proj"),  # DeBERTa-v2/v3
)
KINDS = ("query", "key", "value")


@dataclass(frozen=True)
class LayerMap:
    """`stack`: the layer ModuleList's name in the backbone; `qkv`: kind -> name inside one layer
    (None when the layers have no separate query/key/value Linear modules)."""

    stack: str
    qkv: dict[str, str] | None

    def layer(self, i: int) -> str:
        return f"{self.stack}.{i}"


def _qkv_in(layer: nn.Module) -> dict[str, str] | None:
    linears = {name for name, m in layer.named_modules() if isinstance(m, nn.Linear)}
    for names in QKV_NAMES:
        for name in sorted(linears, key=lambda n: n.count(".")):
            parent, _, leaf = name.rpartition(".")
            if leaf != names[0]:
                continue
            full = [f"{parent}.{n}" if parent else n for n in names]
            if all(f in linears for f in full):
                return dict(zip(KINDS, full))
    return None


def _num_layers(backbone: nn.Module) -> int:
    cfg = getattr(backbone, "config", None)
    n = getattr(cfg, "num_hidden_layers", None)
    if n is None:
        raise ConfigError(f"{type(backbone).__name__}: its config has no num_hidden_layers; not a transformers encoder?")
    return int(n)


def find_layers(backbone: nn.Module) -> LayerMap:
    """The layer stack of `backbone` (a transformers model) and the q/k/v names inside a layer.
    Among ModuleLists of the right length, one whose layers hold q/k/v wins, then the shallowest."""
    n = _num_layers(backbone)
    stacks = [(name, m) for name, m in backbone.named_modules() if isinstance(m, nn.ModuleList) and len(m) == n and n]
    if not stacks:
        raise ConfigError(f"{type(backbone).__name__}: no nn.ModuleList of {n} layers (config.num_hidden_layers) "
                          "in its modules, so its layers cannot be mapped.")
    stacks.sort(key=lambda s: s[0].count("."))
    for name, stack in stacks:
        qkv = _qkv_in(stack[0])
        if qkv is not None:
            return LayerMap(name, qkv)
    return LayerMap(stacks[0][0], None)


def require_qkv(layers: LayerMap, backbone: nn.Module, where: str) -> dict[str, str]:
    """The q/k/v names, or a ConfigError naming the model class and what to do instead."""
    if layers.qkv is None:
        looked = ", ".join("/".join(n) for n in QKV_NAMES)
        raise ConfigError(
            f"{where}: {type(backbone).__name__} has no separate query/key/value nn.Linear modules in its layers "
            f"({layers.stack}.N; looked for {looked}), so attention methods (attention_kd, minilm_relations) "
            "cannot tap them. Use a method on outputs or hidden states (embedding_kd, hidden_mse, mi_alpha), or a "
            "BERT-, RoBERTa-, MPNet- or DistilBERT-style encoder.")
    return layers.qkv
