"""engine.strategy=fsdp: two gloo processes shard the student (per repeated block) and the frozen
teacher with torch FSDP2 and give the weights of one process with the same global batch.

Two levels:
- the engine alone (this file is also the worker script, run under torchrun): a student and a
  teacher made of repeated blocks; parity with a plain single-process loop computed in the same
  worker, the teacher's parameters split between the ranks, full weights in checkpoints, plain
  modules after `finish()`, and exact resume: a phase abandoned after step 3 (no finish, as if its
  processes had died) is resumed from its step-2 checkpoint by fresh modules and a fresh engine,
  and a NaN loss on one process skips that step on both;
- the CLI: `distill run --nproc 2 engine.strategy=fsdp` on a classifier recipe (kd with the live,
  sharded teacher, and fitnet with taps on both), SIGKILLed in the middle of kd and finished with
  `--resume`, against `distill run` in one process.

Tolerance: 1e-5 absolute on the weights (observed: about 1e-7). One process and two shards compute
the same mean gradient but sum it in a different order (per-rank means, then the reduce-scatter
average), which moves the last float32 bits, and those differences compound over the steps. The
CLI recipe uses SGD with momentum: with Adam, parameters whose gradients are close to zero (dead
conv channels) turn such bit-level differences into updates of up to the learning rate, and on
this convnet both DDP and FSDP then end about 1e-3 away from one process (and equal to each other).
"""
import copy
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

STEPS, ACCUM, GLOBAL_BATCH = 6, 2, 16


def _fsdp_available() -> bool:
    try:
        import torch.distributed as dist
        from torch.distributed.fsdp import fully_shard  # noqa: F401
    except ImportError:
        return False
    return dist.is_available() and dist.is_gloo_available()


pytestmark = pytest.mark.skipif(not _fsdp_available(), reason="needs torch.distributed with gloo and FSDP2")


# ---------------------------------------------------------------------- engine-level worker
class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.lin = nn.Linear(d, d)

    def forward(self, h):
        return h + torch.tanh(self.lin(h))


class Net(nn.Module):
    def __init__(self, d, n_blocks, d_in=8, classes=5):
        super().__init__()
        self.inp = nn.Linear(d_in, d)
        self.blocks = nn.ModuleList(Block(d) for _ in range(n_blocks))
        self.head = nn.Linear(d, classes)

    def features(self, x):
        h = self.inp(x)
        for b in self.blocks:
            h = b(h)
        return h

    def forward(self, x):
        return self.head(self.features(x))


class Distil(nn.Module):
    """Student + teacher (held by reference, as the methods do): CE + T^2 KL. Like the llm methods,
    it calls parts of the student and reads the teacher's head weights directly."""

    def __init__(self, student, teacher, temperature=2.0):
        super().__init__()
        self.student, self.teacher, self.t = student, teacher, temperature

    def forward(self, batch):
        z = self.student.head(self.student.features(batch["x"]))
        with torch.no_grad():
            t = self.teacher.module
            zt = nn.functional.linear(t.features(batch["x"]), t.head.weight, t.head.bias)
        kl = nn.functional.kl_div(nn.functional.log_softmax(z / self.t, -1), nn.functional.log_softmax(zt / self.t, -1),
                                  log_target=True, reduction="batchmean")
        return {"ce": nn.functional.cross_entropy(z, batch["y"]), "kd": kl * self.t ** 2}


def _data():
    g = torch.Generator().manual_seed(3)
    n = STEPS * ACCUM * GLOBAL_BATCH
    return torch.randn(n, 8, generator=g), torch.randint(0, 5, (n,), generator=g)


def _models():
    from distill.teacher import Teacher

    torch.manual_seed(0)
    student = Net(16, 3)
    teacher_net = Net(32, 6)
    return student, Teacher(teacher_net)


def _engine_cfg():
    from distill.config import EngineConfig

    return EngineConfig(device="cpu", strategy="fsdp", progress=False, log_every=1, checkpoint_every=2,
                        grad_accum=ACCUM, clip_grad_norm=0.5)


