"""Process-group facts for code outside the engine (runners writing files, caches).

Under `distill run --nproc N` (torchrun underneath) every process runs the same runner; only
the main process writes run-folder files, and the others wait for it where they need them.
"""
from __future__ import annotations

import os


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    """Wait for every process (no-op in a single process)."""
    if world_size() > 1:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()


class main_first:
    """`with main_first(): ...` runs the block on the main process first, then on the others
    (e.g. the main process writes a cache that the others then read)."""

    def __enter__(self):
        if not is_main():
            barrier()
        return self

    def __exit__(self, *exc):
        if is_main():
            barrier()
        return False
