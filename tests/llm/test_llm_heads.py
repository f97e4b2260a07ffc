"""Logits computed from hidden states (every chunked loss, the teacher cache, FIRST) equal the
model's own `model(...).logits`, for each architecture with an output transform (Gemma-2/3 final
soft-capping, Cohere `logit_scale`, Granite `logits_scaling`) and the plain ones; a model whose
logits are something else is refused. Tiny configs of the real transformers classes, built here."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers")

from distill.families.llm.data import IGNORE, Example, collate, model_inputs  # noqa: E402

V = 96
SMALL = dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64, bos_token_id=1, eos_token_id=2, pad_token_id=0)


def _model(arch: str, seed: int = 0):
    import transformers as tr

    torch.manual_seed(seed)
    if arch == "llama":
        return tr.LlamaForCausalLM(tr.LlamaConfig(**SMALL)).eval()
    if arch == "gpt2":
        return tr.GPT2LMHeadModel(tr.GPT2Config(vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                                bos_token_id=1, eos_token_id=2)).eval()
    if arch == "gemma2":  # a small cap, so that tanh is far from the identity on these logits
        return tr.Gemma2ForCausalLM(tr.Gemma2Config(**SMALL, head_dim=8, final_logit_softcapping=0.3)).eval()
    if arch == "gemma3":
        return tr.Gemma3ForCausalLM(tr.Gemma3TextConfig(**SMALL, head_dim=8, final_logit_softcapping=0.3)).eval()
    if arch == "cohere":  # logit_scale 1/16 by default: the "16x off" of the review
        return tr.CohereForCausalLM(tr.CohereConfig(**SMALL)).eval()
    if arch == "cohere2":
        return tr.Cohere2ForCausalLM(tr.Cohere2Config(**SMALL, logit_scale=0.25)).eval()
    if arch == "granite":
        return tr.GraniteForCausalLM(tr.GraniteConfig(**SMALL, logits_scaling=16.0)).eval()
    if arch == "granitemoe":
        return tr.GraniteMoeForCausalLM(tr.GraniteMoeConfig(**SMALL, logits_scaling=8.0, num_local_experts=2,
                                                            num_experts_per_tok=1)).eval()
    raise ValueError(arch)


ARCHS = ["llama", "gpt2", "gemma2", "gemma3", "cohere", "cohere2", "granite", "granitemoe"]


def _batch():
    g = torch.Generator().manual_seed(3)
    exs = [Example([1] + torch.randint(3, V, (n,), generator=g).tolist() + [2], start=1) for n in (9, 5)]
    b = collate([[e] for e in exs], 0, packed=False)
    b["norm"] = (b["labels"] != IGNORE).sum().float()
    return b


def _own_logits(model, b):
    with torch.no_grad():
        return model(**model_inputs(b)).logits.float()  # (B, T, V)


@pytest.mark.parametrize("arch", ARCHS)
def test_ce_from_hidden_states_equals_the_models_own(arch):
    from distill.families.llm.sft import SFT

    model, b = _model(arch), _batch()
    mask = b["labels"] != IGNORE
    ref = F.cross_entropy(_own_logits(model, b)[mask], b["labels"][mask], reduction="sum") / b["norm"]
    with torch.no_grad():
        ours = SFT(model)(b)["ce"]
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("arch", ARCHS)
def test_token_kd_and_first_from_hidden_states_equal_the_models_own(arch):
    from distill.families.llm.first import FIRST
    from distill.families.llm.token_kd import TokenKD
    from distill.teacher import Teacher

    teacher, student, b = _model(arch), _model("llama", seed=1), _batch()
    mask = b["labels"] != IGNORE
    zt, zs = _own_logits(teacher, b)[mask], _own_logits(student, b)[mask]
    T = 2.0
    # KL(p_t || q_s) at temperature T, written with torch's own kl_div, times T^2 (Hinton 2015)
    kl = F.kl_div(F.log_softmax(zs / T, -1), F.log_softmax(zt / T, -1), log_target=True, reduction="sum")
    with torch.no_grad():
        ours = TokenKD(student, Teacher(teacher), temperature=T, chunk_size=4)(b)["kd"]
    torch.testing.assert_close(ours, kl * T**2 / b["norm"], rtol=1e-5, atol=1e-6)

    # FIRST: KL(softmax(z_t[top-k] / tau) || q_s restricted to those tokens) (Shum et al. 2024)
    k, tau = 5, 1.5
    top = zt.topk(k, -1)
    p = F.softmax(top.values / tau, -1)
    ref = (p * (p.log() - F.log_softmax(zs, -1).gather(-1, top.indices))).sum() / b["norm"]
    with torch.no_grad():
        ours = FIRST(student, Teacher(teacher), top_k=k, calibration_temperature=tau, chunk_size=4)(b)["kd"]
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("arch", ["gemma2", "cohere", "granite"])
def test_teacher_cache_holds_the_models_own_logprobs(arch, tmp_path, tiny_tok):
    from distill.families.llm.cache import LMTeacherCache
    from distill.teacher import Teacher

    teacher, b = _model(arch), _batch()
    exs = [Example(row[row != 0].tolist() if r == 0 else row[:7].tolist(), start=1) for r, row in
           enumerate(b["input_ids"])]
    cache = LMTeacherCache.build(tmp_path / "c", Teacher(teacher), tiny_tok, exs, temperature=1.0, k=4, seq_len=64)
    for e in exs:
        bb = collate([[e]], 0, packed=False)
        m = bb["labels"] != IGNORE
        lp = F.log_softmax(_own_logits(teacher, bb)[m], -1)
        idx, lp_c, tail = cache.lookup(bb)
        torch.testing.assert_close(lp_c, lp.gather(-1, idx), rtol=2e-3, atol=2e-3)  # stored in fp16
        torch.testing.assert_close(idx, lp.topk(4, -1).indices)


def test_a_model_whose_logits_are_not_its_head_of_its_hidden_states_is_refused():
    """An output transform the library does not know (here: logits doubled) is not silently skipped."""
    import transformers as tr

    from distill.errors import ConfigError
    from distill.families.llm.token_kd import TokenKD
    from distill.teacher import Teacher

    class Doubled(tr.LlamaForCausalLM):
        def forward(self, *a, **kw):
            out = super().forward(*a, **kw)
            out.logits = out.logits * 2
            return out

    torch.manual_seed(0)
    odd = Doubled(tr.LlamaConfig(**SMALL)).eval()
    with pytest.raises(ConfigError, match="logits"):
        TokenKD(_model("llama", seed=1), Teacher(odd))