def _train_cfg():
    from distill.config import TrainConfig

    return TrainConfig.model_validate({"epochs": 1, "optimizer": {"name": "adamw", "lr": 0.01},
                                       "schedule": {"name": "cosine"}})


def _reference(student, teacher_net):
    """The same training in one process, with a hand-written loop on full global batches."""
    from distill.engine import build_optimizer, build_scheduler
    from distill.teacher import Teacher

    method = Distil(copy.deepcopy(student), Teacher(copy.deepcopy(teacher_net)))
    opt = build_optimizer(_train_cfg().optimizer, method.parameters())
    sched = build_scheduler(_train_cfg().schedule, opt, STEPS)
    x, y = _data()
    for i in range(STEPS * ACCUM):
        sl = slice(i * GLOBAL_BATCH, (i + 1) * GLOBAL_BATCH)
        terms = method({"x": x[sl], "y": y[sl]})
        (sum(terms.values()) / ACCUM).backward()
        if (i + 1) % ACCUM == 0:
            torch.nn.utils.clip_grad_norm_(method.parameters(), 0.5)
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
    return method.student.state_dict()


def _phase(out: Path, rec: dict, *, stop_at: int | None = None, nan_at: int | None = None):
    """One training phase under FSDP in `out`; resumes from its checkpoints. `stop_at`: abandon the
    phase after that many steps (no finish(), as if the processes had died). `nan_at`: make the loss
    of that micro-batch NaN on rank 1 only."""
    from torch.distributed.fsdp import FSDPModule

    from distill.dist import local_numel, rank, world_size
    from distill.engine import Engine

    student, teacher = _models()
    engine = Engine(_engine_cfg(), out, seed=0, name="kd")
    method = Distil(student, teacher)
    x, y = _data()
    per = GLOBAL_BATCH // world_size()
    batches = [{"x": x[i:i + GLOBAL_BATCH][rank() * per:(rank() + 1) * per],
                "y": y[i:i + GLOBAL_BATCH][rank() * per:(rank() + 1) * per]} for i in range(0, len(x), GLOBAL_BATCH)]
    model, opt, sched = engine.start(method, _train_cfg(), batches_per_epoch=len(batches))
    rec.update({"teacher_numel": sum(p.numel() for p in teacher.module.parameters()),
                "teacher_local": local_numel(teacher.module), "student_numel": sum(p.numel() for p in student.parameters()),
                "student_local": local_numel(student), "resumed_at": engine.step_count,
                "units": sorted(n for n, m in model.named_modules() if isinstance(m, FSDPModule)),
                "teacher_units": sorted(n for n, m in teacher.module.named_modules() if isinstance(m, FSDPModule))})
    for i, batch in enumerate(engine.batches(batches, 1, max_steps=stop_at)):
        terms = model(batch)
        if i == nan_at and rank() == 1:
            terms["kd"] = terms["kd"] * float("nan")
        engine.step(terms)
        if engine.step_count == 3:  # evaluation in the middle of training: the student alone
            with torch.no_grad():
                rec["eval_mid"] = float(student(x[:32]).sum())
        engine.checkpoint_if_due(model, opt, sched)
    if stop_at is not None:
        return None
    engine.finish()
    rec["bad_steps"] = engine.bad_steps
    rec["plain_after"] = not any(isinstance(m, FSDPModule) for m in list(method.modules()) + list(teacher.module.modules()))
    final = {k: v.clone() for k, v in student.state_dict().items()}
    rec["types_after"] = sorted({type(v).__name__ for v in final.values()})
    if rank() == 0:
        ck = torch.load(engine.latest_checkpoint(), map_location="cpu", weights_only=True)
        rec["checkpoint_step"] = ck["loop"]["step"]
        rec["checkpoint_shapes_full"] = all(ck["model"]["student." + k].shape == v.shape for k, v in final.items())
        rec["checkpoint_equals_final"] = all(torch.equal(ck["model"]["student." + k], v) for k, v in final.items())
        with torch.no_grad():  # one process alone can run the released modules (no collectives)
            rec["main_alone"] = float(student(x[:4]).sum() + teacher(x[:4]).sum())
    return final


