"""ULD from the teacher's top-k (not a test): how far `topk_sorted_wasserstein` (what `uld` computes
from the aligned top-k cache or a served teacher) is from the exact sorted Wasserstein-1 of the
paper, which needs the teacher's whole distribution.

Teacher: stories260K (pretrained, converted from llama2.c), on held-out tinyshakespeare windows
(128 tokens each). Student distributions: the teacher's logits plus Gaussian noise of standard
deviation `--noise` (a student that agrees with the teacher on the head of the distribution and
not exactly elsewhere); one draw per seed. For each temperature and k: the exact value, the top-k
lower bound, and, for comparison, ULD against the teacher completed by spreading its tail mass
evenly over its other tokens (the maximum-entropy completion); mean over positions, then
mean +- std over seeds; the teacher's mass past rank k beside them.

    OMP_NUM_THREADS=2 python benchmarks/uld_topk.py --seeds 0 1 2

`--train`: end to end instead, on recipes/llm/cross_tokenizer_alm.yaml (stories260K into a
byte-level student; its sampled texts, sizes and optimiser): `sft` (the baseline), `uld` with the
teacher running (the paper's loss) and `uld` from the aligned top-k cache at each `--ks`, and
`alm` (ce_weight 1) with the teacher running and from the aligned cache, one run per seed;
held-out and tinyshakespeare bits per byte of the final weights (no model selection) and the wall
time of each run (teacher load, cache build, training and evaluation), mean +- std over seeds.

    OMP_NUM_THREADS=2 python benchmarks/uld_topk.py --train --seeds 0 1 2 --ks 8 32

Assets: $DISTILL_ASSETS (default ../shared/assets).
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def _ms(xs: list[float]) -> str:
    return f"{statistics.mean(xs):.4f}" + (f" +- {statistics.stdev(xs):.4f}" if len(xs) > 1 else "")


def main() -> None:
    from distill.families.llm.convert import convert_llama2c
    from distill.families.llm.cross_tokenizer.uld import sorted_wasserstein, topk_sorted_wasserstein
    from distill.families.llm.models import load_causal_lm, load_tokenizer
    from distill.utils import assets_dir

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--noise", type=float, default=1.5)
    ap.add_argument("--ks", type=int, nargs="+", default=[8, 32, 64, 128])
    ap.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 2.0])
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--train", action="store_true", help="end-to-end runs instead (see above)")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-uld-topk")
    args = ap.parse_args()
    if args.train:
        return train(args)
    assets = assets_dir()
    with tempfile.TemporaryDirectory() as tmp:
        convert_llama2c(assets / "stories260K" / "stories260K.bin", tmp, assets / "stories260K" / "tok512.model")
        model, tok = load_causal_lm(tmp).eval(), load_tokenizer(tmp, "teacher")
    text = (assets / "text" / "tinyshakespeare.txt").read_text(encoding="utf-8")
    held = text[len(text) // 2:]  # the recipes' training text is drawn from the start of the file
    ids = tok(held[: 200 * 128 * args.windows], add_special_tokens=False)["input_ids"][: 127 * args.windows]
    rows = torch.tensor([[tok.bos_token_id] + ids[i * 127:(i + 1) * 127] for i in range(args.windows)])
    with torch.no_grad():
        lt = model(rows).logits.reshape(-1, model.config.vocab_size).float()
    V = lt.shape[-1]
    print(f"teacher stories260K (vocab {V}), {lt.shape[0]} positions of held-out tinyshakespeare; student = teacher "
          f"logits + N(0, {args.noise}^2) noise; seeds {args.seeds}\n")
    print("| T | k | teacher mass past k | exact (paper) | top-k lower bound (distill) | gap | uniform tail | gap |")
    print("|---|---|---|---|---|---|---|---|")
    for T in args.temperatures:
        pt = torch.softmax(lt / T, -1)
        for k in args.ks:
            res: dict[str, list[float]] = {"ex": [], "lb": [], "uni": [], "tail": []}
            top = pt.topk(k, -1).values
            r = (1 - top.sum(-1)).clamp(min=0)
            for seed in args.seeds:
                g = torch.Generator().manual_seed(seed)
                ps = torch.softmax((lt + args.noise * torch.randn(lt.shape, generator=g)) / T, -1)
                res["ex"].append(float(sorted_wasserstein(ps, pt).mean()))
                res["lb"].append(float(topk_sorted_wasserstein(ps, top, r).mean()))
                full = torch.cat([top, (r / max(V - k, 1))[:, None].expand(-1, V - k)], -1)
                res["uni"].append(float(sorted_wasserstein(ps, full).mean()))
                res["tail"].append(float(r.mean()))
            gap_lb = [a - b for a, b in zip(res["lb"], res["ex"])]
            gap_u = [a - b for a, b in zip(res["uni"], res["ex"])]
            print(f"| {T:g} | {k} | {statistics.mean(res['tail']):.3f} | {_ms(res['ex'])} | {_ms(res['lb'])} | "
                  f"{_ms(gap_lb)} | {_ms(res['uni'])} | {_ms(gap_u)} |")
    code = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    print(f"\ncode {code.strip()}; command: {' '.join([Path(sys.argv[0]).name] + sys.argv[1:])}")


def train(args) -> None:
    import yaml

    import distill

    base = yaml.safe_load((ROOT / "recipes" / "llm" / "cross_tokenizer_alm.yaml").read_text())
    variants = [("sft", {}, {"name": "sft"}), ("uld, teacher running", {}, {"name": "uld"})]
    variants += [(f"uld, top-{k} cache", {"cache_top_k": k}, {"name": "uld"}) for k in args.ks]
    alm = {"name": "alm", "params": {"ce_weight": 1.0}}
    variants += [("alm, teacher running", {}, alm), ("alm, aligned cache", {"cache_top_k": 1}, alm)]
    got: dict[str, list[tuple[float, float, float]]] = {v[0]: [] for v in variants}
    for seed in args.seeds:
        for label, teacher, method in variants:
            r = dict(base, name=f"uld-topk-s{seed}-{len(got[label])}-{label.split(',')[0]}", seed=seed,
                     output_dir=str(args.out / "runs"), cache_dir=str(args.out / "cache"),
                     teacher={**base["teacher"], **teacher}, methods=[dict(method, label="m")],
                     eval={"samples": 0})
            t0 = time.perf_counter()
            s = distill.run(r, overwrite=True, show_table=False, log=lambda m: None)["students"]["m"]
            got[label].append((s["bits_per_byte"], s["ood_bits_per_byte"], time.perf_counter() - t0))
            print(f"seed {seed} {label}: {s['bits_per_byte']:.4f} / {s['ood_bits_per_byte']:.4f}", flush=True)
    print("\n| student | seeds | held-out bits/byte | tinyshakespeare bits/byte | run wall s |\n|---|---|---|---|---|")
    for label, runs in got.items():
        print(f"| {label} | {len(runs)} | {_ms([a for a, _, _ in runs])} | {_ms([b for _, b, _ in runs])} | "
              f"{statistics.mean([w for _, _, w in runs]):.1f} |")
    code = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    print(f"\ncode {code.strip()}; command: {' '.join([Path(sys.argv[0]).name] + sys.argv[1:])}")


if __name__ == "__main__":
    main()
