"""The aligned teacher cache (`cross_tokenizer.cache`): ALM trained from it equals ALM with the
teacher running (loss and gradients), its values are the teacher model's own log-probs of its
tokens (from `model(ids).logits`, independently of the chunked head), one cache serves students
with different tokenizers, and a cache of another teacher is refused."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
from llm_helpers import corpus, tiny_lm  # noqa: E402

import distill  # noqa: E402
from distill.errors import CacheMismatchError, ConfigError  # noqa: E402
from distill.families.llm.cache import example_key  # noqa: E402
from distill.families.llm.cross_tokenizer.byte_tokenizer import byte_tokenizer, train_bpe  # noqa: E402
from distill.families.llm.cross_tokenizer.cache import AlignedTeacherCache, teacher_keys  # noqa: E402
from distill.families.llm.cross_tokenizer.data import retokenize  # noqa: E402
from distill.families.llm.data import LMLoader, rows_of, text_examples  # noqa: E402
from distill.registry import methods  # noqa: E402
from distill.teacher import Teacher  # noqa: E402


def _method(student, teacher, t_tok, s_tok, **params):
    m = methods.get("alm", "llm").builder(student, teacher, **params)
    m.pad_id, m.eos_id = s_tok.pad_token_id, s_tok.eos_token_id
    m.set_tokenizers(t_tok, s_tok)
    return m.eval()


def _examples(t_tok, s_tok, texts, seq_len=200):
    return retokenize(text_examples(texts, t_tok, seq_len), t_tok, s_tok, seq_len)


def _batches(exs, s_tok, seq_len=200, packed=True):
    return list(LMLoader(rows_of(exs, seq_len, packed), 4, s_tok.pad_token_id, packed=packed, shuffle=False))


@pytest.fixture(scope="module")
def setup(tiny_tok):
    teacher = Teacher(tiny_lm("llama", len(tiny_tok), hidden=32, seed=1))
    with torch.no_grad():  # a peaked teacher: chunk log-likelihoods far from 0
        teacher.module.lm_head.weight.mul_(3.0)
    return tiny_tok, teacher, corpus(10, seed=11)


@pytest.mark.parametrize("student_tok", ["byte", "bpe"])
def test_alm_from_the_cache_equals_alm_with_the_teacher(tmp_path, setup, student_tok):
    t_tok, teacher, texts = setup
    s_tok = byte_tokenizer() if student_tok == "byte" else train_bpe(corpus(150, seed=5), 280)
    exs = _examples(t_tok, s_tok, texts)
    student = tiny_lm("gpt2", len(s_tok), seed=2)
    live = _method(student, teacher, t_tok, s_tok, tau=1.0)
    cached = _method(student, teacher, t_tok, s_tok, tau=1.0)
    keys = teacher_keys(cached, exs)
    cached.cache = AlignedTeacherCache.build(tmp_path / "c", cached, exs, keys, batch_size=3, device="cpu")
    assert cached.cache.meta["examples"] == len(keys) > 0
    assert cached.cache.bytes_per_token() < 8  # 4 bytes per teacher token, plus keys and offsets

    def run_teacher_fails(*a, **k):
        raise AssertionError("the teacher ran")
    cached.teacher_hidden = run_teacher_fails
    for batch in _batches(exs, s_tok):
        want = live(batch)["alm"]
        got = cached(batch)["alm"]
        assert float(want.detach()) > 1e-3
        assert float(got.detach()) == pytest.approx(float(want.detach()), rel=1e-5)
        g_want = torch.autograd.grad(want, student.get_output_embeddings().weight)[0]
        g_got = torch.autograd.grad(got, student.get_output_embeddings().weight)[0]
        assert torch.allclose(g_got, g_want, rtol=1e-4, atol=1e-7)


def test_cached_values_are_the_teacher_models_own_log_probs(tmp_path, setup):
    """Each cached value is log_softmax(model(ids).logits)[j, ids[j + 1]] of the teacher's ids of a
    text (BOS + its tokens), computed here from the model's own forward."""
    t_tok, teacher, texts = setup
    s_tok = byte_tokenizer()
    exs = _examples(t_tok, s_tok, texts[:4])
    m = _method(tiny_lm("gpt2", len(s_tok), seed=2), teacher, t_tok, s_tok)
    keys = teacher_keys(m, exs)
    cache = AlignedTeacherCache.build(tmp_path / "c", m, exs, keys, batch_size=2, device="cpu", progress=True)
    checked = 0
    for text in texts[:4]:
        ids = [t_tok.bos_token_id] + t_tok(text, add_special_tokens=False)["input_ids"]
        key = example_key(ids, 1)
        if key not in cache._where:  # a text whose example ends with EOS is keyed with it
            ids = ids + [t_tok.eos_token_id]
            key = example_key(ids, 1)
        a, z = cache._where[key]
        with torch.no_grad():
            lp = torch.log_softmax(teacher.module(torch.tensor([ids])).logits[0].float(), -1)
        want = lp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]
        assert torch.allclose(cache.logprobs[a:z], want, atol=1e-5)
        checked += 1
    assert checked == 4


