"""What every subcommand shares: `fail` prints an error and exits (2 by default)."""
from __future__ import annotations

import typer


def fail(msg: str, code: int = 2) -> None:
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True).print("[bold red]error:[/bold red] " + escape(msg), highlight=False)  # `[x]` is text
    raise typer.Exit(code)
