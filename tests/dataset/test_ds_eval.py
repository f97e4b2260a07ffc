"""`distill eval` on a saved synthetic set, sets that carry a relabelling teacher, and the
trajectory methods' expert batch and FTD's EMA warm-up."""
import json

import pytest
import torch
from typer.testing import CliRunner

from distill.api import run
from distill.cli.main import app
from distill.errors import DistillError
from distill.families.dataset import evaluate as ev
from distill.families.dataset.base import DistillContext, SyntheticSet
from distill.families.dataset.evaluate import EvalProtocol, evaluate_set, load_synthetic, save_synthetic
from distill.families.dataset.ftd import FTD
from distill.families.dataset.mtt import MTT
from distill.models.io import build_model

TINY_EVAL = {"model": {"name": "convnet", "params": {"width": 8}}, "n_models": 1, "epochs": 3, "full_data_epochs": 0}


def tiny_run(tmp_path, methods_):
    return run({"name": "tiny", "family": "dataset", "output_dir": str(tmp_path / "runs"), "ipc": 1,
                "data": {"name": "digits", "params": {"size": 8}}, "model": {"name": "convnet", "params": {"width": 8}},
                "eval": dict(TINY_EVAL), "engine": {"device": "cpu"}, "baselines": False, "methods": methods_},
               log=lambda m: None, show_table=False)


def test_distill_eval_reproduces_the_runs_accuracy_and_prints_the_card(tmp_path):
    s = tiny_run(tmp_path, [{"name": "dm", "iterations": 2}])
    path = tmp_path / "runs" / "tiny" / "synthetic" / "dm_set0.safetensors"
    out = tmp_path / "eval.json"
    res = CliRunner().invoke(app, ["eval", str(path), "--json", str(out)])
    assert res.exit_code == 0, res.output
    got = json.loads(out.read_text())
    assert got["accs"][0] == pytest.approx(s["students"]["dm"]["accuracy"])
    assert got["card"]["data"] == "digits" and got["card"]["epochs"] == 3 and got["card"]["method"] == "dm"
    assert "accuracy:" in res.output and "augmentation" in res.output
    # overrides reach the protocol
    res = CliRunner().invoke(app, ["eval", str(path), "--epochs", "1", "--models", "2", "--augment", "none",
                                   "--json", str(out)])
    assert res.exit_code == 0, res.output
    got = json.loads(out.read_text())
    assert len(got["accs"]) == 2 and got["card"]["epochs"] == 1 and got["card"]["augmentation"] == "none"


