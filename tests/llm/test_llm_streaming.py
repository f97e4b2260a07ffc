"""`data.streaming`: JSONL examples indexed once and read from disk batch by batch give the same
examples, batches and losses as the in-memory path, holding a few bytes per example."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("transformers")
from llm_helpers import corpus, kd_losses  # noqa: E402

import distill  # noqa: E402
from distill.config import load_config  # noqa: E402
from distill.errors import ConfigError  # noqa: E402
from distill.families.llm.data import (StreamedExamples, chat_examples, messages_of, prompt_response_examples,  # noqa: E402
                                       read_chats)

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _chats(path, n=40):
    a, b, c = corpus(n, seed=1), corpus(n, seed=2), corpus(n, seed=3)
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": x[:50]},
                                                     {"role": "assistant", "content": y[:50]},
                                                     {"role": "user", "content": "More."},
                                                     {"role": "assistant", "content": z[:40]}]}) + "\n"
                            + ("\n" if i % 7 == 0 else "")  # blank lines are skipped
                            for i, (x, y, z) in enumerate(zip(a, b, c))))
    return path


def _pairs(path, n=40):
    path.write_text("".join(json.dumps({"prompt": x[:40], "response": y[:60]}) + "\n"
                            for x, y in zip(corpus(n, seed=4), corpus(n, seed=5))))
    return path


def test_streamed_examples_equal_the_in_memory_ones(tmp_path, chat_teacher):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(chat_teacher)
    tok.chat_template = CHATML
    p = _chats(tmp_path / "c.jsonl")
    want = chat_examples(read_chats(p), tok, 96)
    got = StreamedExamples(p, lambda rec, where: chat_examples([messages_of(rec, where)], tok, 96))
    assert len(got) == len(want) == 40
    for i in (0, 17, 39, 3, 3, 38):  # any order, repeats
        assert (got[i].ids, got[i].mask, got[i].start) == (want[i].ids, want[i].mask, want[i].start)
    assert [got.length(i) for i in range(len(got))] == [len(e.ids) for e in want]
    sub = got.subset([5, 2, 30])
    assert [e.ids for e in sub] == [want[5].ids, want[2].ids, want[30].ids]
    # what the index holds: an offset, a position in the line and a length per example, no tokens
    offsets, subs, lengths = got._index
    assert len(offsets) == len(subs) == len(lengths) == 40
    assert offsets.itemsize + subs.itemsize + lengths.itemsize + got._keep.itemsize <= 24


def test_a_bad_line_is_named_when_indexing(tmp_path, tiny_tok):
    p = tmp_path / "p.jsonl"
    p.write_text('{"prompt": "a", "response": "b"}\n{"prompt": \n')
    with pytest.raises(ConfigError, match=r"p.jsonl, line 2: not JSON"):
        StreamedExamples(p, lambda rec, where: prompt_response_examples([(rec["prompt"], rec["response"])], tiny_tok, 32))


def _recipe(tmp_path, chat_teacher, data: dict) -> dict:
    return {"name": "s", "family": "llm", "output_dir": str(tmp_path / "runs"), "cache_dir": str(tmp_path / "cache"),
            "teacher": {"path": str(chat_teacher)},
            "student": {"arch": "gpt2", "hidden_size": 16, "num_layers": 1, "num_heads": 2, "pad_vocab_to": 64},
            "data": {"seq_len": 128, "batch_size": 4, "eval_batch_size": 8, "pack": True, **data},
            "train": {"epochs": 2, "max_steps": 6}, "engine": {"device": "cpu", "progress": False, "log_every": 1},
            "eval": {"samples": 0}, "methods": [{"name": "token_kd"}]}


@pytest.mark.parametrize("source", ["chat", "jsonl"])
def test_streamed_run_equals_the_in_memory_run(tmp_path, chat_teacher, source):
    path = _chats(tmp_path / "d.jsonl") if source == "chat" else _pairs(tmp_path / "d.jsonl")
    data = {"source": source, "path": str(path), **({"chat_template": CHATML} if source == "chat" else {})}
    lines: list[str] = []
    a = distill.run(_recipe(tmp_path / "mem", chat_teacher, data), log=lambda m: None)
    b = distill.run(_recipe(tmp_path / "stream", chat_teacher, {**data, "streaming": True}), log=lines.append)
    assert any("indexed" in x and "streamed" in x for x in lines), lines
    la, lb = kd_losses(tmp_path / "mem" / "runs" / "s"), kd_losses(tmp_path / "stream" / "runs" / "s")
    assert len(la) == 6 and la == lb  # the same batches in the same order, over two epochs
    assert a["students"]["token_kd"]["bits_per_byte"] == b["students"]["token_kd"]["bits_per_byte"]


def test_streaming_refuses_what_needs_the_whole_set_in_memory(tmp_path, chat_teacher):
    p = _pairs(tmp_path / "d.jsonl")
    for data, extra, pattern in [({"source": "text", "path": str(p)}, {}, r"data.streaming: reads JSONL files"),
                                 ({"source": "jsonl", "path": str(p)}, {"teacher": {"cache_top_k": 8}},
                                  r"data.streaming: the teacher cache"),
                                 ({"source": "jsonl", "path": str(p)}, {"student": {"tokenizer": "byte"}},
                                  r"data.streaming: a student with its own tokenizer")]:
        r = _recipe(tmp_path, chat_teacher, {**data, "streaming": True})
        for k, v in extra.items():
            r[k] = {**r[k], **v}
        if "tokenizer" in extra.get("student", {}):
            r["methods"] = [{"name": "alm"}]
        with pytest.raises(ConfigError, match=pattern):
            load_config(r)


def _text_example(rec, where):
    """One stand-in example per line (no tokenizer): its text, and ids for the index's lengths."""
    from types import SimpleNamespace

    return [SimpleNamespace(ids=[1, 2], text=rec["text"])]


def test_streamed_examples_read_through_one_handle_and_pickle_without_it(tmp_path):
    import pickle

    from distill.families.llm.data import StreamedExamples

    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"text": f"line {i}"}) + "\n" for i in range(5)))
    ex = StreamedExamples(path, _text_example)
    assert [ex[i].text for i in (3, 0, 4, 4)] == ["line 3", "line 0", "line 4", "line 4"]
    handle = ex._fh
    assert handle is not None and ex[1].text == "line 1" and ex._fh is handle
    ex._line = None
    copy = pickle.loads(pickle.dumps(ex))
    assert copy._fh is None and [copy[i].text for i in range(5)] == [f"line {i}" for i in range(5)]
