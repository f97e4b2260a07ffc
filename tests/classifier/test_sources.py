"""Models from their own ecosystems: torchvision:, timm:, hf:, python: names; weights files; heads;
logits out of any output; students saved in their ecosystem's format and loaded back."""
import json

import pytest
import torch
from torch import nn

import distill
from distill.errors import ConfigError
from distill.models.io import build_model, load_model, save_model
from distill.models.outputs import logits_of

pytest.importorskip("torchvision")
pytest.importorskip("timm")


def test_logits_of_tensor_tuple_dict_and_model_output():
    from transformers.modeling_outputs import ImageClassifierOutput

    z = torch.randn(2, 3)
    assert logits_of(z) is z
    assert logits_of((z, torch.zeros(1))) is z
    assert logits_of({"logits": z}) is z
    assert logits_of(ImageClassifierOutput(logits=z)) is z
    with pytest.raises(TypeError, match="cannot find logits"):
        logits_of("nope")


def test_torchvision_and_timm_names_build_with_the_data_head():
    tv = build_model("torchvision:resnet18", {}, (3, 32, 32), 7)
    tm = build_model("timm:mobilenetv3_small_050", {}, (3, 32, 32), 7)
    for m in (tv, tm):
        assert logits_of(m.eval()(torch.randn(2, 3, 32, 32))).shape == (2, 7)
    assert tm.distill_data_config["size"] == 224  # timm's pretrained input size, kept for normalize: model


def test_unknown_names_say_what_is_close():
    with pytest.raises(ConfigError, match="resnet18"):
        build_model("torchvision:resnet81", {}, (3, 32, 32), 10)
    with pytest.raises(ConfigError, match="timm has no model"):
        build_model("timm:not_a_model_xyz", {}, (3, 32, 32), 10)
    with pytest.raises(ConfigError, match="cannot import module"):
        build_model("python:no_such_module_xyz:f", {}, (3, 32, 32), 10)


def test_pretrained_offline_says_how_to_give_a_local_file(monkeypatch):
    import torchvision

    def no_network(*a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    monkeypatch.setattr(torchvision.models._api.WeightsEnum, "get_state_dict", lambda self, *a, **k: no_network())
    with pytest.raises(ConfigError, match="weights: /path/to/file"):
        build_model("torchvision:resnet18", {}, (3, 32, 32), 10, pretrained=True)


class Net(nn.Module):  # a user's own model, built by a factory: python:tests.classifier.test_sources:make_net
    def __init__(self, classes=5):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU())
        self.fc = nn.Linear(16, classes)

    def forward(self, x):
        return self.fc(self.body(x))


def make_net(classes: int = 5) -> nn.Module:
    return Net(classes)


def test_python_factory_with_weights_prefix_and_head_replacement(tmp_path):
    torch.manual_seed(0)
    src = Net(5)
    sd = {f"module.{k}": v for k, v in src.state_dict().items()}  # a DDP-saved state dict
    torch.save(sd, tmp_path / "w.pth")
    m = build_model("python:tests.classifier.test_sources:make_net", {}, (3, 2, 2), 5, weights=tmp_path / "w.pth")
    x = torch.randn(4, 3, 2, 2)
    assert torch.equal(m(x), src(x))
    assert m.distill_pretrained and not m.distill_head_fresh
    # the same file for a 3-class task: body loaded, head replaced (fresh), outputs 3 classes
    m3 = build_model("python:tests.classifier.test_sources:make_net", {}, (3, 2, 2), 3, weights=tmp_path / "w.pth")
    assert m3(x).shape == (4, 3) and m3.distill_head_fresh
    assert torch.equal(m3.body[1].weight, src.body[1].weight)


def test_mismatched_weights_name_the_missing_and_unexpected_keys(tmp_path):
    torch.save({"other.weight": torch.zeros(2, 2)}, tmp_path / "bad.pt")
    with pytest.raises(ConfigError) as e:
        build_model("python:tests.classifier.test_sources:make_net", {}, (3, 2, 2), 5, weights=tmp_path / "bad.pt")
    msg = str(e.value)
    assert "missing keys" in msg and "body.1.weight" in msg and "unexpected keys" in msg and "other.weight" in msg
    with pytest.raises(ConfigError, match="does not exist"):
        build_model("mlp", {}, (4,), 2, weights=tmp_path / "absent.safetensors")