def _worker(out: Path) -> None:
    from distill.dist import barrier, rank

    student, teacher = _models()
    ref = _reference(student, teacher.module)
    rec: dict = {}
    final = _phase(out / "a", rec)
    rec["max_diff_vs_one_process"] = max((final[k] - ref[k]).abs().max().item() for k in ref)
    # a phase abandoned after step 3 (last checkpoint: step 2), then resumed by fresh modules and engine
    _phase(out / "b", {}, stop_at=3)
    resumed: dict = {}
    final_b = _phase(out / "b", resumed)
    rec["resumed_at"] = resumed["resumed_at"]
    rec["resumed_equal"] = all(torch.equal(final[k], final_b[k]) for k in final)
    # a NaN loss on one process only: the step is skipped on both, and training goes on
    nan: dict = {}
    final_c = _phase(out / "c", nan, nan_at=5)
    rec["nan_bad_steps"] = nan["bad_steps"]
    rec["nan_finite"] = all(bool(torch.isfinite(v).all()) for v in final_c.values())
    rec["nan_changed"] = any(not torch.equal(final[k], final_c[k]) for k in final)
    (out / f"rank{rank()}.json").write_text(json.dumps(rec))
    barrier()


def _torchrun(out: Path, env=None):
    base = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "DISTILL_RUN_DIR")}
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**base, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([src, base.get("PYTHONPATH", "")]),
           **(env or {})}
    with socket.socket() as sock:  # a free loopback port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
                           "--master_addr=127.0.0.1", f"--master_port={port}", __file__, str(out)],
                          capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.slow
def test_engine_fsdp_shards_teacher_matches_one_process_and_resumes(tmp_path):
    run = _torchrun(tmp_path)
    assert run.returncode == 0, run.stderr[-4000:]
    recs = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for rec in recs:
        # the frozen teacher is split: each process holds about half of its parameter elements
        assert rec["teacher_local"] < 0.55 * rec["teacher_numel"], rec
        assert rec["student_local"] < 0.55 * rec["student_numel"], rec
        # blocks are units; the teacher's input layer and head stay whole, the method is the student's root unit
        assert rec["teacher_units"] == [f"blocks.{i}" for i in range(6)]
        assert rec["units"] == ["", "student.blocks.0", "student.blocks.1", "student.blocks.2"]
        assert rec["max_diff_vs_one_process"] < 1e-5, rec
        assert rec["plain_after"] and rec["types_after"] == ["Tensor"]
        assert rec["resumed_at"] == 2 and rec["resumed_equal"], rec
        assert rec["bad_steps"] == 0 and rec["nan_bad_steps"] == 1 and rec["nan_finite"] and rec["nan_changed"], rec
    outside_blocks = 8 * 32 + 32 + 32 * 5 + 5  # the teacher's input layer and head, on both processes
    assert sum(r["teacher_local"] for r in recs) == recs[0]["teacher_numel"] + outside_blocks
    assert recs[0]["eval_mid"] == recs[1]["eval_mid"]
    assert recs[0]["checkpoint_step"] == STEPS and recs[0]["checkpoint_shapes_full"]
    assert recs[0]["checkpoint_equals_final"], "checkpoint holds the gathered student weights"
    assert "main_alone" in recs[0]
    lines = [json.loads(l) for l in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    info = [l for l in lines if "fsdp/teacher_params_local" in l]
    assert len(info) == 1 and info[0]["fsdp/teacher_params_local"] == [[r["teacher_local"]] for r in recs]


def test_fsdp_needs_several_processes():
    from distill.config import EngineConfig
    from distill.engine import Engine
    from distill.errors import ConfigError

    with pytest.raises(ConfigError, match="--nproc N"):
        Engine(EngineConfig(device="cpu", strategy="fsdp", progress=False), None)


# ---------------------------------------------------------------------- end to end through the CLI
RECIPE = {
    "name": "fsdp", "family": "classifier", "seed": 0,
    "data": {"name": "digits", "params": {"layout": "image"}, "batch_size": 64, "drop_last": True},
    "teacher": {"model": {"name": "convnet", "params": {"width": 16, "depth": 2}}, "train": {"epochs": 1}},
    "student": {"model": {"name": "convnet", "params": {"width": 8, "depth": 2}}},
    "methods": [
        {"name": "kd"},
        {"name": "fitnet", "params": {"student_layer": "features.2", "teacher_layer": "features.6",
                                      "projector_norm": False}},
    ],
    "train": {"epochs": 1, "max_steps": 8, "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9}},
    "engine": {"device": "cpu", "progress": False, "log_every": 1, "eval_every": 4, "clip_grad_norm": 1.0},
    "eval": {"latency_runs": 1},
}


def _run(tmp_path, name, *extra, env=None, fails=False):
    cfg = dict(RECIPE, output_dir=str(tmp_path / "runs"), cache_dir=str(tmp_path / "cache"))
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(cfg))
    base = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "DISTILL_RUN_DIR")}
    out = subprocess.run([sys.executable, "-m", "distill.cli.main", "run", str(path), f"name={name}", *extra],
                         capture_output=True, text=True, timeout=600, env={**base, "OMP_NUM_THREADS": "1", **(env or {})})
    assert (out.returncode != 0) if fails else (out.returncode == 0), out.stderr[-3000:]
    return tmp_path / "runs" / name


