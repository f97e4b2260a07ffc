"""Packing isolation, label placement, prompt masking and token normalisation under accumulation."""
from __future__ import annotations

import json

import pytest
import torch

from distill.families.llm.data import (IGNORE, Example, LMLoader, collate, pack, prompt_response_examples, read_jsonl,
                                       rows_of, text_examples)

pytest.importorskip("transformers")
from llm_helpers import corpus, tiny_lm  # noqa: E402


def _examples(seed=0, n=6):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        L = int(torch.randint(4, 12, (1,), generator=g))
        ids = [1] + torch.randint(3, 60, (L,), generator=g).tolist() + [2]
        out.append(Example(ids, start=1 + (i % 3), prompt_len=2, n_bytes=L))
    return out


def test_labels_never_cross_a_boundary():
    exs = _examples()
    rows = pack(exs, 40)
    b = collate(rows, 0, packed=True)
    for r, row in enumerate(rows):
        o = 0
        for ex in row:
            n = len(ex.ids)
            assert b["labels"][r, o + n - 1] == IGNORE  # last token of an example predicts nothing
            assert torch.equal(b["labels"][r, o + ex.start - 1:o + n - 1], torch.tensor(ex.ids[ex.start:]))
            assert (b["labels"][r, o:o + ex.start - 1] == IGNORE).all()  # prompt positions
            o += n
    assert int((b["labels"] != IGNORE).sum()) == sum(len(e.ids) - e.start for e in exs)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_packed_equals_unpacked(arch, attn):
    """Per-token log-probs of packed rows equal those of each example run alone (no cross-attention),
    under every attention implementation packing is allowed with."""
    model = tiny_lm(arch, 64).eval()
    model.set_attn_implementation(attn)
    assert model.config._attn_implementation == attn
    exs = _examples(1)
    packed = collate(pack(exs, 40), 0, packed=True)
    single = collate([[e] for e in exs], 0, packed=False)
    from distill.families.llm.data import model_inputs

    def token_losses(b):
        with torch.no_grad():
            lp = torch.log_softmax(model(**model_inputs(b)).logits, -1)
        m = b["labels"] != IGNORE
        return -lp[m].gather(-1, b["labels"][m][:, None]).squeeze(-1)

    lp_packed, lp_single = token_losses(packed), token_losses(single)
    assert packed["input_ids"].shape[0] < single["input_ids"].shape[0]
    torch.testing.assert_close(lp_packed, lp_single, rtol=1e-5, atol=1e-5)


def test_packing_is_refused_where_attention_ignores_the_mask():
    from distill.errors import ConfigError
    from distill.families.llm.data import check_packing, packing_supported

    model = tiny_lm("llama", 64)
    check_packing(model, None)
    model.config._attn_implementation = "flash_attention_2"  # takes no 4-D mask
    assert not packing_supported(model)
    with pytest.raises(ConfigError, match="data.pack"):
        check_packing(model)


def test_gradient_accumulation_gives_the_full_batch_gradient():
    """Rows of very different lengths: two micro-batches with `norm` == one batch (per-token mean)."""
    from distill.families.llm.sft import SFT

    exs = [Example([1] + list(range(3, 3 + n)) + [2]) for n in (3, 17, 5, 30)]
    rows = rows_of(exs, 64, packed=False)

    def grads(batch_size, accum):
        torch.manual_seed(0)
        method = SFT(tiny_lm("llama", 64))
        loader = LMLoader(rows, batch_size, 0, packed=False, shuffle=False, grad_accum=accum)
        for b in loader:
            (method(b)["ce"] / accum).backward()
        return [p.grad.clone() for p in method.parameters()]

    full, acc = grads(4, 1), grads(2, 2)
    for a, b in zip(full, acc):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_padding_does_not_change_the_loss():
    from distill.families.llm.sft import SFT

    torch.manual_seed(0)
    method = SFT(tiny_lm("gpt2", 64)).eval()
    ex = Example([1, 5, 6, 7, 8, 2])
    alone = LMLoader([[ex]], 1, 0, packed=False, shuffle=False)
    padded = LMLoader([[ex], [Example([1] + list(range(3, 40)) + [2])]], 2, 0, packed=False, shuffle=False)
    with torch.no_grad():
        a = method(next(iter(alone)))["ce"]
        b = next(iter(padded))
        b_norm_first = method({**{k: v[:1] for k, v in b.items() if k not in ("norm", "n_bytes")},
                               "norm": torch.tensor(5.0)})["ce"]
    torch.testing.assert_close(a, b_norm_first)


def test_text_and_prompt_response_examples(tiny_tok, tmp_path):
    exs = text_examples(corpus(5), tiny_tok, seq_len=16, prompt_tokens=4)
    assert all(len(e.ids) <= 16 and e.ids[0] == tiny_tok.bos_token_id for e in exs)
    assert exs[-1].ids[-1] == tiny_tok.eos_token_id and sum(e.n_bytes for e in exs) > 0
    p = tmp_path / "pairs.jsonl"
    p.write_text("\n".join(json.dumps({"prompt": a, "response": b}) for a, b in zip(corpus(4), corpus(4, 1))))
    pr = prompt_response_examples(read_jsonl(p), tiny_tok, seq_len=256)
    assert len(pr) == 4
    b = collate([[e] for e in pr], tiny_tok.pad_token_id, packed=False, with_prompts=True)
    for i, e in enumerate(pr):  # targets are the response only
        assert int((b["labels"][i] != IGNORE).sum()) == len(e.ids) - e.start
        assert b["prompt_mask"][i].sum() == e.prompt_len and b["prompt_ids"][i, -1] == e.ids[e.prompt_len - 1]


def test_every_accumulation_window_weights_its_tokens_to_one(tmp_path):
    """Through the real engine: each optimiser step moves a parameter by exactly the sum of the
    per-token weights of its window, which must be 1 in every window, the short last one included
    (5 batches, grad_accum 2: windows of 2, 2 and 1 batches)."""
    from distill.config import EngineConfig, OptimizerConfig, TrainConfig
    from distill.engine import Engine

    class Counted(torch.nn.Module):  # loss = theta * (counted tokens) / norm: d loss / d theta = token weights
        def __init__(self):
            super().__init__()
            self.theta = torch.nn.Parameter(torch.zeros(()))

        def forward(self, batch):
            return {"w": self.theta * (batch["labels"] != IGNORE).sum() / batch["norm"]}

    exs = [Example([1] + list(range(3, 3 + n)) + [2]) for n in (3, 17, 5, 30, 8, 2, 11, 4, 9, 6)]
    loader = LMLoader(rows_of(exs, 64, packed=False), 2, 0, packed=False, shuffle=False, grad_accum=2)
    assert len(loader) == 5
    engine = Engine(EngineConfig(device="cpu", progress=False, grad_accum=2), tmp_path, seed=0, name="w")
    train = TrainConfig(epochs=1, optimizer=OptimizerConfig(name="sgd", lr=1.0, momentum=0.0))
    module = Counted()
    model, _, _ = engine.start(module, train, batches_per_epoch=len(loader))
    thetas = []
    for batch in engine.batches(loader, 1):
        engine.step(model(batch))
        if engine._micro == 0:  # an optimiser step was taken
            thetas.append(float(module.theta))
    engine.finish()
    steps = [a - b for a, b in zip([0.0] + thetas[:-1], thetas)]
    assert len(steps) == 3
    assert steps == pytest.approx([1.0, 1.0, 1.0], abs=1e-6)
