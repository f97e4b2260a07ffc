"""Held-out metrics against their definitions computed from the models' own full logits, and the
evaluation's memory: no vocabulary-sized tensor of more than `chunk` positions."""
from __future__ import annotations

import math

import pytest

pytest.importorskip("transformers")
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from llm_helpers import corpus, tiny_lm  # noqa: E402
from test_xtok_prompts_memory import VocabRows  # noqa: E402

from distill.families.llm.cross_tokenizer.byte_tokenizer import byte_tokenizer  # noqa: E402
from distill.families.llm.data import IGNORE, collate, model_inputs, rows_of, text_examples  # noqa: E402
from distill.families.llm.evaluate import lm_metrics  # noqa: E402


@torch.no_grad()
def test_metrics_equal_their_definitions_and_build_logits_a_chunk_at_a_time():
    tok = byte_tokenizer()
    exs = text_examples(corpus(10, seed=4), tok, 64)
    student, teacher = tiny_lm("llama", len(tok), seed=0).eval(), tiny_lm("gpt2", len(tok), seed=1).eval()
    with VocabRows({len(tok)}) as probe:
        got = lm_metrics(student, exs, pad_id=tok.pad_token_id, batch_size=4, seq_len=64, device="cpu",
                         teacher=teacher, chunk=16)
    assert probe.most == 16
    # the definitions, from each model's own (B, T, V) logits over the same rows
    rows = rows_of(exs, 64, packed=True)
    nll, hits, agree, conf, n_bytes = [], [], [], [], 0
    for i in range(0, len(rows), 4):
        b = collate(rows[i:i + 4], tok.pad_token_id, packed=True)
        m = b["labels"] != IGNORE
        lp = F.log_softmax(student(**model_inputs(b)).logits[m].double(), -1)
        y = b["labels"][m]
        nll.append(-lp.gather(-1, y[:, None]).squeeze(-1))
        hits.append(lp.argmax(-1) == y)
        agree.append(lp.argmax(-1) == teacher(**model_inputs(b)).logits[m].argmax(-1))
        conf.append(lp.max(-1).values.exp())
        n_bytes += int(b["n_bytes"])
    nll, hits, agree, conf = (torch.cat(x) for x in (nll, hits, agree, conf))
    assert got["tokens"] == nll.numel() and got["bytes"] == n_bytes
    assert got["loss"] == pytest.approx(float(nll.mean()), rel=1e-5)
    assert got["bits_per_byte"] == pytest.approx(float(nll.sum()) / math.log(2) / n_bytes, rel=1e-5)
    assert got["token_accuracy"] == pytest.approx(float(hits.double().mean()))
    assert got["teacher_agreement"] == pytest.approx(float(agree.double().mean()))
    bins = (conf * 15).long().clamp(max=14)
    ece = sum(abs(float(conf[bins == k].sum()) - float(hits[bins == k].sum())) for k in range(15)) / nll.numel()
    assert got["ece"] == pytest.approx(ece, abs=1e-6)


@torch.no_grad()
def test_the_default_chunk_shrinks_with_the_vocabulary():
    """Past a 32,768-token vocabulary fewer positions' logits exist at once (a block of 2^26 values)."""
    from distill.families.llm.data import Example
    from distill.families.llm.evaluate import eval_chunk

    assert eval_chunk(32768) == 2048 and eval_chunk(65536) == 1024 and eval_chunk(128256) == 523
    assert eval_chunk(1 << 20) == 256
    V = 65536
    model = tiny_lm("llama", V, hidden=8, seed=0).eval()
    g = torch.Generator().manual_seed(0)
    exs = [Example(torch.randint(3, V, (100,), generator=g).tolist(), start=1, prompt_len=1, n_bytes=300)
           for _ in range(16)]
    with VocabRows({V}) as probe:
        got = lm_metrics(model, exs, pad_id=0, batch_size=16, seq_len=128, device="cpu")
    assert got["tokens"] > 1024 and probe.most == 1024
