"""LLM distillation benchmarks (not tests).

quality: teacher stories260K (real, pretrained; converted from llama2.c), a Llama student about 4x
smaller, training text sampled from the teacher; SFT (CE only, same data) vs token_kd with each
divergence, on_policy (GKD) and seq_kd; several seeds; held-out and out-of-domain
(tinyshakespeare) bits per byte, teacher top-1 agreement, ECE. One `distill.run` per seed.

    OMP_NUM_THREADS=1 python benchmarks/llm.py quality --seeds 0 1 2

Each seed's results go to `<out>/summary-s<seed>.json` together with the protocol (sizes, epochs)
that produced them; running a seed again with some `--methods` replaces those methods and keeps
the others, so a grid can be filled in several invocations. `table` merges the summaries of one
protocol into a mean +- std table (one row per method, with the number of seeds behind it):

    python benchmarks/llm.py table --seeds 0 1 2

memory: peak memory of one forward+backward of the token-level loss at (batch 4, seq 1024) for
vocabularies 32k and 128k: dense logits, chunked over positions from logits, chunked from hidden
states (logits never materialised), and top-k from hidden states. CUDA peak allocator statistics
when a GPU is there, else the CPU process's peak RSS growth (one subprocess per variant).

    python benchmarks/llm.py memory

generation: tokens per second of the generation that `seq_kd`, `redi`, `data.source: teacher`
(the teacher) and `on_policy` (the student) use: transformers' `generate` one prompt at a time,
on left-padded batches with its KV cache (`teacher.generation: hf`, what `sample` does), the same
batches without the cache, and vLLM's offline engine (`teacher.generation: vllm`) where vllm and a
GPU are there. Greedy, every continuation exactly `--new-tokens` long (EOS switched off), the
median of `--repeats` timed calls after a warm-up call.

    python benchmarks/llm.py generation
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
METHOD_ORDER = ["sft"] + [f"kd-{d}" for d in DIVERGENCES] + ["on_policy", "seq_kd"]


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


def protocol_of(args) -> dict:
    """What must agree between summaries before they are averaged."""
    return {"train_samples": args.train_samples, "eval_samples": args.eval_samples,
            "sample_tokens": args.sample_tokens, "gen_tokens": args.gen_tokens, "epochs": args.epochs}


def summary_path(out: Path, seed: int) -> Path:
    return out / f"summary-s{seed}.json"


def merge_summary(old: dict | None, new: dict) -> dict:
    """`new` with the students of `old` it did not retrain (same protocol only)."""
    if old is None:
        return new
    if old.get("protocol") != new["protocol"]:
        raise SystemExit(f"seed {new['seed']}: the summary already there was made with protocol {old.get('protocol')}, "
                         f"not {new['protocol']}; use another --out.")
    students = {**old["students"], **new["students"]}
    wall = {**old.get("wall_s_by_run", {}), **new["wall_s_by_run"]}
    best = min(students, key=lambda k: students[k]["bits_per_byte"])
    return {**new, "students": students, "wall_s_by_run": wall, "best": best}


def quality(args) -> None:
    import distill

    args.out.mkdir(parents=True, exist_ok=True)
    protocol = protocol_of(args)
    for seed in args.seeds:
        t0 = time.perf_counter()
        s = distill.run(quality_recipe(seed, args), overwrite=True, show_table=False)
        wall = time.perf_counter() - t0
        s.update(seed=seed, protocol=protocol, wall_s=wall,
                 wall_s_by_run={"+".join(s["students"]): wall})  # which methods ran together, and for how long
        path = summary_path(args.out, seed)
        old = json.loads(path.read_text()) if path.is_file() else None
        s = merge_summary(old, s)
        path.write_text(json.dumps(s, indent=2))
        print(f"seed {seed}: {wall:.0f}s", flush=True)
    summaries = load_summaries(args.out, None, protocol)
    table = quality_table(summaries, args.methods)
    (args.out / "results.md").write_text(table)
    print(table)


def load_summaries(out: Path, seeds: list[int] | None, protocol: dict | None = None) -> list[dict]:
    """The per-seed summaries in `out` (all seeds found when `seeds` is None), checked to share one
    protocol (the given one, else that of the first)."""
    if seeds is None:
        paths = sorted(out.glob("summary-s*.json"), key=lambda p: int(p.stem.split("-s")[-1]))
    else:
        paths = [summary_path(out, s) for s in seeds]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise SystemExit(f"no summary for: {', '.join(missing)}")
    summaries = [json.loads(p.read_text()) for p in paths]
    if not summaries:
        raise SystemExit(f"no summary-s*.json in {out}")
    want = protocol if protocol is not None else summaries[0].get("protocol")
    odd = [f"{p.name}: {s.get('protocol')}" for p, s in zip(paths, summaries) if s.get("protocol") != want]
    if odd:
        if seeds is None and protocol is not None:  # the table of this invocation's protocol only
            summaries = [s for s in summaries if s.get("protocol") == want]
        else:
            raise SystemExit(f"summaries made with another protocol than {want}: " + "; ".join(odd))
    return summaries


def _ms(vals: list[float], fmt: str = "{:.3f}") -> str:
    if len(vals) == 1:
        return fmt.format(vals[0])
    return fmt.format(statistics.mean(vals)) + " +- " + fmt.format(statistics.stdev(vals))


def quality_table(summaries: list[dict], methods: list[str] | None = None) -> str:
    """mean +- std (sample std) over the summaries that have each method; `seeds` lists them."""
    cols = [("bits_per_byte", "held-out bits/byte"), ("ood_bits_per_byte", "tinyshakespeare bits/byte"),
            ("teacher_agreement", "top-1 agreement"), ("ece", "ECE")]
    lines = ["| model | params | seeds | " + " | ".join(c[1] for c in cols) + " |", "|---|---|---|" + "---|" * len(cols)]

    def row(name: str, runs: list[tuple[int, dict]]) -> str:
        m = [x for _, x in runs]
        seeds = ",".join(str(sd) for sd, _ in runs)
        return (f"| {name} | {m[0]['params']:,} | {seeds} | "
                + " | ".join(_ms([x[c] for x in m]) if c in m[0] else "-" for c, _ in cols) + " |")

    lines.append(row("teacher (stories260K)", [(s.get("seed", i), s["teacher"]) for i, s in enumerate(summaries)]))
    labels: list[str] = []
    for s in summaries:
        labels += [k for k in s["students"] if k not in labels]
    order = [lab for lab in METHOD_ORDER if lab in labels] + [lab for lab in labels if lab not in METHOD_ORDER]
    for label in order:
        if methods and label not in methods:
            continue
        lines.append(row(label, [(s.get("seed", i), s["students"][label]) for i, s in enumerate(summaries)
                                 if label in s["students"]]))
    walls = [f"s{s['seed']}: {sum(s['wall_s_by_run'].values()):.0f}s" for s in summaries if "wall_s_by_run" in s]
    if walls:
        lines += ["", "wall time per seed (all its invocations): " + ", ".join(walls)]
    return "\n".join(lines) + "\n"


def table(args) -> None:
    summaries = load_summaries(args.out, args.seeds)
    text = quality_table(summaries, args.methods)
    if args.out_file:
        Path(args.out_file).write_text(text)
    print(text)


# ---------------------------------------------------------------- memory

VARIANTS = ["dense", "chunked_logits", "chunked_hidden", "topk_hidden"]


def _inputs(vocab: int, batch: int, seq: int, dim: int, device: str, dtype: str = "fp32"):
    """The student's hidden states and head (requiring grad) and the teacher's, seeded, in `dtype`."""
    import torch

    dt = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    torch.manual_seed(0)
    hs = torch.randn(batch, seq, dim, device=device).to(dt).requires_grad_(True)
    ws = (torch.randn(vocab, dim, device=device) * 0.05).to(dt).requires_grad_(True)
    ht = torch.randn(batch, seq, dim, device=device).to(dt)
    wt = (torch.randn(vocab, dim, device=device) * 0.05).to(dt)
    return hs, ws, ht, wt


def memory_one(variant: str, vocab: int, batch: int, seq: int, dim: int, chunk: int, k: int, device: str) -> float:
    """Peak bytes above the inputs for one forward+backward of forward KL."""
    import torch

    from distill.losses import divergence
    from distill.losses.lm import hidden_divergence

    hs, ws, ht, wt = _inputs(vocab, batch, seq, dim, device)
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


PEERS = ["trl_dense", "ours_chunked_hidden", "ours_recompute", "liger_fused"]


def peer_one(variant: str, vocab: int, batch: int, seq: int, dim: int, chunk: int, repeats: int, device: str,
             dtype: str = "fp32") -> dict:
    """Generalized JSD (beta 0.5) forward + backward from the same hidden states and heads: TRL's
    `generalized_jsd_loss` on the logits, ours from the hidden states (`hidden_divergence`, chunked:
    the default fused gradients, or `fused=False`, checkpointed chunks), or Liger-Kernel's fused
    linear JSD (CUDA). Peak bytes above the inputs (first call), the median
    seconds of `repeats` more calls, and the loss (mean per token)."""
    import statistics

    import torch

    hs, ws, ht, wt = _inputs(vocab, batch, seq, dim, device, dtype)
    labels = torch.zeros(batch, seq, dtype=torch.long, device=device)
    if variant == "trl_dense":
        from trl.experimental.gkd.gkd_trainer import GKDTrainer

        def step():
            return GKDTrainer.generalized_jsd_loss(hs @ ws.T, ht @ wt.T, labels=labels, beta=0.5)
    elif variant in ("ours_chunked_hidden", "ours_recompute"):
        from distill.losses.lm import hidden_divergence

        mask = labels != -100
        fused = variant == "ours_chunked_hidden"

        def step():
            return hidden_divergence(hs, ws, ht, wt, "jsd", beta=0.5, mask=mask, chunk_size=chunk, reduction="mean",
                                     fused=fused)
    else:
        from liger_kernel.transformers import LigerFusedLinearJSD

        # Liger weighs the mixture the other way round: its jsd_beta is 1 - TRL's beta (0.5 either way)
        fused = LigerFusedLinearJSD(jsd_beta=0.5)

        def step():
            return fused(hs.reshape(-1, dim), ws, ht.reshape(-1, dim), wt, labels.reshape(-1))

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    sync()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_peak()
    loss = step()
    loss.backward()
    sync()
    peak = float(torch.cuda.max_memory_allocated() - base) if device == "cuda" else float(_rss_peak() - base)
    times = []
    for _ in range(repeats):
        hs.grad = ws.grad = None
        sync()
        t0 = time.perf_counter()
        step().backward()
        sync()
        times.append(time.perf_counter() - t0)
    return {"peak": peak, "seconds": statistics.median(times), "loss": float(loss.detach())}


def peers(args) -> None:
    import json as _json

    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    variants = [v for v in PEERS if v != "liger_fused" or device == "cuda"]
    rows = []
    for vocab, batch in zip(args.vocabs, args.batches):
        res = {}
        for v in variants:
            cmd = [sys.executable, __file__, "peer-one", v, str(vocab), str(batch), str(args.seq), str(args.dim),
                   str(args.chunk), str(args.repeats), device, args.dtype]
            env = {**os.environ, "PYTHONPATH": str(ROOT / "src")
                   + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else "")}
            if device == "cpu":  # glibc: every block over 128 KiB mmapped and returned when freed, so that the
                env.update(MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="0")  # RSS peak is the tensors' peak
            out = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if out.returncode != 0:
                raise SystemExit(f"{v}: {out.stderr[-2000:]}")
            res[v] = _json.loads(out.stdout.strip().splitlines()[-1])
        rows.append((vocab, batch, res))
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU (peak RSS growth)"
    lines = [f"device: {name}; generalized JSD beta 0.5, forward + backward from hidden states, seq {args.seq}, hidden "
             f"{args.dim}, {args.dtype}, ours {args.chunk} positions per chunk; time: median of {args.repeats}", "",
             "| vocab | batch | " + " | ".join(f"{v} GiB / s" for v in variants) + " | ours / TRL memory | ours / TRL time | loss (ours, TRL) |",
             "|---|---|" + "---|" * (len(variants) + 3)]
    for vocab, batch, res in rows:
        o, t = res["ours_chunked_hidden"], res["trl_dense"]
        lines.append(f"| {vocab:,} | {batch} | " + " | ".join(f"{res[v]['peak'] / 2**30:.3f} / {res[v]['seconds']:.2f}"
                                                          for v in variants)
                     + f" | {o['peak'] / t['peak']:.3f}x | {o['seconds'] / t['seconds']:.2f}x | "
                       f"{o['loss']:.6f}, {t['loss']:.6f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out_file:
        Path(args.out_file).write_text(text)


GEN_MODELS = {  # name -> how it is made: the real teacher, the quality benchmark's student, a 32k-vocabulary Llama
    "stories260K": None,
    "student-48x2": {"vocab": 512, "hidden_size": 48, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2,
                     "intermediate_size": 128},
    "llama-512x8-v32k": {"vocab": 32000, "hidden_size": 512, "num_layers": 8, "num_heads": 8,
                         "intermediate_size": 1408},
}


def _gen_model(name: str, folder: Path):
    """The model `name`, written to `folder` (vLLM loads a folder) and returned in eval mode."""
    import torch

    from distill.families.llm.convert import convert_llama2c
    from distill.families.llm.models import build_student
    from distill.utils import assets_dir

    spec = GEN_MODELS[name]
    if spec is None:
        model = convert_llama2c(assets_dir() / "stories260K" / "stories260K.bin", folder)
    else:
        torch.manual_seed(0)
        spec = dict(spec)
        model = build_student("llama", spec.pop("vocab"), 1, 2, max_positions=1024, **spec)
        model.save_pretrained(folder)
    model.generation_config.eos_token_id = None  # every continuation is --new-tokens long (vLLM reads the folder's)
    model.generation_config.save_pretrained(folder)
    return model.eval()


def generation(args) -> None:
    import tempfile

    import torch

    from distill.families.llm.base import sample
    from distill.families.llm.generation import vllm_available, vllm_generate

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.threads:
        torch.set_num_threads(args.threads)
    use_vllm = vllm_available() and not args.no_vllm
    rows = []
    for name in args.models:
        with tempfile.TemporaryDirectory() as tmp:
            model = _gen_model(name, Path(tmp)).to(device)
            vocab = model.get_output_embeddings().weight.shape[0]
            g = torch.Generator().manual_seed(0)
            prompts = torch.randint(3, vocab, (args.prompts, args.prompt_tokens), generator=g)
            n_params = sum(p.numel() for p in model.parameters())

            def hf(batch: int, cache: bool = True):
                def call():
                    made = 0
                    for i in range(0, args.prompts, batch):
                        ids = prompts[i:i + batch].to(device)
                        mask = torch.ones_like(ids)
                        if cache:
                            conts = sample(model, ids, mask, max_new_tokens=args.new_tokens, temperature=0.0,
                                           eos_id=None, pad_id=0)
                            made += sum(len(c) for c in conts)
                        else:
                            with torch.no_grad():
                                out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                                                     max_new_tokens=args.new_tokens, pad_token_id=0, use_cache=False)
                            made += (out.shape[1] - ids.shape[1]) * out.shape[0]
                    return made
                return call

            variants = [("hf, one prompt at a time", 1, hf(1))]
            variants += [(f"hf, batches of {b}", b, hf(b)) for b in args.batches if b > 1]
            variants += [(f"hf, batches of {b}, no KV cache", b, hf(b, cache=False)) for b in args.batches[-1:] if b > 1]
            if use_vllm:
                plist = prompts.tolist()

                def vcall():
                    conts = vllm_generate(tmp, plist, max_new_tokens=args.new_tokens, temperature=0.0, eos_id=None)
                    return sum(len(c) for c in conts)
                variants.append(("vllm, engine start included", args.prompts, vcall))
            base = None
            for label, batch, call in variants:
                call()  # warm-up
                times, made = [], 0
                for _ in range(args.repeats):
                    if device == "cuda":
                        torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    made = call()
                    if device == "cuda":
                        torch.cuda.synchronize()
                    times.append(time.perf_counter() - t0)
                if made != args.prompts * args.new_tokens and not label.startswith("vllm"):
                    raise SystemExit(f"{name} {label}: {made} tokens, expected {args.prompts * args.new_tokens}")
                tps = [made / t for t in times]
                med = statistics.median(tps)
                base = base or med
                rows.append((name, n_params, label, med, min(tps), max(tps), med / base))
                print(f"{name} {label}: {med:,.0f} tokens/s", file=sys.stderr)
            del model
    where = torch.cuda.get_device_name() if device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    lines = [f"device: {where}; {args.prompts} prompts of {args.prompt_tokens} tokens, {args.new_tokens} new tokens "
             f"each, greedy, fp32; tokens/s: median (min-max) of {args.repeats} calls after a warm-up; vllm: "
             + ("measured" if use_vllm else "not measured (needs vllm and a GPU)"), "",
             "| model | parameters | generation | tokens/s | vs one prompt at a time |", "|---|---|---|---|---|"]
    for name, n, label, med, lo, hi, rel in rows:
        lines.append(f"| {name} | {n / 1e6:.2f}M | {label} | {med:,.0f} ({lo:,.0f}-{hi:,.0f}) | {rel:.1f}x |")
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
    q.add_argument("--train-samples", type=int, default=400)
    q.add_argument("--eval-samples", type=int, default=100)
    q.add_argument("--sample-tokens", type=int, default=160)
    q.add_argument("--gen-tokens", type=int, default=64)
    q.add_argument("--epochs", type=int, default=3)
    q.add_argument("--methods", nargs="*", default=None, help="labels to keep (default: all)")
    t = sub.add_parser("table", help="mean +- std over the per-seed summaries of `quality`")
    t.add_argument("--out", type=Path, default=ROOT / "runs" / "bench" / "llm", help="the folder `quality` wrote to")
    t.add_argument("--seeds", type=int, nargs="+", default=None, help="default: every summary-s*.json there")
    t.add_argument("--methods", nargs="*", default=None, help="labels to keep (default: all)")
    t.add_argument("--out-file", default=None)
    m = sub.add_parser("memory")
    m.add_argument("--vocabs", type=int, nargs="+", default=[32000, 128000])
    m.add_argument("--batch", type=int, default=4)
    m.add_argument("--seq", type=int, default=1024)
    m.add_argument("--dim", type=int, default=512)
    m.add_argument("--chunk", type=int, default=256)
    m.add_argument("--k", type=int, default=64)
    m.add_argument("--out-file", default=None)
    pe = sub.add_parser("peers", help="generalized JSD memory and time: ours vs TRL's loss (and Liger's on CUDA)")
    pe.add_argument("--vocabs", type=int, nargs="+", default=[32000, 128000])
    pe.add_argument("--batches", type=int, nargs="+", default=[4, 2], help="one batch size per vocabulary")
    pe.add_argument("--seq", type=int, default=1024)
    pe.add_argument("--dim", type=int, default=512)
    pe.add_argument("--chunk", type=int, default=256)
    pe.add_argument("--repeats", type=int, default=3)
    pe.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="hidden states and heads")
    pe.add_argument("--out-file", default=None)
    ge = sub.add_parser("generation", help="tokens/s of hf (per prompt, batched, no cache) and vllm generation")
    ge.add_argument("--models", nargs="+", default=list(GEN_MODELS), choices=list(GEN_MODELS))
    ge.add_argument("--prompts", type=int, default=32)
    ge.add_argument("--prompt-tokens", type=int, default=16)
    ge.add_argument("--new-tokens", type=int, default=64)
    ge.add_argument("--batches", type=int, nargs="+", default=[8, 32], help="batch sizes of the batched rows")
    ge.add_argument("--repeats", type=int, default=3)
    ge.add_argument("--threads", type=int, default=0, help="torch threads on CPU (default: torch's)")
    ge.add_argument("--no-vllm", action="store_true", help="leave vllm out even where it would run")
    ge.add_argument("--out-file", default=None)
    po = sub.add_parser("peer-one")
    for a in ("variant", "vocab", "batch", "seq", "dim", "chunk", "repeats", "device", "dtype"):
        po.add_argument(a)
    one = sub.add_parser("memory-one")
    for a in ("variant", "vocab", "batch", "seq", "dim", "chunk", "k", "device"):
        one.add_argument(a)
    args = p.parse_args()
    if args.cmd == "quality":
        quality(args)
    elif args.cmd == "table":
        table(args)
    elif args.cmd == "memory":
        memory(args)
    elif args.cmd == "peers":
        peers(args)
    elif args.cmd == "generation":
        generation(args)
    elif args.cmd == "peer-one":
        print(json.dumps(peer_one(args.variant, int(args.vocab), int(args.batch), int(args.seq), int(args.dim),
                                  int(args.chunk), int(args.repeats), args.device, args.dtype)))
    else:
        print(memory_one(args.variant, int(args.vocab), int(args.batch), int(args.seq), int(args.dim), int(args.chunk),
                         int(args.k), args.device))


if __name__ == "__main__":
    main()
