import json

import pytest
import torch
from torch import nn

from distill.errors import CacheMismatchError
from distill.teacher import Ensemble, Teacher, TeacherCache


def _net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 16), nn.Dropout(0.5), nn.Linear(16, 7))


def test_teacher_is_frozen_by_construction():
    t = Teacher(_net())
    assert not any(p.requires_grad for p in t.module.parameters())
    x = torch.randn(4, 5)
    out = t(x)
    assert not out.requires_grad
    t.module.train()  # even if someone flips it back, calls run in eval mode (no dropout)
    assert torch.equal(t(x), out)
    assert not isinstance(t, nn.Module)  # so it can never be registered in a student or optimiser
    holder = nn.Module()
    holder.t = t
    assert list(holder.parameters()) == []


def test_ensemble_is_log_of_mean_probability():
    a, b = _net(1).eval(), _net(2).eval()
    x = torch.randn(3, 5)
    ref = ((a(x).softmax(-1) + b(x).softmax(-1)) / 2).log()
    assert torch.allclose(Ensemble([a, b])(x), ref, atol=1e-6)


def _build(tmp_path, teacher, x, **kw):
    args = dict(data_hash="d1", temperature=2.0, k=3)
    args.update(kw)
    return TeacherCache.load_or_build(tmp_path / "c", teacher, x, **args)


def test_cache_roundtrip_gives_normalised_topk_logprobs(tmp_path):
    t = Teacher(_net())
    x = torch.randn(20, 5)
    cache = _build(tmp_path, t, x)
    ids = torch.tensor([3, 0, 19])
    out = cache.lookup(ids)
    ref = torch.log_softmax(t(x[ids]) / 2.0, -1)
    top = ref.topk(3, -1)
    assert torch.equal(out.indices, top.indices)
    assert torch.allclose(out.logprobs, top.values, atol=2e-3)  # fp16 logits
    again = _build(tmp_path, t, x)  # a matching cache is reused
    assert torch.equal(again.indices, cache.indices)


@pytest.mark.parametrize("change, field", [
    (dict(temperature=4.0), "temperature"),
    (dict(k=5), "k"),
    (dict(data_hash="other"), "data"),
])
def test_cache_mismatch_is_refused(tmp_path, change, field):
    t = Teacher(_net())
    x = torch.randn(20, 5)
    _build(tmp_path, t, x)
    with pytest.raises(CacheMismatchError, match=rf"{field}: cache has"):
        _build(tmp_path, t, x, **change)


def test_cache_of_another_teacher_is_refused(tmp_path):
    x = torch.randn(20, 5)
    _build(tmp_path, Teacher(_net(0)), x)
    with pytest.raises(CacheMismatchError, match="teacher: cache has"):
        _build(tmp_path, Teacher(_net(1)), x)


def test_corrupt_cache_is_refused(tmp_path):
    t = Teacher(_net())
    x = torch.randn(20, 5)
    cache = _build(tmp_path, t, x)
    f = cache.folder / TeacherCache.FILE
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(CacheMismatchError, match="checksum mismatch"):
        _build(tmp_path, t, x)
    (cache.folder / TeacherCache.META).write_text("{not json")
    with pytest.raises(CacheMismatchError, match="corrupt"):
        _build(tmp_path, t, x)


def test_cache_refuses_random_augmentation(tmp_path):
    with pytest.raises(CacheMismatchError, match="augmentation"):
        _build(tmp_path, Teacher(_net()), torch.randn(4, 5), augmentation="random_crop")
