"""Classifier losses and default weights against the authors' released formulas, each written out
here independently of our implementation (numpy / plain torch on fixed seeded tensors):

- OFA (Hao et al. 2023, OFAKD `ofa_loss`): -sum_c ((p_t + onehot)^eps - onehot)_c log p_s,c, batch mean;
- logit-standardised KD (Sun et al. 2024, their `kd_loss` with `--logit-stand`): KD weight 9, CE 0.1, T 2;
- PKT (Passalis & Tefas 2018, `cosine_similarity_loss`): mean over all B x B entries of
  P_t log((P_t + eps) / (P_s + eps)) with cosine kernels mapped to [0, 1] and row-normalised;
- RKD (Park et al. 2019, `RkdDistance` / `RkdAngle`): smooth-L1 over the full B x B distance
  matrix (diagonal 0) normalised by the mean positive distance; angles over all B^3 triplets.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from distill.losses import relations as LR
from distill.models.io import build_model
from distill.registry import methods
from distill.teacher import Teacher


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def official_ofa(s: np.ndarray, t: np.ndarray, y: np.ndarray, eps: float, temperature: float = 1.0) -> float:
    """The OFA loss as the authors release it, in numpy."""
    p_s, p_t = _softmax(s / temperature), _softmax(t / temperature)
    mask = np.eye(s.shape[1])[y]
    return float(np.mean(np.sum(-((p_t + mask) ** eps - mask) * np.log(p_s), axis=-1)))


def official_ls_kd(s: np.ndarray, t: np.ndarray, temperature: float) -> float:
    """KD on z-scored logits (std with Bessel's correction, 1e-7 added to it), times T^2."""
    def z(v):
        return (v - v.mean(-1, keepdims=True)) / (1e-7 + v.std(-1, ddof=1, keepdims=True))

    p_t = _softmax(z(t) / temperature)
    lp_s = np.log(_softmax(z(s) / temperature))
    return float(np.mean(np.sum(p_t * (np.log(p_t) - lp_s), -1)) * temperature**2)


def official_pkt(f_s: np.ndarray, f_t: np.ndarray, eps: float = 1e-7) -> float:
    def cond(f):
        f = f / (np.sqrt((f**2).sum(1, keepdims=True)) + eps)
        k = (f @ f.T + 1.0) / 2.0
        return k / k.sum(1, keepdims=True)

    p_s, p_t = cond(f_s), cond(f_t)
    return float(np.mean(p_t * np.log((p_t + eps) / (p_s + eps))))


def _smooth_l1(a: np.ndarray, b: np.ndarray) -> float:
    d = np.abs(a - b)
    return float(np.mean(np.where(d < 1.0, 0.5 * d**2, d - 0.5)))


def official_rkd_distance(f_s: np.ndarray, f_t: np.ndarray) -> float:
    def pdist(e):
        sq = (e**2).sum(1)
        d = np.sqrt(np.clip(sq[:, None] + sq[None, :] - 2 * e @ e.T, 1e-12, None))
        np.fill_diagonal(d, 0.0)
        return d / d[d > 0].mean()

    return _smooth_l1(pdist(f_s), pdist(f_t))  # over all B x B entries, the zero diagonal included


def official_rkd_angle(f_s: np.ndarray, f_t: np.ndarray) -> float:
    def angles(e):
        diff = e[None, :, :] - e[:, None, :]
        n = np.linalg.norm(diff, axis=2, keepdims=True)
        diff = diff / np.maximum(n, 1e-12)
        return np.einsum("jid,jkd->jik", diff, diff)

    return _smooth_l1(angles(f_s), angles(f_t))


def _logits(seed: int = 0, b: int = 6, c: int = 5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    s, t = torch.randn(b, c, generator=g, dtype=torch.float64) * 2, torch.randn(b, c, generator=g, dtype=torch.float64) * 2
    return s, t, torch.randint(0, c, (b,), generator=g)


# ----------------------------------------------------------------------------------------- OFA
@pytest.mark.parametrize("eps", [0.5, 1.0, 1.5])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_ofa_loss_is_the_official_expression(eps, temperature):
    s, t, y = _logits()
    ours = float(LR.ofa_loss(s, t, y, eps, temperature))
    assert ours == pytest.approx(official_ofa(s.numpy(), t.numpy(), y.numpy(), eps, temperature), rel=1e-5, abs=1e-6)


def test_ofa_at_eps_1_has_no_label_term():
    """At eps = 1 the official loss is the cross-entropy to the teacher's distribution: the label
    appears only in the runner's separate CE term, once."""
    s, t, y = _logits(1)
    p_t, lp_s = torch.softmax(t, -1), torch.log_softmax(s, -1)
    soft_ce = float(-(p_t * lp_s).sum(-1).mean())
    assert float(LR.ofa_loss(s, t, y, 1.0)) == pytest.approx(soft_ce, rel=1e-6)


def _batch(n: int = 16, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"x": torch.rand(n, 1, 8, 8, generator=g), "y": torch.randint(0, 10, (n,), generator=g), "idx": torch.arange(n)}


def _method(name: str, **params):
    torch.manual_seed(0)
    student = build_model("convnet", {"width": 4, "depth": 2}, (1, 8, 8), 10)
    torch.manual_seed(1)
    teacher = Teacher(build_model("convnet", {"width": 8, "depth": 2}, (1, 8, 8), 10))
    entry = methods.get(name, "classifier")
    return entry.builder(student, teacher, **entry.validate(params, "params")), student, teacher


def _weighted(m, terms) -> float:
    return float(sum(m.weights.get(k, 1.0) * v for k, v in terms.items()))


def test_ofa_method_total_is_official_ce_plus_ofa():
    """The method's weighted total (no branches) = CE(labels) + OFA_official(final logits)."""
    m, student, teacher = _method("ofa")
    batch = _batch()
    m.setup(batch)
    with torch.no_grad():
        terms = m(batch)
        s, t = student(batch["x"]).double().numpy(), teacher(batch["x"]).double().numpy()
    y = batch["y"].numpy()
    ce = float(np.mean(-np.log(_softmax(s)[np.arange(len(y)), y])))
    assert _weighted(m, terms) == pytest.approx(ce + official_ofa(s, t, y, 1.0), rel=1e-4)


# --------------------------------------------------------------------------------------- LS-KD
def test_ls_kd_defaults_are_the_authors_kd_9_ce_01_t_2():
    m, student, teacher = _method("ls_kd")
    assert m.weights == {"kd": 9.0, "ce": 0.1} and m.temperature == 2.0
    batch = _batch()
    with torch.no_grad():
        terms = m(batch)
        s, t = student(batch["x"]).double().numpy(), teacher(batch["x"]).double().numpy()
    y = batch["y"].numpy()
    ce = float(np.mean(-np.log(_softmax(s)[np.arange(len(y)), y])))
    assert _weighted(m, terms) == pytest.approx(9.0 * official_ls_kd(s, t, 2.0) + 0.1 * ce, rel=1e-4)


# ----------------------------------------------------------------------------------------- PKT
def _features(seed: int = 0, b: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 5, generator=g, dtype=torch.float64), torch.randn(b, 9, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("b", [4, 7, 16])
def test_pkt_loss_is_the_authors_mean_over_b_by_b(b):
    from distill.families.classifier.pkt import pkt_batch_loss

    f_s, f_t = _features(b=b)
    assert float(pkt_batch_loss(f_s, f_t)) == pytest.approx(official_pkt(f_s.numpy(), f_t.numpy()), rel=1e-4)


def test_pkt_method_term_and_default_weight_match_the_reference():
    """The method's `pkt` term on its tapped penultimate features equals the authors' loss, and the
    default weight is theirs (30000 in RepDistiller/mdistiller), so weight * term is the reference's."""
    m, _, _ = _method("pkt")
    batch = _batch()
    m.setup(batch)
    with torch.no_grad():
        terms = m(batch)
        _, _, (f_s,), (f_t,) = m.features(batch)
    ref = official_pkt(f_s.flatten(1).double().numpy(), f_t.flatten(1).double().numpy())
    assert float(terms["pkt"]) == pytest.approx(ref, rel=1e-3)
    assert m.weights["pkt"] == 30000.0


# ----------------------------------------------------------------------------------------- RKD
@pytest.mark.parametrize("b", [3, 6, 16])
def test_rkd_distance_is_the_authors_full_matrix_mean(b):
    f_s, f_t = _features(1, b)
    assert float(LR.rkd_distance_loss(f_s, f_t)) == pytest.approx(
        official_rkd_distance(f_s.numpy(), f_t.numpy()), rel=1e-5)


def test_rkd_angle_is_the_authors_triplet_mean():
    f_s, f_t = _features(2, 6)
    assert float(LR.rkd_angle_loss(f_s, f_t)) == pytest.approx(official_rkd_angle(f_s.numpy(), f_t.numpy()), rel=1e-5)


def test_rkd_method_total_matches_reference_with_default_weights():
    m, _, _ = _method("rkd")
    batch = _batch()
    m.setup(batch)
    with torch.no_grad():
        terms = m(batch)
        _, _, (f_s,), (f_t,) = m.features(batch)
    f_s, f_t = f_s.flatten(1).double().numpy(), f_t.flatten(1).double().numpy()
    ref = 25.0 * official_rkd_distance(f_s, f_t) + 50.0 * official_rkd_angle(f_s, f_t)
    assert float(m.weights["rkd_distance"] * terms["rkd_distance"] + m.weights["rkd_angle"] * terms["rkd_angle"]) \
        == pytest.approx(ref, rel=1e-4)