def test_one_cache_serves_students_with_other_tokenizers(tmp_path, setup):
    """The cache is keyed by the teacher's tokens of each text: built for a byte-level student, it
    is read unchanged by a BPE student on the same texts."""
    t_tok, teacher, texts = setup
    b_tok, p_tok = byte_tokenizer(), train_bpe(corpus(150, seed=5), 280)
    mb = _method(tiny_lm("gpt2", len(b_tok), seed=2), teacher, t_tok, b_tok)
    mp = _method(tiny_lm("gpt2", len(p_tok), seed=3), teacher, t_tok, p_tok)
    eb, ep = _examples(t_tok, b_tok, texts), _examples(t_tok, p_tok, texts)
    kb, kp = teacher_keys(mb, eb), teacher_keys(mp, ep)
    assert set(kb) == set(kp)
    cache = AlignedTeacherCache.build(tmp_path / "c", mb, eb, kb, batch_size=4, device="cpu")
    mp.cache = cache
    live = _method(mp.student, teacher, t_tok, p_tok)
    for batch in _batches(ep, p_tok):
        assert float(mp(batch)["alm"].detach()) == pytest.approx(float(live(batch)["alm"].detach()), rel=1e-5)


def test_another_teacher_or_missing_text_is_refused(tmp_path, setup):
    t_tok, teacher, texts = setup
    s_tok = byte_tokenizer()
    exs = _examples(t_tok, s_tok, texts[:5])
    m = _method(tiny_lm("gpt2", len(s_tok), seed=2), teacher, t_tok, s_tok)
    keys = teacher_keys(m, exs)
    AlignedTeacherCache.build(tmp_path / "c", m, exs, keys, batch_size=4, device="cpu")
    other = Teacher(tiny_lm("llama", len(t_tok), hidden=32, seed=9))
    with pytest.raises(CacheMismatchError, match="teacher"):
        AlignedTeacherCache.load(tmp_path / "c", AlignedTeacherCache.expected_meta(other, t_tok, keys))
    cache = AlignedTeacherCache.load(tmp_path / "c", AlignedTeacherCache.expected_meta(teacher, t_tok, keys))
    m.cache = cache
    new = _examples(t_tok, s_tok, ["a text the cache has never seen, written after it was built."])
    with pytest.raises(CacheMismatchError, match="not in the cache"):
        m(_batches(new, s_tok)[0])
    hidden = _method(tiny_lm("gpt2", len(s_tok), seed=2), teacher, t_tok, s_tok, hidden_weight=1.0)
    with pytest.raises(ConfigError, match="hidden_weight"):
        hidden.accept_aligned_cache()


