"""Fixtures of the llm family's tests: a tiny BPE tokenizer trained here (no network)."""
from __future__ import annotations

import pytest

from llm_helpers import corpus, tiny_lm


@pytest.fixture(scope="session")
def tiny_tok():
    pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers, decoders
    from transformers import PreTrainedTokenizerFast

    t = Tokenizer(models.BPE(unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    t.train_from_iterator(corpus(), trainers.BpeTrainer(vocab_size=300, show_progress=False, special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=t, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")


@pytest.fixture(scope="module")
def cache_setup(tiny_tok):
    """(teacher, student, examples, packed batch) for the LM teacher-cache tests: a peaked teacher
    (divergences of several nats), a dropout-free student, one example with a prompt (its first
    targets are neither counted nor cached)."""
    import torch

    from distill.families.llm.data import collate, pack, text_examples
    from distill.teacher import Teacher

    t = tiny_lm("llama", len(tiny_tok), hidden=24, seed=3)
    with torch.no_grad():
        t.get_output_embeddings().weight.mul_(20.0)
    teacher = Teacher(t)
    student = tiny_lm("gpt2", len(tiny_tok), hidden=16, seed=1).eval()
    exs = text_examples(corpus(10), tiny_tok, 32)
    exs[3].start = 4
    batch = collate(pack(exs, 64), tiny_tok.pad_token_id, packed=True)
    return teacher, student, exs, batch


@pytest.fixture(scope="module")
def chat_teacher(tmp_path_factory, tiny_tok):
    """A tiny Llama teacher folder whose tokenizer has ChatML's markers but no chat template."""
    import copy

    tok = copy.deepcopy(tiny_tok)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    d = tmp_path_factory.mktemp("chat_teacher")
    tiny_lm("llama", len(tok), hidden=24, seed=3).save_pretrained(d)
    tok.save_pretrained(d)
    return d
