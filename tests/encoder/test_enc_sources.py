"""Where encoders come from, and the errors a recipe gets: missing folders, hub ids offline,
unsupported sentence-transformers modules, and a teacher whose attention cannot be tapped."""
import json

import pytest

from distill.config import load_config
from distill.errors import ConfigError
from distill.families.encoder.sources import resolve
from enc_helpers import corpus, tiny_folder


def _recipe(tmp_path, teacher, methods=("embedding_kd",)):
    text = tmp_path / "text.txt"
    text.write_text("\n%\n".join(corpus(100)))
    return {"name": "src", "family": "encoder", "output_dir": str(tmp_path / "runs"), "teacher": {"path": str(teacher)},
            "student": {"num_layers": 1},
            "data": {"paths": [str(text)], "separator": "%", "min_chars": 5, "eval_sentences": 20, "batch_size": 8},
            "train": {"epochs": 1, "max_steps": 2}, "engine": {"device": "cpu", "progress": False},
            "eval": {"pair_sentences": 10, "throughput_sentences": 8, "at_init": False},
            "methods": [{"name": m} for m in methods]}


@pytest.mark.parametrize("override, match", [
    (["teacher.path=/nonexistent/teacher"], r"teacher\.path: folder '/nonexistent/teacher' does not exist"),
    (["student.path=./no/such/student"], r"student\.path: folder .* does not exist"),
    (["student.kind=static", "student.path=./x"], r"student\.path: .*kind=transformer"),
    (["teacher.pooling=sum"], r"teacher\.pooling"),
])
def test_bad_sources_name_the_field(tmp_path, override, match):
    r = _recipe(tmp_path, tiny_folder(tmp_path / "t"))
    with pytest.raises(ConfigError, match=match):
        load_config(r, override)


def test_hub_id_offline_says_how_to_give_a_local_folder(monkeypatch):
    import huggingface_hub.constants as hc

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConfigError, match=r"teacher\.path: 'someorg/no-such-model' is not a local folder.*"
                                          r"huggingface-cli download someorg/no-such-model --local-dir DIR"):
        resolve("someorg/no-such-model", "teacher.path")
    assert load_config(_recipe_for_hub()).teacher.path == "someorg/no-such-model"  # checked when loading only


def _recipe_for_hub():
    import tempfile
    from pathlib import Path

    d = Path(tempfile.mkdtemp())
    r = _recipe(d, "someorg/no-such-model")
    return r


def test_unsupported_sentence_transformers_module_is_named(tmp_path):
    from distill.families.encoder.loading import load_encoder_source

    folder = tiny_folder(tmp_path / "st")
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_LayerNorm", "type": "sentence_transformers.models.LayerNorm"}]))
    with pytest.raises(ConfigError, match=r"student\.path: .*sentence_transformers\.models\.LayerNorm"):
        load_encoder_source(str(folder), "student.path")


def test_teacher_without_separate_qkv_fails_before_training(tmp_path):
    from transformers import AutoModel, BertTokenizerFast, ModernBertConfig

    from distill.api import run

    base = tiny_folder(tmp_path / "bert")
    folder = tmp_path / "modernbert"
    BertTokenizerFast.from_pretrained(base).save_pretrained(folder)
    cfg = ModernBertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=64, max_position_embeddings=64, pad_token_id=0, bos_token_id=2,
                           eos_token_id=3, cls_token_id=2, sep_token_id=3)
    AutoModel.from_config(cfg).save_pretrained(folder)
    logs = []
    with pytest.raises(ConfigError, match=r"teacher\.path: ModernBertModel has no separate query/key/value"):
        run(_recipe(tmp_path, folder, ("embedding_kd", "attention_kd")), show_table=False, log=logs.append)
    assert not (tmp_path / "runs" / "src" / "students").exists()
    # output and hidden-state methods work with it
    s = run(_recipe(tmp_path, folder, ("embedding_kd", "hidden_mse")), show_table=False, log=logs.append)
    assert set(s["students"]) == {"embedding_kd", "hidden_mse"}
