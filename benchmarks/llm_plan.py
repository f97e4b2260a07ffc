"""`distill plan`'s estimate against the measured peak of the same recipe, per transformers
architecture (CPU, not a test).

For each model type: a teacher (hidden 256) and a student (hidden 192) of 4 layers and an 8192-token
vocabulary, made locally from the architecture's config class (random weights) and given as
`teacher.path` / `student.path`; token_kd (forward KL, chunk 256) for 2 steps on packed 16 x 256
batches of tinyshakespeare. The estimate is the colocated placement's peak; the measured peak is
the resident-set peak of `distill.run` in a fresh process, reset after imports and a warm-up, with
glibc told to return every freed block over 128 KiB (so that the peak is that of the live tensors).

    OMP_NUM_THREADS=1 python benchmarks/llm_plan.py [--types llama gemma2 ...] [--out-file F]
    python benchmarks/llm_plan.py --device cuda --hidden 1024 768 --layers 8 --vocab 32768 --seq 1024
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

MEASURE = textwrap.dedent('''
    import json, sys
    import torch
    import distill
    from distill.families.llm.models import build_student, hidden_states, head_of
    from distill.losses.lm import hidden_divergence

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        raise KeyError(key)

    # warm up every code path (imports, kernels, the optimiser) on a model too small to matter
    m = build_student("llama", 64, 1, 2, hidden_size=16, num_layers=1, num_heads=4, max_positions=64)
    ids = torch.randint(0, 64, (2, 8))
    b = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "position_ids": torch.arange(8).expand(2, 8)}
    opt = torch.optim.AdamW(m.parameters())
    h = hidden_states(m, b)
    w, _ = head_of(m)
    hidden_divergence(h, w, h.detach(), w.detach(), mask=b["attention_mask"].bool(), chunk_size=4).backward()
    opt.step()
    try:  # the adapter library's import and a wrap, for LoRA students
        from distill.families.llm.config import LMLoraConfig
        from distill.families.llm.lora import wrap_lora
        wrap_lora(build_student("llama", 64, 1, 2, hidden_size=16, num_layers=1, num_heads=4, max_positions=64),
                  LMLoraConfig(r=2))
    except ImportError:
        pass
    del m, opt, h, w
    recipe = json.loads(sys.argv[1])
    if recipe["engine"].get("device") == "cuda":  # the CUDA allocator's peak above what is allocated now
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        distill.run(recipe, log=lambda s: None)
        torch.cuda.synchronize()
        print(json.dumps({"peak": torch.cuda.max_memory_allocated() - base}))
        sys.exit(0)
    try:  # reset the peak resident size to the current one (Linux >= 4.0), so that the warm-up's peak is gone
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        print(json.dumps({"peak": None}))
        sys.exit(0)
    base = status("VmRSS")
    distill.run(recipe, log=lambda s: None)
    print(json.dumps({"peak": status("VmHWM") - base}))
''')


def measured_peak(recipe: dict) -> float | None:
    """Bytes of the resident-set peak of `distill.run(recipe)` in a fresh process, above what it held
    before (with `engine.device: cuda`, the CUDA allocator's peak allocation above what was allocated
    before); None where the system does not let a process reset its peak (/proc/self/clear_refs)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + (os.pathsep + os.environ["PYTHONPATH"]
                                                           if os.environ.get("PYTHONPATH") else ""),
           "MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "0", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", MEASURE, json.dumps(recipe)], capture_output=True, text=True, env=env,
                         timeout=600)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])["peak"]


