"""QLoRA benchmark (not a test): a LoRA adapter on the pretrained stories260K, fine-tuned on
tinyshakespeare (recipes/llm/stories_lora.yaml), with its frozen base held in fp32, int8 (LLM.int8),
nf4 (with double quantisation) or fp4 by bitsandbytes.

Columns, all on the same training rows, held-out texts, adapter (r 8, alpha 16, q/k/v/o), optimiser
(AdamW lr 3e-3, constant, no clipping), batch 8 and steps:
- base: the pretrained model itself (no adapter), in fp32;
- distill sft: `distill run` with `sft` (CE only);
- TRL sft (the peer): TRL's `SFTTrainer` with a peft `LoraConfig` over the same base loaded by
  transformers with the same `BitsAndBytesConfig`, evaluated by the same function;
- distill anchored: `token_kd` against the base (`teacher.student_base`), CE + 0.5 KL.
Unpacked rows (one document per row, padded) for every column, since TRL's padding-free packing
needs flash attention. Metric: held-out bits per byte of the final weights (there is no model
selection); mean +- std (sample std) over seeds (the seed also draws the held-out split, so the
columns move together; the last column is the per-seed difference of the two sft columns). Each
(seed, base) result is kept in `<out>/results.json`, so a grid is filled over several
invocations; `--table` prints it.

    OMP_NUM_THREADS=2 PYTHONPATH=<a folder with trl> python benchmarks/llm_qlora.py --seeds 0 1 2

Without trl importable the peer column is left out (and says so). Assets: $DISTILL_ASSETS
(default ../shared/assets).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "llm" / "stories_lora.yaml"
BASES = ["none", "int8", "nf4", "fp4"]
COLUMNS = [("base", "base"), ("sft", "distill sft"), ("trl_sft", "TRL sft (peer)"), ("anchored", "distill anchored")]


def overrides(seed: int, base: str, out: Path) -> list[str]:
    o = [f"seed={seed}", f"name=qlora-{base}-s{seed}", f"output_dir={out / 'runs'}", f"cache_dir={out / 'cache'}",
         "data.pack=false", "eval.samples=0"]
    return o + ([f"student.lora.quantize={base}"] if base != "none" else [])


def ours(seed: int, base: str, out: Path) -> dict:
    import distill

    t0 = time.time()
    s = distill.run(RECIPE, overrides(seed, base, out), overwrite=True, show_table=False, log=lambda m: None)
    return {"base": s["teacher"]["bits_per_byte"], "sft": s["students"]["sft"]["bits_per_byte"],
            "anchored": s["students"]["anchored"]["bits_per_byte"], "distill_wall_s": time.time() - t0}


def bnb_config(base: str):
    import torch
    from transformers import BitsAndBytesConfig

    if base == "none":
        return None
    if base == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=base, bnb_4bit_use_double_quant=base == "nf4",
                              bnb_4bit_compute_dtype=torch.float32)


def peer(seed: int, base: str, out: Path) -> dict:
    """TRL's SFTTrainer with peft over the base as transformers loads it, on distill's training rows
    of the same recipe and seed; held-out bits/byte by distill's evaluator."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, set_seed
    from trl import SFTConfig, SFTTrainer

    from distill.config import load_config
    from distill.families.llm.evaluate import lm_metrics
    from distill.families.llm.runner import build_examples, load_teacher

    cfg = load_config(RECIPE, overrides(seed, "none", out))
    teacher, tok, src = load_teacher(cfg, "cpu")  # the fp32 base and the run's tokenizer; src: its HF folder
    train, held, _ = build_examples(cfg, tok, teacher, "cpu", lambda m: None)
    lc = cfg.student.lora
    set_seed(seed)
    q = bnb_config(base)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32, local_files_only=True,
                                                 **({"quantization_config": q, "device_map": "cpu"} if q else {}))
    if q is not None:  # bitsandbytes on AVX512-BF16 CPUs: keep 4-bit layers out of the inference-only repack
        from distill.families.llm.models import _keep_differentiable  # (which fails on these layer sizes)

        _keep_differentiable(model)
    t = cfg.train
    with tempfile.TemporaryDirectory() as tmp:
        args = SFTConfig(output_dir=tmp, max_steps=t.max_steps, num_train_epochs=t.epochs,
                         per_device_train_batch_size=cfg.data.batch_size, learning_rate=t.optimizer.lr,
                         lr_scheduler_type="constant", warmup_steps=0, weight_decay=t.optimizer.weight_decay,
                         adam_beta1=t.optimizer.betas[0], adam_beta2=t.optimizer.betas[1], max_grad_norm=0.0,
                         optim="adamw_torch", seed=seed, data_seed=seed, save_strategy="no", report_to=[],
                         logging_steps=t.max_steps, gradient_checkpointing=False, use_cpu=True, packing=False,
                         max_length=cfg.data.seq_len, dataloader_num_workers=0, disable_tqdm=True, bf16=False)
        trainer = SFTTrainer(model=model, args=args, processing_class=tok, train_dataset=Dataset.from_dict(
            {"input_ids": [e.ids for e in train]}),
            peft_config=LoraConfig(r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout,
                                   target_modules=list(lc.target_modules), task_type="CAUSAL_LM"))
        t0 = time.time()
        trainer.train()
        wall = time.time() - t0
    m = lm_metrics(trainer.model, held, pad_id=tok.pad_token_id, batch_size=cfg.data.eval_batch_size,
                   seq_len=cfg.data.seq_len, device="cpu")
    return {"trl_sft": m["bits_per_byte"], "trl_train_wall_s": wall, "trl_steps": trainer.state.global_step}


