"""Worker for test_diff_ddp.py (run by torchrun, 2 gloo processes): a DMD / SiD method wrapped in DDP
trains a few optimiser steps with grad_accum 2, each process on its own data and noise; rank 0
writes how far the processes' fake denoisers (outside the DDP module tree) and students are apart.

    python -m torch.distributed.run --nnodes 1 --nproc_per_node 2 --master_addr 127.0.0.1 --master_port PORT ddp_fake_worker.py OUT.json NAME
"""
import contextlib
import faulthandler
import json
import os
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from diff_helpers import TWO, MixtureDenoiser, MixtureSource  # noqa: E402

from distill.families.diffusion.base import DiffusionContext  # noqa: E402
from distill.families.diffusion.nets import TimeMLP  # noqa: E402
from distill.families.diffusion.process import Process  # noqa: E402
from distill.registry import methods  # noqa: E402
from distill.teacher import Teacher  # noqa: E402

PARAMS = {"dmd": {"fake_updates": 2, "gan_weight": 0.1}, "sid": {"fake_updates": 1}}


def flat(params) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in params])


def spread(v: torch.Tensor) -> float:
    """max |v_rank - v_0| over the processes."""
    out = [torch.empty_like(v) for _ in range(dist.get_world_size())]
    dist.all_gather(out, v)
    return max(float((o - out[0]).abs().max()) for o in out)


def main(out: str, name: str) -> None:
    faulthandler.enable()                     # an abort in a collective prints where it happened
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)                      # the same initial weights everywhere
    process = Process("flow")
    teacher = Teacher(MixtureDenoiser(process, TWO, 0.3))
    ctx = DiffusionContext(process, "x0", "velocity", 8, 1, total_steps=8, seed=0)
    method = methods.get(name, "diffusion").builder(TimeMLP(2, hidden=16, depth=2), teacher, ctx, **PARAMS[name])
    fake0 = flat(method.fake.parameters())
    model = DistributedDataParallel(method)
    opt = torch.optim.Adam(method.trainable_parameters(), lr=3e-3)
    torch.manual_seed(100 + rank)             # each process its own noise and data, as in data parallelism
    g = torch.Generator().manual_seed(10 + rank)
    src = MixtureSource(TWO, 0.3)
    method.train()
    for step in range(3):
        for micro in range(2):                # grad_accum 2: gradients reduced at the last micro-batch
            x0 = src.sample(32, g)
            sync = contextlib.nullcontext() if micro == 1 else model.no_sync()
            with sync:
                terms = model({"x0": x0, "z": torch.randn(x0.shape, generator=g), "step": step})
                loss = sum(method.weights.get(k, 1.0) * v for k, v in terms.items())
                (loss / 2).backward()
        opt.step()
        opt.zero_grad()
    res = {"fake": spread(flat(method.fake.parameters())), "student": spread(flat(method.student.parameters())),
           "fake_moved": float((flat(method.fake.parameters()) - fake0).abs().max())}
    if rank == 0:
        with open(out, "w") as f:
            json.dump(res, f)
    dist.barrier()
    dist.destroy_process_group()
    # The result is written. The interpreter's own teardown after a gloo run sometimes aborts in this
    # torch build ("terminate called without an active exception", no Python frame left), which would
    # fail the check on the exit code alone; leave without it.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
