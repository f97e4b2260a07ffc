"""The compressed LM teacher cache: the code against the distribution it encodes, the loss read
from it against the in-process loss, padded bins, refusals, and a run."""
from __future__ import annotations

import math

import pytest

pytest.importorskip("transformers")
import torch  # noqa: E402
from llm_helpers import cache_run_recipe, cached_loss, teacher_and_text, tiny_lm  # noqa: E402

from distill.errors import CacheMismatchError  # noqa: E402
from distill.families.llm.cache import CompressedLMTeacherCache, LMTeacherCache  # noqa: E402
from distill.families.llm.compress import Codec, decode, dense_logprobs, encode, kl_per_token  # noqa: E402
from distill.families.llm.models import head_of  # noqa: E402
from distill.losses.divergences import sparse_divergence  # noqa: E402
from distill.teacher import Teacher  # noqa: E402

T = 2.0


def _distributions(n=40, V=300, seed=0, scale=4.0):
    g = torch.Generator().manual_seed(seed)
    return torch.log_softmax(torch.randn(n, V, generator=g, dtype=torch.float64) * scale, -1)


def _record(lp, k):
    top = lp.topk(k, -1)
    tail = lp.scatter(-1, top.indices, float("-inf")).logsumexp(-1)
    return top.indices, top.values.float(), tail.float()


def test_kept_set_tail_and_error_against_the_distribution():
    """Checked against the full distribution, written out independently per position: the kept
    tokens are those with p >= min_prob among the k most probable (the first always), the tail is
    the exact mass of all others, and each kept probability is within half a sqrt-domain step."""
    V, k, min_prob, bits = 300, 48, 2e-3, 8
    lp = _distributions(V=V)
    codec = Codec(k, V, min_prob, bits)
    idx, lps, tail = _record(lp, 64)  # the record holds more than k: the code keeps k of them
    i, l, t, v = decode(codec, encode(codec, idx, lps, tail))
    p = lp.exp()
    for r in range(lp.shape[0]):
        order = sorted(range(V), key=lambda j: -p[r, j].item())[:k]
        want = {j for j in order if p[r, j] >= min_prob} | {order[0]}
        got = set(i[r][v[r]].tolist())
        assert got == want, r
        assert i[r][v[r]].tolist() == sorted(want)  # increasing ids
        rest = sum(p[r, j].item() for j in range(V) if j not in want)
        assert math.isclose(math.exp(t[r].item()), rest, rel_tol=1e-5)  # fp32 of its log
        # dequantised, before the rescale to 1 - tail: sqrt within half a step of the true sqrt
        q = l[r][v[r]].double().exp()
        q = q / q.sum() * p[r, sorted(want)].sum()
        err = (q.sqrt() - p[r, sorted(want)].sqrt()).abs().max().item()
        assert err <= 0.5 / codec.levels + 2e-3 * math.sqrt(q.max()), (r, err)
    assert not v[:, :].all()  # positions keep different numbers of tokens


def test_error_shrinks_with_bits_and_vanishes_at_the_full_vocabulary():
    """KL(p || decoded) against its two sources, computed from p alone: the tokens below half a
    step (sqrt(p) * levels < 0.5) are spread evenly with the tail, and every kept token costs about
    2 d^2 with d uniform within half a step, V / (6 levels^2) at most over V tokens."""
    V = 200
    lp = _distributions(V=V, scale=3.0)
    p = lp.exp()
    full = _record(lp, V)
    kls = []
    for bits in (6, 8, 10, 12, 16):
        c = Codec(V, V, 0.0, bits)
        i, l, t, v = decode(c, encode(c, *full))
        kl = kl_per_token(lp, dense_logprobs(i, l, t, V, v)).mean().item()
        kls.append(kl)
        small = (p.sqrt() * c.levels) < 0.5
        small[torch.arange(V).unsqueeze(0) == p.argmax(-1, keepdim=True)] = False
        spread = torch.where(small, (p * small).sum(-1, keepdim=True) / small.sum(-1, keepdim=True).clamp(min=1), p)
        kl_drop = (p * (lp - spread.log())).sum(-1).mean().item()
        assert kl <= kl_drop + 1.5 * V / (6 * c.levels ** 2), (bits, kl, kl_drop)
    assert all(a > b for a, b in zip(kls, kls[1:])), kls
    assert kls[-1] < 1e-7


