"""The teacher feature cache: feature methods read the tapped teacher layers (and logits) from disk
instead of running the teacher, with the same losses up to fp16 storage; mismatching or corrupt
caches are refused; a recipe with teacher.cache_features builds the cache once and reuses it."""
from __future__ import annotations

import json

import pytest
import torch

from distill.errors import CacheMismatchError
from distill.registry import methods
from distill.teacher import FeatureCache

from test_methods_zoo import build, tiny_batch, tiny_teacher

FEATURE_METHODS = sorted(n for n in methods.names("classifier")
                         if getattr(methods.get(n, "classifier").builder, "supports_feature_cache", False))


def test_every_feature_method_can_use_the_cache():
    assert {"fitnet", "at", "nst", "review_kd", "sp", "pkt", "rkd", "cc", "vid", "crd"} <= set(FEATURE_METHODS)


def _cache_for(m, batch, tmp_path, teacher):
    return FeatureCache.build(tmp_path / "fc", m.teacher_pass, batch["x"], teacher=teacher, data_hash="d",
                              layers=m.teacher_layers)


@pytest.mark.parametrize("name", FEATURE_METHODS)
def test_cached_features_give_the_live_losses_without_the_teacher(name, tmp_path):
    teacher = tiny_teacher()
    batch = tiny_batch()
    over = {"kd_weight": 0.5} if name in ("sp", "fitnet", "at") else {}
    m = build(name, teacher=teacher, **over)
    m.setup(batch)
    m.eval()  # batch-norm projectors: the same statistics in both passes
    torch.manual_seed(3)
    live = {k: float(v.detach()) for k, v in m(batch).items()}
    m.feature_cache = _cache_for(m, batch, tmp_path, teacher)

    def no_teacher(*a, **k):
        raise AssertionError("the teacher ran although its features are cached")

    hook = teacher.module.register_forward_pre_hook(no_teacher)
    try:
        torch.manual_seed(3)
        cached = {k: float(v.detach()) for k, v in m(batch).items()}
    finally:
        hook.remove()
    assert cached.keys() == live.keys()
    for k in live:
        assert cached[k] == pytest.approx(live[k], rel=2e-2, abs=2e-3), (name, k)


def test_lookup_follows_sample_ids_and_meta_is_checked(tmp_path):
    teacher = tiny_teacher()
    batch = tiny_batch()
    m = build("at", teacher=teacher)
    cache = _cache_for(m, batch, tmp_path, teacher)
    ids = torch.tensor([5, 0, 17])
    logits, feats = cache.lookup(ids)
    t_logits, t_feats = m.teacher_pass(batch["x"][ids])
    assert torch.allclose(logits, t_logits, atol=1e-6)
    assert [f.shape for f in feats] == [f.shape for f in t_feats]
    for f, g in zip(feats, t_feats):
        assert torch.allclose(f, g, atol=2e-3, rtol=2e-3)
    assert cache.size_bytes() > sum(f.numel() * 2 for f in cache.features)
    est = FeatureCache.estimate_bytes(m.teacher_pass, batch["x"][:2], len(batch["x"]))
    assert est == pytest.approx(cache.size_bytes(), rel=0.05)

    expected = FeatureCache.expected_meta(teacher, "d", m.teacher_layers, len(batch["x"]))
    assert FeatureCache.load(cache.folder, expected).layers == m.teacher_layers
    with pytest.raises(CacheMismatchError, match="layers: cache has"):
        FeatureCache.load(cache.folder, {**expected, "layers": ["features.2"]})
    with pytest.raises(CacheMismatchError, match="data: cache has"):
        FeatureCache.load(cache.folder, {**expected, "data": "other"})
    f = cache.folder / FeatureCache.FILE
    f.write_bytes(f.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(CacheMismatchError, match="checksum"):
        FeatureCache.load(cache.folder, expected)
    with pytest.raises(CacheMismatchError, match="augmentation"):
        FeatureCache.build(tmp_path / "aug", m.teacher_pass, batch["x"], teacher=teacher, data_hash="d",
                           layers=m.teacher_layers, augmentation="flip")


RECIPE = {
    "name": "fc", "family": "classifier", "seed": 0,
    "data": {"name": "digits", "params": {"layout": "image"}, "batch_size": 64},
    "teacher": {"model": {"name": "convnet", "params": {"width": 16, "depth": 2}}, "train": {"epochs": 1},
                "cache_features": True},
    "student": {"model": {"name": "convnet", "params": {"width": 8, "depth": 2}}},
    "methods": [{"name": "fitnet", "params": {"student_layer": "features.2", "teacher_layer": "features.6"}},
                {"name": "sp"}],
    "train": {"epochs": 1, "max_steps": 5, "optimizer": {"name": "sgd", "lr": 0.05}},
    "engine": {"device": "cpu", "progress": False},
    "eval": {"latency_runs": 2},
}


def test_recipe_builds_the_feature_cache_once_and_reuses_it(tmp_path):
    from distill.api import run

    recipe = dict(RECIPE, output_dir=str(tmp_path / "runs"), cache_dir=str(tmp_path / "cache"))
    logs: list[str] = []
    run(recipe, [], show_table=False, log=logs.append)
    folders = sorted((tmp_path / "cache" / "teacher_features").iterdir())
    assert len(folders) == 2  # one per tapped layer set: fitnet's features.6, sp's penultimate
    assert sum("teacher features: caching" in m for m in logs) == 2
    assert not any("runs the live teacher" in m for m in logs)
    layers = sorted(json.loads((f / FeatureCache.META).read_text())["layers"][0] for f in folders)
    assert layers == ["features.6", "penultimate"]
    stamps = [(f / FeatureCache.FILE).stat().st_mtime_ns for f in folders]
    logs.clear()
    summary = run(recipe, ["name=fc2"], show_table=False, log=logs.append)
    assert not any("teacher features: caching" in m for m in logs)
    assert [(f / FeatureCache.FILE).stat().st_mtime_ns for f in folders] == stamps
    assert set(summary["students"]) == {"fitnet", "sp"}
