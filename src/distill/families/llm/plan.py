"""`distill plan`: the peak memory per device of an llm recipe, estimated before anything runs,
for each way of placing the teacher, and the placement that fits.

What is counted, per device, for one optimiser step of the student:

- weights: every parameter of the student and of the teacher, in its dtype (the models are built
  on the meta device from their configs, so nothing is allocated or downloaded); a quantised
  student base (`student.lora.quantize`) at bitsandbytes' bytes per weight and scale;
- gradients and optimiser state of the trainable parameters (fp32 AdamW: 4 + 8 bytes each; SGD
  with momentum 4 + 4);
- activations saved for the backward pass, measured, not modelled: the student's architecture is
  run at 1 and 2 layers on two short sequences under `torch.autograd.graph.saved_tensors_hooks`
  (weights left uninitialised, vocabulary cut to 256), and the saved bytes are extrapolated to the
  recipe's layers, batch and sequence length (linear in the layers, and per token linear in the
  sequence length, which covers attention implementations that keep the T x T scores);
- the teacher's forward, which runs while the student's activations are alive: its final hidden
  states (the loss reads them) and one block's temporaries; the chunked loss's workspace: a few
  `chunk x vocab` fp32 blocks (each model's logits, softmaxes, the gradient), how many depending on
  the divergence (LOSS_BLOCKS, measured), and the fused path's gradient accumulators;
- evaluation, a phase of its own, at `data.eval_batch_size`: both models' final hidden states and
  their logits `eval_chunk` positions at a time (2048, fewer past a 32k vocabulary; the student's
  with their log-softmax, the teacher's for top-1 agreement), or one block's temporaries if larger.

Placements: `colocated` (both models on every device; DDP keeps a copy per process), `offloaded`
(`teacher.device_map`: the teacher's weights in host memory), `fsdp` (N devices: the student's
weights, gradients and state divided by N; the teacher's repeated blocks divided by N, its
embeddings and head whole; one gathered block in flight), `served` (the teacher in another
process: `distill serve-teacher`). The estimate is checked against measured peaks in
tests/llm/test_llm_plan.py (CPU, within 20%).
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill.errors import ConfigError

GiB = 2 ** 30
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
# (chunk x vocab) fp32 blocks alive at once in the chunked loss's forward (which, fused, also takes
# the gradient), by what the loss computes; measured on CPU (resident-set peak of forward + backward
# of `hidden_divergence` / `hidden_cross_entropy` / `cached_divergence_sum`, N=4096 V=32k, chunk
# 512 and 1024) and rounded up. Two-model kinds count a logits block of each model's vocabulary and
# the rest in the vocabulary they share. Methods not listed get DEFAULT_LOSS_BLOCKS.
LOSS_BLOCKS = {
    "forward_kl": 3, "reverse_kl": 4, "jsd": 5,          # closed-form gradient
    "skew_kl": 12, "skew_reverse_kl": 12, "tvd": 10,     # autograd on each chunk
    "top_k": 5,                                          # the union of both models' top-k (token_kd top_k, first)
    "sparse": 4,                                         # a cached or served teacher's top-k: student logits only
    "ce": 2,                                             # cross-entropy on the labels: student logits only
    # cross-tokenizer methods, in blocks of the larger vocabulary (benchmarks/xtok_memory.py, teacher
    # vocabulary 128,000, chunks 64 and 256): ALM gathers one log-prob per token, ULD sorts whole
    # distributions, the hybrid does both
    "alm": 2, "uld": 6, "hybrid": 7,
}
DEFAULT_LOSS_BLOCKS = 6
STUDENT_ONLY_LOSSES = ("sparse", "ce")
CROSS_TOKENIZER_LOSSES = ("alm", "uld", "hybrid")


@dataclass
class ModelShape:
    """A model's sizes, read from its config on the meta device."""
    name: str
    params: int            # unique parameters
    block_params: int      # in the repeated blocks (the FSDP units)
    largest_block: int     # parameters of the largest block
    hidden: int
    vocab: int
    layers: int
    dtype_bytes: int
    config: Any = None     # the transformers config (to probe activations)
    trainable: int = 0     # LoRA: the adapter's parameters; else every parameter
    weight_bytes: float | None = None  # the weights' bytes where not params x dtype_bytes (a quantised base)

    @property
    def weights(self) -> float:
        return float(self.params * self.dtype_bytes) if self.weight_bytes is None else float(self.weight_bytes)