def test_a_cross_tokenizer_run_builds_and_reuses_the_aligned_cache(tmp_path, tiny_tok):
    """`distill run` with student.tokenizer and teacher.cache_top_k: alm trains from the aligned cache
    (written once under cache_dir, read again by a second run), with the same losses as a run
    that runs the teacher; hybrid in the same recipe runs the teacher, and says so."""
    def alm_losses(run_dir: Path) -> list[float]:
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        return [r["loss/alm"] for r in rows if r.get("phase") == "alm" and "loss/alm" in r]

    d = tmp_path / "teacher"
    tiny_lm("llama", len(tiny_tok), hidden=32, seed=1).save_pretrained(d)
    tiny_tok.save_pretrained(d)
    text = tmp_path / "train.txt"
    text.write_text("\n\n".join(corpus(30, seed=4)))

    def recipe(name, **teacher):
        return {"name": name, "family": "llm", "output_dir": str(tmp_path / "runs"), "cache_dir": str(tmp_path / "cache"),
                "teacher": {"path": str(d), **teacher},
                "student": {"arch": "gpt2", "hidden_size": 16, "num_layers": 1, "num_heads": 2, "tokenizer": "byte"},
                "data": {"source": "text", "path": str(text), "seq_len": 64, "batch_size": 4, "eval_batch_size": 8},
                "train": {"epochs": 1, "max_steps": 3}, "engine": {"device": "cpu", "progress": False, "log_every": 1},
                "eval": {"samples": 0}, "methods": [{"name": "alm", "params": {"tau": 1.0}}, {"name": "hybrid"},
                                                    {"name": "uld", "params": {"temperature": 2.0}}]}

    lines: list[str] = []
    cached = distill.run(recipe("cached", cache_top_k=8), log=lines.append)
    assert any(m.startswith("aligned teacher cache: ") for m in lines), lines
    assert any("hybrid reads no teacher cache" in m for m in lines), lines
    topk = [m for m in lines if m.startswith("aligned top-k teacher cache: ")]  # uld's, at its temperature
    assert len(topk) == 1 and "-aligned-topk-T2.0-k8" in topk[0], lines
    live = distill.run(recipe("live"), log=lambda m: None)
    a, b = alm_losses(Path(cached["run_dir"])), alm_losses(Path(live["run_dir"]))
    assert len(a) == 3 and a == pytest.approx(b, rel=1e-5)
    folders = list((tmp_path / "cache" / "llm_teacher_outputs").glob("*-aligned"))
    assert len(folders) == 1
    meta = json.loads((folders[0] / "meta.json").read_text())
    assert meta["kind"] == "aligned_token_logprobs" and meta["tokens"] > 0
    written = (folders[0] / "aligned.safetensors").stat().st_mtime_ns
    again = distill.run(recipe("again", cache_top_k=8), log=lambda m: None)
    assert list((tmp_path / "cache" / "llm_teacher_outputs").glob("*-aligned")) == folders
    assert (folders[0] / "aligned.safetensors").stat().st_mtime_ns == written  # read, not written again
    assert alm_losses(Path(again["run_dir"])) == pytest.approx(a, rel=1e-6)


def test_the_planner_counts_no_teacher_forward_for_alm_from_the_cache_or_a_server(tmp_path, tiny_tok):
    from distill.config import load_config
    from distill.families.llm.plan import plan

    d = tmp_path / "teacher"
    tiny_lm("llama", len(tiny_tok), hidden=32, seed=1).save_pretrained(d)
    tiny_tok.save_pretrained(d)
    text = tmp_path / "train.txt"
    text.write_text("\n\n".join(corpus(10)))

    def placements(params, name="alm"):
        return {p.name: p for p in plan(load_config({
            "name": "p", "family": "llm", "output_dir": str(tmp_path / "runs"), "cache_dir": str(tmp_path / "cache"),
            "teacher": {"path": str(d), "cache_top_k": 8},
            "student": {"arch": "gpt2", "hidden_size": 16, "num_layers": 1, "num_heads": 2, "tokenizer": "byte"},
            "data": {"source": "text", "path": str(text), "seq_len": 64, "batch_size": 4},
            "methods": [{"name": name, "params": params}]}), 1)[0]}

    plain, hidden = placements({}), placements({"hidden_weight": 1.0})
    assert plain["cached"].parts["teacher forward"] == 0 < hidden["cached"].parts["teacher forward"]
    uld = placements({}, name="uld")
    assert uld["cached"].parts["teacher forward"] == 0 and uld["served"].available
    assert plain["served"].available and not hidden["served"].available  # the server sends no hidden states


