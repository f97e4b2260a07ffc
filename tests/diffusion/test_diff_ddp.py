"""Two gloo processes (DDP on CPU): the fake denoiser of DMD / SiD, which lives outside the DDP module
tree with its own optimiser, stays equal across the processes when each trains on its own data."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("ddp_fake_worker.py")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dmd", "sid"])
def test_diff_ddp_fake_denoisers_stay_equal_across_processes(tmp_path, name):
    out = tmp_path / "out.json"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    with socket.socket() as sock:              # a free loopback port, as `distill run --nproc` takes one
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
                          "--master_addr=127.0.0.1", f"--master_port={port}", str(WORKER), str(out), name], capture_output=True, text=True, timeout=300,
                         env={**env, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[:4000] + "\n...\n" + run.stderr[-1500:]
    res = json.loads(out.read_text())
    assert res["fake_moved"] > 1e-4            # the fake denoiser did train
    assert res["student"] == 0.0               # DDP keeps the students equal (a check of the setup)
    assert res["fake"] == 0.0, res             # and the fake denoisers are equal too
