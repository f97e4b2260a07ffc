"""Cross-tokenizer students on prompt/response data read the prompt (each side in its own chat
template) and are scored on the response only; and alm / uld / hybrid never build logits for more
than `chunk_size` positions at a time (their memory grows with the chunk, not with B * T * V)."""
from __future__ import annotations

import copy

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

pytest.importorskip("transformers")
from llm_helpers import corpus, tiny_lm  # noqa: E402

from distill.families.llm.cross_tokenizer.byte_tokenizer import byte_tokenizer  # noqa: E402
from distill.families.llm.cross_tokenizer.data import retokenize  # noqa: E402
from distill.families.llm.data import IGNORE, LMLoader, prompt_response_examples, rows_of, text_examples  # noqa: E402
from distill.registry import methods  # noqa: E402
from distill.teacher import Teacher  # noqa: E402

PAIRS = [("What is the colour of the sky?", "The sky is blue on a clear day."),
         ("Name a fruit.", "An apple, round and red."),
         ("Count to three.", "One, two, three.")]
# two different templates: the teacher's and the student's renderings of one prompt share no scaffolding
T_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
              "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
S_TEMPLATE = ("{% for m in messages %}### {{ m['role'] | upper }}: {{ m['content'] }}\n\n{% endfor %}"
              "{% if add_generation_prompt %}### ANSWER: {% endif %}")


@pytest.fixture()
def toks(tiny_tok):
    t_tok = copy.deepcopy(tiny_tok)
    t_tok.chat_template = T_TEMPLATE
    s_tok = byte_tokenizer()
    s_tok.chat_template = S_TEMPLATE
    return t_tok, s_tok


def _method(name, student, teacher, t_tok, s_tok, examples=(), **params):
    m = methods.get(name, "llm").builder(student, Teacher(teacher), **params)
    m.pad_id, m.eos_id = s_tok.pad_token_id, s_tok.eos_token_id
    m.set_tokenizers(t_tok, s_tok)
    m.prepare_examples(list(examples), s_tok)  # as the runner does with the training set
    return m.eval()


def _batch(exs, tok, seq_len, packed=True):
    return next(iter(LMLoader(rows_of(exs, seq_len, packed), len(exs), tok.pad_token_id, packed=packed,
                              shuffle=False)))


def test_retokenized_prompt_response_examples_keep_the_prompt_in_the_students_template(toks):
    t_tok, s_tok = toks
    t_exs = prompt_response_examples(PAIRS, t_tok, 256)
    s_exs = retokenize(t_exs, t_tok, s_tok, 256)
    assert len(s_exs) == len(PAIRS)
    for (prompt, response), ex in zip(PAIRS, s_exs):
        head = s_tok.decode(ex.ids[:ex.start])
        assert head == f"### USER: {prompt}\n\n### ANSWER: "           # the student's own template
        assert s_tok.decode(ex.ids[ex.start:], skip_special_tokens=True) == response
    b = _batch(s_exs[:1], s_tok, 256, packed=False)
    counted = b["labels"][0][b["labels"][0] != IGNORE]
    want = s_tok(PAIRS[0][1], add_special_tokens=False)["input_ids"] + [s_tok.eos_token_id]
    assert counted.tolist() == want                                      # targets: the response (+ EOS) only


def test_the_teacher_reads_the_prompt_in_its_own_template_and_only_responses_are_aligned(toks):
    t_tok, s_tok = toks
    s_exs = retokenize(prompt_response_examples(PAIRS, t_tok, 256), t_tok, s_tok, 256)
    m = _method("alm", tiny_lm("gpt2", len(s_tok), seed=2), tiny_lm("llama", len(t_tok), seed=1), t_tok, s_tok, s_exs)
    batch = _batch(s_exs, s_tok, 256)
    p = m.pair(batch)
    tb = p.teacher_batch
    assert int(tb["seg"][0].max()) == len(PAIRS)                         # packed like the student's row
    for j, (prompt, response) in enumerate(PAIRS, 1):
        ids = tb["input_ids"][0][tb["seg"][0] == j].tolist()
        want_prompt = t_tok(t_tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                      add_generation_prompt=True), add_special_tokens=False)["input_ids"]
        assert ids[:len(want_prompt)] == want_prompt
        assert t_tok.decode(ids[len(want_prompt):], skip_special_tokens=True) == response
    # every chunk lies in a response: the predicted tokens on both sides spell the responses (+ EOS)
    s_text = s_tok.decode(batch["input_ids"].reshape(-1)[p.s_pos + 1].tolist(), skip_special_tokens=True)
    t_text = t_tok.decode(tb["input_ids"].reshape(-1)[p.t_pos + 1].tolist(), skip_special_tokens=True)
    assert s_text == t_text == "".join(r for _, r in PAIRS)
    assert bool(p.valid.all()) and p.n_chunks > 0


def test_alm_is_zero_on_prompt_response_data_for_the_same_model_and_tokenizer(toks):
    t_tok, _ = toks
    exs = prompt_response_examples(PAIRS, t_tok, 256)
    student = tiny_lm("llama", len(t_tok), seed=3)
    m = _method("alm", student, copy.deepcopy(student), t_tok, t_tok, exs)
    batch = _batch(exs, t_tok, 256)
    assert torch.equal(m.pair(batch).teacher_batch["input_ids"], batch["input_ids"])  # the same text, prompt included
    assert float(m(batch)["alm"].detach()) == pytest.approx(0.0, abs=1e-6)


class VocabRows(TorchDispatchMode):
    """The most rows any op output with a vocabulary-sized last dimension has (outputs that alias an
    input, such as the transposed output head, hold no memory of their own and are left out)."""

    def __init__(self, vocabs):
        super().__init__()
        self.vocabs, self.most = set(vocabs), 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if any(r.alias_info is not None for r in func._schema.returns):  # t, detach, view: no new memory
            return out
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor) and t.dim() >= 2 and t.shape[-1] in self.vocabs:
                self.most = max(self.most, t.numel() // t.shape[-1])
        return out


@pytest.mark.parametrize("name,params", [("alm", {}), ("uld", {"ce_weight": 0.0}), ("hybrid", {"ce_weight": 0.0})])
def test_cross_tokenizer_losses_build_logits_one_chunk_at_a_time(tiny_tok, name, params):
    s_tok = byte_tokenizer()
    texts = corpus(8, seed=3)
    exs = retokenize(text_examples(texts, tiny_tok, 96), tiny_tok, s_tok, 96)
    batch = _batch(exs, s_tok, 96)
    rows = int(batch["input_ids"].numel())                               # B * T student positions
    vocabs = (len(s_tok), len(tiny_tok))
    assert 16 not in vocabs                                              # hidden sizes are never taken for vocabularies
    chunk = 8
    m = _method(name, tiny_lm("gpt2", len(s_tok), seed=2), tiny_lm("llama", len(tiny_tok), seed=1), tiny_tok, s_tok,
                chunk_size=chunk, **params)  # eval: no dropout, so the two chunk sizes compare exactly
    with VocabRows(vocabs) as probe:
        terms = m(batch)
        sum(terms.values()).backward()
    assert rows > 20 * chunk and probe.most > 0
    assert probe.most <= chunk, (probe.most, rows)                       # forward and backward, both models
    # the chunked loss is the same whatever the chunk
    m.zero_grad()
    big = _method(name, m.student, m.teacher.module, tiny_tok, s_tok, chunk_size=100000, **params)
    assert float(big(batch)[name if name != "hybrid" else "kd"]) == pytest.approx(
        float(terms[name if name != "hybrid" else "kd"]), rel=1e-5)