def test_pickled_code_in_a_weights_file_is_refused(tmp_path):
    import os

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch pwned",))

    torch.save({"fc.weight": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(ConfigError, match="weights_only"):
        build_model("python:tests.classifier.test_sources:make_net", {}, (3, 2, 2), 5, weights=tmp_path / "evil.pt")
    assert not (tmp_path / "pwned").exists()


def test_timm_student_saved_in_timms_own_folder_format(tmp_path):
    import timm

    m = build_model("timm:resnet10t", {}, (3, 32, 32), 4).eval()
    save_model(m, tmp_path / "s")
    x = torch.randn(2, 3, 32, 32)
    back = load_model(tmp_path / "s")
    assert torch.allclose(back(x), m(x), atol=1e-6)
    native = timm.create_model(f"local-dir:{tmp_path / 's'}", pretrained=True).eval()  # timm alone loads it
    assert torch.allclose(native(x), m(x), atol=1e-6)


def _tiny_vit(tmp_path, labels=4):
    from transformers import ViTConfig, ViTForImageClassification

    cfg = ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2,
                    num_attention_heads=2, intermediate_size=64, num_labels=labels)
    torch.manual_seed(0)
    model = ViTForImageClassification(cfg)
    model.save_pretrained(tmp_path / "vit")
    cfg.save_pretrained(tmp_path / "vit_config")  # a config only: a student from scratch
    return model


def test_hf_image_classifier_as_teacher_and_student_round_trip(tmp_path):
    from transformers import AutoModelForImageClassification

    ref = _tiny_vit(tmp_path).eval()
    t = build_model(f"hf:{tmp_path / 'vit'}", {}, (3, 16, 16), 4).eval()
    x = torch.rand(2, 3, 16, 16)
    assert torch.allclose(logits_of(t(x)), ref(x).logits, atol=1e-6)  # the folder's weights
    assert t.distill_pretrained and not t.distill_head_fresh

    s = build_model(f"hf:{tmp_path / 'vit_config'}", {}, (3, 16, 16), 3)  # config only: random init, 3 classes
    assert not s.distill_pretrained and logits_of(s(x)).shape == (2, 3)
    student = distill.Distiller(t, s, method="kd", epochs=1, lr=1e-3, device="cpu").fit(
        [(torch.rand(8, 3, 16, 16), torch.randint(0, 3, (8,))) for _ in range(2)])
    save_model(student, tmp_path / "saved")
    assert json.loads((tmp_path / "saved" / "config.json").read_text())["model_type"] == "vit"
    native = AutoModelForImageClassification.from_pretrained(tmp_path / "saved").eval()
    ours = distill.load_student(tmp_path / "saved")
    assert torch.allclose(native(x).logits, student.eval()(x).logits, atol=1e-6)
    assert torch.allclose(logits_of(ours(x)), native(x).logits, atol=1e-6)


def test_hf_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="no such folder"):
        build_model(f"hf:{tmp_path / 'nothing'}/", {}, (3, 16, 16), 2)


def test_recipe_with_torchvision_teacher_and_timm_student_runs_end_to_end(tmp_path, tiny_recipe):
    r = dict(tiny_recipe)
    r["data"] = {"name": "digits", "params": {"layout": "image"}, "batch_size": 32,
                 "transforms": {"size": 32, "channels": 3, "crop": "random", "crop_padding": 2, "normalize": "none"}}
    r["teacher"] = {"model": {"name": "torchvision:resnet18"}, "train": {"epochs": 1, "max_steps": 3}}
    r["student"] = {"model": {"name": "timm:mobilenetv3_small_050"}}
    r["methods"] = [{"name": "kd"}]
    r["train"] = {"epochs": 1, "max_steps": 3}
    summary = distill.run(r, show_table=False, log=lambda m: None)
    run = tmp_path / "runs" / "tiny"
    assert summary["students"]["kd"]["best_selected_on"] == "val" and summary["best_selected_on"] == "val"
    assert (run / "student" / "distill.json").is_file() and (run / "student" / "config.json").is_file()
    back = distill.load_student(run / "student")
    assert logits_of(back(torch.rand(2, 3, 32, 32))).shape == (2, 10)
