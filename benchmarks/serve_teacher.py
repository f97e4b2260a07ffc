"""The served teacher under load: latency, throughput and correctness with many clients.

Teacher stories260K (llama2.c, converted to a transformers folder), served by `distill
serve-teacher` in its own process on loopback. Each client is a thread with its own `RemoteTeacher`
and a bounded loop of requests: one row of `--tokens` random token ids, top-`--k` log-probs at
temperature 1. Every reply is checked against the same request run alone in this process: top-k
indices equal and log-probs within 1e-4 (batched forwards round differently in the last bits); a
reply lost, duplicated or given to the wrong client would fail this check. Configurations: batching
across clients off (`--max-batch 1`) and on (`--max-batch 32 --batch-wait-ms 2`), with 1 and 16
clients; each configuration is run `--repeats` times (a fresh server each time), mean +- std.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/serve_teacher.py --repeats 3

The server and the clients share this machine's cores, so the figures are those of a loopback setup,
not of a dedicated teacher machine.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
ASSETS = Path(os.environ.get("DISTILL_ASSETS", ROOT.parent / "shared" / "assets"))


def start_server(model_dir: Path, port: int, max_batch: int, wait_ms: float) -> subprocess.Popen:
    cmd = [sys.executable, "-c", "from distill.cli.main import main; main()", "serve-teacher", str(model_dir),
           "--port", str(port), "--max-k", "64", "--device", "cpu", "--max-batch", str(max_batch),
           "--batch-wait-ms", str(wait_ms)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for _ in range(600):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/info", timeout=1).read()
            return proc
        except OSError:
            if proc.poll() is not None:
                raise SystemExit(f"the server did not start: {proc.stderr.read()}")
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the server did not answer within 60 s")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_config(model_dir: Path, teacher, clients: int, requests: int, tokens: int, k: int, max_batch: int,
               wait_ms: float, seed: int) -> dict:
    from distill.serve import RemoteTeacher, topk_logprobs

    port = free_port()
    proc = start_server(model_dir, port, max_batch, wait_ms)
    url = f"http://127.0.0.1:{port}"
    vocab = RemoteTeacher(url).info["vocab_size"]
    latencies: list[list[float]] = [[] for _ in range(clients)]
    replies: list[list[tuple[torch.Tensor, object]]] = [[] for _ in range(clients)]
    errors: list[str] = []
    barrier = threading.Barrier(clients + 1)

    def client(c: int) -> None:
        remote = RemoteTeacher(url, timeout=120)
        g = torch.Generator().manual_seed(seed * 1000 + c)
        batch = [torch.randint(3, vocab, (1, tokens), generator=g) for _ in range(requests)]
        barrier.wait()
        for ids in batch:
            t0 = time.perf_counter()
            try:
                got = remote.topk(ids, k=k)
            except Exception as e:  # noqa: BLE001 - counted as a lost reply
                errors.append(f"client {c}: {e}")
                continue
            latencies[c].append(time.perf_counter() - t0)
            replies[c].append((ids, got))

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    stats = json.loads(urllib.request.urlopen(f"{url}/v1/stats", timeout=10).read())
    proc.terminate()
    proc.wait(timeout=30)
    wrong = 0
    for rs in replies:
        for ids, got in rs:
            alone = topk_logprobs(teacher, ids, None, k)
            if not torch.equal(alone.indices, got.indices) or (alone.logprobs - got.logprobs).abs().max() > 1e-4:
                wrong += 1
    lat = sorted(x for ls in latencies for x in ls)
    answered = len(lat)
    return {"wall_s": wall, "answered": answered, "expected": clients * requests, "wrong": wrong,
            "errors": errors[:3], "p50_ms": 1000 * lat[len(lat) // 2],
            "p99_ms": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))],
            "req_s": answered / wall, "tok_s": answered * tokens / wall,
            "forwards": stats["forwards"], "served_requests": stats["requests"]}


def ms(vals: list[float], fmt: str = "{:.1f}") -> str:
    if len(vals) < 2:
        return fmt.format(vals[0])
    return f"{fmt.format(statistics.mean(vals))} +- {fmt.format(statistics.stdev(vals))}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--requests", type=int, default=20, help="requests per client")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--out", type=Path, default=None, help="also write the table (markdown) here")
    args = ap.parse_args()

    from distill.families.llm.convert import convert_llama2c
    from distill.families.llm.models import load_causal_lm
    from distill.teacher import Teacher

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "stories260K"
        convert_llama2c(ASSETS / "stories260K" / "stories260K.bin", model_dir, ASSETS / "stories260K" / "tok512.model")
        teacher = Teacher(load_causal_lm(str(model_dir)))
        rows = []
        for clients in args.clients:
            for label, max_batch, wait in [("off", 1, 0.0), ("on", 32, 2.0)]:
                runs = [run_config(model_dir, teacher, clients, args.requests, args.tokens, args.k, max_batch, wait, r)
                        for r in range(args.repeats)]
                ok = all(r["answered"] == r["expected"] and r["wrong"] == 0 for r in runs)
                rows.append((clients, label, runs, ok))
                print(f"clients {clients} batching {label}: {ms([r['req_s'] for r in runs])} req/s, "
                      f"p50 {ms([r['p50_ms'] for r in runs])} ms, replies correct: {ok}", flush=True)
                for r in runs:
                    if r["errors"]:
                        print("  errors:", r["errors"])
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    lines = [f"stories260K teacher, {args.tokens} tokens per request (one row), k = {args.k}, {args.requests} "
             f"requests per client, {args.repeats} repeats (fresh server each), code {commit}, "
             f"{os.cpu_count()} CPU cores shared by server and clients", "",
             "| clients | batching | p50 latency ms | p99 latency ms | requests/s | tokens/s | forwards per request "
             "| replies answered / correct |",
             "|---|---|---|---|---|---|---|---|"]
    for clients, label, runs, ok in rows:
        answered = sum(r["answered"] for r in runs)
        expected = sum(r["expected"] for r in runs)
        wrong = sum(r["wrong"] for r in runs)
        lines.append(f"| {clients} | {label} | {ms([r['p50_ms'] for r in runs])} | {ms([r['p99_ms'] for r in runs])} "
                     f"| {ms([r['req_s'] for r in runs])} | {ms([r['tok_s'] for r in runs], '{:.0f}')} "
                     f"| {ms([r['forwards'] / max(1, r['served_requests']) for r in runs], '{:.2f}')} "
                     f"| {answered}/{expected} answered, {answered - wrong} correct |")
    table = "\n".join(lines)
    print()
    print(table)
    if args.out:
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
