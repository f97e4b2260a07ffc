"""`distill bench SUITE.yaml [--dry-run] [--rerun] [--output-dir DIR] [--shard I/N]`."""
from __future__ import annotations

import shlex
import sys
from typing import Optional

import typer


def bench(
    suite: str = typer.Argument(..., help="suite YAML: recipes x methods x seeds, e.g. benchmarks/classifier.yaml"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the grid and an estimated time; run nothing"),
    rerun: bool = typer.Option(False, "--rerun", help="run every cell again (default: skip cells finished with "
                               "this recipe, these overrides and this code: version, git commit, uncommitted changes)"),
    output_dir: Optional[str] = typer.Option(None, "--output-dir", help="where cells and results go (default: the suite's)"),
    shard: Optional[str] = typer.Option(None, "--shard", help="I/N: run every N-th cell starting at the I-th, so N "
                                        "processes sharing the output folder split the grid"),
) -> None:
    """Run a benchmark grid through `distill run`; resumable; writes results.csv, results.md, results.png."""
    from rich.console import Console

    from distill.bench import dry_run_text, load_suite, parse_shard, run_suite
    from distill.cli.common import fail
    from distill.errors import DistillError

    console = Console(stderr=True)
    try:
        s = load_suite(suite, output_dir)
        part = parse_shard(shard) if shard else None
        if dry_run:
            print(dry_run_text(s))
            return
        command = "distill bench " + " ".join(shlex.quote(a) for a in sys.argv[2:])
        out = run_suite(s, log=lambda m: console.print(m, highlight=False, markup=False), rerun=rerun, command=command,
                        shard=part)
        console.print(f"results: {out['output_dir']}/results.md", highlight=False, markup=False)
    except DistillError as e:
        fail(str(e))