def test_alm_from_a_served_teacher_equals_alm_with_the_teacher(tmp_path, setup):
    """ServedAligned: the teacher's token log-probs of every text asked of `distill serve-teacher`
    (the language-model family's chunked head), the same alm loss as the teacher in process."""
    import threading

    from distill.families.llm.cross_tokenizer.cache import ServedAligned
    from distill.families.llm.served import head_topk_logprobs
    from distill.serve import make_server

    t_tok, teacher, texts = setup
    s_tok = byte_tokenizer()
    exs = _examples(t_tok, s_tok, texts)
    server = make_server(teacher, "127.0.0.1", 0, max_k=4, topk=head_topk_logprobs)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        student = tiny_lm("gpt2", len(s_tok), seed=2)
        live = _method(student, teacher, t_tok, s_tok, tau=1.0)
        remote = _method(student, None, t_tok, s_tok, tau=1.0)  # no teacher in this process
        remote.cache = ServedAligned(f"http://127.0.0.1:{server.server_address[1]}")
        assert remote.cache.meta["fingerprint"] == teacher.fingerprint()
        for batch in _batches(exs, s_tok):
            want, got = live(batch)["alm"], remote(batch)["alm"]
            assert float(got.detach()) == pytest.approx(float(want.detach()), rel=1e-5) and float(want.detach()) > 1e-3
    finally:
        server.shutdown()
        server.server_close()


def test_a_served_teacher_with_a_padded_head_normalises_over_its_tokenizer(tmp_path, setup):
    """A teacher whose output layer has rows past its tokenizer: ServedAligned asks the server to
    normalise over the tokenizer's length (as the in-process alm does), so the loss is the same;
    asked over every row, it would differ."""
    import threading

    from distill.families.llm.cross_tokenizer.cache import ServedAligned
    from distill.families.llm.served import head_topk_logprobs
    from distill.serve import make_server

    t_tok, _, texts = setup
    padded = Teacher(tiny_lm("llama", len(t_tok) + 24, hidden=32, seed=4))
    with torch.no_grad():  # mass on the padding rows, so normalising over them changes the values
        padded.module.lm_head.weight[len(t_tok):].mul_(4.0)
    s_tok = byte_tokenizer()
    exs = _examples(t_tok, s_tok, texts[:4])
    server = make_server(padded, "127.0.0.1", 0, max_k=4, topk=head_topk_logprobs)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        student = tiny_lm("gpt2", len(s_tok), seed=2)
        live = _method(student, padded, t_tok, s_tok, tau=1.0)
        remote = _method(student, None, t_tok, s_tok, tau=1.0)
        remote.cache = ServedAligned(url, vocab=len(t_tok))
        every_row = _method(student, None, t_tok, s_tok, tau=1.0)
        every_row.cache = ServedAligned(url)
        assert remote.cache.vocab == len(t_tok) and every_row.cache.vocab is None
        batch = _batches(exs, s_tok)[0]
        want, got, off = live(batch)["alm"], remote(batch)["alm"], every_row(batch)["alm"]
        assert float(got.detach()) == pytest.approx(float(want.detach()), rel=1e-5)
        assert abs(float(off.detach()) - float(want.detach())) > 1e-3 * abs(float(want.detach()))
    finally:
        server.shutdown()
        server.server_close()


# ---------------------------------------------------------------- uld from the teacher's top-k

