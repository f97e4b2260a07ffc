"""engine.compile: the trained network's forward goes through torch.compile (in place), the run's
results are those of the eager run (the `eager` backend changes no arithmetic), and the saved
student has the plain state-dict keys."""
import copy
from pathlib import Path

import torch
from safetensors.torch import load_file

import distill


def test_compiled_run_equals_the_eager_run_and_saves_plain_keys(tmp_path, tiny_recipe):
    import torch._dynamo

    recipe = copy.deepcopy(tiny_recipe)
    recipe["methods"] = [{"name": "kd", "params": {"temperature": 4.0, "alpha": 0.9}}]
    eager = distill.run({**recipe, "output_dir": str(tmp_path / "a")}, log=lambda m: None)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    comp = copy.deepcopy(recipe)
    comp["engine"] = {**comp["engine"], "compile": True, "compile_backend": "eager"}
    comp["output_dir"] = str(tmp_path / "b")
    compiled = distill.run(comp, log=lambda m: None)
    assert torch._dynamo.utils.counters["frames"]["ok"] > 0          # dynamo did capture the forward
    assert compiled["students"]["kd"]["accuracy"] == eager["students"]["kd"]["accuracy"]
    a = load_file(Path(eager["run_dir"]) / "students" / "kd" / "model.safetensors")
    b = load_file(Path(compiled["run_dir"]) / "students" / "kd" / "model.safetensors")
    assert a.keys() == b.keys() and not any("_orig_mod" in k for k in b)
    assert all(torch.equal(a[k], b[k]) for k in a)
