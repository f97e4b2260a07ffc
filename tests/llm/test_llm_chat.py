"""Chat data (`data.source: chat`): conversations rendered with the tokenizer's chat template, the
loss on the assistant replies only. The reference for which tokens are a reply is transformers' own
`apply_chat_template(..., return_assistant_tokens_mask=True)`, which reads `{% generation %}` blocks
of the template; our code never sees those blocks (it cuts rendered prefixes), so the two are
independent."""
from __future__ import annotations

import json
import copy

import pytest

pytest.importorskip("transformers")
from llm_helpers import corpus  # noqa: E402

import distill  # noqa: E402
from distill.errors import ConfigError  # noqa: E402
from distill.families.llm.data import (IGNORE, chat_examples, collate, read_chats, rows_of,  # noqa: E402
                                       set_chat_template)

# ChatML with the reply (content + end of turn) inside transformers' generation block
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
          "{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] }}<|im_end|>\n{% endgeneration %}"
          "{% else %}{{ m['content'] }}<|im_end|>\n{% endif %}{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
# a template that shows earlier replies shortened (as templates that drop earlier reasoning do):
# rendering another turn rewrites the text of the previous reply
REWRITING = ("{% for m in messages %}{{ m['role'] }}: "
             "{% if m['role'] == 'assistant' and not loop.last %}{{ m['content'][:3] }}{% else %}{{ m['content'] }}"
             "{% endif %}{{ '\\n' }}{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}")

CONV = [{"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Once upon a time there was a cat."},
        {"role": "assistant", "content": "The cat liked to play in the sun."},
        {"role": "user", "content": "What did the dog do?"},
        {"role": "assistant", "content": "The dog ran to the park with a ball."}]


@pytest.fixture
def chat_tok(tiny_tok):
    tok = copy.deepcopy(tiny_tok)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = CHATML
    return tok


