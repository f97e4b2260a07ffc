"""Class labels on the recipe path: a batch's "y" (what the runner's loader yields for labelled data)
makes every method run class-conditionally, exactly as the image benchmark's explicit
`conditioning(y)` around each call does; an unconditional teacher ignores them."""
import pytest
import torch

from distill.config import OptimizerConfig, ScheduleConfig, TrainConfig
from distill.families.diffusion.base import DiffusionContext
from distill.families.diffusion.config import DiffusionRunConfig
from distill.families.diffusion.nets import TimeMLP
from distill.families.diffusion.process import Process
from distill.families.diffusion.runner import fit
from distill.families.diffusion.unet import conditioning, current_labels
from distill.registry import methods
from distill.teacher import Teacher

from diff_helpers import THREE, ConditionalMixtureDenoiser, LabeledMixtureSource

PROCESS = Process("flow")
SOURCE = LabeledMixtureSource(THREE, 0.3)
SMALL = {"progressive": {"start_steps": 4}, "consistency": {"grid_steps": 8, "skip": 2},
         "reflow": {"pairs": 64, "distill_fraction": 0.5}, "dmd": {"fake_updates": 2, "regression_weight": 0.5,
                                                                   "regression_pairs": 32, "gan_weight": 0.1},
         "sid": {"fake_updates": 1}}
NAMES = list(SMALL)


class Spy(ConditionalMixtureDenoiser):
    """The exact conditional teacher, recording the labels of every call (None: the null class)."""

    def __init__(self, *a):
        super().__init__(*a)
        self.seen = []

    def forward(self, x, t):
        y = current_labels()
        self.seen.append(None if y is None else (y.shape[0] == x.shape[0], int(y.max())))
        return super().forward(x, t)


def make(name, teacher_net=None):
    torch.manual_seed(0)
    teacher = Teacher(teacher_net if teacher_net is not None else ConditionalMixtureDenoiser(PROCESS, THREE, 0.3))
    ctx = DiffusionContext(PROCESS, "x0", "velocity", 4, 1, total_steps=6, seed=0)
    student = TimeMLP(2, hidden=16, depth=2, num_classes=3)
    return methods.get(name, "diffusion").builder(student, teacher, ctx, **SMALL[name])


def run(method, labels_in_batch: bool, steps=3):
    opt = torch.optim.Adam(method.trainable_parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    torch.manual_seed(2)
    method.train()
    out = []
    for i in range(steps):
        x0, y = SOURCE.sample_labeled(32, g)
        batch = {"x0": x0, "z": torch.randn(x0.shape, generator=g), "step": i}
        if labels_in_batch:      # the recipe path: the runner's loader puts the labels in the batch
            terms = method({**batch, "y": y})
        else:                    # the image benchmark: labels set around the call
            with conditioning(y):
                terms = method(batch)
        loss = sum(method.weights.get(k, 1.0) * v for k, v in terms.items())
        opt.zero_grad()
        loss.backward()
        opt.step()
        out.append({k: float(v.detach()) for k, v in terms.items()})
    return out


@pytest.mark.parametrize("name", NAMES)
def test_diff_batch_labels_equal_the_benchmarks_conditioning(name):
    recipe, bench = run(make(name), True), run(make(name), False)
    assert recipe == bench
    # and the labels matter: without them (null class) the terms differ
    torch.manual_seed(0)
    none = make(name)
    uncond = []
    g = torch.Generator().manual_seed(1)
    none.train()
    x0, _ = SOURCE.sample_labeled(32, g)
    torch.manual_seed(2)
    uncond = {k: float(v.detach()) for k, v in none({"x0": x0, "z": torch.randn(x0.shape, generator=g), "step": 0}).items()}
    assert uncond != recipe[0]


def cfg() -> DiffusionRunConfig:
    return DiffusionRunConfig.model_validate(
        {"name": "labels", "family": "diffusion", "data": {"name": "toy2d", "batch_size": 16},
         "engine": {"device": "cpu", "progress": False}})


@pytest.mark.parametrize("name", NAMES)
def test_diff_runner_fit_trains_class_conditionally(name):
    spy = Spy(PROCESS, THREE, 0.3)
    method = make(name, spy)
    train = TrainConfig(max_steps=2, optimizer=OptimizerConfig(lr=1e-3), schedule=ScheduleConfig(name="constant"))
    fit(method, method.trainable_parameters(), SOURCE, train, cfg(), seed=0, out_dir=None, name=name)
    assert spy.seen and all(s is not None and s[0] for s in spy.seen), spy.seen[:5]
    assert all(s[1] < 3 for s in spy.seen)                 # real classes, never the null label


def test_diff_runner_measures_class_conditional_recipes_conditionally(tmp_path):
    """A class-conditional recipe (teacher.labels) with a non-guidance method: summary.json has the
    conditional distances, and the teacher's equals a recomputation under the reference labels."""
    from distill.api import run
    from distill.eval.distributions import sliced_wasserstein
    from distill.families.diffusion.process import ddim_sample
    from distill.families.diffusion.toys import toy2d

    r = {"name": "cond", "family": "diffusion", "output_dir": str(tmp_path / "runs"), "cache_dir": str(tmp_path / "cache"),
         "data": {"name": "toy2d", "params": {"name": "8gaussians"}, "batch_size": 64},
         "teacher": {"model": {"name": "toy_mlp", "params": {"hidden": 32, "depth": 2, "num_classes": 8}},
                     "labels": True, "steps": 8, "train": {"max_steps": 60, "optimizer": {"lr": 0.003}}},
         "student": {"steps": 1},
         "methods": [{"name": "consistency", "params": {"grid_steps": 8, "skip": 2}}],
         "train": {"max_steps": 10}, "eval": {"samples": 300, "steps": [1, 2], "projections": 32, "seed": 7},
         "engine": {"device": "cpu", "progress": False}}
    s = run(r, log=lambda m: None, show_table=False)
    m = s["students"]["consistency"]
    assert {"swd_cond@1", "swd_cond@2", "swd_cond_teacher@1"} <= set(m)
    assert {"swd_cond", "swd_cond@1", "swd_cond_teacher@2"} <= set(s["teacher"])
    # recompute the teacher's conditional distance from its cached weights
    folder = next((tmp_path / "cache" / "diffusion_teachers").iterdir())
    net = TimeMLP(2, hidden=32, depth=2, num_classes=8)
    net.load_state_dict(torch.load(folder / "teacher.pt", weights_only=True))
    g = torch.Generator().manual_seed(7)
    ref, y = toy2d("8gaussians").sample_labeled(300, g)
    z = torch.randn(ref.shape, generator=g)
    with torch.no_grad(), conditioning(y):
        x = ddim_sample(Teacher(net), PROCESS, z, 8, "velocity")
    assert s["teacher"]["swd_cond"] == pytest.approx(sliced_wasserstein(x, ref, 32), abs=1e-6)