def _uld(student, teacher, t_tok, s_tok, **params):
    m = methods.get("uld", "llm").builder(student, teacher, **params)
    m.pad_id, m.eos_id = s_tok.pad_token_id, s_tok.eos_token_id
    m.set_tokenizers(t_tok, s_tok)
    return m.eval()


def _reference_w1(p_s, p_t):
    """The paper's sorted Wasserstein-1 (both sorted decreasingly, zero-padded), with numpy."""
    import numpy as np

    a, b = -np.sort(-p_s.double().numpy(), axis=-1), -np.sort(-p_t.double().numpy(), axis=-1)
    v = max(a.shape[-1], b.shape[-1])
    a = np.pad(a, ((0, 0), (0, v - a.shape[-1])))
    b = np.pad(b, ((0, 0), (0, v - b.shape[-1])))
    return torch.from_numpy(np.abs(a - b).sum(-1))


def test_topk_wasserstein_is_exact_at_full_k_and_a_tight_lower_bound_below_it():
    from distill.families.llm.cross_tokenizer.uld import topk_sorted_wasserstein

    g = torch.Generator().manual_seed(0)
    for vs, vt in [(40, 60), (60, 40), (50, 50)]:
        p_s = torch.softmax(3 * torch.randn(64, vs, generator=g), -1)
        p_t = torch.softmax(3 * torch.randn(64, vt, generator=g), -1)
        exact = _reference_w1(p_s, p_t)
        top = p_t.topk(vt, -1).values
        full = topk_sorted_wasserstein(p_s, top, torch.zeros(64)).double()
        assert torch.allclose(full, exact, atol=1e-6)
        for k in (1, 4, 16):
            t = p_t.topk(k, -1).values
            r = (1 - t.sum(-1)).clamp(min=0)
            approx = topk_sorted_wasserstein(p_s, t, r).double()
            s_tail = (1 - p_s.topk(min(k, vs), -1).values.sum(-1)).clamp(min=0).double()
            assert (approx <= exact + 1e-6).all()
            assert (approx >= exact - 2 * torch.minimum(s_tail, r.double()) - 1e-6).all()
    # a hand-computed case: student (0.5, 0.3, 0.2), teacher top-1 0.6 and 0.4 elsewhere
    got = topk_sorted_wasserstein(torch.tensor([[0.5, 0.3, 0.2]]), torch.tensor([[0.6]]), torch.tensor([0.4]))
    assert float(got) == pytest.approx(0.1 + abs(0.5 - 0.4))


@pytest.mark.parametrize("k", [400, 8])
def test_uld_from_the_top_k_cache(tmp_path, setup, k):
    """k covering the teacher's vocabulary: the same loss and gradients as ULD with the teacher
    running; a small k: a lower bound of it (the bound's width is tested above). The teacher never
    runs."""
    from distill.families.llm.cross_tokenizer.cache import AlignedTopKCache

    t_tok, teacher, texts = setup
    s_tok = byte_tokenizer()
    exs = _examples(t_tok, s_tok, texts)
    student = tiny_lm("gpt2", len(s_tok), seed=2)
    live = _uld(student, teacher, t_tok, s_tok, temperature=2.0, ce_weight=0.0)
    cached = _uld(student, teacher, t_tok, s_tok, temperature=2.0, ce_weight=0.0)
    keys = teacher_keys(cached, exs)
    cached.cache = AlignedTopKCache.build(tmp_path / "c", cached, exs, keys, k=k, temperature=2.0, batch_size=3,
                                          device="cpu")
    assert cached.cache.meta["examples"] == len(keys) > 0
    assert cached.cache.bytes_per_token() < 2 * min(k, len(t_tok)) + 8  # fp16 values + the fp32 tail + index

    def run_teacher_fails(*a, **kw):
        raise AssertionError("the teacher ran")
    cached.teacher_hidden = run_teacher_fails
    for batch in _batches(exs, s_tok):
        want, got = live(batch)["uld"], cached(batch)["uld"]
        assert float(want.detach()) > 1e-3
        if k >= len(t_tok):
            assert float(got.detach()) == pytest.approx(float(want.detach()), rel=1e-3)  # fp16 values
            g_want = torch.autograd.grad(want, student.get_output_embeddings().weight)[0]
            g_got = torch.autograd.grad(got, student.get_output_embeddings().weight)[0]
            # fp16 values move |s - t| terms with s close to t across 0, flipping a few of their gradients
            cos = torch.nn.functional.cosine_similarity(g_got.flatten(), g_want.flatten(), dim=0)
            assert float(cos) > 0.99 and float(g_got.norm() / g_want.norm()) == pytest.approx(1.0, abs=0.05)
        else:
            assert 0 < float(got.detach()) <= float(want.detach()) * (1 + 1e-3)