def _reference(tok, conv):
    ref = tok.apply_chat_template(conv, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    return list(ref["input_ids"]), [bool(m) for m in ref["assistant_masks"]]


@pytest.mark.parametrize("conv", [CONV, CONV[1:3], CONV[:3] + [{"role": "user", "content": "And then?"}]])
def test_reply_tokens_equal_transformers_assistant_mask(chat_tok, conv):
    (ex,) = chat_examples([conv], chat_tok, seq_len=512)
    ids, mask = _reference(chat_tok, conv)
    last = max(i for i, m in enumerate(conv) if m["role"] == "assistant")
    if last < len(conv) - 1:  # turns after the last reply carry no target and are not rendered
        ids, mask = _reference(chat_tok, conv[:last + 1])
    assert ex.ids == ids
    assert ex.mask == mask and any(mask)
    assert ex.start == mask.index(True)


def test_collated_labels_are_the_next_reply_token_only(chat_tok):
    (ex,) = chat_examples([CONV], chat_tok, seq_len=512)
    ids, mask = _reference(chat_tok, CONV)
    b = collate([[ex]], chat_tok.pad_token_id, packed=False)
    labels = b["labels"][0].tolist()
    want = [ids[t + 1] if mask[t + 1] else IGNORE for t in range(len(ids) - 1)] + [IGNORE]
    assert labels == want
    reply_texts = chat_tok.decode([t for t in labels if t != IGNORE])
    assert "The cat liked" in reply_texts and "The dog ran" in reply_texts and "Once upon" not in reply_texts
    # packed with a second conversation: each keeps its own targets, none crosses the boundary
    (ex2,) = chat_examples([CONV[1:3]], chat_tok, seq_len=512)
    rows = rows_of([ex, ex2], 512, True)
    assert len(rows) == 1
    packed = collate(rows, chat_tok.pad_token_id, packed=True)["labels"][0].tolist()
    n = len(ex.ids)
    assert packed[:n] == labels and packed[n - 1] == IGNORE
    assert packed[n:n + len(ex2.ids)] == collate([[ex2]], 0, packed=False)["labels"][0].tolist()


def test_loss_on_last_and_all(chat_tok):
    ids, mask = _reference(chat_tok, CONV)
    (last,) = chat_examples([CONV], chat_tok, 512, loss_on="last")
    second = mask.index(True, max(i for i in range(len(mask)) if not mask[i]))  # first token of the last reply
    assert last.mask == [m and t >= second for t, m in enumerate(mask)]
    (every,) = chat_examples([CONV], chat_tok, 512, loss_on="all")
    assert every.mask == [False] + [True] * (len(ids) - 1)
    # generation methods get the history up to the last reply as their prompt
    assert last.prompt_len == second


def test_truncation_keeps_the_replies_that_fit_and_drops_empty_ones(chat_tok):
    ids, mask = _reference(chat_tok, CONV)
    first = mask.index(True)
    (ex,) = chat_examples([CONV], chat_tok, seq_len=first + 3)
    assert ex.ids == ids[:first + 3] and ex.mask == mask[:first + 3]
    assert chat_examples([CONV], chat_tok, seq_len=first) == []


def test_rewriting_template_gives_one_example_per_reply(chat_tok):
    chat_tok.chat_template = REWRITING
    exs = chat_examples([CONV], chat_tok, 512)
    assert len(exs) == 2
    for ex, reply in zip(exs, ("The cat liked to play in the sun.", "The dog ran to the park with a ball.")):
        got = chat_tok.decode([t for t, m in zip(ex.ids, ex.mask) if m])
        assert got.strip() == reply
        assert chat_tok.decode(ex.ids[:ex.start]).endswith("assistant: ")
    # the second example's history shows the first reply as the template writes earlier turns
    assert "assistant: The\n" in chat_tok.decode(exs[1].ids)


# the generation prompt ("assistant: ") is not the header the template writes before a reply ("[A] ")
UNSTABLE = ("{% for m in messages %}{% if m['role'] == 'assistant' %}[A] {{ m['content'] }} [END]{{ '\n' }}"
            "{% else %}{{ m['role'] }}: {{ m['content'] }}{{ '\n' }}{% endif %}{% endfor %}"
            "{% if add_generation_prompt %}assistant: {% endif %}")


def test_unstable_generation_prompt_keeps_the_end_of_turn_as_target(chat_tok):
    chat_tok.chat_template = UNSTABLE
    exs = chat_examples([CONV], chat_tok, 512)
    assert len(exs) == 2
    for ex, reply in zip(exs, ("The cat liked to play in the sun.", "The dog ran to the park with a ball.")):
        got = "".join(chat_tok.decode([t for t, m in zip(ex.ids, ex.mask) if m]).split())
        assert got == "".join((reply + " [END]").split())  # the reply and the template's end of turn
        assert "".join(chat_tok.decode(ex.ids[:ex.start]).split()).endswith("[A]")  # the header is read


def test_bad_chat_data_names_the_line_and_the_fix(tmp_path, tiny_tok):
    p = tmp_path / "c.jsonl"
    cases = [('{"messages": [{"role": "user", "content": "hi"}]}', r"c.jsonl:1: the conversation has no assistant"),
             ('{"msgs": []}', r"c.jsonl:1: no 'messages' key .*data.messages_field"),
             ('{"messages": [{"role": "bot", "content": "x"}]}', r"message 0 has role 'bot'"),
             ('{"messages": [{"content": "x"}]}', r"message 0 .* needs \"role\" and \"content\""),
             ('{"messages": "hello"}', r"non-empty list"),
             ('{"messages": [', r"c.jsonl, line 1: not JSON")]
    for text, pattern in cases:
        p.write_text(text + "\n")
        with pytest.raises(ConfigError, match=pattern):
            read_chats(p)
    tok = copy.deepcopy(tiny_tok)
    tok.chat_template = None
    with pytest.raises(ConfigError, match=r"data.chat_template: .* has none"):
        set_chat_template(tok, None)
    f = tmp_path / "template.jinja"
    f.write_text(CHATML)
    set_chat_template(tok, str(f))
    assert tok.chat_template == CHATML


def _chat_recipe(tmp_path, teacher_dir, methods, **data):
    tmp_path.mkdir(parents=True, exist_ok=True)
    p = tmp_path / "chats.jsonl"
    lines = []
    for i, (a, b, c) in enumerate(zip(corpus(30, seed=1), corpus(30, seed=2), corpus(30, seed=3))):
        lines.append(json.dumps({"messages": [{"role": "user", "content": a[:60]},
                                              {"role": "assistant", "content": b[:60]},
                                              {"role": "user", "content": "More."},
                                              {"role": "assistant", "content": c[:60]}]}))
    p.write_text("\n".join(lines))
    return {"name": "chat", "family": "llm", "output_dir": str(tmp_path / "runs"), "cache_dir": str(tmp_path / "cache"),
            "teacher": {"path": str(teacher_dir)},
            "student": {"arch": "gpt2", "hidden_size": 16, "num_layers": 1, "num_heads": 2, "pad_vocab_to": 64},
            "data": {"source": "chat", "path": str(p), "chat_template": CHATML, "seq_len": 160, "batch_size": 4,
                     "eval_batch_size": 8, "prompt_tokens": 4, **data},
            "train": {"epochs": 1, "max_steps": 3}, "engine": {"device": "cpu", "progress": False, "log_every": 1},
            "eval": {"samples": 1, "sample_tokens": 4}, "methods": methods}


def test_chat_run_trains_on_replies_and_saves_the_template(tmp_path, chat_teacher):
    from transformers import AutoTokenizer

    s = distill.run(_chat_recipe(tmp_path, chat_teacher, [{"name": "sft"}, {"name": "token_kd"}]), log=lambda m: None)
    for label in ("sft", "token_kd"):
        assert s["students"][label]["bits_per_byte"] > 0
        saved = AutoTokenizer.from_pretrained(tmp_path / "runs" / "chat" / "students" / label)
        assert saved.chat_template == CHATML  # the student's folder renders chats as it was trained


def test_chat_teacher_cache_equals_the_live_teacher(tmp_path, chat_teacher):
    """Replies are not one run of tokens: the cache must key and count them as collate does."""
    from llm_helpers import kd_losses

    live = _chat_recipe(tmp_path / "live", chat_teacher, [{"name": "token_kd"}])
    cached = _chat_recipe(tmp_path / "cached", chat_teacher, [{"name": "token_kd"}])
    cached["teacher"]["cache_top_k"] = 10_000  # every token: the cached loss is the live one
    distill.run(live, log=lambda m: None)
    distill.run(cached, log=lambda m: None)
    a = kd_losses(tmp_path / "live" / "runs" / "chat")
    b = kd_losses(tmp_path / "cached" / "runs" / "chat")
    assert len(a) == 3 and a == pytest.approx(b, rel=1e-3, abs=1e-4)


def test_cache_keys_tell_target_sets_apart(chat_tok):
    """The same conversation under another data.loss_on is another cache entry (its targets differ)."""
    from distill.families.llm.cache import data_hash, key_of

    (a,) = chat_examples([CONV], chat_tok, 512, loss_on="assistant")
    (b,) = chat_examples([CONV], chat_tok, 512, loss_on="last")
    assert a.ids == b.ids and a.mask != b.mask
    assert key_of(a) != key_of(b) and data_hash([a]) != data_hash([b])
    # a single reply is the one run of targets that plain prompt/response data has: the old key
    (c,) = chat_examples([CONV[1:3]], chat_tok, 512)
    assert c.target_positions() is None


def test_student_tokenizer_without_a_chat_template_is_refused(tmp_path, chat_teacher):
    recipe = _chat_recipe(tmp_path, chat_teacher, [{"name": "alm"}])
    recipe["student"]["tokenizer"] = "byte"
    with pytest.raises(ConfigError, match=r"student.tokenizer: .* has none; give the student a tokenizer"):
        distill.run(recipe, log=lambda m: None)
