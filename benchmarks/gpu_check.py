"""CUDA checks of the core, for a machine with a GPU (not part of the test suite).

    python benchmarks/gpu_check.py

1. Divergences at language-model size in bf16: dense vs chunked vs top-k, values, gradients,
   peak memory and time (forward + backward).
2. The engine's precision paths (fp32, bf16 autocast, fp16 with loss scaling) on the quickstart
   recipe, on the GPU.
"""
from __future__ import annotations

import tempfile
import time

import torch

import distill
from distill.losses import divergence


def loss_memory():
    dev = "cuda"
    B, T, V = 4, 1024, 32000
    g = torch.Generator(device=dev).manual_seed(0)
    t = (torch.randn(B, T, V, device=dev, generator=g) * 2).bfloat16()
    base = (t.float() + torch.randn(B, T, V, device=dev, generator=g)).bfloat16()
    mask = torch.rand(B, T, device=dev, generator=g) > 0.1
    print(f"\n## divergences, bf16 logits ({B}x{T}x{V}), forward + backward on {torch.cuda.get_device_name()}")
    print("| kind | support | value | max abs grad diff vs dense | peak extra MiB | ms |")
    print("|---|---|---|---|---|---|")
    for kw in ({}, {"chunk_size": 512}, {"top_k": 64}):  # warm-up: first calls pay CUDA start-up
        w = base[:1, :64].clone().requires_grad_()
        divergence(w, t[:1, :64], mask=mask[:1, :64], **kw).backward()
    for kind in ("forward_kl", "jsd"):
        ref_grad = None
        for label, kw in (("dense", {}), ("chunked 512", {"chunk_size": 512}), ("top-k 64", {"top_k": 64})):
            s = base.clone().requires_grad_()
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            t0 = time.perf_counter()
            d = divergence(s, t, kind, mask=mask, temperature=1.0, **kw)
            d.backward()
            torch.cuda.synchronize()
            ms = 1000 * (time.perf_counter() - t0)
            peak = (torch.cuda.max_memory_allocated() - before) / 2**20
            grad = s.grad.float()
            diff = "-" if ref_grad is None else f"{(grad - ref_grad).abs().max().item():.2e}"
            if ref_grad is None:
                ref_grad = grad
            print(f"| {kind} | {label} | {d.item():.6f} | {diff} | {peak:.0f} | {ms:.1f} |")
            del s, d, grad


def autocast_probe():
    """The dtype a student layer computes in during training, at each engine precision."""
    from distill.config import EngineConfig, TrainConfig
    from distill.data.digits import digits
    from distill.families.classifier.runner import train_phase
    from distill.methods.scratch import Scratch
    from distill.models.io import build_model

    b = digits(layout="flat")
    print("\n## dtype of a student layer's output during training")
    for prec in ("fp32", "bf16", "fp16"):
        m = build_model("mlp", {"hidden": [32]}, (64,), 10)
        seen = set()
        m.head.register_forward_hook(lambda mod, i, o: seen.add(str(o.dtype)) if mod.training else None)
        e = train_phase(Scratch(m), b.train, b.test, TrainConfig(epochs=1), EngineConfig(device="cuda", precision=prec,
                        progress=False), batch_size=64, seed=0, out_dir=None)
        print(f"{prec}: {sorted(seen)}, scaler={e.accelerator.scaler is not None}, acc={e.history[-1]['accuracy']:.2f}")


def engine_precisions():
    print("\n## quickstart recipe on the GPU, by engine precision (digits, 60 epochs)")
    print("| precision | teacher acc | scratch acc | kd acc | wall s |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for prec in ("fp32", "bf16", "fp16"):
            t0 = time.perf_counter()
            s = distill.run("recipes/quickstart.yaml", [f"engine.precision={prec}", "engine.device=cuda",
                                                       f"output_dir={tmp}/runs", f"cache_dir={tmp}/cache",
                                                       f"name=gpu-{prec}", "engine.progress=false"],
                            show_table=False, log=lambda m: None)
            wall = time.perf_counter() - t0
            st = s["students"]
            print(f"| {prec} | {s['teacher']['accuracy']:.2f} | {st['scratch']['accuracy']:.2f} | "
                  f"{st['kd']['accuracy']:.2f} | {wall:.1f} |")


if __name__ == "__main__":
    print(f"torch {torch.__version__}, cuda {torch.version.cuda}")
    loss_memory()
    autocast_probe()
    engine_precisions()
