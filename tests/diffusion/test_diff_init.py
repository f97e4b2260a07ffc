"""init_from_teacher copies the teacher's weights only where they mean the same thing: a student
read under another parameterisation than the teacher's is refused with an error naming the field."""
import pytest
import torch

from distill.errors import ConfigError
from distill.families.diffusion.base import DiffusionContext
from distill.families.diffusion.nets import TimeMLP
from distill.families.diffusion.process import Process
from distill.registry import methods
from distill.teacher import Teacher


def build(name, teacher_param, student_param, kind="vp", **params):
    torch.manual_seed(0)
    teacher = Teacher(TimeMLP(2, hidden=16, depth=2))
    ctx = DiffusionContext(Process(kind), teacher_param, student_param, 8, 1, total_steps=4, seed=0)
    small = {"progressive": {"start_steps": 4}, "consistency": {"grid_steps": 8, "skip": 2},
             "reflow": {"pairs": 16}}.get(name, {})
    return methods.get(name, "diffusion").builder(TimeMLP(2, hidden=16, depth=2), teacher, ctx, **small, **params)


@pytest.mark.parametrize("name", ["progressive", "consistency", "reflow", "dmd", "sid"])
@pytest.mark.parametrize("kind,tp,sp", [("vp", "eps", "x0"), ("flow", "velocity", "x0"), ("flow", "eps", "velocity")])
def test_diff_init_refuses_a_teacher_of_another_parameterisation(name, kind, tp, sp):
    with pytest.raises(ConfigError, match="student.param") as err:
        build(name, tp, sp, kind)
    msg = str(err.value)
    assert tp in msg and sp in msg and "init_from_teacher: false" in msg


def test_diff_init_same_parameterisation_copies_and_other_one_from_scratch():
    m = build("consistency", "eps", "eps")
    assert m.initialised_from_teacher
    assert all(torch.equal(a, b) for a, b in zip(m.student.parameters(), m._teacher.module.parameters()))
    m = build("consistency", "eps", "x0", init_from_teacher=False)
    assert not m.initialised_from_teacher
    assert not all(torch.equal(a, b) for a, b in zip(m.student.parameters(), m._teacher.module.parameters()))


def test_diff_init_error_through_the_runner(tmp_path):
    from distill.api import run

    r = {"name": "tiny", "family": "diffusion", "output_dir": str(tmp_path / "runs"), "cache_dir": str(tmp_path / "cache"),
         "data": {"name": "toy2d", "params": {"name": "8gaussians"}, "batch_size": 32},
         "teacher": {"model": {"name": "toy_mlp", "params": {"hidden": 16, "depth": 2}}, "process": "vp", "param": "eps",
                     "steps": 4, "train": {"max_steps": 2}},
         "student": {"param": "x0", "steps": 1},
         "methods": [{"name": "consistency", "params": {"grid_steps": 8, "skip": 2}}],
         "train": {"max_steps": 2}, "eval": {"samples": 20, "steps": [1], "projections": 8},
         "engine": {"device": "cpu", "progress": False}}
    with pytest.raises(ConfigError, match="student.param"):
        run(r, log=lambda m: None, show_table=False)