def _have_trl() -> str | None:
    try:
        import trl
    except ImportError:
        return None
    return trl.__version__


def _ms(vals: list[float]) -> str:
    if not vals:
        return "-"
    if len(vals) == 1:
        return f"{vals[0]:.3f}"
    return f"{statistics.mean(vals):.3f} +- {statistics.stdev(vals):.3f}"


def table(results: dict, seeds: list[int] | None = None) -> str:
    """One row per base: mean +- std over the seeds that have each column, and which seeds."""
    lines = ["| `student.lora.quantize` | seeds | " + " | ".join(c[1] for c in COLUMNS)
             + " | distill sft - TRL sft, per seed |", "|---|---|" + "---|" * (len(COLUMNS) + 1)]
    for base in BASES:
        runs = [(int(k.split("-s")[1]), v) for k, v in results.items() if k.startswith(base + "-s")]
        runs = sorted((sd, v) for sd, v in runs if seeds is None or sd in seeds)
        if not runs:
            continue
        cells = [_ms([v[c] for _, v in runs if c in v]) for c, _ in COLUMNS]
        cells.append(_ms([v["sft"] - v["trl_sft"] for _, v in runs if "sft" in v and "trl_sft" in v]))
        lines.append(f"| {base} | {','.join(str(sd) for sd, _ in runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _save(path: Path, results: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1, sort_keys=True))
    os.replace(tmp, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--bases", nargs="+", default=BASES, choices=BASES)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-qlora")
    ap.add_argument("--no-peer", action="store_true", help="leave out the TRL column")
    ap.add_argument("--table", action="store_true", help="print the table of what is in --out and stop")
    ap.add_argument("--redo", action="store_true", help="run again the (seed, base) pairs already in --out")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "results.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    if not args.table:
        trl_version = None if args.no_peer else _have_trl()
        if trl_version is None and not args.no_peer:
            print("trl is not importable: the peer column is left out (pip install trl, or PYTHONPATH to it)")
        code = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True).stdout.strip()
        for seed in args.seeds:
            for base in args.bases:
                key = f"{base}-s{seed}"
                have = results.get(key, {})
                if have and not args.redo and ("trl_sft" in have or trl_version is None):
                    continue
                r = {**(have if not args.redo else {}), "code": code}
                if args.redo or "sft" not in have:
                    r.update(ours(seed, base, args.out))
                if trl_version is not None:
                    r.update(peer(seed, base, args.out), trl=trl_version)
                results[key] = r
                _save(path, results)
                print(f"{key}: " + ", ".join(f"{c} {r[c]:.4f}" for c, _ in COLUMNS if c in r), flush=True)
    print(table(results, args.seeds))
    versions = sorted({v.get("code", "?") for v in results.values()})
    print(f"code {', '.join(versions)}; trl {sorted({v.get('trl', '-') for v in results.values()})}; "
          f"command: {' '.join([Path(sys.argv[0]).name] + sys.argv[1:])}")


if __name__ == "__main__":
    main()