@pytest.mark.slow
def test_cli_fsdp_two_processes_killed_resumed_equal_one_process(tmp_path):
    from distill.models.io import load_model

    single = _run(tmp_path, "single")
    fsdp = ("--nproc", "2", "engine.strategy=fsdp", "engine.checkpoint_every=3")
    # both processes are SIGKILLed right after step 5 of kd (last checkpoint: step 3), then resumed
    killed = _run(tmp_path, "fsdp", *fsdp, env={"DISTILL_FAULT_STEP": "5", "DISTILL_FAULT_PHASE": "kd"}, fails=True)
    assert (killed / "students" / "kd" / "checkpoints" / "latest").read_text().strip() == "step_00000003.pt"
    assert not (killed / "students" / "kd" / "model.safetensors").exists()
    sharded = _run(tmp_path, "fsdp", *fsdp, "--resume")
    for method in ("kd", "fitnet"):
        a = load_model(single / "students" / method).state_dict()
        b = load_model(sharded / "students" / method).state_dict()
        for k in a:
            assert torch.allclose(a[k], b[k], atol=1e-5, rtol=0), (method, k, (a[k] - b[k]).abs().max())
    lines = [json.loads(l) for l in (sharded / "metrics.jsonl").read_text().splitlines()]
    for method in ("kd", "fitnet"):
        info = [l for l in lines if l["phase"] == method and "fsdp/teacher_params_local" in l]
        assert len(info) == (2 if method == "kd" else 1)  # kd started twice (killed, resumed)
        total, local = info[-1]["fsdp/teacher_params"][0], [r[0] for r in info[-1]["fsdp/teacher_params_local"]]
        assert sum(local) == total and max(local) < 0.55 * total  # each process holds about half the teacher
    hints = [l["loss/hint"] for l in lines if l["phase"] == "fitnet" and "loss/hint" in l]
    assert len(hints) == 8 and min(hints) > 1e-3  # taps on the sharded teacher read real features
    evals = [l for l in lines if l["phase"] == "kd" and "eval/accuracy" in l]
    assert [l["step"] for l in evals] == [4, 8]
    summary = json.loads((sharded / "summary.json").read_text())
    assert set(summary["students"]) == {"kd", "fitnet"}


if __name__ == "__main__":  # a worker of the engine-level test (started by torchrun)
    _worker(Path(sys.argv[1]))
