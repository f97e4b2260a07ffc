"""Bytes per token of the offline LM teacher cache (stories260K teacher, tinyshakespeare text).

    .venv/bin/python benchmarks/llm_cache.py [--k 8 32 128 512] [--chars 20000]

Prints, per k: cached tokens, file bytes, bytes per token, and the dense fp16 row size
(vocab * 2 bytes) for comparison.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from distill.families.llm.cache import LMTeacherCache
from distill.families.llm.config import assets_dir
from distill.families.llm.data import text_examples
from distill.families.llm.models import load_causal_lm, load_tokenizer, resolve_source
from distill.teacher import Teacher


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--k", type=int, nargs="+", default=[8, 32, 128, 512])
    ap.add_argument("--chars", type=int, default=20000)
    ap.add_argument("--seq-len", type=int, default=256)
    a = ap.parse_args()
    stories = assets_dir() / "stories260K"
    with tempfile.TemporaryDirectory() as tmp:
        src = resolve_source(str(stories / "stories260K.bin"), str(stories / "tok512.model"), Path(tmp))
        tok = load_tokenizer(src, "teacher.tokenizer")
        teacher = Teacher(load_causal_lm(src).eval())
        text = (assets_dir() / "text" / "tinyshakespeare.txt").read_text()[: a.chars]
        exs = text_examples(text.split("\n\n"), tok, a.seq_len)
        vocab = teacher.module.get_output_embeddings().weight.shape[0]
        print(f"teacher stories260K (vocab {vocab}); {len(exs)} examples; dense fp16 row = {2 * vocab} bytes/token")
        print("| k | tokens | bytes | bytes/token |\n|---|---|---|---|")
        for k in a.k:
            c = LMTeacherCache.build(Path(tmp) / f"k{k}", teacher, tok, exs, temperature=1.0, k=k, seq_len=a.seq_len)
            print(f"| {k} | {c.meta['tokens']} | {c.size_bytes()} | {c.bytes_per_token():.1f} |")


if __name__ == "__main__":
    main()
