"""`distill serve-teacher MODEL_DIR`: serve a causal LM's top-k log-probs on loopback."""
from __future__ import annotations

import typer


def serve_teacher(
    model_dir: str = typer.Argument(..., help="a transformers causal-LM folder (e.g. made by `distill convert`)"),
    host: str = typer.Option("127.0.0.1", "--host", help="bind address (loopback unless --allow-remote)"),
    port: int = typer.Option(8765, "--port"),
    max_k: int = typer.Option(64, "--max-k", min=1, help="largest k a client may ask for"),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda"),
    allow_remote: bool = typer.Option(False, "--allow-remote", help="allow a non-loopback bind address"),
) -> None:
    """Serve the teacher's top-k log-probabilities by token id over HTTP (POST /v1/topk)."""
    from distill.cli.common import fail
    from distill.engine import resolve_device
    from distill.errors import DistillError
    from distill.families.llm.models import load_causal_lm
    from distill.serve import make_server
    from distill.teacher import Teacher

    try:
        dev = resolve_device(device)
        teacher = Teacher(load_causal_lm(model_dir, "model_dir"))
        server = make_server(teacher, host, port, max_k, dev, allow_remote)
    except DistillError as e:
        fail(str(e))
    typer.echo(f"serving {model_dir} on http://{server.server_address[0]}:{server.server_address[1]} "
               f"(teacher {teacher.fingerprint()}, max k {max_k}); Ctrl-C to stop")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        server.server_close()
