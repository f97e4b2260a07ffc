"""Byte-offset alignment: chunks cover the text exactly once, in order, on both sides, for random
Unicode text and real tokenizers (a local BPE, the byte-level tokenizer, stories260K's SentencePiece)."""
from __future__ import annotations

import pytest

pytest.importorskip("transformers")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from distill.families.llm.cross_tokenizer.alignment import (AlignmentError, Encoded, align, chat_segments,  # noqa: E402
                                                             encode, encode_segments, token_bytes_table)
from distill.families.llm.cross_tokenizer.byte_tokenizer import byte_tokenizer, train_bpe  # noqa: E402

from distill.families.llm.config import assets_dir  # noqa: E402
from llm_helpers import corpus  # noqa: E402

# U+2581 is SentencePiece's own space marker: a text holding it literally is ambiguous (documented limit)
TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\u2581"), max_size=40)
FAST = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def toks(tmp_path_factory):
    out = {"byte": byte_tokenizer(), "bpe": train_bpe(corpus(200) + ["héllo wörld 漢字 🙂"] * 5, 320),
           "bpe2": train_bpe(corpus(100, seed=3), 280)}
    model = assets_dir() / "stories260K" / "tok512.model"
    if model.is_file():
        from distill.families.llm.convert import save_sentencepiece_tokenizer
        from distill.families.llm.models import load_tokenizer

        folder = tmp_path_factory.mktemp("sp")
        save_sentencepiece_tokenizer(model, folder)
        out["sp"] = load_tokenizer(str(folder))
    return {k: (t, token_bytes_table(t)) for k, t in out.items()}


def _check_cover(text: str, sides, bounds) -> None:
    raw = text.encode("utf-8")
    pos = 0
    for lo, hi in bounds:  # the chunks tile the text: contiguous, in order, from 0 to the end
        assert lo == pos and hi > lo
        pos = hi
    assert pos == len(raw)
    for enc, table, chunk_of in sides:
        seen = [c for c in chunk_of if c >= 0]
        assert seen == sorted(seen)  # tokens meet the chunks in order
        for k, (lo, hi) in enumerate(bounds):  # each chunk spells exactly its bytes, on each side
            assert b"".join(table[i] for i, c in zip(enc.ids, chunk_of) if c == k).lstrip(b" ") == raw[lo:hi].lstrip(b" ")
        # every non-empty token belongs to a chunk; zero-byte ones (BOS, EOS) to none
        for (a, b), c in zip(enc.spans, chunk_of):
            assert (c >= 0) == (b > a) or c == len(bounds)


@pytest.mark.parametrize("a,b", [("bpe", "byte"), ("bpe", "bpe2"), ("byte", "byte"), ("sp", "byte"), ("sp", "bpe")])
@FAST
@given(text=TEXT, bos_a=st.booleans(), eos_a=st.booleans(), eos_b=st.booleans())
def test_chunks_cover_the_text_once_in_order(toks, a, b, text, bos_a, eos_a, eos_b):
    if a not in toks or b not in toks:
        pytest.skip("stories260K tokenizer not available (shared assets absent)")
    (ta, tab_a), (tb, tab_b) = toks[a], toks[b]
    ea = encode(ta, text, tab_a, bos=bos_a, eos=eos_a)  # BOS/EOS on one side only, or both
    eb = encode(tb, text, tab_b, bos=True, eos=eos_b)
    al = align(ea, eb)
    bounds = al.bounds[:-1] if (eos_a and eos_b) else al.bounds
    _check_cover(text, [(ea, tab_a, al.a_chunk), (eb, tab_b, al.b_chunk)], bounds)
    if eos_a and eos_b:  # the EOS pair is a chunk of its own, at the end
        assert al.a_chunk[-1] == al.b_chunk[-1] == al.n_chunks - 1


def test_multibyte_split_and_byte_fallback(toks):
    if "sp" not in toks:
        pytest.skip("stories260K tokenizer not available")
    (sp, t_sp), (bt, t_bt) = toks["sp"], toks["byte"]
    text = "héllo 漢字 🙂"
    e_sp = encode(sp, text, t_sp)
    pieces = sp.convert_ids_to_tokens(e_sp.ids)
    assert any(p.startswith("<0x") for p in pieces)  # byte-fallback tokens: one byte of a character each
    al = align(e_sp, encode(bt, text, t_bt))
    # the 3-byte character spelled by three fallback tokens and three bytes: boundaries inside it are shared
    assert (7, 8) in al.bounds
    assert e_sp.spans[1][0] == 0  # the dummy-prefix space is dropped: the first piece starts at byte 0


def test_leading_space_marker(toks):
    if "sp" not in toks:
        pytest.skip("stories260K tokenizer not available")
    sp, t_sp = toks["sp"]
    for text in ("Once upon", " Once upon", "  two"):
        enc = encode(sp, text, t_sp, bos=False)
        assert enc.spans[-1][1] == len(text.encode())


def test_chat_templates_differ_but_contents_align(toks):
    (bpe, t_bpe), (bt, t_bt) = toks["bpe"], toks["byte"]
    bpe.chat_template = "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    bt.chat_template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}|{% endfor %}"
    try:
        msgs = [{"role": "user", "content": "the cat sat"}, {"role": "assistant", "content": "héllo dog"}]
        segs_a, segs_b = chat_segments(bpe, msgs), chat_segments(bt, msgs)
        assert [s for s, shared in segs_a if shared] == ["the cat sat", "héllo dog"]
        assert any(not shared for _, shared in segs_a)  # the template text is context, not aligned
        ea, eb = encode_segments(bpe, segs_a, t_bpe), encode_segments(bt, segs_b, t_bt)
        al = align(ea, eb)
        assert al.bounds[-1][1] == len("the cat sathéllo dog".encode())
        assert any(c < 0 for c in al.a_chunk) and any(c < 0 for c in al.b_chunk)  # template tokens: no chunk
    finally:
        bpe.chat_template = bt.chat_template = None


def test_unalignable_tokenizer_is_refused(toks):
    bt, t_bt = toks["byte"]
    bad = [b"x"] * len(t_bt)  # a vocabulary with no byte meaning
    with pytest.raises(AlignmentError, match="cannot be aligned"):
        encode(bt, "hello", bad)


@pytest.mark.parametrize("name", ["byte", "bpe", "sp"])
def test_special_token_text_in_the_data_is_text(toks, name):
    """A text that spells a special token ("<s>", "</s>") is tokenised as its characters, so every
    byte of it belongs to a token and the two sides still align."""
    if name not in toks:
        pytest.skip("the SentencePiece tokenizer needs ../shared/assets")
    tok, table = toks[name]
    text = "a <s> b </s> <pad>c"
    enc = encode(tok, text, table, bos=False)
    assert sum(b - a for a, b in enc.spans) == len(text.encode())  # the spans cover every byte once
    align(enc, encode(toks["byte"][0], text, toks["byte"][1], bos=False))