def test_distill_eval_errors_name_the_fix(tmp_path):
    bare = save_synthetic(SyntheticSet(torch.randn(10, 1, 5, 5), torch.arange(10)), tmp_path / "bare.safetensors")
    res = CliRunner().invoke(app, ["eval", str(bare)])
    assert res.exit_code == 2 and "--data" in res.output
    # wrong data set for the images' shape
    res = CliRunner().invoke(app, ["eval", str(bare), "--data", "digits"])
    assert res.exit_code == 2 and "shape" in res.output
    res = CliRunner().invoke(app, ["eval", str(bare), "--data", "digits", "--data-param", "size"])
    assert res.exit_code == 2 and "KEY=VALUE" in res.output
    # a set without data in its header evaluates once told the data set and its params
    res = CliRunner().invoke(app, ["eval", str(bare), "--data", "digits", "--data-param", "size=5", "--epochs", "1"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(app, ["eval", str(tmp_path / "missing.safetensors")])
    assert res.exit_code == 2 and "not found" in res.output
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    res = CliRunner().invoke(app, ["eval", str(junk)])
    assert res.exit_code == 2 and "not a readable" in res.output
    res = CliRunner().invoke(app, ["eval", str(bare), "--augment", "flip"])
    assert res.exit_code == 2 and "--augment" in res.output


def make_teacher():
    torch.manual_seed(0)
    return build_model("convnet", {"width": 8, "norm": "batch"}, (1, 8, 8), 10, family="dataset").eval()


def test_teacher_travels_with_the_set_and_relabels_every_batch(tmp_path, monkeypatch):
    t = make_teacher()
    x = torch.randn(10, 1, 8, 8)
    with torch.no_grad():
        logits = t(x)
    s = SyntheticSet(x, logits, teacher=t, teacher_spec={"name": "convnet", "params": {"width": 8, "norm": "batch"}})
    path = save_synthetic(s, tmp_path / "s.safetensors", {"method": "sre2l"})
    back, meta = load_synthetic(path)
    assert back.teacher is not None and meta["teacher"]["params"]["norm"] == "batch"
    probe = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(back.teacher(probe), t(probe))
    # during evaluation the targets are the teacher's outputs on the augmented batch, not the stored labels
    seen = []

    def spy(logits_, labels, temperature=1.0):
        seen.append(labels.clone())
        return logits_.sum() * 0
    monkeypatch.setattr(ev, "soft_or_hard_loss", spy)
    outs = []
    back.teacher.register_forward_hook(lambda m, i, o: outs.append(o.detach().clone()))
    p = EvalProtocol(model={"name": "convnet", "params": {"width": 8}}, n_models=1, epochs=2, batch_size=10)
    make = lambda seed: build_model("convnet", {"width": 8}, (1, 8, 8), 10, family="dataset")  # noqa: E731
    evaluate_set(make, back, torch.randn(4, 1, 8, 8), torch.zeros(4, dtype=torch.long), p, seed=0)
    assert len(seen) == 2 and all(torch.equal(a, b) for a, b in zip(seen, outs))
    assert not torch.allclose(seen[0], logits)  # augmented batches, so not the stored labels


def test_set_without_teacher_spec_is_refused_and_bad_teacher_weights_are_named(tmp_path):
    t = make_teacher()
    with pytest.raises(ValueError, match="teacher_spec"):
        save_synthetic(SyntheticSet(torch.randn(2, 1, 8, 8), torch.randn(2, 10), teacher=t), tmp_path / "a.safetensors")
    s = SyntheticSet(torch.randn(2, 1, 8, 8), torch.randn(2, 10), teacher=t,
                     teacher_spec={"name": "convnet", "params": {"width": 16, "norm": "batch"}})
    path = save_synthetic(s, tmp_path / "b.safetensors")
    with pytest.raises(DistillError, match="do not fit"):
        load_synthetic(path)


def test_sre2l_per_batch_set_and_kd_reference_share_the_teacher(tmp_path):
    s = tiny_run(tmp_path, [{"name": "sre2l", "iterations": 2, "params": {"teacher_epochs": 1, "relabel": "per_batch"}},
                            {"name": "sre2l", "label": "once", "iterations": 2, "params": {"teacher_epochs": 1}}])
    per_batch, _ = load_synthetic(tmp_path / "runs" / "tiny" / "synthetic" / "sre2l_set0.safetensors")
    once, _ = load_synthetic(tmp_path / "runs" / "tiny" / "synthetic" / "once_set0.safetensors")
    assert per_batch.teacher is not None and once.teacher is None and once.soft
    assert "kd_random_real" in s["students"]["sre2l"] and "kd_random_real" in s["students"]["once"]


def ctx():
    g = torch.Generator().manual_seed(0)
    return DistillContext(torch.randn(64, 1, 8, 8, generator=g), torch.arange(4).repeat(16), 4, 1,
                          lambda seed: build_model("convnet", {"width": 4}, (1, 8, 8), 4, family="dataset"),
                          torch.device("cpu"))


def test_expert_batch_sets_the_steps_per_epoch(monkeypatch):
    from distill.families.dataset import mtt as mtt_mod

    calls = {}

    def fake(ctx_, num, epochs, lr, batch_size=256, **kw):
        calls["batch_size"] = batch_size
        return [torch.zeros(epochs + 1, 10)]
    monkeypatch.setattr(mtt_mod, "train_experts", fake)
    m = MTT(ctx(), num_experts=1, expert_epochs=3, max_start_epoch=1, match_epochs=1, expert_batch=8)
    m.setup()
    assert calls["batch_size"] == 8


def test_ftd_ema_warms_up_so_short_runs_move_away_from_the_start():
    m = FTD(ctx(), num_experts=1, expert_epochs=2, max_start_epoch=1, match_epochs=1, syn_steps=1, ema_decay=0.99)
    m.setup()
    start = m.ema.clone()
    with torch.no_grad():
        m.images.add_(1.0)  # as if the optimiser had moved the images by 1 everywhere
    m.step(0, 10)
    # decay at step 0 is (1 + 0) / (10 + 0) = 0.1, not 0.99: the EMA is 0.1 start + 0.9 current images
    assert torch.allclose(m.ema, 0.1 * start + 0.9 * m.images.detach(), atol=1e-6)
    before = m.ema.clone()
    m.step(2000, 3000)  # past the warm-up ((1 + t) / (10 + t) > 0.99) the decay is ema_decay itself
    assert torch.allclose(m.ema, 0.99 * before + 0.01 * m.images.detach(), atol=1e-6)
    assert (m.ema - start).mean() > 0.5


def test_sre2l_real_init_starts_from_real_images_of_each_class():
    from distill.families.dataset.sre2l import SRe2L

    c = ctx()
    m = SRe2L(c, teacher_epochs=1, init="real")
    m.setup()
    for i in range(len(m.images)):  # every start image is a real training image of its label's class
        match = (c.x == m.images[i].detach()).flatten(1).all(1)
        assert match.any() and int(c.y[match.nonzero()[0, 0]]) == int(m.labels[i])
    noise = SRe2L(ctx(), teacher_epochs=1)
    noise.setup()
    assert not (c.x == noise.images[0].detach()).flatten(1).all(1).any()
