"""Examples re-tokenised for a student whose tokenizer differs from the teacher's."""
from __future__ import annotations

from collections.abc import Sequence

from distill.families.llm.data import Example


def retokenize(examples: Sequence[Example], src_tok, dst_tok, seq_len: int, prompt_tokens: int = 16) -> list[Example]:
    """The same texts in `dst_tok`'s tokens: BOS + text (+ EOS when the source example ended with
    one), cut into windows of `seq_len`; the prompt is the first `prompt_tokens` target tokens."""
    out = []
    bos, eos = dst_tok.bos_token_id, dst_tok.eos_token_id
    for ex in examples:
        body_src = ex.ids[ex.start:]
        text = src_tok.decode(body_src, skip_special_tokens=True)
        body = dst_tok(text, add_special_tokens=False)["input_ids"]
        if eos is not None and body_src and body_src[-1] == src_tok.eos_token_id:
            body = body + [eos]
        step = seq_len - (1 if bos is not None else 0)
        for i in range(0, len(body), step):
            piece = body[i:i + step]
            ids = ([bos] if bos is not None else []) + piece
            if len(ids) < 2:
                continue
            out.append(Example(ids, start=1, prompt_len=min(prompt_tokens, len(ids) - 1),
                               n_bytes=len(dst_tok.decode(piece, skip_special_tokens=True).encode("utf-8")),
                               sign=ex.sign))
    return out