def test_top_k_cache_values_are_the_teacher_models_own(tmp_path, setup):
    """The cached values at each position of a text are the k largest of
    log_softmax(model(ids).logits / T), and the tail the log of the rest, from the model's forward."""
    from distill.families.llm.cross_tokenizer.cache import AlignedTopKCache

    t_tok, teacher, texts = setup
    s_tok = byte_tokenizer()
    exs = _examples(t_tok, s_tok, texts[:3])
    m = _uld(tiny_lm("gpt2", len(s_tok), seed=2), teacher, t_tok, s_tok, temperature=2.0)
    keys = teacher_keys(m, exs)
    cache = AlignedTopKCache.build(tmp_path / "c", m, exs, keys, k=5, temperature=2.0, batch_size=2, device="cpu")
    for text in texts[:3]:
        ids = [t_tok.bos_token_id] + t_tok(text, add_special_tokens=False)["input_ids"]
        if example_key(ids, 1) not in cache._where:
            ids = ids + [t_tok.eos_token_id]
        a, z = cache._where[example_key(ids, 1)]
        with torch.no_grad():
            lp = torch.log_softmax(teacher.module(torch.tensor([ids])).logits[0, :-1].float() / 2.0, -1)
        top = lp.topk(5, -1).values
        assert torch.allclose(cache.logprobs[a:z].float(), top, atol=2e-3)
        assert torch.allclose(cache.log_tail[a:z], torch.log1p(-top.exp().sum(-1)), atol=1e-4)
    with pytest.raises(CacheMismatchError, match="temperature"):
        cache.first_topk(None, torch.zeros(0, dtype=torch.long), temperature=1.0)
    with pytest.raises(CacheMismatchError, match="k"):
        AlignedTopKCache.load(tmp_path / "c", AlignedTopKCache.expected_meta(teacher, t_tok, keys, k=6,
                                                                             temperature=2.0))


def test_uld_from_a_served_teacher_equals_uld_with_the_teacher(tmp_path, setup):
    import threading

    from distill.families.llm.cross_tokenizer.cache import ServedAligned
    from distill.families.llm.served import head_topk_logprobs
    from distill.serve import make_server

    t_tok, teacher, texts = setup
    s_tok = byte_tokenizer()
    exs = _examples(t_tok, s_tok, texts[:6])
    server = make_server(teacher, "127.0.0.1", 0, max_k=len(t_tok), topk=head_topk_logprobs)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        student = tiny_lm("gpt2", len(s_tok), seed=2)
        live = _uld(student, teacher, t_tok, s_tok, temperature=1.5)
        remote = _uld(student, None, t_tok, s_tok, temperature=1.5)  # no teacher in this process
        remote.cache = ServedAligned(f"http://127.0.0.1:{server.server_address[1]}", top_k=len(t_tok))
        for batch in _batches(exs, s_tok):
            want, got = live(batch), remote(batch)
            assert float(got["uld"].detach()) == pytest.approx(float(want["uld"].detach()), rel=1e-5)
            assert float(got["ce"].detach()) == pytest.approx(float(want["ce"].detach()), rel=1e-6)
    finally:
        server.shutdown()
        server.server_close()
