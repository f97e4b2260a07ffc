"""LLM distillation benchmarks (not tests).

quality: teacher stories260K (real, pretrained; converted from llama2.c), a Llama student about 4x
smaller, training text sampled from the teacher; SFT (CE only, same data) vs token_kd with each
divergence, on_policy (GKD) and seq_kd; several seeds; held-out and out-of-domain
(tinyshakespeare) bits per byte, teacher top-1 agreement, ECE. One `distill.run` per seed.

    OMP_NUM_THREADS=1 python benchmarks/llm.py quality --seeds 0 1 2

memory: peak memory of one forward+backward of the token-level loss at (batch 4, seq 1024) for
vocabularies 32k and 128k: dense logits, chunked over positions from logits, chunked from hidden
states (logits never materialised), and top-k from hidden states. CUDA peak allocator statistics
when a GPU is there, else the CPU process's peak RSS growth (one subprocess per variant).

    python benchmarks/llm.py memory
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

DIVERGENCES = ["forward_kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl", "tvd"]


def quality_recipe(seed: int, args) -> dict:
    methods = [{"name": "sft", "label": "sft"}]
    methods += [{"name": "token_kd", "label": f"kd-{d}", "params": {"divergence": d}} for d in DIVERGENCES]
    methods += [{"name": "on_policy", "label": "on_policy", "params": {"lmbda": 0.5, "divergence": "jsd", "beta": 0.5,
                                                                       "max_new_tokens": args.gen_tokens}},
                {"name": "seq_kd", "label": "seq_kd", "params": {"max_new_tokens": args.gen_tokens, "temperature": 0.0}}]
    if args.methods:
        methods = [m for m in methods if m["label"] in args.methods]
    return {
        "name": f"llm-bench-s{seed}", "family": "llm", "seed": seed,
        "output_dir": str(args.out), "cache_dir": str(args.out / "cache"),
        "teacher": {"path": "$DISTILL_ASSETS/stories260K/stories260K.bin",
                    "tokenizer": "$DISTILL_ASSETS/stories260K/tok512.model"},
        # about 4x fewer parameters than the teacher (260K): dim 48, 2 layers
        "student": {"arch": "llama", "hidden_size": 48, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2,
                    "intermediate_size": 128},
        "data": {"source": "teacher", "num_samples": args.train_samples, "eval_samples": args.eval_samples,
                 "sample_tokens": args.sample_tokens, "seq_len": args.sample_tokens + 1, "batch_size": 16,
                 "eval_batch_size": 32, "prompt_tokens": 8,
                 "ood_path": "$DISTILL_ASSETS/text/tinyshakespeare.txt", "ood_max_chars": 20000},
        "train": {"epochs": args.epochs, "optimizer": {"name": "adamw", "lr": 0.003},
                  "schedule": {"name": "cosine", "warmup_steps": 10}},
        "engine": {"device": "cpu", "progress": False, "log_every": 50},
        "eval": {"samples": 2, "sample_tokens": 40},
        "methods": methods,
    }


def quality(args) -> None:
    import distill

    args.out.mkdir(parents=True, exist_ok=True)
    summaries = []
    for seed in args.seeds:
        t0 = time.perf_counter()
        s = distill.run(quality_recipe(seed, args), overwrite=True, show_table=False)
        s["wall_s"] = time.perf_counter() - t0
        summaries.append(s)
        (args.out / f"summary-s{seed}.json").write_text(json.dumps(s, indent=2))
        print(f"seed {seed}: {s['wall_s']:.0f}s", flush=True)
    table = quality_table(summaries)
    (args.out / "results.md").write_text(table)
    print(table)


def _ms(vals: list[float], fmt: str = "{:.3f}") -> str:
    if len(vals) == 1:
        return fmt.format(vals[0])
    return fmt.format(statistics.mean(vals)) + " +- " + fmt.format(statistics.stdev(vals))


def quality_table(summaries: list[dict]) -> str:
    cols = [("bits_per_byte", "held-out bits/byte"), ("ood_bits_per_byte", "tinyshakespeare bits/byte"),
            ("teacher_agreement", "top-1 agreement"), ("ece", "ECE")]
    lines = ["| model | params | " + " | ".join(c[1] for c in cols) + " |", "|---|---|" + "---|" * len(cols)]
    t = [s["teacher"] for s in summaries]
    lines.append(f"| teacher (stories260K) | {t[0]['params']:,} | " + " | ".join(
        _ms([x[c] for x in t]) if c in t[0] else "-" for c, _ in cols) + " |")
    for label in summaries[0]["students"]:
        m = [s["students"][label] for s in summaries]
        lines.append(f"| {label} | {m[0]['params']:,} | " + " | ".join(_ms([x[c] for x in m]) for c, _ in cols) + " |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- memory

VARIANTS = ["dense", "chunked_logits", "chunked_hidden", "topk_hidden"]


def memory_one(variant: str, vocab: int, batch: int, seq: int, dim: int, chunk: int, k: int, device: str) -> float:
    """Peak bytes above the inputs for one forward+backward of forward KL."""
    import torch

    from distill.losses import divergence
    from distill.losses.lm import hidden_divergence

    torch.manual_seed(0)
    hs = torch.randn(batch, seq, dim, device=device, requires_grad=True)
    ws = (torch.randn(vocab, dim, device=device) * 0.05).requires_grad_(True)
    ht = torch.randn(batch, seq, dim, device=device)
    wt = torch.randn(vocab, dim, device=device) * 0.05
    mask = torch.ones(batch, seq, dtype=torch.bool, device=device)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_peak()
    if variant == "dense":
        loss = divergence(hs @ ws.T, ht @ wt.T, mask=mask)
    elif variant == "chunked_logits":
        loss = divergence(hs @ ws.T, ht @ wt.T, mask=mask, chunk_size=chunk)
    elif variant == "chunked_hidden":
        loss = hidden_divergence(hs, ws, ht, wt, mask=mask, chunk_size=chunk, reduction="mean")
    else:
        loss = hidden_divergence(hs, ws, ht, wt, mask=mask, chunk_size=chunk, top_k=k, reduction="mean")
    loss.backward()
    if device == "cuda":
        torch.cuda.synchronize()
        return float(torch.cuda.max_memory_allocated() - base)
    return float(_rss_peak() - base)


def _rss_peak() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def memory(args) -> None:
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = []
    for vocab in args.vocabs:
        res = {}
        for v in VARIANTS:
            cmd = [sys.executable, __file__, "memory-one", v, str(vocab), str(args.batch), str(args.seq), str(args.dim),
                   str(args.chunk), str(args.k), device]
            t0 = time.perf_counter()
            out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
            if out.returncode != 0:
                raise SystemExit(out.stderr)
            res[v] = (float(out.stdout.strip().splitlines()[-1]), time.perf_counter() - t0)
        rows.append((vocab, res))
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU (peak RSS growth)"
    lines = [f"device: {name}; batch {args.batch}, seq {args.seq}, hidden {args.dim}, chunk {args.chunk} positions, "
             f"top-k {args.k}; forward KL, fp32", "",
             "| vocab | " + " | ".join(f"{v} (GiB)" for v in VARIANTS) + " | chunked_hidden / dense | topk_hidden / dense |",
             "|---|" + "---|" * (len(VARIANTS) + 2)]
    for vocab, res in rows:
        d = res["dense"][0]
        lines.append(f"| {vocab:,} | " + " | ".join(f"{res[v][0] / 2**30:.3f}" for v in VARIANTS)
                     + f" | {res['chunked_hidden'][0] / d:.3f} | {res['topk_hidden'][0] / d:.3f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out_file:
        Path(args.out_file).write_text(text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("quality")
    q.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    q.add_argument("--out", type=Path, default=ROOT / "runs" / "bench" / "llm")
    q.add_argument("--train-samples", type=int, default=600)
    q.add_argument("--eval-samples", type=int, default=100)
    q.add_argument("--sample-tokens", type=int, default=192)
    q.add_argument("--gen-tokens", type=int, default=64)
    q.add_argument("--epochs", type=int, default=3)
    q.add_argument("--methods", nargs="*", default=None, help="labels to keep (default: all)")
    m = sub.add_parser("memory")
    m.add_argument("--vocabs", type=int, nargs="+", default=[32000, 128000])
    m.add_argument("--batch", type=int, default=4)
    m.add_argument("--seq", type=int, default=1024)
    m.add_argument("--dim", type=int, default=512)
    m.add_argument("--chunk", type=int, default=256)
    m.add_argument("--k", type=int, default=64)
    m.add_argument("--out-file", default=None)
    one = sub.add_parser("memory-one")
    for a in ("variant", "vocab", "batch", "seq", "dim", "chunk", "k", "device"):
        one.add_argument(a)
    args = p.parse_args()
    if args.cmd == "quality":
        quality(args)
    elif args.cmd == "memory":
        memory(args)
    else:
        print(memory_one(args.variant, int(args.vocab), int(args.batch), int(args.seq), int(args.dim), int(args.chunk),
                         int(args.k), args.device))


if __name__ == "__main__":
    main()
