"""`distill serve-teacher MODEL_DIR`: serve a causal LM's top-k log-probs on loopback."""
from __future__ import annotations

from typing import Optional

import typer


def serve_teacher(
    model_dir: str = typer.Argument(..., help="a transformers causal-LM folder (e.g. made by `distill convert`)"),
    host: str = typer.Option("127.0.0.1", "--host", help="bind address (loopback unless --allow-remote)"),
    port: int = typer.Option(8765, "--port"),
    max_k: int = typer.Option(64, "--max-k", min=1, help="largest k a client may ask for"),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda"),
    allow_remote: bool = typer.Option(False, "--allow-remote", help="allow a non-loopback bind address (needs --token)"),
    token: Optional[str] = typer.Option(None, "--token", envvar="DISTILL_SERVE_TOKEN",
                                        help="bearer token every request must carry (required off loopback)"),
    max_batch: int = typer.Option(32, "--max-batch", min=1,
                                  help="rows per teacher forward, batched across clients (1: no batching)"),
    max_tokens: int = typer.Option(65536, "--max-tokens", min=1,
                                   help="most tokens in one request and in one batched forward"),
    batch_wait_ms: float = typer.Option(2.0, "--batch-wait-ms", min=0.0,
                                        help="how long a request waits for others to batch with"),
) -> None:
    """Serve the teacher's top-k log-probabilities by token id over HTTP (POST /v1/topk)."""
    from distill.cli.common import fail
    from distill.engine import resolve_device
    from distill.errors import DistillError
    from distill.families.llm.models import load_causal_lm
    from distill.families.llm.served import head_topk_logprobs
    from distill.serve import make_server
    from distill.teacher import Teacher

    try:
        dev = resolve_device(device)
        teacher = Teacher(load_causal_lm(model_dir, "model_dir"))
        server = make_server(teacher, host, port, max_k, dev, allow_remote, token=token, max_batch=max_batch,
                             max_tokens=max_tokens, batch_wait_ms=batch_wait_ms, topk=head_topk_logprobs)
    except DistillError as e:
        fail(str(e))
    auth = "bearer token required" if token else "no token"
    typer.echo(f"serving {model_dir} on http://{server.server_address[0]}:{server.server_address[1]} "
               f"(teacher {teacher.fingerprint()}, max k {max_k}, batches of up to {max_batch} rows, {auth}); "
               "Ctrl-C to stop")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
