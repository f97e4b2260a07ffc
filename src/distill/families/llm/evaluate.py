"""Held-out evaluation of a causal LM: loss (nats/token), perplexity, bits per byte (comparable
across tokenizers: total nats / ln 2 / UTF-8 bytes of the target text), top-1 agreement with the
teacher, next-token accuracy and expected calibration error (ECE) of the top-1 prediction."""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from distill.errors import ConfigError
from distill.families.llm.data import IGNORE, Example, collate, model_inputs, packing_supported, rows_of


def eval_chunk(vocab: int) -> int:
    """Positions whose logits exist at once in the held-out metrics: 2048, fewer for vocabularies
    over 32,768 (a block stays within 2^26 values, 256 MiB of fp32), at least 256."""
    return max(256, min(2048, (1 << 26) // max(vocab, 1)))


def _logit_rows(model: nn.Module, batch: dict[str, torch.Tensor], mask: torch.Tensor):
    """(N, f) for the N counted positions of `batch`: f(i, j) is the fp32 logits (j - i, V) of
    positions i..j, computed then from the final hidden states and the output layer (only a chunk's
    logits ever exist); a module without that structure (e.g. a mixture) gives its own logits."""
    from distill.families.llm.models import hidden_states, output_head
    from distill.losses.lm import head_logits

    try:
        w, bias, f = output_head(model)
    except (AttributeError, TypeError, ConfigError):
        logits = model(**model_inputs(batch)).logits[mask]
        return logits.shape[0], lambda i, j: logits[i:j].float()
    h = hidden_states(model, batch)
    h = h[mask.to(h.device)]  # (N, D); a device-mapped model ends where its last layer is
    return h.shape[0], lambda i, j: head_logits(h[i:j].to(w.device), w, bias, f).float().to(mask.device)


def _vocab(model: nn.Module, logits, n: int) -> int:
    head = model.get_output_embeddings() if callable(getattr(model, "get_output_embeddings", None)) else None
    if head is not None:
        return int(head.weight.shape[0])
    return int(logits(0, 1).shape[-1]) if n else 1


@torch.no_grad()
def lm_metrics(model: nn.Module, examples: Sequence[Example], *, pad_id: int, batch_size: int, seq_len: int,
               device: torch.device | str, teacher: nn.Module | None = None, ece_bins: int = 15,
               chunk: int | None = None, teacher_top1: Callable[[dict[str, torch.Tensor]], torch.Tensor] | None = None
               ) -> dict[str, Any]:
    """`teacher` (a causal LM) or `teacher_top1` (batch -> the teacher's top-1 token at each counted
    position, e.g. from a served teacher) adds `teacher_agreement`. `chunk`: positions whose logits
    exist at once (default `eval_chunk` of the model's vocabulary)."""
    was = model.training
    model.eval()
    nats = 0.0
    tokens = 0
    n_bytes = 0
    agree = 0
    correct = 0
    conf_sum = torch.zeros(ece_bins, dtype=torch.float64)
    acc_sum = torch.zeros(ece_bins, dtype=torch.float64)
    cnt = torch.zeros(ece_bins, dtype=torch.float64)
    packed = packing_supported(model, teacher)  # flash attention ignores the packed rows' mask
    rows = rows_of(examples, seq_len, packed=packed)
    for i in range(0, len(rows), batch_size):
        b = {k: v.to(device) for k, v in collate(rows[i:i + batch_size], pad_id, packed=packed).items()}
        mask = b["labels"] != IGNORE
        n, logits = _logit_rows(model, b, mask)  # the (N, V) logits, `chunk` positions at a time
        y = b["labels"][mask]
        if chunk is None:
            chunk = eval_chunk(_vocab(model, logits, n))
        if teacher is not None:
            n_t, t_logits = _logit_rows(teacher, b, mask)
            c_t = min(chunk, eval_chunk(_vocab(teacher, t_logits, n_t)))
            t_top = torch.cat([t_logits(j, min(j + c_t, n_t)).argmax(-1) for j in range(0, n_t, c_t)]) \
                if n_t else y.new_zeros(0)
        else:
            t_top = teacher_top1(b) if teacher_top1 is not None else None
        for j in range(0, y.numel(), chunk):
            lp = F.log_softmax(logits(j, min(j + chunk, n)), -1)
            yj = y[j:j + chunk]
            nats += float(-lp.gather(-1, yj[:, None]).sum())
            conf, pred = lp.max(-1)
            hit = (pred == yj)
            correct += int(hit.sum())
            if t_top is not None:
                agree += int((pred == t_top[j:j + chunk]).sum())
            conf = conf.exp().double().cpu()
            idx = (conf * ece_bins).long().clamp(max=ece_bins - 1)
            cnt += torch.bincount(idx, minlength=ece_bins).double()
            conf_sum += torch.bincount(idx, weights=conf, minlength=ece_bins)
            acc_sum += torch.bincount(idx, weights=hit.double().cpu(), minlength=ece_bins)
        tokens += int(y.numel())
        n_bytes += int(b["n_bytes"])
    model.train(was)
    loss = nats / max(tokens, 1)
    out = {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "bits_per_byte": nats / math.log(2) / max(n_bytes, 1),
           "token_accuracy": correct / max(tokens, 1), "ece": float((conf_sum - acc_sum).abs().sum() / max(tokens, 1)),
           "tokens": tokens, "bytes": n_bytes}
    if teacher is not None or teacher_top1 is not None:
        out["teacher_agreement"] = agree / max(tokens, 1)
    return out


@torch.no_grad()
def generate_text(model: nn.Module, tokenizer, prompt: str, *, max_new_tokens: int, device, greedy: bool = True,
                  seed: int = 0) -> str:
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if tokenizer.bos_token_id is not None:
        ids = [tokenizer.bos_token_id] + ids
    x = torch.tensor([ids], device=device)
    torch.manual_seed(seed)
    kw: dict[str, Any] = {"do_sample": not greedy, "max_new_tokens": max_new_tokens,
                          "pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id}
    if not greedy:
        kw.update(temperature=1.0, top_k=0, top_p=1.0)
    was = model.training
    model.eval()
    out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), **kw)
    model.train(was)
    return tokenizer.decode(out[0], skip_special_tokens=True)
