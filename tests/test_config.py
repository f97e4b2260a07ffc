import subprocess
import sys

import pytest
import yaml

from distill.config import apply_overrides, load_config
from distill.errors import ConfigError


def test_valid_recipe_fills_defaults(tiny_recipe):
    cfg = load_config(tiny_recipe)
    assert cfg.methods[1].params == {"temperature": 4.0, "alpha": 0.9, "divergence": "forward_kl"}
    assert cfg.data.params["layout"] == "flat" and cfg.data.params["test_fraction"] == 0.2
    assert cfg.engine.grad_accum == 1


def test_overrides_set_nested_values_and_list_items(tiny_recipe):
    cfg = load_config(tiny_recipe, ["train.epochs=7", "methods.1.params.alpha=0.5", "engine.precision=bf16"])
    assert cfg.train.epochs == 7 and cfg.methods[1].params["alpha"] == 0.5 and cfg.engine.precision == "bf16"


def test_override_errors_are_clear():
    with pytest.raises(ConfigError, match="expected key.sub=value"):
        apply_overrides({}, ["train.epochs"])
    with pytest.raises(ConfigError, match="not an index"):
        apply_overrides({"methods": [{}]}, ["methods.3.name=kd"])


@pytest.mark.parametrize("override, expected", [
    ("train.epocs=3", r"train\.epocs: unknown key\. Did you mean: epochs"),
    ("train.epochs=many", r"train\.epochs: .*integer.*given: 'many'"),
    ("engine.precision=fp8", r"engine\.precision: .*'fp32', 'bf16' or 'fp16'"),
    ("methods.1.name=kdd", r"methods\.1\.name: unknown method 'kdd'.*Did you mean: kd.*Allowed:"),
    ("student.model.name=mlpp", r"student\.model\.name: unknown model 'mlpp'.*Did you mean: mlp"),
    ("data.name=digit", r"data\.name: unknown dataset 'digit'.*Did you mean: digits"),
    ("methods.1.params.temprature=2", r"methods\.1\.params\.temprature: unknown key for 'kd'\. Did you mean: temperature"),
    ("methods.1.params.alpha=2", r"methods\.1\.params\.alpha: .*less than or equal to 1"),
    ("teacher.checkpoint=/nonexistent/folder", r"teacher\.checkpoint: .*no model\.safetensors"),
])
def test_bad_config_is_rejected_with_field_value_and_fix(tiny_recipe, override, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config(tiny_recipe, [override])


def test_duplicate_method_labels_are_rejected(tiny_recipe):
    tiny_recipe["methods"].append({"name": "kd"})
    with pytest.raises(ConfigError, match="give one a `label`"):
        load_config(tiny_recipe)


def test_unknown_family_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="unknown family 'clasifier'.*Did you mean: classifier"):
        load_config({"family": "clasifier"})
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.yaml")


def test_cli_bad_recipe_exits_2_without_traceback(tmp_path, tiny_recipe):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe))
    proc = subprocess.run([sys.executable, "-m", "distill.cli.main", "run", str(path), "train.optimizer.name=adm"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "train.optimizer.name" in proc.stderr and "adam" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
