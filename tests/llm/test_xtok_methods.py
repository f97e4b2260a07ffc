"""Cross-tokenizer losses: ALM is zero for identical models, ULD is the sorted Wasserstein-1, hybrid
is the exact divergence for identical vocabularies, and every method learns on tiny local models
(a BPE teacher, a byte-level or other-BPE student), packed rows included."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers")
from llm_helpers import corpus, tiny_lm  # noqa: E402

from distill.errors import ConfigError  # noqa: E402
from distill.families.llm.cross_tokenizer.byte_tokenizer import byte_tokenizer, train_bpe  # noqa: E402
from distill.families.llm.cross_tokenizer.data import retokenize  # noqa: E402
from distill.families.llm.cross_tokenizer.uld import sorted_wasserstein  # noqa: E402
from distill.families.llm.data import IGNORE, LMLoader, model_inputs, rows_of, text_examples  # noqa: E402
from distill.losses.divergences import divergence  # noqa: E402
from distill.registry import methods  # noqa: E402
from distill.teacher import Teacher  # noqa: E402


@pytest.fixture(scope="module")
def tok_pair(tiny_tok):
    return tiny_tok, byte_tokenizer(), train_bpe(corpus(150, seed=5), 280)


def _batch(tok, texts, seq_len=64, packed=True, src=None):
    exs = text_examples(texts, src or tok, seq_len)
    if src is not None:
        exs = retokenize(exs, src, tok, seq_len)
    return next(iter(LMLoader(rows_of(exs, seq_len, packed), len(exs), tok.pad_token_id, packed=packed, shuffle=False)))


def _method(name, student, teacher_model, t_tok, s_tok, **params):
    m = methods.get(name, "llm").builder(student, Teacher(teacher_model), **params)
    m.pad_id, m.eos_id = s_tok.pad_token_id, s_tok.eos_token_id
    m.set_tokenizers(t_tok, s_tok)
    return m.eval()  # no dropout: exact comparisons (training tests call .train())


def test_sorted_wasserstein_by_hand():
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(5, 7, generator=g), -1)
    q = torch.softmax(torch.randn(5, 11, generator=g), -1)
    got = sorted_wasserstein(p, q).numpy()
    for i in range(5):
        a = np.sort(p[i].numpy())[::-1]
        b = np.sort(q[i].numpy())[::-1]
        a = np.concatenate([a, np.zeros(11 - 7)])
        assert got[i] == pytest.approx(np.abs(a - b).sum(), abs=1e-6)
    assert float(sorted_wasserstein(p, p).abs().max()) < 1e-7


def test_alm_is_zero_for_the_same_model_and_tokenizer(tiny_tok):
    student = tiny_lm("llama", len(tiny_tok), seed=3)
    m = _method("alm", student, copy.deepcopy(student), tiny_tok, tiny_tok, hidden_weight=0.0)
    batch = _batch(tiny_tok, corpus(6))
    terms = m(batch)
    assert float(terms["alm"].detach()) == pytest.approx(0.0, abs=1e-6)
    other = _method("alm", tiny_lm("llama", len(tiny_tok), seed=4), copy.deepcopy(student), tiny_tok, tiny_tok)
    assert float(other(batch)["alm"]) > 1e-4


def _aligned_logits(m, batch):
    """Same tokenizer: every target position is a chunk start; logits of both models there."""
    mask = batch["labels"] != IGNORE
    zs = m.student(**model_inputs(batch)).logits[mask]
    with torch.no_grad():
        zt = m.teacher.module(**model_inputs(batch)).logits[mask]
    return zs, zt


def test_uld_method_equals_the_formula_when_tokenizers_agree(tiny_tok):
    V = len(tiny_tok)
    m = _method("uld", tiny_lm("gpt2", V, seed=1), tiny_lm("llama", V, seed=2), tiny_tok, tiny_tok, ce_weight=0.0)
    batch = _batch(tiny_tok, corpus(5, seed=1))
    zs, zt = _aligned_logits(m, batch)
    want = sorted_wasserstein(zs.softmax(-1), zt.softmax(-1)).sum() / batch["norm"]
    assert float(m(batch)["uld"]) == pytest.approx(float(want), rel=1e-5)


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd"])
def test_hybrid_is_the_exact_divergence_for_identical_vocabularies(tiny_tok, kind):
    V = len(tiny_tok)
    m = _method("hybrid", tiny_lm("gpt2", V, seed=1), tiny_lm("llama", V, seed=2), tiny_tok, tiny_tok,
                divergence=kind, ce_weight=0.0)
    assert m.t_shared.numel() == V  # every token shared
    batch = _batch(tiny_tok, corpus(5, seed=2))
    zs, zt = _aligned_logits(m, batch)
    want = divergence(zs, zt, kind, reduction="sum") / batch["norm"]
    assert float(m(batch)["kd"]) == pytest.approx(float(want), rel=1e-5)


def test_pairing_of_packed_rows_matches_one_by_one(tok_pair):
    t_tok, b_tok, _ = tok_pair
    t_model, s_model = tiny_lm("llama", len(t_tok), seed=1), tiny_lm("gpt2", len(b_tok), seed=2)
    texts = corpus(4, seed=7)
    m = _method("alm", s_model, t_model, t_tok, b_tok)
    packed = float(m(_batch(b_tok, texts, 200, True, src=t_tok))["alm"])
    single = _batch(b_tok, texts, 200, False, src=t_tok)
    assert float(m(single)["alm"]) == pytest.approx(packed, rel=1e-4)


def test_unalignable_pair_is_a_config_error(tiny_tok):
    bad = byte_tokenizer()
    bad.backend_tokenizer.normalizer = __import__("tokenizers").normalizers.Lowercase()
    with pytest.raises(ConfigError, match="cannot align"):
        _method("alm", tiny_lm("gpt2", len(bad)), tiny_lm("llama", len(tiny_tok)), tiny_tok, bad)


CASES = [("alm", {}, "byte"), ("alm", {"ce_weight": 0.5, "hidden_weight": 0.5}, "bpe"),
         ("uld", {}, "byte"), ("hybrid", {}, "bpe"), ("hybrid", {"divergence": "jsd"}, "byte")]


@pytest.mark.parametrize("name,params,student", CASES, ids=[f"{n}-{s}-{i}" for i, (n, _, s) in enumerate(CASES)])
def test_methods_learn_on_tiny_models(tok_pair, name, params, student):
    t_tok, b_tok, bpe = tok_pair
    s_tok = b_tok if student == "byte" else bpe
    torch.manual_seed(0)
    teacher = tiny_lm("llama", len(t_tok), hidden=24, seed=1)
    with torch.no_grad():
        teacher.lm_head.weight.mul_(6.0)  # peaked: something to learn
    m = _method(name, tiny_lm("gpt2", len(s_tok), seed=0), teacher, t_tok, s_tok, **params)
    batch = _batch(s_tok, corpus(6, seed=11), 128, True, src=t_tok)
    m.train()
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    losses = []
    for _ in range(20):
        terms = m(batch)
        assert all(torch.isfinite(v) for v in terms.values()), terms
        loss = sum(m.weights.get(k, 1.0) * v for k, v in terms.items())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < 0.8 * losses[0], losses


def test_same_tokenizer_methods_refuse_a_student_tokenizer():
    from distill.config import load_config

    recipe = {"family": "llm", "teacher": {"path": "x"}, "student": {"tokenizer": "byte"},
              "methods": [{"name": "sft"}, {"name": "alm"}, {"name": "token_kd"}]}
    with pytest.raises(ConfigError, match="cross-tokenizer method"):
        load_config(recipe, [])
    recipe["methods"] = recipe["methods"][:2]
    assert load_config(recipe, []).student.tokenizer == "byte"
