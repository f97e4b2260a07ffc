"""Loading teachers and students: a local transformers folder, a hub id (fails offline with a clear
message), a llama2.c checkpoint (converted once into the cache), or a student built from sizes."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill.errors import ConfigError
from distill.losses.lm import LogitMap, head_logits
from distill.utils import hash_json, sha256_file


def _offline_error(what: str, source: str, e: Exception) -> ConfigError:
    return ConfigError(
        f"{what}: {source!r} is not a local folder, and loading it as a Hugging Face hub id failed "
        f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). This machine may be offline: download the "
        "model elsewhere (`huggingface-cli download ID --local-dir DIR`) and give the folder instead.")


def resolve_source(path: str, tokenizer: str | None, cache_dir: Path) -> str:
    """A llama2.c `.bin` becomes a converted folder under the cache (made once); others pass through."""
    p = Path(path)
    if p.is_file() and p.suffix == ".bin":
        from distill.families.llm.convert import convert_llama2c

        if tokenizer is None or not Path(tokenizer).is_file():
            raise ConfigError(f"teacher.tokenizer: a llama2.c checkpoint ({path}) needs its SentencePiece model "
                              "(e.g. tok512.model) in teacher.tokenizer.")
        key = hash_json({"bin": sha256_file(p), "tok": sha256_file(tokenizer)})
        out = cache_dir / "converted" / f"{p.stem}-{key}"
        if not (out / "config.json").is_file():
            convert_llama2c(p, out, tokenizer)
        return str(out)
    return path


def load_tokenizer(source: str, what: str = "tokenizer"):
    from transformers import AutoTokenizer

    local = Path(source).is_dir()
    try:
        tok = AutoTokenizer.from_pretrained(source, local_files_only=local)
    except Exception as e:
        if local:
            raise ConfigError(f"{what}: cannot load a tokenizer from {source!r}: {e}") from None
        raise _offline_error(what, source, e) from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    return tok


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def quantization_config(quantize: str, dtype: str):
    """transformers' `BitsAndBytesConfig` for `student.lora.quantize`: nf4 (with double quantisation of
    the block scales, as QLoRA), fp4, or int8 (LLM.int8); 4-bit layers compute in `dtype`."""
    from transformers import BitsAndBytesConfig

    if quantize == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quantize, bnb_4bit_use_double_quant=quantize == "nf4",
                              bnb_4bit_compute_dtype=DTYPES[dtype])


def is_quantized(model: nn.Module) -> bool:
    """Whether `model` was loaded quantised (bitsandbytes), and so is placed at load and never cast."""
    return bool(getattr(model, "is_quantized", False) or getattr(model, "is_loaded_in_4bit", False)
                or getattr(model, "is_loaded_in_8bit", False))


def _keep_differentiable(model: nn.Module) -> None:
    """bitsandbytes' 4-bit layers, run on a CPU with AVX512-BF16 in eval mode without gradients (an
    evaluation, the teacher view of the same base), repack their weights once into a CPU inference
    layout whose kernel has no backward; a later training step through them then gets silently wrong
    (missing) gradients. A base that trains adapters keeps the differentiable layout."""
    try:
        from bitsandbytes.nn import Linear4bit
    except ImportError:
        return
    for m in model.modules():
        if isinstance(m, Linear4bit) and hasattr(m, "support_avx512bf16_for_cpu"):
            m.support_avx512bf16_for_cpu = False


def load_causal_lm(source: str, what: str = "teacher.path", *, dtype: str = "fp32",
                   device_map: str | dict[str, Any] | None = None, offload_folder: str | None = None,
                   quantize: str | None = None, device: Any = None) -> nn.Module:
    """A transformers causal LM with weights in `dtype` (fp32, bf16, fp16). With `device_map`
    (accelerate big-model loading) the weights are placed, or offloaded to `offload_folder`, as it says.
    With `quantize` (nf4, fp4, int8) the linear layers are quantised by bitsandbytes as they load, onto
    `device` (the embeddings, norms and output layer stay in `dtype`)."""
    from transformers import AutoModelForCausalLM

    local = Path(source).is_dir()
    kw: dict[str, Any] = {"local_files_only": local, "dtype": DTYPES[dtype]}
    if quantize is not None:
        dev = torch.device(device if device is not None else "cpu")
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        kw["quantization_config"] = quantization_config(quantize, dtype)
        kw["device_map"] = {"": str(dev)}
    elif device_map is not None:
        kw["device_map"] = device_map
        if offload_folder is not None:
            kw["offload_folder"] = offload_folder
    try:
        model = AutoModelForCausalLM.from_pretrained(source, **kw)
    except Exception as e:
        if local:
            raise ConfigError(f"{what}: cannot load a causal LM from {source!r}: {e}") from None
        raise _offline_error(what, source, e) from None
    if quantize is not None:
        _keep_differentiable(model)
    return model


def build_student(arch: str, vocab_size: int, bos_id: int | None, eos_id: int | None, *, hidden_size: int,
                  num_layers: int, num_heads: int, num_kv_heads: int | None = None,
                  intermediate_size: int | None = None, max_positions: int = 1024, tie_embeddings: bool = True,
                  pad_vocab_to: int = 1) -> nn.Module:
    """A fresh `llama` or `gpt2` causal LM; its vocabulary is rounded up to a multiple of `pad_vocab_to`."""
    vocab = -(-vocab_size // pad_vocab_to) * pad_vocab_to
    if arch == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden_size, intermediate_size=intermediate_size or 4 * hidden_size,
                          num_hidden_layers=num_layers, num_attention_heads=num_heads,
                          num_key_value_heads=num_kv_heads or num_heads, max_position_embeddings=max_positions,
                          tie_word_embeddings=tie_embeddings, bos_token_id=bos_id, eos_token_id=eos_id,
                          rms_norm_eps=1e-5)
        return LlamaForCausalLM(cfg)
    if arch == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel

        cfg = GPT2Config(vocab_size=vocab, n_embd=hidden_size, n_layer=num_layers, n_head=num_heads,
                         n_inner=intermediate_size, n_positions=max_positions, bos_token_id=bos_id,
                         eos_token_id=eos_id, tie_word_embeddings=tie_embeddings)
        return GPT2LMHeadModel(cfg)
    raise ConfigError(f"student.arch: unknown architecture {arch!r}; allowed: llama, gpt2.")


def count_parameters(model: nn.Module) -> int:
    """Unique parameters (tied embeddings counted once); a 4-bit weight, stored two to a byte,
    counts the weights it holds (its quantisation state's shape)."""
    def n(p) -> int:
        shape = getattr(getattr(p, "quant_state", None), "shape", None)
        return int(torch.Size(shape).numel()) if shape is not None else p.numel()
    return sum(n(p) for p in {id(p): p for p in model.parameters()}.values())


def head_of(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight (V, D), bias or None) of a causal LM's output layer."""
    head = model.get_output_embeddings()
    return head.weight, getattr(head, "bias", None)


def _known_logit_map(model: nn.Module) -> LogitMap:
    """The output transforms transformers' causal LMs apply after the head, read from the config:
    Cohere (`logits * logit_scale`), Granite (`logits / logits_scaling`), Gemma-2/3 and others
    (`final_logit_softcapping`)."""
    cfg = model.config
    scale = 1.0
    ls = getattr(model, "logit_scale", None)  # Cohere keeps config.logit_scale on the model
    if isinstance(ls, (int, float)) and not isinstance(ls, bool):
        scale *= float(ls)
    if getattr(cfg, "logits_scaling", None) not in (None, 1, 1.0):
        scale /= float(cfg.logits_scaling)
    cap = getattr(cfg, "final_logit_softcapping", None)
    return LogitMap(scale=scale, softcap=float(cap) if cap else None)


@torch.no_grad()
def logit_map_of(model: nn.Module) -> LogitMap:
    """The transform from `head(final hidden states)` to `model(...).logits`, checked once per model
    on a short probe: a model whose logits are something else (an output transform not known here)
    is refused rather than distilled on the wrong logits."""
    cached = getattr(model, "_distill_logit_map", None)
    if cached is not None:
        return cached
    f = _known_logit_map(model)
    w, b = head_of(model)
    n = min(8, w.shape[0])
    ids = torch.arange(n, device=w.device)[None]
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "position_ids": torch.arange(n, device=w.device)[None]}
    was = model.training
    model.eval()
    try:
        own = model(**batch).logits.float()                              # (1, n, V)
        ours = head_logits(hidden_states(model, batch), w, b, f).float()  # (1, n, V)
    except Exception as e:
        raise ConfigError(f"{type(model).__name__}: cannot compute its logits from its final hidden states "
                          f"({type(e).__name__}: {e}); the chunked losses need `base_model` + the output layer.") from None
    finally:
        model.train(was)
    err = float((own - ours).abs().max())
    if not err <= 1e-3 * (1.0 + float(own.abs().max())):
        raise ConfigError(f"{type(model).__name__} (model_type {getattr(model.config, 'model_type', '?')!r}): its "
                          f"logits are not its output layer applied to its final hidden states (max difference {err:.3g}"
                          f" after the known transforms {f}); the chunked losses, the teacher cache and FIRST would "
                          "train on other logits than the model's own. This architecture is not supported.")
    model._distill_logit_map = f  # plain attribute: not a parameter, not saved
    return f


def output_head(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None, LogitMap]:
    """(weight (V, D), bias or None, output transform) such that `head_logits(h, w, b, f)` equals the
    model's own logits at final hidden states h."""
    w, b = head_of(model)
    return w, b, logit_map_of(model)


def hidden_states(model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    """Final hidden states (B, T, D) (after the final norm) of a transformers causal LM."""
    from distill.families.llm.data import model_inputs

    return body_of(model)(**model_inputs(batch)).last_hidden_state


def body_of(model: nn.Module) -> nn.Module:
    """The transformer under the LM head (`model.base_model`), also for a peft-wrapped model, whose
    own `base_model` is the tuner around the whole causal LM."""
    get_base = getattr(model, "get_base_model", None)  # peft's PeftModel
    return (get_base() if callable(get_base) else model).base_model
