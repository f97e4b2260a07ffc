"""The `distill` command line (typer)."""
