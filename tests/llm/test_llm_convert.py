"""llama2.c -> transformers conversion against the published stories260K sample (skipped without
the asset), and the offline message for hub ids."""
from __future__ import annotations

import pytest

pytest.importorskip("transformers")
pytest.importorskip("sentencepiece")

from distill.families.llm.config import assets_dir  # noqa: E402

STORIES = assets_dir() / "stories260K"
PUBLISHED = ("Once upon a time, there was a little girl named Lily. She loved to play outside in the park. "
             "One day, she saw a big, red ball.")


@pytest.mark.skipif(not (STORIES / "stories260K.bin").is_file(), reason="stories260K asset absent")
def test_stories260k_greedy_reproduces_published_sample(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from typer.testing import CliRunner

    from distill.cli.main import app

    res = CliRunner().invoke(app, ["convert", "llama2c", str(STORIES / "stories260K.bin"), str(tmp_path / "m"),
                                   "--tokenizer", str(STORIES / "tok512.model")])
    assert res.exit_code == 0, res.output
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    tok = AutoTokenizer.from_pretrained(tmp_path / "m")
    ids = [tok.bos_token_id] + tok("Once upon a time", add_special_tokens=False)["input_ids"]
    import sentencepiece as spm

    assert ids[1:] == spm.SentencePieceProcessor(model_file=str(STORIES / "tok512.model")).encode("Once upon a time")
    x = torch.tensor([ids])
    out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=40, do_sample=False)
    text = tok.decode(out[0], skip_special_tokens=True)
    assert text.startswith(PUBLISHED), text


def test_hub_id_fails_with_an_offline_message(monkeypatch):
    import huggingface_hub.constants as hc

    from distill.errors import ConfigError
    from distill.families.llm.models import load_causal_lm, load_tokenizer

    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)  # no retries against an unreachable hub
    for fn in (load_causal_lm, load_tokenizer):
        with pytest.raises(ConfigError, match="offline"):
            fn("no-such-org/no-such-model")


@pytest.mark.skipif(not (STORIES / "stories260K.bin").is_file(), reason="stories260K asset absent")
def test_converted_tokenizer_prepends_bos_like_llama(tmp_path):
    """The Llama convention: `tok(text)` starts with <s> (and adds no </s>), so the plain call
    reproduces the published sample."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distill.families.llm.convert import convert_llama2c

    convert_llama2c(STORIES / "stories260K.bin", tmp_path / "m", STORIES / "tok512.model")
    tok = AutoTokenizer.from_pretrained(tmp_path / "m")
    enc = tok("Once upon a time", return_tensors="pt")
    assert enc["input_ids"][0, 0].item() == tok.bos_token_id == 1
    assert enc["input_ids"][0, -1].item() != tok.eos_token_id
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=40, do_sample=False)
    assert tok.decode(out[0], skip_special_tokens=True).startswith(PUBLISHED)
    # what the library itself asks for is unchanged: no specials unless asked
    assert tok("Once upon a time", add_special_tokens=False)["input_ids"] == enc["input_ids"][0, 1:].tolist()
