"""Peak memory of one cross-tokenizer training step (forward + backward) against the vocabulary.

    python benchmarks/xtok_memory.py --method alm --teacher-vocab 32000 --chunk-size 256

A tiny Llama teacher whose tokenizer (a BPE trained here on a synthetic corpus, padded with unused
added tokens to `--teacher-vocab`) differs from a byte-level GPT-2 student; one packed batch of
`--batch` rows of `--seq-len` tokens. Prints the resident-memory peak of the step over the memory
held before it (the process's own peak RSS, so run one configuration per process) and the most
positions any vocabulary-sized tensor of the step held (`--probe`).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sys

import torch
from torch.utils._python_dispatch import TorchDispatchMode


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


class VocabRows(TorchDispatchMode):
    def __init__(self, vocabs):
        super().__init__()
        self.vocabs, self.most = set(vocabs), 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not any(r.alias_info is not None for r in func._schema.returns):
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor) and t.dim() >= 2 and t.shape[-1] in self.vocabs:
                    self.most = max(self.most, t.numel() // t.shape[-1])
        return out


def main() -> None:
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") is None:
        # glibc then maps every block over 64 KiB on its own and returns it when freed, so the
        # resident memory follows the live tensors and its peak is the step's
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"})
    ap = argparse.ArgumentParser()
    ap.add_argument("--method", choices=["alm", "uld", "hybrid"], default="alm")
    ap.add_argument("--teacher-vocab", type=int, default=32000)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--chunk-size", type=int, default=256)
    ap.add_argument("--probe", action="store_true", help="also count the rows of vocabulary-sized tensors (slower)")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from distill.families.llm.cross_tokenizer.byte_tokenizer import byte_tokenizer
    from distill.families.llm.cross_tokenizer.data import retokenize
    from distill.families.llm.data import LMLoader, rows_of, text_examples
    from distill.families.llm.models import build_student
    from distill.registry import methods
    from distill.teacher import Teacher

    rng = random.Random(0)
    words = "the cat dog sat on a mat and ran to park sun was big red ball girl boy saw played".split()
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(20, 60))) + "." for _ in range(400)]
    t = Tokenizer(models.BPE())
    t.pre_tokenizer, t.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    t.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=400, show_progress=False,
                                                     special_tokens=["<pad>", "<s>", "</s>"],
                                                     initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    t_tok = PreTrainedTokenizerFast(tokenizer_object=t, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    t_tok.add_tokens([f"<unused{i}>" for i in range(args.teacher_vocab - len(t_tok))], special_tokens=True)
    s_tok = byte_tokenizer()

    def lm(arch, tok):
        return build_student(arch, len(tok), tok.bos_token_id, tok.eos_token_id, hidden_size=64, num_layers=2,
                             num_heads=4, num_kv_heads=None, intermediate_size=128, max_positions=2 * args.seq_len)

    teacher, student = lm("llama", t_tok), lm("gpt2", s_tok)
    m = methods.get(args.method, "llm").builder(student, Teacher(teacher), chunk_size=args.chunk_size)
    m.pad_id, m.eos_id = s_tok.pad_token_id, s_tok.eos_token_id
    m.set_tokenizers(t_tok, s_tok)
    exs = retokenize(text_examples(texts, t_tok, args.seq_len), t_tok, s_tok, args.seq_len)
    rows = rows_of(exs, args.seq_len, True)[: args.batch]
    batch = next(iter(LMLoader(rows, len(rows), s_tok.pad_token_id, packed=True, shuffle=False)))
    m.train()
    m(batch)  # warm-up: allocator pools, lazily built tables
    before = rss_mib()
    peak0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    terms = m(batch)
    sum(terms.values()).backward()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t_positions = int(m.pair(batch).teacher_batch["input_ids"].numel())
    out = {"method": args.method, "teacher_vocab": len(t_tok), "student_vocab": len(s_tok),
           "student_positions": int(batch["input_ids"].numel()), "teacher_positions": t_positions,
           "chunk_size": args.chunk_size, "step_peak_mib_over_held": round(max(peak, peak0) - before, 1),
           "teacher_fp32_logits_mib": round(t_positions * len(t_tok) * 4 / 2**20, 1)}
    if args.probe:
        with VocabRows({len(t_tok), len(s_tok)}) as probe:
            sum(m(batch).values()).backward()
        out["most_positions_in_a_vocab_tensor"] = probe.most
    print(json.dumps(out))


if __name__ == "__main__":
    main()
