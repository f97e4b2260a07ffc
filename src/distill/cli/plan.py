"""`distill plan RECIPE`: the estimated peak memory per device of each placement, before anything runs."""
from __future__ import annotations

from typing import List, Optional

import typer

from distill.cli.common import fail


def plan(
    recipe: str = typer.Argument(..., help="an llm recipe YAML"),
    overrides: Optional[List[str]] = typer.Argument(None, help="key.sub=value overrides"),
    devices: int = typer.Option(1, "--devices", min=1, help="devices (processes) the run would use"),
    memory: Optional[float] = typer.Option(None, "--memory", min=0.01,
                                           help="GiB of one device (default: this machine's first GPU, else its RAM)"),
    as_json: bool = typer.Option(False, "--json", help="print the plan as JSON (sizes in bytes) instead of a table"),
) -> None:
    """Estimate the peak memory per device of an llm recipe for each placement of the teacher
    (colocated, offloaded, fsdp, cached, served), and say which one fits; exits 1 when none does."""
    from rich.console import Console

    from distill.config import load_config
    from distill.errors import DistillError

    try:
        cfg = load_config(recipe, list(overrides or []))
        if cfg.family != "llm":
            raise DistillError(f"family: `distill plan` estimates llm recipes; this one is {cfg.family!r}.")
        from distill.families.llm.plan import (GiB, choose, current, device_memory, gib, plan as estimate,
                                               report, table)

        placements, s, t = estimate(cfg, devices)
        mem, what = (memory * GiB, "--memory") if memory else device_memory(cfg.engine.device)
        picked = choose(placements, mem)
        asked = current(cfg, devices)
        if as_json:
            import json

            typer.echo(json.dumps(report(cfg, devices, placements, s, t, mem, what, picked, asked), indent=2))
            if picked is None:
                raise typer.Exit(1)
            return
        con = Console()
        if not con.is_terminal:  # a pipe or a file: room for every column
            con = Console(width=140)
        con.print(f"student: {s.params:,} parameters ({s.trainable:,} trained), teacher: "
                  + (f"{t.params:,} parameters" if t is not None and t.params
                     else "the student's base, adapter off (no second copy)" if cfg.teacher.student_base
                     else "served, not held here")
                  + f"; batch {cfg.data.batch_size} x {cfg.data.seq_len} tokens on {devices} device(s)")
        con.print(table(placements, mem, what, picked, asked))
        if picked is None:
            con.print("no placement fits: lower data.batch_size or data.seq_len, use a LoRA student, or serve the "
                      "teacher from another machine")
            raise typer.Exit(1)
        con.print(f"picked: {picked.name} ({picked.note}), estimated peak {gib(picked.peak)}"
                  + ("" if picked.name == asked else f"; the recipe as written asks for {asked}"))
    except DistillError as e:
        fail(str(e))
