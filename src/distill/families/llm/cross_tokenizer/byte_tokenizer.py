"""A byte-level tokenizer: ids 0..255 are the UTF-8 bytes, then <pad>, <s>, </s>.

Built with `tokenizers` (a byte-level BPE with no merges) and wrapped as a transformers fast
tokenizer, so it saves and loads with `save_pretrained` / `AutoTokenizer` like any other.
"""
from __future__ import annotations

from distill.families.llm.cross_tokenizer.alignment import _unicode_to_byte

SPECIALS = ("<pad>", "<s>", "</s>")


def byte_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {c: b for c, b in _unicode_to_byte().items()}  # id = byte value
    t = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    t.decoder = decoders.ByteLevel()
    t.add_special_tokens(list(SPECIALS))  # ids 256, 257, 258
    return PreTrainedTokenizerFast(tokenizer_object=t, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


def train_bpe(texts, vocab_size: int = 400):
    """A byte-level BPE trained here on `texts` (pad/BOS/EOS are ids 0, 1, 2)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    t.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                                     special_tokens=list(SPECIALS),
                                                     initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=t, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


def load_student_tokenizer(spec: str):
    """`byte` -> the byte-level tokenizer; anything else -> a tokenizer folder (or hub id)."""
    if spec == "byte":
        return byte_tokenizer()
    from distill.families.llm.models import load_tokenizer

    return load_tokenizer(spec, "student.tokenizer")