def hf_lm(model_type: str, folder: Path, tok, hidden: int, seed: int, layers: int = 4, vocab: int = 8192) -> None:
    """A `layers`-layer model of a transformers architecture, random weights, saved with `tok`."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    kw = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
              num_attention_heads=4, num_key_value_heads=2, head_dim=hidden // 4, max_position_embeddings=512,
              bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if model_type == "gpt2":
        kw = dict(vocab_size=vocab, n_embd=hidden, n_layer=layers, n_head=4, n_positions=512, bos_token_id=1,
                  eos_token_id=2)
    elif model_type == "opt":
        kw = dict(vocab_size=vocab, hidden_size=hidden, ffn_dim=4 * hidden, num_hidden_layers=layers,
                  num_attention_heads=4, max_position_embeddings=512, word_embed_proj_dim=hidden, bos_token_id=1,
                  eos_token_id=2, pad_token_id=0)
    elif model_type == "falcon":
        kw = dict(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                  new_decoder_architecture=True, num_kv_heads=2, bos_token_id=1, eos_token_id=2)
    elif model_type == "gpt_neox":
        kw = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                  num_attention_heads=4, max_position_embeddings=512, bos_token_id=1, eos_token_id=2)
    AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **kw)).save_pretrained(folder)
    tok.save_pretrained(folder)


TYPES = ["llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "smollm3", "olmo2", "phi", "phi3",
         "gpt2", "gpt_neox", "opt", "falcon", "granite", "stablelm", "cohere"]


def _tokenizer(text: str, vocab: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    t = Tokenizer(models.BPE(unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    t.train_from_iterator([text], trainers.BpeTrainer(vocab_size=vocab, show_progress=False,
                                                      special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=t, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--types", nargs="+", default=TYPES)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                   help="cuda: the run on the GPU, measured by the CUDA allocator's peak (the CUDA context and the "
                        "allocator's cached blocks are not counted, as in the estimate)")
    p.add_argument("--hidden", type=int, nargs=2, default=[256, 192], metavar=("TEACHER", "STUDENT"))
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--out-file", default=None)
    args = p.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from distill.config import load_config
    from distill.families.llm.plan import _layer_kinds, plan, teacher_shape
    from distill.utils import assets_dir

    text = (assets_dir() / "text" / "tinyshakespeare.txt").read_text()[:600_000]
    tok = _tokenizer(text, 2048)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "train.txt").write_text(text)
        for mt in args.types:
            d = tmp / mt
            hf_lm(mt, d / "t", tok, args.hidden[0], 1, layers=args.layers, vocab=args.vocab)
            hf_lm(mt, d / "s", tok, args.hidden[1], 2, layers=args.layers, vocab=args.vocab)
            recipe = {"name": "plan", "family": "llm", "output_dir": str(d / "runs"), "cache_dir": str(d / "cache"),
                      "teacher": {"path": str(d / "t")}, "student": {"path": str(d / "s")},
                      "data": {"source": "text", "path": str(tmp / "train.txt"), "seq_len": args.seq,
                               "batch_size": args.batch, "eval_batch_size": 1, "pack": True,
                               # about 2.3x the tokens of the 2 steps (400 documents are 18.8k tokens)
                               "max_docs": max(400, 400 * args.batch * args.seq // 4096)},
                      "train": {"epochs": 1, "max_steps": 2}, "engine": {"device": args.device, "progress": False},
                      "eval": {"samples": 0}, "methods": [{"name": "token_kd", "params": {"chunk_size": 256}}]}
            cfg = load_config(recipe)
            kinds = len(_layer_kinds(teacher_shape(cfg).config))
            est = next(x for x in plan(cfg, devices=1)[0] if x.name == "colocated").peak
            got = measured_peak(recipe)
            if got is None:
                raise SystemExit("this system does not let a process reset its peak resident size")
            rows.append((mt, kinds, est, got))
            print(f"{mt}: estimate {est / 2**20:.1f} MiB, measured {got / 2**20:.1f} MiB ({est / got:.2f})",
                  file=sys.stderr)
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    ratios = [e / g for _, _, e, g in rows]
    import torch

    where = (f"{torch.cuda.get_device_name()}, the CUDA allocator's peak" if args.device == "cuda"
             else "CPU, resident-set peak")
    lines = [f"code {rev}; {where} of `distill.run`; token_kd forward KL, {args.batch} x {args.seq} tokens, 2 steps; "
             f"hidden {args.hidden[0]} / {args.hidden[1]}, {args.layers} layers, vocabulary {args.vocab}", "",
             "| model type | kinds of layer | estimate MiB | measured MiB | estimate / measured |", "|---|---|---|---|---|"]
    lines += [f"| {mt} | {k} | {e / 2**20:.1f} | {g / 2**20:.1f} | {e / g:.2f} |" for mt, k, e, g in rows]
    lines += ["", f"estimate / measured over {len(rows)} types: {min(ratios):.2f}-{max(ratios):.2f}"]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out_file:
        Path(args.out_file).write_text(text)


if __name__ == "__main__":
    main()
