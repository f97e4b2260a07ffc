"""Ensembles of same-tokenizer LMs: a model mixed with itself is the model, the mixture is a
distribution, its NLL is at most the weighted mean of the members' (convexity of -log) and at most
each member's NLL - log w_i; bits per byte follow; with Bayes-updated weights a document's NLL is
exactly -log sum_i w_i p_i(document). Tiny local byte-level models."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers")
from llm_helpers import corpus, tiny_lm  # noqa: E402

from distill.families.llm.cross_tokenizer.byte_tokenizer import byte_tokenizer  # noqa: E402
from distill.families.llm.data import IGNORE, LMLoader, model_inputs, rows_of, text_examples  # noqa: E402
from distill.families.llm.ensemble import MixtureLM, ensemble_bits_per_byte, mixture_log_probs  # noqa: E402
from distill.families.llm.evaluate import lm_metrics  # noqa: E402


@pytest.fixture(scope="module")
def setup():
    tok = byte_tokenizer()
    exs = text_examples(corpus(12, seed=3), tok, 64)
    a, b = tiny_lm("llama", len(tok), seed=0).eval(), tiny_lm("llama", len(tok), seed=1).eval()
    batch = next(iter(LMLoader(rows_of(exs, 64, True), len(exs), tok.pad_token_id, packed=True, shuffle=False)))
    return tok, exs, a, b, batch


def _token_nll(logits, batch):
    mask = batch["labels"] != IGNORE
    return -F.log_softmax(logits[mask].float(), -1).gather(-1, batch["labels"][mask][:, None]).squeeze(-1)


@torch.no_grad()
def test_self_ensemble_is_the_model(setup):
    tok, exs, a, _, batch = setup
    x = model_inputs(batch)
    torch.testing.assert_close(MixtureLM([a, a])(**x).logits, F.log_softmax(a(**x).logits.float(), -1), atol=1e-5, rtol=0)
    kw = dict(pad_id=tok.pad_token_id, seq_len=64, batch_size=4)
    single = lm_metrics(a, exs, device="cpu", **kw)["bits_per_byte"]
    assert ensemble_bits_per_byte([a, a, a], exs, **kw)["bits_per_byte"] == pytest.approx(single, abs=1e-5)
    # a zero weight removes a member
    assert ensemble_bits_per_byte([a, tiny_lm("llama", len(tok), seed=7)], exs, weights=[1.0, 0.0],
                                  **kw)["bits_per_byte"] == pytest.approx(single, abs=1e-5)


@torch.no_grad()
def test_mixture_is_a_distribution_and_convex_bound(setup):
    _, _, a, b, batch = setup
    x = model_inputs(batch)
    za, zb = a(**x).logits, b(**x).logits
    for w in ([0.5, 0.5], [0.2, 0.8], [3.0, 1.0]):  # weights are normalised
        lp = mixture_log_probs([za, zb], w)
        torch.testing.assert_close(lp.exp().sum(-1), torch.ones(lp.shape[:-1]), atol=1e-5, rtol=0)
        wn = torch.tensor(w) / sum(w)
        nll_m, nll_a, nll_b = _token_nll(lp, batch), _token_nll(za, batch), _token_nll(zb, batch)
        # -log(sum w_i p_i) <= sum w_i (-log p_i)  (Jensen), token by token
        assert bool((nll_m <= wn[0] * nll_a + wn[1] * nll_b + 1e-5).all())
        # p_mix >= w_i p_i: never more than -log w_i nats worse than any member
        assert bool((nll_m <= nll_a - math.log(wn[0]) + 1e-5).all())
        assert bool((nll_m <= nll_b - math.log(wn[1]) + 1e-5).all())


@torch.no_grad()
def test_bits_per_byte_at_most_mean_of_members(setup):
    tok, exs, a, b, _ = setup
    kw = dict(pad_id=tok.pad_token_id, seq_len=64, batch_size=4)
    ma, mb = lm_metrics(a, exs, device="cpu", **kw), lm_metrics(b, exs, device="cpu", **kw)
    mix = ensemble_bits_per_byte([a, b], exs, **kw)
    assert mix["bytes"] == ma["bytes"] and mix["tokens"] == ma["tokens"]
    assert mix["bits_per_byte"] <= (ma["bits_per_byte"] + mb["bits_per_byte"]) / 2 + 1e-6
    assert mix["bits_per_byte"] <= min(ma["bits_per_byte"], mb["bits_per_byte"]) + math.log2(2) * mix["tokens"] / mix["bytes"] + 1e-6


def test_members_must_share_a_vocabulary(setup):
    tok, _, a, _, batch = setup
    other = tiny_lm("llama", len(tok) + 5, seed=2)
    with pytest.raises(ValueError, match="one tokenizer"):
        MixtureLM([a, other])(**model_inputs(batch))
    with pytest.raises(ValueError, match="weights"):
        mixture_log_probs([torch.zeros(2, 3)] * 2, [1.0, -1.0])
    with pytest.raises(ValueError, match="weights"):
        MixtureLM([a, a], [1.0])
    with pytest.raises(ValueError, match="one tokenizer"):
        MixtureLM([a, other], posterior=True)(**model_inputs(batch))


@torch.no_grad()
def test_posterior_mixture_is_bayesian_model_averaging(setup):
    """With Bayes-updated weights, a document's NLL is -log sum_i w_i p_i(document), exactly, in
    packed rows too (weights restart with each document)."""
    _, _, a, b, batch = setup
    x = model_inputs(batch)
    w = torch.tensor([0.3, 0.7])
    lp_mix = MixtureLM([a, b], w.tolist(), posterior=True)(**x).logits
    torch.testing.assert_close(lp_mix.exp().sum(-1), torch.ones(lp_mix.shape[:-1]), atol=1e-5, rtol=0)
    mask = batch["labels"] != IGNORE
    y = batch["labels"].clamp(min=0)[..., None]
    tok_nll = [-F.log_softmax(z.float(), -1).gather(-1, y).squeeze(-1) for z in (lp_mix, a(**x).logits, b(**x).logits)]
    n_docs = 0
    for r in range(batch["seg"].shape[0]):
        for j in batch["seg"][r].unique().tolist():
            sel = (batch["seg"][r] == j) & mask[r]
            if j == 0 or not bool(sel.any()):
                continue
            mix, na, nb = (float(t[r][sel].sum()) for t in tok_nll)
            bma = -float(torch.logsumexp(torch.tensor([math.log(0.3) - na, math.log(0.7) - nb]), 0))
            assert mix == pytest.approx(bma, abs=1e-3)
            assert mix <= min(na - math.log(0.3), nb - math.log(0.7)) + 1e-3
            n_docs += 1
    assert n_docs >= 2 and int(batch["seg"].max()) >= 2  # packed rows were exercised
    # a model with itself: the posterior never moves
    torch.testing.assert_close(MixtureLM([a, a], posterior=True)(**x).logits, F.log_softmax(a(**x).logits.float(), -1),
                               atol=1e-5, rtol=0)
