"""LoRA students through peft: on a tiny diffusers UNet loaded from a save_pretrained folder, only the
adapters train, the base stays bit-identical, saved adapters reload to the same outputs, merging keeps
them; clear errors; the runner saves adapters and a merged student.pt."""
import copy
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("peft")

from distill.errors import ConfigError  # noqa: E402
from distill.families.diffusion.base import DiffusionContext, copy_weights  # noqa: E402
from distill.families.diffusion.lora import DiffusionLoraConfig, add_lora, has_lora, load_lora, merge_lora, save_lora  # noqa: E402
from distill.families.diffusion.process import Process  # noqa: E402
from distill.families.diffusion.unet import UNetDenoiser, load_unet, make_unet  # noqa: E402
from distill.registry import methods  # noqa: E402
from distill.teacher import Teacher  # noqa: E402

PROCESS = Process("flow")
LORA = DiffusionLoraConfig(rank=4, alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0", "conv2"])


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("unet") / "teacher"
    UNetDenoiser(make_unet(1, 8, widths=(8, 16), num_classes=None, groups=4)).save_pretrained(path)
    return path


def probe(net):
    g = torch.Generator().manual_seed(7)
    x, t = torch.randn(4, 1, 8, 8, generator=g), torch.rand(4, generator=g)
    with torch.no_grad():
        return net.eval()(x, t)


def trained(folder, name="consistency", steps=6):
    teacher = Teacher(load_unet(folder))
    student = add_lora(load_unet(folder), LORA)
    ctx = DiffusionContext(PROCESS, "velocity", "velocity", 4, 1, total_steps=steps, seed=0)
    params = {"consistency": {"grid_steps": 8, "skip": 2}, "progressive": {"start_steps": 4}}[name]
    method = methods.get(name, "diffusion").builder(student, teacher, ctx, **params)
    assert method.initialised_from_teacher                      # the base: the teacher's weights
    opt = torch.optim.Adam([p for p in method.trainable_parameters() if p.requires_grad], lr=1e-2)
    g = torch.Generator().manual_seed(1)
    method.train()
    for _ in range(steps):
        x0 = torch.rand(8, 1, 8, 8, generator=g) * 2 - 1
        terms = method({"x0": x0, "z": torch.randn(x0.shape, generator=g)})
        opt.zero_grad()
        sum(method.weights.get(k, 1.0) * v for k, v in terms.items()).backward()
        opt.step()
    method.finalize()
    return teacher, student


def test_diff_lora_trains_only_adapters_and_keeps_the_base_bit_identical(folder):
    fresh = add_lora(load_unet(folder), LORA)
    names = [n for n, p in fresh.named_parameters() if p.requires_grad]
    assert names and all(".lora_A." in n or ".lora_B." in n for n in names)
    assert any("attentions.0.to_q" in n for n in names) and any("conv2" in n for n in names)
    assert torch.allclose(probe(fresh), probe(load_unet(folder)), atol=1e-6)   # B = 0: the teacher's output
    for name in ("consistency", "progressive"):
        teacher, student = trained(folder, name)
        assert (probe(student) - probe(teacher.module)).abs().max() > 1e-4, name
        sd = student.state_dict()
        for k, v in teacher.module.state_dict().items():
            base = k if k in sd else k.rsplit(".", 1)[0] + ".base_layer." + k.rsplit(".", 1)[1]
            assert torch.equal(sd[base], v), (name, k)


def test_diff_lora_saved_adapters_reload_and_merge_to_the_same_outputs(folder, tmp_path):
    teacher, student = trained(folder)
    out = probe(student)
    save_lora(student, tmp_path / "lora")
    assert {p.name for p in (tmp_path / "lora").iterdir()} == {"adapter_model.safetensors", "adapter_config.json"}
    reloaded = load_lora(load_unet(folder), tmp_path / "lora")
    assert torch.allclose(probe(reloaded), out, atol=1e-6)
    merged = merge_lora(copy.deepcopy(student))
    assert not has_lora(merged)
    assert merged.state_dict().keys() == teacher.module.state_dict().keys()
    assert torch.allclose(probe(merged), out, atol=1e-5)
    plain = load_unet(folder)                                   # the merged weights load into the plain UNet
    plain.load_state_dict(merged.state_dict())
    assert torch.allclose(probe(plain), out, atol=1e-5)
    with pytest.raises(FileNotFoundError, match="no adapters"):
        load_lora(load_unet(folder), tmp_path / "missing")


def test_diff_lora_clear_errors(folder, monkeypatch):
    with pytest.raises(ConfigError, match="no Linear/Conv module named 'to_qq'.*closest: to_q"):
        add_lora(load_unet(folder), DiffusionLoraConfig(target_modules=["to_qq"]))
    monkeypatch.setitem(sys.modules, "peft", None)              # peft not installed
    with pytest.raises(ConfigError, match="needs the `peft` package"):
        add_lora(load_unet(folder), LORA)


def recipe(tmp_path, **over):
    r = {"name": "lora", "family": "diffusion", "output_dir": str(tmp_path / "runs"), "cache_dir": str(tmp_path / "cache"),
         "data": {"name": "toy2d", "params": {"name": "8gaussians"}, "batch_size": 64},
         "teacher": {"model": {"name": "toy_mlp", "params": {"hidden": 32, "depth": 2}}, "steps": 8,
                     "train": {"max_steps": 100, "optimizer": {"lr": 0.003}}},
         "student": {"steps": 1, "lora": {"rank": 2, "alpha": 2, "target_modules": ["layers.0", "out"]}},
         "methods": [{"name": "consistency", "params": {"grid_steps": 8, "skip": 2}}],
         "train": {"max_steps": 6}, "eval": {"samples": 100, "steps": [1], "projections": 16},
         "engine": {"device": "cpu", "progress": False}}
    r.update(over)
    return r


def test_diff_lora_through_the_runner(tmp_path):
    from distill.api import run
    from distill.families.diffusion.nets import TimeMLP

    s = run(recipe(tmp_path), log=lambda m: None, show_table=False)
    m = s["students"]["consistency"]
    assert 0 < m["trainable_params"] < m["params"] and m["swd"] > 0
    folder = Path(s["run_dir"]) / "students" / "consistency"
    assert (folder / "lora" / "adapter_model.safetensors").is_file()
    merged = TimeMLP(2, hidden=32, depth=2)
    merged.load_state_dict(torch.load(folder / "student.pt", weights_only=True))   # plain keys: merged
    teacher = TimeMLP(2, hidden=32, depth=2)
    teacher.load_state_dict(torch.load(next((tmp_path / "cache").rglob("teacher.pt")), weights_only=True))
    adapted = load_lora(TimeMLP(2, hidden=32, depth=2), folder / "lora")
    assert copy_weights(teacher, adapted)                       # the base: the teacher's weights
    x, t = torch.randn(5, 2), torch.rand(5)
    with torch.no_grad():
        assert torch.allclose(merged(x, t), adapted(x, t), atol=1e-5)
        assert (merged(x, t) - teacher(x, t)).abs().max() > 1e-5   # the adapters trained


@pytest.mark.parametrize("over,match", [
    ({"student": {"model": {"name": "toy_mlp", "params": {"hidden": 16, "depth": 2}}, "lora": {}}}, "leave student.model"),
    ({"methods": [{"name": "progressive", "params": {"init_from_teacher": False}}]}, "init_from_teacher"),
    ({"student": {"lora": {"target_modules": ["to_q"]}}}, "no Linear/Conv module named 'to_q'"),
])
def test_diff_lora_recipe_errors(tmp_path, over, match):
    from distill.api import run

    with pytest.raises(ConfigError, match=match):
        run(recipe(tmp_path, **over), log=lambda m: None, show_table=False)


def test_diff_lora_unet_students_through_the_runner_with_dmd_gan(tmp_path):
    from distill.api import run

    r = {"name": "img_lora", "family": "diffusion", "output_dir": str(tmp_path / "runs"), "cache_dir": str(tmp_path / "cache"),
         "data": {"name": "digits_images", "params": {"size": 8}, "batch_size": 8},
         "teacher": {"model": {"name": "unet", "params": {"widths": [8, 16], "groups": 4, "num_classes": None}},
                     "steps": 4, "train": {"max_steps": 5, "optimizer": {"lr": 0.003}}},
         "student": {"steps": 1, "lora": {"rank": 4, "alpha": 4, "target_modules": ["to_q", "to_k", "to_v", "to_out.0", "conv2"]}},
         "methods": [{"name": "progressive", "params": {"start_steps": 4}},
                     {"name": "dmd", "params": {"fake_updates": 1, "gan_weight": 0.1}}],
         "train": {"max_steps": 3}, "eval": {"samples": 10, "steps": [1], "projections": 8},
         "engine": {"device": "cpu", "progress": False}}
    s = run(r, log=lambda m: None, show_table=False)
    for label in ("progressive", "dmd"):
        m = s["students"][label]
        assert 0 < m["trainable_params"] < m["params"]
        folder = Path(s["run_dir"]) / "students" / label
        assert (folder / "lora" / "adapter_model.safetensors").is_file() and (folder / "student.pt").is_file()
    ckpt = sorted((Path(s["run_dir"]) / "students" / "dmd" / "checkpoints").glob("step_*.pt"))[-1]
    assert any(k.startswith("disc.") for k in torch.load(ckpt, weights_only=True)["model"])
