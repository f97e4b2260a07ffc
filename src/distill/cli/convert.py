"""`distill convert llama2c IN.bin --tokenizer tok.model OUT_DIR`: a llama2.c checkpoint as a
transformers `LlamaForCausalLM` folder (the conversion: `distill.families.llm.convert`)."""
from __future__ import annotations

from pathlib import Path

import typer

from distill.families.llm.convert import convert_llama2c

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Convert checkpoints into transformers folders.")


@app.command("llama2c")
def llama2c(
    checkpoint: Path = typer.Argument(..., help="llama2.c checkpoint, e.g. stories260K.bin"),
    out_dir: Path = typer.Argument(..., help="output folder (transformers format)"),
    tokenizer: Path | None = typer.Option(None, "--tokenizer", help="SentencePiece model, e.g. tok512.model"),
) -> None:
    """Convert a llama2.c checkpoint (+ SentencePiece tokenizer) into a LlamaForCausalLM folder."""
    from distill.cli.common import fail

    for p in (checkpoint, tokenizer):
        if p is not None and not Path(p).is_file():
            fail(f"convert llama2c: {p} is not a file.")
    try:
        model = convert_llama2c(checkpoint, out_dir, tokenizer)
    except ValueError as e:
        fail(str(e))
        return
    n = sum(p.numel() for p in model.parameters())
    typer.echo(f"wrote {out_dir} (LlamaForCausalLM, {n:,} parameters)")
