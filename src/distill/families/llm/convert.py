"""A llama2.c checkpoint as a transformers `LlamaForCausalLM` folder (config.json,
model.safetensors, tokenizer files); the CLI's `distill convert llama2c` calls it.

llama2.c's format: a header of 7 int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads,
vocab_size, seq_len; a negative vocab_size means the classifier is not tied to the embedding),
then float32 arrays in this order: token embedding (V, D), attention RMSNorm (L, D), wq (L, D, D),
wk (L, KV, D), wv (L, KV, D), wo (L, D, D), FFN RMSNorm (L, D), w1 (L, H, D), w2 (L, D, H),
w3 (L, H, D), final RMSNorm (D), the RoPE tables (seq_len, head_dim/2) twice (unused here), and
the classifier (V, D) when untied. Weights are stored (out_features, in_features).

llama2.c rotates interleaved pairs (x0, x1), (x2, x3), ...; transformers' Llama rotates the two
halves of each head. The rows of wq and wk are permuted per head so both give the same output.
"""
from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path


def _permute_rotary(w, n_heads: int):
    """(n_heads * head_dim, D) rows from interleaved-pair to half-split rotary layout."""
    out_dim, in_dim = w.shape
    return w.view(n_heads, out_dim // n_heads // 2, 2, in_dim).transpose(1, 2).reshape(out_dim, in_dim)


def read_llama2c(path: str | Path):
    """(header dict, state dict in transformers' LlamaForCausalLM names) of a llama2.c checkpoint."""
    import numpy as np
    import torch

    raw = Path(path).read_bytes()
    if len(raw) < 28:
        raise ValueError(f"{path}: too short to be a llama2.c checkpoint")
    dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len = struct.unpack("7i", raw[:28])
    tied = vocab > 0
    vocab = abs(vocab)
    head = dim // n_heads
    kv_dim = n_kv * head
    data = torch.from_numpy(np.frombuffer(raw, dtype=np.float32, offset=28).copy())
    pos = 0

    def take(*shape):
        nonlocal pos
        n = int(np.prod(shape))
        if pos + n > data.numel():
            raise ValueError(f"{path}: file ends early; header {dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len} "
                             "does not match its size (is it a llama2.c version-0 checkpoint?)")
        t = data[pos:pos + n].view(*shape)
        pos += n
        return t

    emb = take(vocab, dim)
    att_norm = take(n_layers, dim)
    wq, wk, wv = take(n_layers, dim, dim), take(n_layers, kv_dim, dim), take(n_layers, kv_dim, dim)
    wo = take(n_layers, dim, dim)
    ffn_norm = take(n_layers, dim)
    w1, w2, w3 = take(n_layers, hidden, dim), take(n_layers, dim, hidden), take(n_layers, hidden, dim)
    final_norm = take(dim)
    take(seq_len, head // 2)
    take(seq_len, head // 2)  # RoPE cos/sin tables: recomputed by transformers
    lm_head = emb if tied else take(vocab, dim)

    sd = {"model.embed_tokens.weight": emb, "model.norm.weight": final_norm, "lm_head.weight": lm_head}
    for i in range(n_layers):
        p = f"model.layers.{i}."
        sd[p + "input_layernorm.weight"] = att_norm[i]
        sd[p + "post_attention_layernorm.weight"] = ffn_norm[i]
        sd[p + "self_attn.q_proj.weight"] = _permute_rotary(wq[i], n_heads)
        sd[p + "self_attn.k_proj.weight"] = _permute_rotary(wk[i], n_kv)
        sd[p + "self_attn.v_proj.weight"] = wv[i]
        sd[p + "self_attn.o_proj.weight"] = wo[i]
        sd[p + "mlp.gate_proj.weight"] = w1[i]
        sd[p + "mlp.down_proj.weight"] = w2[i]
        sd[p + "mlp.up_proj.weight"] = w3[i]
    header = {"dim": dim, "hidden_dim": hidden, "n_layers": n_layers, "n_heads": n_heads, "n_kv_heads": n_kv,
              "vocab_size": vocab, "seq_len": seq_len, "tied": tied}
    return header, {k: v.clone().contiguous() for k, v in sd.items()}


def convert_llama2c(checkpoint: str | Path, out_dir: str | Path, tokenizer: str | Path | None = None):
    """Write a transformers LlamaForCausalLM folder (and the tokenizer, if given). Returns the model."""
    from transformers import LlamaConfig, LlamaForCausalLM

    h, sd = read_llama2c(checkpoint)
    config = LlamaConfig(
        vocab_size=h["vocab_size"], hidden_size=h["dim"], intermediate_size=h["hidden_dim"],
        num_hidden_layers=h["n_layers"], num_attention_heads=h["n_heads"], num_key_value_heads=h["n_kv_heads"],
        max_position_embeddings=h["seq_len"], rms_norm_eps=1e-5, rope_theta=10000.0,
        tie_word_embeddings=h["tied"], bos_token_id=1, eos_token_id=2, pad_token_id=None,
    )
    model = LlamaForCausalLM(config)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [m for m in missing if not (h["tied"] and m == "lm_head.weight")]
    if missing or unexpected:
        raise ValueError(f"conversion left weights unset: missing={missing} unexpected={unexpected}")
    model.eval()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    if tokenizer is not None:
        save_sentencepiece_tokenizer(tokenizer, out)
    (out / "distill_source.json").write_text(json.dumps({"format": "llama2c", "source": str(checkpoint),
                                                         "header": h}, indent=2))
    return model


def save_sentencepiece_tokenizer(model_file: str | Path, out_dir: str | Path) -> None:
    """Save a SentencePiece model as a transformers LlamaTokenizer in `out_dir`, with the Llama
    convention: `tok(text)` starts with BOS and adds no EOS (the library itself always passes
    `add_special_tokens=False` and places BOS/EOS explicitly)."""
    import tempfile

    from transformers import LlamaTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(model_file, Path(tmp) / "tokenizer.model")
        # explicit flags: without them transformers >= 5 builds the tokenizer with no BOS template
        tok = LlamaTokenizer.from_pretrained(tmp, add_bos_token=True, add_eos_token=False)
    tok.save_pretrained(out_dir)


