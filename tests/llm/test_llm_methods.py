"""Every registered llm method: finite loss terms that decrease on a tiny locally created model."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")
from llm_helpers import tiny_lm  # noqa: E402

from distill.families.llm.data import Example, LMLoader, rows_of  # noqa: E402
from distill.registry import methods  # noqa: E402
from distill.teacher import Teacher  # noqa: E402

V = 64


def _data(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    exs = []
    for _ in range(n):
        ids = [1] + torch.randint(3, V, (int(torch.randint(6, 14, (1,), generator=g)),), generator=g).tolist() + [2]
        exs.append(Example(ids, start=1, prompt_len=3, n_bytes=len(ids)))
    return exs


def _teacher():
    t = tiny_lm("llama", V, hidden=24, seed=1)
    with torch.no_grad():  # a peaked teacher, so there is something to learn
        t.lm_head.weight.mul_(8.0)
    return Teacher(t)


def _build(name, params, arch="gpt2"):
    torch.manual_seed(0)
    student = tiny_lm(arch, V, pad_vocab_to=80)  # padded student vocabulary: extra rows masked in losses
    entry = methods.get(name, "llm")
    m = entry.builder(student, _teacher() if entry.builder.needs_teacher else None, **params)
    m.pad_id, m.eos_id = 0, 2
    return m


def _train(method, exs, steps=25, lr=1e-2):
    packed = not method.uses_prompts
    loader = LMLoader(rows_of(exs, 64, packed), len(exs), 0, packed=packed, shuffle=False, with_prompts=method.uses_prompts)
    batch = next(iter(loader))
    opt = torch.optim.Adam(method.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        terms = method(batch)
        loss = sum(method.weights.get(k, 1.0) * v for k, v in terms.items())
        assert all(torch.isfinite(v) for v in terms.values()), terms
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses, batch


CASES = [("sft", {}), ("token_kd", {"divergence": "forward_kl", "ce_weight": 0.5}),
         ("token_kd", {"divergence": "reverse_kl"}), ("token_kd", {"divergence": "jsd", "beta": 0.5}),
         ("token_kd", {"divergence": "skew_kl"}), ("token_kd", {"divergence": "skew_reverse_kl"}),
         ("token_kd", {"divergence": "tvd"}), ("token_kd", {"divergence": "forward_kl", "top_k": 8, "chunk_size": 16}),
         ("first", {"top_k": 5, "calibration_temperature": 1.5, "chunk_size": 16})]


@pytest.mark.parametrize("name,params", CASES, ids=[f"{n}-{p.get('divergence', '')}{'-topk' if 'top_k' in p else ''}" for n, p in CASES])
def test_token_level_methods_decrease(name, params):
    m = _build(name, params, arch="llama" if name == "sft" else "gpt2")
    losses, _ = _train(m, _data())
    assert losses[-1] < 0.8 * losses[0], losses


def test_on_policy_samples_from_the_student_and_learns():
    m = _build("on_policy", {"lmbda": 1.0, "max_new_tokens": 6, "temperature": 1.0})
    exs = _data()
    seen = []
    orig = type(m).student_hidden

    def spy(self, batch):
        seen.append(batch["input_ids"].shape)
        return orig(self, batch)

    type(m).student_hidden = spy
    try:
        # the divergence on the data's own continuations (lmbda = 0) must drop while training on-policy
        m.lmbda = 0.0
        torch.manual_seed(0)
        before, batch = _train(m, exs, steps=1, lr=0.0)
        m.lmbda = 1.0
        losses, _ = _train(m, exs, steps=20)
        m.lmbda = 0.0
        after, _ = _train(m, exs, steps=1, lr=0.0)
    finally:
        type(m).student_hidden = orig
    assert all(torch.isfinite(torch.tensor(losses)))
    assert any(s[1] <= 3 + 6 for s in seen[1:])  # prompt (3) + at most 6 sampled tokens
    assert after[0] < before[0]


def test_seq_kd_trains_on_teacher_continuations():
    m = _build("seq_kd", {"max_new_tokens": 8, "batch_size": 4})
    exs = m.prepare_examples(_data(), _Tok())
    assert len(exs) == 8 and all(e.start == 3 and len(e.ids) <= 3 + 8 for e in exs)
    # greedy teacher continuations: the teacher's own argmax at each step
    t = m.teacher.module
    with torch.no_grad():
        logits = t(torch.tensor([exs[0].ids[:-1]])).logits[0]
    assert logits[2:].argmax(-1).tolist()[: len(exs[0].ids) - 3] == exs[0].ids[3:]
    losses, _ = _train(m, exs)
    assert losses[-1] < 0.8 * losses[0]


class _Tok:
    def decode(self, ids, skip_special_tokens=True):
        return " ".join(map(str, ids))


def test_every_registered_llm_method_is_covered():
    covered = {n for n, _ in CASES} | {"on_policy", "seq_kd", "redi"} | {"alm", "uld", "hybrid"}  # last: test_xtok_methods.py
    assert set(methods.names("llm")) <= covered


def test_redi_raises_positive_and_lowers_negative_likelihood():
    m = _build("redi", {"alpha": 0.5}, arch="llama")
    exs = _data(8)
    for i, e in enumerate(exs):
        e.sign = 1.0 if i % 2 == 0 else -1.0
        e.start = 3
    packed = LMLoader(rows_of(exs, 64, True), 8, 0, packed=True, shuffle=False)
    batch = next(iter(packed))
    with torch.no_grad():
        before = m(batch)
    opt = torch.optim.Adam(m.parameters(), lr=5e-3)
    for _ in range(10):
        terms = m(batch)
        assert all(torch.isfinite(v) for v in terms.values())
        opt.zero_grad()
        sum(terms.values()).backward()
        opt.step()
    with torch.no_grad():
        after = m(batch)
    assert after["pos"] < before["pos"]          # positive NLL down
    assert after["neg"] < before["neg"] < 0      # negative NLL up (the term is -alpha * NLL)
    # the packed batch gives the same terms as one example per row
    single = next(iter(LMLoader(rows_of(exs, 64, False), 8, 0, packed=False, shuffle=False)))
    with torch.no_grad():
        torch.testing.assert_close(m(single)["pos"], after["pos"], rtol=1e-4, atol=1e-5)
