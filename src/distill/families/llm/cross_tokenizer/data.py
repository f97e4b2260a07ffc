"""Examples re-tokenised for a student whose tokenizer differs from the teacher's."""
from __future__ import annotations

from collections.abc import Sequence

from distill.families.llm.data import Example, chat_examples, prompt_response_examples, set_chat_template, windows


def retokenize(examples: Sequence[Example], src_tok, dst_tok, seq_len: int, prompt_tokens: int = 16) -> list[Example]:
    """The same texts in `dst_tok`'s tokens.

    Chat examples are rendered again with `dst_tok`'s chat template, targets as in the source.
    Prompt/response examples are rebuilt from their raw texts: `dst_tok`'s own chat template (or BOS
    + prompt) around the prompt, targets on the response (+ EOS) only, as the teacher's examples.
    Plain text: BOS + text (+ EOS when the source example ended with one), cut into windows of
    `seq_len`; the prompt is the first `prompt_tokens` target tokens."""
    out = []
    eos = dst_tok.eos_token_id
    for ex in examples:
        if ex.messages is not None:  # chat data: the conversation in dst_tok's own chat template
            set_chat_template(dst_tok, None, where="student.tokenizer")
            out += chat_examples([ex.messages], dst_tok, seq_len, ex.loss_on)
            continue
        if ex.prompt is not None and ex.response is not None:
            out += prompt_response_examples([(ex.prompt, ex.response, ex.sign > 0)], dst_tok, seq_len)
            continue
        body_src = ex.ids[ex.start:]
        text = src_tok.decode(body_src, skip_special_tokens=True)
        body = dst_tok(text, add_special_tokens=False)["input_ids"]
        if eos is not None and body_src and body_src[-1] == src_tok.eos_token_id:
            body = body + [eos]
        out += windows(body, dst_tok, seq_len, prompt_tokens, sign=ex.sign)
    return out