@dataclass
class Placement:
    name: str
    parts: dict[str, float] = field(default_factory=dict)   # bytes per device
    host: float = 0.0                                        # bytes in host memory off the device
    note: str = ""
    available: bool = True                                   # possible for this recipe as written

    PHASES = ("eval logits", "cache build")  # parts of phases of their own, with the weights only

    @property
    def train_peak(self) -> float:
        return sum(v for k, v in self.parts.items() if k not in self.PHASES)

    @property
    def weights(self) -> float:
        return self.parts.get("student weights", 0) + self.parts.get("teacher weights", 0)

    @property
    def eval_peak(self) -> float:
        return self.weights + self.parts.get("eval logits", 0)

    @property
    def build_peak(self) -> float:
        """The teacher cache's build (the teacher's forward and top-k before training), 0 without one."""
        return self.weights + self.parts["cache build"] if "cache build" in self.parts else 0.0

    @property
    def peak(self) -> float:
        return max(self.train_peak, self.eval_peak, self.build_peak)


@contextlib.contextmanager
def _meta():
    with torch.device("meta"):
        yield


def _blocks(model: nn.Module) -> list[nn.Module]:
    from distill.dist import fsdp_units

    return fsdp_units(model)


def _shape(name: str, model: nn.Module, dtype_bytes: int) -> ModelShape:
    params = {id(p): p for p in model.parameters()}
    units = _blocks(model)
    block_sizes = [sum(p.numel() for p in u.parameters()) for u in units]
    cfg = getattr(model, "config", None)
    hidden = int(getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd", 0))
    vocab = int(model.get_output_embeddings().weight.shape[0]) if model.get_output_embeddings() is not None else 0
    total = sum(p.numel() for p in params.values())
    return ModelShape(name, total, sum(block_sizes), max(block_sizes, default=0), hidden, vocab, len(units),
                      dtype_bytes, cfg, trainable=total)


def _meta_model(path: str, what: str) -> nn.Module:
    """The causal LM at `path` built on the meta device from its config: a transformers folder or hub
    id, or a llama2.c `.bin` (its header is the config, as the run's conversion reads it)."""
    if Path(path).is_file() and Path(path).suffix == ".bin":
        import struct

        from transformers import LlamaConfig, LlamaForCausalLM

        with Path(path).open("rb") as f:
            raw = f.read(28)
        if len(raw) < 28:
            raise ConfigError(f"{what}: {path!r} is too short to be a llama2.c checkpoint.")
        dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len = struct.unpack("7i", raw)
        return LlamaForCausalLM(LlamaConfig(vocab_size=abs(vocab), hidden_size=dim, intermediate_size=hidden,
                                            num_hidden_layers=n_layers, num_attention_heads=n_heads,
                                            num_key_value_heads=n_kv, max_position_embeddings=seq_len,
                                            tie_word_embeddings=vocab > 0))
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        mcfg = AutoConfig.from_pretrained(path, local_files_only=Path(path).is_dir())
    except Exception as e:
        raise ConfigError(f"{what}: cannot read the config of {path!r}: {e}") from None
    return AutoModelForCausalLM.from_config(mcfg)


def teacher_shape(cfg) -> ModelShape | None:
    """The teacher's sizes from its config (a transformers folder or hub id, or a llama2.c .bin),
    None for a served teacher."""
    t = cfg.teacher
    if t.url or not t.path:
        return None
    from distill.utils import expand

    with _meta():
        model = _meta_model(expand(t.path), "teacher.path")
    return _shape("teacher", model, DTYPE_BYTES[t.dtype])


def student_shape(cfg, vocab: int | None) -> ModelShape:
    s = cfg.student
    from distill.utils import expand

    with _meta():
        if s.path:
            model = _meta_model(expand(s.path), "student.path")
        else:
            from distill.families.llm.models import build_student

            if vocab is None:
                raise ConfigError("student: the vocabulary size is unknown (no teacher to read it from); "
                                  "give student.path or a teacher.")
            model = build_student(s.arch, vocab, None, None, hidden_size=s.hidden_size, num_layers=s.num_layers,
                                  num_heads=s.num_heads, num_kv_heads=s.num_kv_heads,
                                  intermediate_size=s.intermediate_size, max_positions=max(cfg.data.seq_len, 64) * 2,
                                  tie_embeddings=s.tie_embeddings, pad_vocab_to=s.pad_vocab_to)
    shape = _shape("student", model, DTYPE_BYTES[s.dtype])
    if s.lora is not None:
        if s.lora.quantize is not None:  # of the base, before peft adds the adapter's layers
            shape.weight_bytes = quantized_bytes(model, s.lora.quantize, shape.dtype_bytes)
        shape.trainable = lora_params(model, s.lora)
    return shape


def quantized_bytes(model: nn.Module, quantize: str, dtype_bytes: int) -> float:
    """Bytes of `model`'s weights loaded with bitsandbytes as `student.lora.quantize` says: every
    linear layer but the output layer quantised (4-bit: half a byte per weight and a scale per block
    of 64, an fp32 one for fp4, one byte for nf4's double quantisation plus an fp32 per 256 blocks,
    and the code books of each layer; int8: a byte per weight and an fp32 scale per output row), the rest in the
    student's dtype."""
    head = model.get_output_embeddings()
    seen: set[int] = set()
    quantised = rest = 0.0
    for m in model.modules():
        for p in m.parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            n = p.numel()
            if isinstance(m, nn.Linear) and m is not head and p is m.weight:
                if quantize == "int8":
                    quantised += n + 4 * m.out_features
                elif quantize == "nf4":  # + its 16-value code book, the scales' 256-value one and offset
                    quantised += n / 2 + n / 64 + 4 * -(-n // (64 * 256)) + 4 * (16 + 256 + 1)
                else:
                    quantised += n / 2 + 4 * n / 64 + 4 * 16
            else:
                rest += n * dtype_bytes
    return quantised + rest


def lora_params(model: nn.Module, lora) -> int:
    """Parameters of the adapter `student.lora` adds: the meta-device model wrapped by peft itself
    (`wrap_lora`), so its defaults and matching of target_modules decide, as in the run."""
    from distill.families.llm.lora import adapter_parameters, wrap_lora

    with _meta():
        return adapter_parameters(wrap_lora(model, lora))


def activation_bytes(shape: ModelShape, batch: int, seq: int, lora=None, cache_dir: Path | None = None) -> float:
    """Bytes the student's forward saves for its backward at (batch, seq), measured on the
    architecture at 1 and 2 layers and two lengths (see the module's docstring). With `cache_dir`,
    the measurements are kept per architecture (its config without the layer count, dtype and
    adapter) in `cache_dir/plan_probes.json`, so a recipe run again does not probe again."""
    cfg = shape.config
    if cfg is None:
        raise ConfigError("plan: the student has no transformers config to measure its activations")
    short = [16, 32]

    def at(d: dict[int, float]) -> float:  # per-token cost linear in the length, evaluated at `seq`
        a, b = d[short[0]] / short[0], d[short[1]] / short[1]
        slope = (b - a) / (short[1] - short[0])
        return max(a + slope * (seq - short[0]), 0.0)

    # configs with per-layer settings (`layer_types`: sliding or full attention, linear attention,
    # ...) are probed once per kind of layer, each kind at 1 and 2 layers of that kind
    kinds = _layer_kinds(cfg)
    total, base = 0.0, None
    for kind, count in kinds.items():
        got = _probe(_of_kind(cfg, kind), shape.dtype_bytes, lora, short, cache_dir)
        per_layer = {t: got[(2, t)] - got[(1, t)] for t in short}
        if base is None:
            base = {t: got[(1, t)] - per_layer[t] for t in short}
        total += count * at(per_layer)
    assert base is not None
    return batch * seq * (total * shape.layers / max(sum(kinds.values()), 1) + at(base))


def _per_layer_keys(cfg) -> list[str]:
    """The config's per-layer settings: its lists with one entry per layer (e.g. `layer_types`)."""
    n = getattr(cfg, _layers_key(cfg))
    if not isinstance(n, int) or n < 2:
        return []
    return [k for k, v in cfg.to_dict().items() if isinstance(v, list) and len(v) == n and k != "architectures"]


def _layer_kinds(cfg) -> dict[tuple, int]:
    """How many layers have each combination of the per-layer settings (one kind without any)."""
    keys = _per_layer_keys(cfg)
    if not keys:
        return {(): getattr(cfg, _layers_key(cfg))}
    d = cfg.to_dict()
    kinds: dict[tuple, int] = {}
    for i in range(getattr(cfg, _layers_key(cfg))):
        k = tuple(_hashable(d[key][i]) for key in keys)
        kinds[k] = kinds.get(k, 0) + 1
    return kinds


def _hashable(v):
    return tuple(v) if isinstance(v, list) else v


def _of_kind(cfg, kind: tuple):
    """A copy of `cfg` whose every layer is of `kind` (per-layer settings set to kind's values)."""
    keys = _per_layer_keys(cfg)
    if not keys:
        return cfg
    d = cfg.to_dict()
    n = getattr(cfg, _layers_key(cfg))
    d.update({key: [list(v) if isinstance(v, tuple) else v for v in [val] * n] for key, val in zip(keys, kind)})
    return cfg.__class__.from_dict(d)


def _probe(cfg, dtype_bytes: int, lora, short: list[int], cache_dir: Path | None) -> dict[tuple[int, int], int]:
    """Saved bytes of the architecture at (layers, length) for layers 1, 2 and each short length."""
    import json

    from distill.utils import atomic_write_text, hash_json

    conf = {k: v for k, v in cfg.to_dict().items() if k not in (_layers_key(cfg), "transformers_version")}
    key = hash_json({"config": conf, "dtype_bytes": dtype_bytes, "short": short, "torch": torch.__version__,
                     "lora": lora.model_dump(mode="json") if lora is not None else None})
    store = Path(cache_dir) / "plan_probes.json" if cache_dir is not None else None
    known: dict[str, Any] = {}
    if store is not None and store.is_file():
        try:
            known = json.loads(store.read_text())
        except ValueError:  # a damaged file: probe again and rewrite it
            known = {}
        if key in known:
            return {(int(a), int(b)): int(v) for a, b, v in known[key]}
    got = _measure(cfg, dtype_bytes, lora, short)
    if store is not None:
        known[key] = [[a, b, v] for (a, b), v in got.items()]
        store.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(store, json.dumps(known))
    return got


def _measure(cfg, dtype_bytes: int, lora, short: list[int]) -> dict[tuple[int, int], int]:
    got = {}
    per_layer = _per_layer_keys(cfg)
    for layers in (1, 2):
        d = cfg.to_dict()
        small = cfg.__class__.from_dict({**d, "vocab_size": 256, _layers_key(cfg): layers,
                                         **{k: d[k][:layers] for k in per_layer}})
        from transformers import AutoModelForCausalLM

        with _meta():
            model = AutoModelForCausalLM.from_config(small)
        model = model.to_empty(device="cpu")
        if dtype_bytes != 4:
            model = model.to(torch.bfloat16)
        if lora is not None:  # the frozen base saves only what the adapter's gradients need
            from distill.families.llm.lora import wrap_lora

            model = wrap_lora(model, lora)
        for t in short:
            got[(layers, t)] = _saved_bytes(model, t)
        del model
    return got


def _layers_key(cfg) -> str:
    for k in ("num_hidden_layers", "n_layer", "num_layers"):
        if hasattr(cfg, k):
            return k
    raise ConfigError(f"plan: cannot find the number of layers in the {type(cfg).__name__}")


def _saved_bytes(model: nn.Module, seq: int) -> int:
    from distill.families.llm.models import hidden_states

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(x):
        st = x.untyped_storage()
        if st.data_ptr() not in params:
            seen[st.data_ptr()] = st.nbytes()
        return x

    ids = torch.zeros(1, seq, dtype=torch.long)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "position_ids": torch.arange(seq)[None]}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        hidden_states(model, batch)
    return sum(seen.values())


def _optimizer_bytes(cfg, trainable: int) -> tuple[float, float]:
    """(gradients, optimiser state) bytes of the trainable parameters (fp32)."""
    opt = cfg.train.optimizer
    state = 8 if opt.name in ("adam", "adamw") else (4 if opt.momentum > 0 else 0)
    return 4.0 * trainable, float(state * trainable)


def reads_cache(method, served: bool = False) -> bool:
    """Whether `method` (a recipe's method entry) can take the teacher's top-k from the offline cache
    (or, `served`, from a served teacher) instead of running the teacher; alm reads its token
    log-probs from the aligned cache or a served teacher, unless its hidden-state term needs the
    teacher's forward."""
    from distill.registry import methods

    try:
        b = methods.get(method.name, "llm").builder
    except Exception:
        return False
    if getattr(b, "reads_aligned_cache", False):
        return b.reads_aligned(method.params)
    return bool(getattr(b, "reads_teacher_cache", False))


def loss_kind(cfg, method, source: str = "teacher") -> str | None:
    """What the chunked loss of `method` (a recipe's method entry) computes: a key of LOSS_BLOCKS,
    or None for a method the planner has no measurement of. source: where a method that can read
    them takes the teacher's outputs: `teacher` (its forward in this process), `cache` (the offline
    top-k cache) or `served` (its top-k over HTTP)."""
    from distill.registry import methods

    try:
        params = methods.get(method.name, "llm").validate(dict(method.params or {}), f"methods.{method.name}")
    except Exception:
        return None
    if method.name in ("sft", "redi"):
        return "ce"
    if method.name == "first":
        return "top_k"
    if method.name == "seq_kd":
        return "forward_kl"
    if method.name in CROSS_TOKENIZER_LOSSES:
        return method.name
    if method.name in ("token_kd", "on_policy"):
        if source in ("cache", "served") and reads_cache(method, served=source == "served"):
            return "sparse"
        if params.get("top_k") is not None:
            return "top_k"
        return str(params.get("divergence", "forward_kl"))
    return None


def loss_bytes(cfg, method, s: ModelShape, t: ModelShape | None, tokens: int, source: str = "teacher") -> float:
    """The chunked loss's workspace for one method: LOSS_BLOCKS blocks of (chunk x vocab) fp32,
    the fused path's accumulators of the head's gradient (V x D) and of the hidden states' (tokens x
    D) in fp32."""
    chunk = min(int((method.params or {}).get("chunk_size", 1024)), tokens)
    kind = loss_kind(cfg, method, source)
    blocks = LOSS_BLOCKS.get(kind, DEFAULT_LOSS_BLOCKS) if kind is not None else DEFAULT_LOSS_BLOCKS
    if t is None or kind in STUDENT_ONLY_LOSSES:
        work = blocks * chunk * s.vocab
    elif kind in CROSS_TOKENIZER_LOSSES:
        work = blocks * chunk * max(s.vocab, t.vocab)
    else:
        work = chunk * (s.vocab + t.vocab + (blocks - 2) * min(s.vocab, t.vocab))
    return float(4 * (work + s.vocab * s.hidden + tokens * s.hidden))


def plan(cfg, devices: int = 1) -> tuple[list[Placement], ModelShape, ModelShape | None]:
    """Every placement's estimate for the recipe `cfg` (an LLMRunConfig) on `devices` devices."""
    t = teacher_shape(cfg)
    s = student_shape(cfg, t.vocab if t is not None else None)
    if cfg.teacher.student_base:  # the student's own base, no second copy
        t = ModelShape("teacher", 0, 0, 0, s.hidden, s.vocab, s.layers, s.dtype_bytes)
    d = cfg.data
    rows = max(d.batch_size // max(devices, 1), 1)
    act = activation_bytes(s, rows, d.seq_len, cfg.student.lora, cache_dir=cfg.cache_dir)
    grads, state = _optimizer_bytes(cfg, s.trainable)
    w_s = s.weights
    loss = {src: max(loss_bytes(cfg, m, s, t, rows * d.seq_len, src) for m in cfg.methods)
            for src in ("teacher", "cache", "served")}
    all_read_cache = all(reads_cache(m) for m in cfg.methods)
    def block_tmp(m: ModelShape, cfg_m, n: int) -> float:  # one block's temporaries over n positions:
        inter = int(getattr(cfg_m, "intermediate_size", None) or getattr(cfg_m, "n_inner", None) or 4 * m.hidden)
        return float(n * (3 * inter + 3 * m.hidden) * m.dtype_bytes)  # an MLP's 3 intermediate-wide, 3 hidden-wide

    # the teacher runs after the student's forward (whose activations are then alive): its final
    # hidden states, kept for the loss, and the temporaries of one block while it runs
    tcfg = (t.config if t.config is not None else s.config) if t is not None else None
    hidden_t = 0.0
    if t is not None:
        hidden_t = float(rows * d.seq_len * t.hidden * 4) + block_tmp(t, tcfg, rows * d.seq_len)
    # evaluation (no gradients) at data.eval_batch_size: each model's final hidden states at the
    # counted positions (and their gathered copy), the logits EVAL_CHUNK positions at a time (the
    # student's and their log-softmax; the teacher's, for its top-1), one block's temporaries
    from distill.families.llm.evaluate import eval_chunk

    n_eval = d.eval_batch_size * d.seq_len
    c = min(eval_chunk(s.vocab), n_eval)
    h_eval = 2.0 * n_eval * (s.hidden * s.dtype_bytes + (t.hidden * t.dtype_bytes if t is not None else 0))
    student_eval = 2.0 * c * s.vocab * 4
    c_t = min(c, eval_chunk(t.vocab)) if t is not None else 0
    eval_logits = h_eval + max(block_tmp(s, s.config, n_eval), student_eval,
                               block_tmp(t, tcfg, n_eval) + 4.0 * c_t * t.vocab if t is not None else 0.0)
    eval_served = 2.0 * n_eval * s.hidden * s.dtype_bytes + max(block_tmp(s, s.config, n_eval), student_eval)

    def student_parts(div: int = 1, source: str = "teacher") -> dict[str, float]:
        return {"student weights": w_s / div, "gradients": grads / div, "optimiser state": state / div,
                "activations": act, "loss": loss[source]}

    out = []
    if t is not None:
        w_t = float(t.params * t.dtype_bytes)
        out.append(Placement("colocated", {**student_parts(), "teacher weights": w_t, "teacher forward": hidden_t,
                                           "eval logits": eval_logits},
                             note="both models on every device" + (" (one copy per DDP process)" if devices > 1 else "")))
        out.append(Placement("offloaded", {**student_parts(), "teacher weights": 0.0, "teacher forward": hidden_t,
                                           "eval logits": eval_logits}, host=w_t,
                             note="teacher.device_map: cpu (weights in host memory, slower teacher)",
                             available=devices == 1 and not cfg.teacher.student_base))
        if devices > 1:
            rest = t.params - t.block_params
            w_t_shard = float((t.block_params / devices + rest + 2 * t.largest_block) * t.dtype_bytes)
            if t.block_params == 0:
                w_t_shard = float(t.params * t.dtype_bytes / devices)
            w_s_gather = float(2 * s.largest_block * s.dtype_bytes)
            parts = {**student_parts(devices), "teacher weights": w_t_shard, "teacher forward": hidden_t,
                     "gathered block": w_s_gather, "eval logits": eval_logits}
            quantized = cfg.student.lora is not None and cfg.student.lora.quantize is not None
            out.append(Placement("fsdp", parts, note=f"engine.strategy: fsdp over {devices} devices",
                                 available=not quantized and not cfg.teacher.student_base))
        # teacher.cache_top_k: the teacher writes its top-k for the training set before training
        # (a device's micro-batch of examples, a row each; its log-probs 1024 positions at a time)
        # and stays for the evaluation; the methods that read the cache run no teacher forward while
        # training
        n_build = rows * d.seq_len
        build = hidden_t / max(rows * d.seq_len, 1) * n_build + float(4 * (n_build * t.hidden
                                                                           + 3 * min(1024, n_build) * t.vocab))
        out.append(Placement("cached", {**student_parts(source="cache"), "teacher weights": w_t,
                                        "teacher forward": 0.0 if all_read_cache else hidden_t,
                                        "eval logits": eval_logits, "cache build": build},
                             note="teacher.cache_top_k (the teacher's top-k written once, read while training)",
                             available=any(reads_cache(m) for m in cfg.methods)))
    out.append(Placement("served", {**student_parts(source="served"), "teacher weights": 0.0, "teacher forward": 0.0,
                                    "eval logits": eval_served},
                         note="teacher.url (`distill serve-teacher` elsewhere); the loss reads its top-k or token log-probs",
                         available=not cfg.teacher.student_base and all(reads_cache(m, served=True)
                                                                         for m in cfg.methods)))
    return out, s, t


def current(cfg, devices: int) -> str:
    """The placement the recipe as written asks for."""
    if cfg.teacher.student_base:
        return "colocated"
    if cfg.teacher.url or not cfg.teacher.path:
        return "served"
    if cfg.teacher.device_map is not None:
        return "offloaded"
    if cfg.engine.strategy == "fsdp":
        return "fsdp"
    if cfg.teacher.cache_top_k:
        return "cached"
    return "colocated"


def device_memory(device: str = "auto") -> tuple[float, str]:
    """(bytes, what) of one device: the first CUDA device's memory, else the host's RAM."""
    if device in ("auto", "cuda") and torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        return float(p.total_memory), p.name
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")), "host RAM"


def choose(placements: list[Placement], memory: float) -> Placement | None:
    """The first placement, in the order colocated, fsdp, cached, offloaded, served, whose peak fits."""
    order = ["colocated", "fsdp", "cached", "offloaded", "served"]
    for name in order:
        for p in placements:
            if p.name == name and p.available and p.peak <= memory:
                return p
    return None


def gib(x: float) -> str:
    """A size with its unit: GiB, or MiB below 0.01 GiB."""
    return f"{x / GiB:.2f} GiB" if x >= 0.01 * GiB or x == 0 else f"{x / 2**20:.1f} MiB"


def table(placements: list[Placement], memory: float, what: str, picked: Placement | None, asked: str):
    from rich.table import Table

    cols = [("teacher weights", "teacher"), ("student weights", "student"), ("gradients", "grads"),
            ("optimiser state", "optim"), ("activations", "activ."), ("teacher forward", "t.hidden"),
            ("loss", "loss"), ("gathered block", "gather")]
    big = max(p.peak for p in placements) >= GiB
    unit, scale = ("GiB", GiB) if big else ("MiB", 2 ** 20)
    tab = Table(title=f"estimated peak per device, {unit}; one device: {memory / GiB:.2f} GiB ({what})")
    tab.add_column("placement")
    for _, short in cols:
        tab.add_column(short, justify="right")
    tab.add_column("train", justify="right")
    tab.add_column("eval", justify="right")
    tab.add_column("cache", justify="right")
    tab.add_column("fits")
    for p in placements:
        mark = "n/a" if not p.available else ("picked" if p is picked else "yes") if p.peak <= memory else "no"
        label = p.name + (" *" if p.name == asked else "")
        tab.add_row(label, *[f"{p.parts[k] / scale:.2f}" if k in p.parts else "-" for k, _ in cols],
                    f"{p.train_peak / scale:.2f}", f"{p.eval_peak / scale:.2f}",
                    f"{p.build_peak / scale:.2f}" if "cache build" in p.parts else "-", mark)
    tab.caption = ("* the placement the recipe asks for; train, eval, cache: the peak of each phase (cache: "
                   "writing the teacher cache before training)")
    return tab


def report(cfg, devices: int, placements: list[Placement], s: ModelShape, t: ModelShape | None, memory: float,
           what: str, picked: Placement | None, asked: str) -> dict:
    """The plan as plain data (`distill plan --json`): every size in bytes."""
    def model(m: ModelShape | None) -> dict | None:
        return None if m is None else {"name": m.name, "parameters": m.params, "trained": m.trainable,
                                       "hidden": m.hidden, "vocab": m.vocab, "layers": m.layers,
                                       "dtype_bytes": m.dtype_bytes}

    return {
        "recipe": cfg.name, "devices": devices, "batch_size": cfg.data.batch_size, "seq_len": cfg.data.seq_len,
        "device_memory": memory, "device": what, "asked": asked, "picked": picked.name if picked else None,
        "student": model(s), "teacher": model(t),
        # the teacher is the student's base with the adapter off: no weights of its own (parameters 0)
        "teacher_is_student_base": bool(cfg.teacher.student_base),
        "placements": [{"name": p.name, "available": p.available, "fits": p.available and p.peak <= memory,
                        "note": p.note, "peak": p.peak, "train_peak": p.train_peak, "eval_peak": p.eval_peak,
                        "cache_build_peak": p.build_peak if "cache build" in p.parts else None,
                        "host": p.host, "parts": dict(p.parts)} for p in placements],
    }


def check(cfg, devices: int, log) -> None:
    """Refuse a recipe whose placement is estimated not to fit on its device (`distill run`)."""
    if not getattr(cfg, "memory_check", True):
        return
    try:
        placements, _, _ = plan(cfg, devices)
    except Exception as e:  # an architecture the probe cannot run: say so, never block the run
        log(f"plan: no memory estimate ({type(e).__name__}: {e})")
        return
    memory, what = device_memory(cfg.engine.device)
    asked = current(cfg, devices)
    mine = next((p for p in placements if p.name == asked), None)
    if mine is None or mine.peak <= memory:
        if mine is not None:
            log(f"plan: estimated peak {gib(mine.peak)} per device ({asked}) of {gib(memory)} ({what})")
        return
    better = choose(placements, memory)
    hint = (f" The {better.name} placement is estimated at {gib(better.peak)} ({better.note})."
            if better is not None else " No placement fits; lower data.batch_size or data.seq_len, use a LoRA "
            "student, or a served teacher on another machine.")
    big = max(mine.parts, key=lambda k: mine.parts[k])
    raise ConfigError(f"memory: this recipe is estimated to need {gib(mine.peak)} per device ({asked}; the "
                      f"largest part is the {big}, {gib(mine.parts[big])}), more than the {gib(memory)} of "
                      f"{what}.{hint} `distill plan RECIPE` shows every part; set memory_check: false to run anyway.")


__all__ = ["Placement", "ModelShape", "plan", "choose", "check", "device_memory", "table", "current", "report"]