def test_padded_bins_change_nothing_in_the_loss():
    g = torch.Generator().manual_seed(5)
    z = torch.randn(6, 50, generator=g)
    lp_t = torch.log_softmax(torch.randn(6, 50, generator=g) * 2, -1)
    top = lp_t.topk(5, -1)
    tail = lp_t.scatter(-1, top.indices, float("-inf")).logsumexp(-1)
    for kind in ("forward_kl", "reverse_kl", "jsd", "tvd", "skew_kl"):
        ref = sparse_divergence(z, top.indices, top.values, kind, teacher_log_tail=tail, reduction="none")
        idx = torch.cat([top.indices, torch.zeros(6, 3, dtype=torch.long)], -1)  # padded with id 0
        lps = torch.cat([top.values, torch.full((6, 3), -1e4)], -1)
        valid = torch.cat([torch.ones(6, 5, dtype=torch.bool), torch.zeros(6, 3, dtype=torch.bool)], -1)
        got = sparse_divergence(z, idx, lps, kind, teacher_log_tail=tail, teacher_valid=valid, reduction="none")
        assert torch.allclose(got, ref, atol=1e-6), kind


@pytest.mark.parametrize("kind", ["forward_kl", "jsd"])
def test_loss_from_the_compressed_cache(tmp_path, cache_setup, tiny_tok, kind):
    """16 bits, nothing dropped, k = V: the loss equals the dense in-process one (the exact format's
    k = V loss) closely; a coarse code (p >= 1e-3, 8 bits) stays within a few percent of it, at a fraction of the bytes."""
    teacher, student, exs, batch = cache_setup
    V = head_of(teacher.module)[0].shape[0]
    exact = LMTeacherCache.build(tmp_path / "e", teacher, tiny_tok, exs, temperature=T, k=V, seq_len=32)
    fine = CompressedLMTeacherCache.build(tmp_path / "f", teacher, tiny_tok, exs, temperature=T, k=V, seq_len=32,
                                          min_prob=0.0, bits=16)
    small = CompressedLMTeacherCache.build(tmp_path / "s", teacher, tiny_tok, exs, temperature=T, k=V, seq_len=32,
                                           min_prob=1e-3, bits=8)
    with torch.no_grad():
        ref = cached_loss(exact, student, batch, kind)
        assert torch.allclose(cached_loss(fine, student, batch, kind), ref, rtol=1e-3), kind
        assert torch.allclose(cached_loss(small, student, batch, kind), ref, rtol=5e-2), kind
    assert small.bytes_per_token() < exact.bytes_per_token() / 10
    idx, lps, tail, valid = small.lookup(batch)
    assert idx.shape == lps.shape == valid.shape and tail.shape == (idx.shape[0],)
    assert (lps[~valid] <= -1e3).all() and not valid.all()
    # gradients flow through the student
    student.zero_grad()
    cached_loss(small, student, batch, kind).backward()
    assert student.get_output_embeddings().weight.grad.abs().sum() > 0
    student.zero_grad()


def test_lzma_coder_packs_the_same_columns():
    """coder=lzma: the record's columns, unpacked by the standard library's lzma reader (raw LZMA2),
    are byte for byte those deflate packs (unpacked by zlib), and both decode to the same tokens."""
    import lzma
    import zlib

    V = 300
    rec = _record(_distributions(V=V), 64)
    blobs = {c: encode(Codec(48, V, 2e-3, 8, c), *rec) for c in ("deflate", "lzma")}
    assert blobs["deflate"][:4] == blobs["lzma"][:4]  # the position count
    body_z = zlib.decompress(blobs["deflate"][4:], -15)
    body_x = lzma.decompress(blobs["lzma"][4:], format=lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2}])
    assert body_z == body_x and len(body_z) > 100
    a, b = (decode(Codec(48, V, 2e-3, 8, c), blobs[c]) for c in ("deflate", "lzma"))
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    with pytest.raises(ValueError, match="coder"):
        Codec(48, V, coder="zstd")


