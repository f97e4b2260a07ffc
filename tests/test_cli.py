import subprocess
import sys

from typer.testing import CliRunner

from distill.cli.main import app


def test_list_methods_models_datasets_show_family_and_description():
    runner = CliRunner()
    out = runner.invoke(app, ["list", "methods"], terminal_width=200)
    assert out.exit_code == 0
    assert "kd" in out.output and "classifier" in out.output and "Hinton" in out.output
    out = runner.invoke(app, ["list", "models"], terminal_width=200)
    assert "resnet_cifar" in out.output and "convnet" in out.output
    out = runner.invoke(app, ["list", "datasets"], terminal_width=200)
    assert "fashion_mnist" in out.output and "digits" in out.output


def test_list_unknown_kind_exits_2():
    out = CliRunner().invoke(app, ["list", "metods"])
    assert out.exit_code == 2 and "methods" in out.output


def test_import_distill_does_not_import_torch():
    code = "import sys, distill; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
