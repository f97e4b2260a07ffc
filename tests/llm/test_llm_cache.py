"""The offline LM teacher cache: cached loss == in-process top-k loss, k = V == dense, refusals."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("transformers")
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from llm_helpers import cache_run_recipe, cached_loss, teacher_and_text, tiny_lm  # noqa: E402

from distill.errors import CacheMismatchError  # noqa: E402
from distill.families.llm.cache import LMTeacherCache  # noqa: E402
from distill.families.llm.data import IGNORE  # noqa: E402
from distill.families.llm.models import head_of, hidden_states  # noqa: E402
from distill.families.llm.token_kd import TokenKD  # noqa: E402
from distill.losses.divergences import sparse_divergence  # noqa: E402
from distill.losses.lm import hidden_divergence  # noqa: E402
from distill.teacher import Teacher  # noqa: E402

T = 2.0


@pytest.mark.parametrize("kind", ["forward_kl", "jsd", "reverse_kl"])
def test_cached_loss_equals_in_process_top_k(tmp_path, cache_setup, tiny_tok, kind):
    teacher, student, exs, batch = cache_setup
    cache = LMTeacherCache.build(tmp_path / "c", teacher, tiny_tok, exs, temperature=T, k=8, seq_len=32, batch_size=4,
                                 progress=True)
    assert cache.meta["tokens"] == int((batch["labels"] != IGNORE).sum())
    # in process, on the packed batch: the teacher's top-k log-probs and exact tail, then sparse_divergence
    mask = batch["labels"] != IGNORE
    with torch.no_grad():
        lp_t = F.log_softmax(teacher.module(**{k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}
                                            ).logits[mask].float() / T, -1)
    top = lp_t.topk(8, -1)
    tail = lp_t.scatter(-1, top.indices, float("-inf")).logsumexp(-1)
    z_s = student(**{k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}).logits[mask]
    got = cached_loss(cache, student, batch, kind)
    ref = sparse_divergence(z_s, top.indices, top.values.half().float(), kind, temperature=T, teacher_log_tail=tail,
                            reduction="sum")
    assert torch.allclose(got, ref, rtol=1e-5, atol=1e-6), (kind, got, ref)  # same fp16 log-probs: equal
    # against fp32 log-probs: off by the fp16 rounding only
    ref32 = sparse_divergence(z_s, top.indices, top.values, kind, temperature=T, teacher_log_tail=tail, reduction="sum")
    assert got > 0.05 * mask.sum() and torch.allclose(got, ref32, rtol=1e-3), (kind, got, ref32)
    # gradients agree too
    student.zero_grad()
    cached_loss(cache, student, batch, kind).backward()
    g_cached = student.get_output_embeddings().weight.grad.clone()
    student.zero_grad()
    sparse_divergence(student(**{k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}).logits[mask],
                      top.indices, top.values.half().float(), kind, temperature=T, teacher_log_tail=tail,
                      reduction="sum").backward()
    assert torch.allclose(g_cached, student.get_output_embeddings().weight.grad, rtol=1e-4, atol=1e-6)
    student.zero_grad()


def test_k_equal_vocab_is_the_dense_loss(tmp_path, cache_setup, tiny_tok):
    teacher, student, exs, batch = cache_setup
    V = head_of(teacher.module)[0].shape[0]
    cache = LMTeacherCache.build(tmp_path / "c", teacher, tiny_tok, exs, temperature=T, k=V, seq_len=32)
    mask = batch["labels"] != IGNORE
    with torch.no_grad():
        ws, bs = head_of(student)
        wt, bt = head_of(teacher.module)
        dense = hidden_divergence(hidden_states(student, batch), ws, hidden_states(teacher.module, batch), wt,
                                  "forward_kl", student_bias=bs, teacher_bias=bt, temperature=T, mask=mask)
        got = cached_loss(cache, student, batch)
    assert dense > 0.5 * mask.sum() and torch.allclose(got, dense, rtol=1e-3), (got, dense)  # fp16 rounding only
    assert cache.bytes_per_token() > V * 6  # int32 + fp16 per entry, plus the tail


def test_token_kd_reads_the_cache_not_the_teacher(tmp_path, cache_setup, tiny_tok):
    teacher, student, exs, batch = cache_setup
    m = TokenKD(student, teacher, temperature=T)
    m.cache = LMTeacherCache.build(tmp_path / "c", teacher, tiny_tok, exs, temperature=T, k=16, seq_len=32)
    m.teacher_hidden = lambda b: (_ for _ in ()).throw(AssertionError("the teacher ran"))
    batch = {**batch, "norm": (batch["labels"] != IGNORE).sum().float()}
    kd = m(batch)["kd"]
    kd.backward()
    assert torch.isfinite(kd) and kd > 0
    ws = student.get_output_embeddings().weight
    assert ws.grad is not None and ws.grad.abs().sum() > 0
    student.zero_grad()


def test_mismatch_and_corruption_are_refused(tmp_path, cache_setup, tiny_tok):
    teacher, student, exs, _ = cache_setup
    folder = tmp_path / "c"
    LMTeacherCache.build(folder, teacher, tiny_tok, exs, temperature=T, k=8, seq_len=32)
    ok = dict(temperature=T, k=8, seq_len=32)
    assert LMTeacherCache.load_or_build(folder, teacher, tiny_tok, exs, **ok).meta["k"] == 8

    class OtherTok:  # same ids, one token renamed
        def __init__(self, tok):
            self.tok = tok
            self.bos_token_id, self.eos_token_id, self.pad_token_id = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id

        def get_vocab(self):
            v = dict(self.tok.get_vocab())
            k = next(iter(v))
            v["renamed"] = v.pop(k)
            return v

    other_teacher = Teacher(tiny_lm("llama", len(tiny_tok), hidden=24, seed=4))
    cases = [("teacher", dict(teacher=other_teacher)), ("tokenizer", dict(tok=OtherTok(tiny_tok))),
             ("temperature", dict(temperature=1.0)), ("k", dict(k=4)), ("data", dict(examples=exs[:-1])),
             ("seq_len", dict(seq_len=64))]
    for field, change in cases:
        args = {"teacher": teacher, "tok": tiny_tok, "examples": exs, **ok, **change}
        with pytest.raises(CacheMismatchError, match=rf"\n  {field}: cache has"):
            LMTeacherCache.load_or_build(folder, args.pop("teacher"), args.pop("tok"), args.pop("examples"), **args)

    f = folder / LMTeacherCache.FILE
    raw = bytearray(f.read_bytes())
    raw[-3] ^= 0xFF
    f.write_bytes(bytes(raw))
    with pytest.raises(CacheMismatchError, match="checksum"):
        LMTeacherCache.load_or_build(folder, teacher, tiny_tok, exs, **ok)
    (folder / LMTeacherCache.META).write_text("{not json")
    with pytest.raises(CacheMismatchError, match="corrupt"):
        LMTeacherCache.load_or_build(folder, teacher, tiny_tok, exs, **ok)


def test_run_with_cache_top_k(tmp_path, tiny_tok):
    import distill

    tdir, text = teacher_and_text(tmp_path, tiny_tok)
    recipe = cache_run_recipe(tmp_path, tdir, text, cache_top_k=16)
    lines: list[str] = []
    s = distill.run(recipe, log=lines.append)
    assert s["students"]["token_kd"]["bits_per_byte"] > 0
    metas = list(Path(tmp_path / "cache" / "llm_teacher_outputs").glob("*/meta.json"))
    assert len(metas) == 1
    meta = json.loads(metas[0].read_text())
    assert meta["k"] == 16 and meta["temperature"] == 2.0 and meta["tokens"] > 0
    assert any("bytes/token" in line for line in lines)


def test_token_kd_top_k_is_refused_with_cached_or_served_targets(tmp_path, cache_setup, tiny_tok):
    """top_k (union of both top-k + tail) cannot be honoured from the teacher's stored top-k: an
    error, not a silently different loss; before the cache is built, and at attachment."""
    from types import SimpleNamespace

    from distill.errors import ConfigError
    from distill.families.llm.cache import attach_cache

    teacher, student, exs, _ = cache_setup
    m = TokenKD(student, teacher, temperature=T, top_k=4)
    cfg = SimpleNamespace(teacher=SimpleNamespace(cache_top_k=8), cache_dir=str(tmp_path), data=SimpleNamespace(seq_len=32))
    with pytest.raises(ConfigError, match="top_k"):
        attach_cache(m, cfg, teacher, tiny_tok, exs, "cpu", print)
    assert not (tmp_path / "llm_teacher_outputs").exists()  # refused before any teacher pass
    cache = LMTeacherCache.build(tmp_path / "c", teacher, tiny_tok, exs, temperature=T, k=8, seq_len=32)
    with pytest.raises(ConfigError, match="top_k"):
        m.cache = cache
    TokenKD(student, teacher, temperature=T).cache = cache  # without top_k: fine


def test_head_topk_is_the_top_k_of_the_full_log_softmax_one_chunk_at_a_time():
    """head_topk against the definition (log_softmax of the full (N, V) logits at temperature T,
    then top-k, tail = log(1 - sum of the top-k probabilities)), with an output transform, for a
    chunk that does not divide N; and no vocabulary-sized tensor has more than chunk_size rows."""
    from test_xtok_prompts_memory import VocabRows

    from distill.losses.lm import LogitMap, head_topk

    g = torch.Generator().manual_seed(0)
    h, w, b = torch.randn(37, 12, generator=g), torch.randn(53, 12, generator=g), torch.randn(53, generator=g)
    f = LogitMap(scale=0.7, softcap=5.0)
    with VocabRows({53}) as probe:
        ids, lps, tail = head_topk(h, w, b, f, k=6, temperature=1.5, chunk_size=8)
    assert probe.most == 8
    z = 5.0 * torch.tanh((h @ w.T + b) * 0.7 / 5.0)
    ref = torch.log_softmax(z.double() / 1.5, -1)
    top = ref.topk(6, -1)
    assert torch.equal(ids, top.indices)
    assert torch.allclose(lps.double(), top.values, atol=1e-6)
    assert torch.allclose(tail.double(), torch.log1p(-top.values.exp().sum(-1)), atol=1e-5)


def test_served_top_k_builds_log_probs_for_1024_positions_at_a_time():
    """What `distill serve-teacher` answers with for a transformers LM (a batch of 1280 positions)
    never holds the batch's (B, T, V) logits, and equals the top-k of the model's own logits
    (distill.serve's default, from the full logits) to fp32 rounding."""
    from test_xtok_prompts_memory import VocabRows
    from transformers import GPT2Config, GPT2LMHeadModel

    from distill.families.llm.served import head_topk_logprobs as topk_logprobs
    from distill.serve import topk_logprobs as full_topk

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=32, n_embd=16, n_layer=1, n_head=2)).eval()
    ids = torch.randint(0, 50, (40, 32))
    mask = torch.ones_like(ids)
    mask[3, 20:] = 0
    with VocabRows({50}) as probe:
        out, tail = topk_logprobs(Teacher(model), ids, mask, k=5, temperature=2.0, with_tail=True)
    assert probe.most == 1024
    with torch.no_grad():
        ref = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.double() / 2.0, -1).topk(5, -1)
    assert torch.equal(out.indices, ref.indices) and out.indices.shape == (40, 32, 5)
    assert torch.allclose(out.logprobs.double(), ref.values, atol=1e-5) and tail.shape == (40, 32)
    full, full_tail = full_topk(Teacher(model), ids, mask, k=5, temperature=2.0, with_tail=True)
    assert torch.equal(out.indices, full.indices) and torch.allclose(tail, full_tail, atol=1e-5)