def test_lzma_cache_reads_like_the_deflated_one(tmp_path, cache_setup, tiny_tok):
    """A cache packed with lzma: its lookups equal the deflated cache's; the coder is kept in its
    metadata (a cache written without one is deflated), so it is read back right whichever coder the
    reader names."""
    teacher, _, exs, batch = cache_setup
    ok = dict(temperature=T, k=16, seq_len=32, min_prob=1e-4, bits=8)
    z = CompressedLMTeacherCache.load_or_build(tmp_path / "z", teacher, tiny_tok, exs, **ok)
    x = CompressedLMTeacherCache.load_or_build(tmp_path / "x", teacher, tiny_tok, exs, coder="lzma", **ok)
    assert x.meta["coder"] == "lzma" and z.meta["coder"] == "deflate"
    stamp = (tmp_path / "x" / CompressedLMTeacherCache.FILE).stat().st_mtime_ns
    again = CompressedLMTeacherCache.load_or_build(tmp_path / "x", teacher, tiny_tok, exs, **ok)  # deflate named
    assert (tmp_path / "x" / CompressedLMTeacherCache.FILE).stat().st_mtime_ns == stamp  # reused, not rebuilt
    assert again.codec.coder == "lzma"
    for c in (x, again):
        for u, v in zip(z.lookup(batch), c.lookup(batch)):
            assert torch.equal(u, v)


def test_compressed_cache_settings_need_the_compressed_format(tmp_path, tiny_tok):
    from distill.config import load_config
    from distill.errors import ConfigError

    tdir, text = teacher_and_text(tmp_path, tiny_tok)
    recipe = cache_run_recipe(tmp_path, tdir, text, cache_top_k=32)
    recipe["teacher"]["cache_coder"] = "lzma"
    with pytest.raises(ConfigError, match="teacher.cache_coder: a setting of the compressed cache"):
        load_config(recipe)
    recipe["teacher"]["cache_format"] = "compressed"
    assert load_config(recipe).teacher.cache_coder == "lzma"


def test_compressed_cache_is_refused_when_the_code_differs(tmp_path, cache_setup, tiny_tok):
    teacher, _, exs, _ = cache_setup
    folder = tmp_path / "c"
    ok = dict(temperature=T, k=16, seq_len=32, min_prob=1e-4, bits=8)
    CompressedLMTeacherCache.build(folder, teacher, tiny_tok, exs, **ok)
    assert CompressedLMTeacherCache.load_or_build(folder, teacher, tiny_tok, exs, **ok).meta["storage"] == "compressed"
    for field, value in [("bits", 10), ("min_prob", 1e-3), ("k", 8), ("temperature", 1.0)]:
        with pytest.raises(CacheMismatchError, match=rf"\n  {field}: cache has"):
            CompressedLMTeacherCache.load_or_build(folder, teacher, tiny_tok, exs, **{**ok, field: value})
    with pytest.raises(CacheMismatchError, match=r"\n  teacher: cache has"):
        CompressedLMTeacherCache.load_or_build(folder, Teacher(tiny_lm("llama", len(tiny_tok), hidden=24, seed=9)),
                                               tiny_tok, exs, **ok)
    with pytest.raises(CacheMismatchError, match=r"storage: cache has 'compressed'"):  # read as the other format
        LMTeacherCache.load(folder, {"storage": None})


def test_run_with_the_compressed_cache(tmp_path, tiny_tok):
    import distill

    tdir, text = teacher_and_text(tmp_path, tiny_tok)
    recipe = cache_run_recipe(tmp_path, tdir, text, cache_top_k=32, cache_format="compressed")
    lines: list[str] = []
    s = distill.run(recipe, log=lines.append)
    assert any("compressed" in x and "bytes/token" in x for x in lines), lines
    folders = list((tmp_path / "cache" / "llm_teacher_outputs").iterdir())
    assert len(folders) == 1 and folders[0].name.endswith("-compressed-p1e-05-b8")
    assert CompressedLMTeacherCache.load(folders[0], {}).codec.coder == "deflate"  # the default
    assert s["students"]["token_kd"]["bits_per_byte"] > 0  # trained and evaluated
