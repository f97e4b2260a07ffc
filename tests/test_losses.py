import math

import pytest
import torch
import torch.nn.functional as F

from distill.losses import DIVERGENCES, divergence, forward_kl, generalized_jsd, reverse_kl, sparse_divergence
from distill.losses.divergences import divergence_from_logprobs


def logits(*shape, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * scale


@pytest.mark.parametrize("T", [1.0, 2.0, 4.0])
def test_forward_kl_matches_torch_kl_div(T):
    s, t = logits(6, 10, seed=1), logits(6, 10, seed=2)
    ours = forward_kl(s, t, temperature=T)
    ref = F.kl_div(F.log_softmax(s / T, -1), F.log_softmax(t / T, -1), log_target=True, reduction="batchmean")
    assert torch.allclose(ours, ref, atol=1e-6)


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_divergence_of_identical_distributions_is_zero(kind):
    t = logits(4, 7, 11)
    assert divergence(t.clone(), t, kind).abs().item() < 1e-6


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_divergences_are_positive_for_different_distributions(kind):
    assert divergence(logits(4, 9, seed=3), logits(4, 9, seed=4), kind).item() > 1e-3


def test_reverse_kl_swaps_arguments():
    s, t = logits(5, 8, seed=5), logits(5, 8, seed=6)
    assert torch.allclose(reverse_kl(s, t), forward_kl(t, s), atol=1e-6)


def test_jsd_limits_and_symmetry():
    s, t = logits(5, 8, seed=7), logits(5, 8, seed=8)
    assert torch.allclose(generalized_jsd(s, t, beta=0.0), forward_kl(s, t))
    assert torch.allclose(generalized_jsd(s, t, beta=1.0), reverse_kl(s, t))
    # at beta = 0.5 the divergence is the symmetric JSD, bounded by log 2
    j = generalized_jsd(s, t, beta=0.5)
    assert torch.allclose(j, generalized_jsd(t, s, beta=0.5), atol=1e-6)
    assert 0 < j.item() <= math.log(2)
    # and matches the textbook formula
    p, q = t.softmax(-1), s.softmax(-1)
    m = 0.5 * (p + q)
    ref = 0.5 * (p * (p / m).log()).sum(-1) + 0.5 * (q * (q / m).log()).sum(-1)
    assert torch.allclose(j, ref.mean(), atol=1e-6)


def test_skew_kl_at_alpha_zero_is_plain_kl():
    s, t = logits(3, 6, seed=9), logits(3, 6, seed=10)
    assert torch.allclose(divergence(s, t, "skew_kl", alpha=0.0), forward_kl(s, t), atol=1e-6)
    assert torch.allclose(divergence(s, t, "skew_reverse_kl", alpha=0.0), reverse_kl(s, t), atol=1e-6)


def test_tvd_matches_formula():
    s, t = logits(3, 6, seed=11), logits(3, 6, seed=12)
    ref = 0.5 * (s.softmax(-1) - t.softmax(-1)).abs().sum(-1).mean()
    assert torch.allclose(divergence(s, t, "tvd"), ref, atol=1e-6)


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_top_k_with_k_equal_vocab_equals_dense(kind):
    s, t = logits(2, 5, 13, seed=13), logits(2, 5, 13, seed=14)
    dense = divergence(s, t, kind, temperature=2.0)
    topk = divergence(s, t, kind, temperature=2.0, top_k=13)
    assert torch.allclose(dense, topk, atol=1e-5)


def test_top_k_small_k_is_close_for_peaked_teachers():
    t = logits(8, 50, seed=15, scale=8.0)
    s = t + 0.3 * logits(8, 50, seed=16)
    assert abs(divergence(s, t, top_k=10).item() - divergence(s, t).item()) < 0.05


@pytest.mark.parametrize("kind", ["forward_kl", "jsd", "tvd"])
def test_chunked_equals_dense_in_value_and_gradient(kind):
    t = logits(3, 7, 11, seed=17)
    s1 = logits(3, 7, 11, seed=18).requires_grad_()
    s2 = s1.detach().clone().requires_grad_()
    mask = torch.rand(3, 7, generator=torch.Generator().manual_seed(0)) > 0.3
    d1 = divergence(s1, t, kind, mask=mask)
    d2 = divergence(s2, t, kind, mask=mask, chunk_size=4)
    assert torch.allclose(d1, d2, atol=1e-6)
    d1.backward(), d2.backward()
    assert torch.allclose(s1.grad, s2.grad, atol=1e-6)


def test_mask_ignores_positions_and_all_masked_gives_zero():
    s, t = logits(2, 4, 6, seed=19), logits(2, 4, 6, seed=20)
    mask = torch.zeros(2, 4, dtype=torch.bool)
    mask[0, :2] = True
    assert torch.allclose(divergence(s, t, mask=mask), divergence(s[0, :2], t[0, :2]), atol=1e-6)
    s.requires_grad_()
    zero = divergence(s, t, mask=torch.zeros(2, 4, dtype=torch.bool))
    assert zero.item() == 0.0 and not torch.isnan(zero)
    zero.backward()
    assert torch.isfinite(s.grad).all()
    assert divergence(s, t, mask=torch.zeros(2, 4, dtype=torch.bool), chunk_size=2).item() == 0.0


def test_sum_reduction_divided_by_global_count_equals_mean():
    s, t = logits(10, 6, seed=21), logits(10, 6, seed=22)
    total = divergence(s[:4], t[:4], reduction="sum") + divergence(s[4:], t[4:], reduction="sum")
    assert torch.allclose(total / 10, divergence(s, t), atol=1e-6)


def test_padded_vocab_rows_are_dropped():
    s, t = logits(3, 10, seed=23), logits(3, 12, seed=24)
    assert torch.allclose(divergence(s, t), divergence(s, t[:, :10]))


def test_sparse_teacher_with_all_classes_equals_dense():
    s, t = logits(4, 9, seed=25), logits(4, 9, seed=26)
    lp_t = F.log_softmax(t / 3.0, -1)
    idx = torch.arange(9).expand(4, 9)
    assert torch.allclose(sparse_divergence(s, idx, lp_t, temperature=3.0), forward_kl(s, t, temperature=3.0), atol=1e-5)


def test_bf16_inputs_are_computed_in_fp32():
    s, t = logits(4, 9, seed=27), logits(4, 9, seed=28)
    d = divergence(s.bfloat16(), t.bfloat16())
    assert d.dtype == torch.float32
    assert abs(d.item() - divergence(s.bfloat16().float(), t.bfloat16().float()).item()) < 1e-6


def test_divergence_from_logprobs_rejects_unknown_kind():
    with pytest.raises(ValueError, match="unknown divergence"):
        divergence_from_logprobs(torch.zeros(1, 2), torch.zeros(1, 2), "nope")  # type: ignore[arg-type]
