"""Students, weight inheritance, and every registered encoder method on tiny local BERTs."""
import pytest
import torch

from distill.errors import ConfigError
from distill.families.encoder.config import EncoderStudentConfig
from distill.families.encoder.models import SentenceEncoder, inherit_layers, uniform_layers
from distill.families.encoder.students import build_student
from distill.registry import methods
from distill.teacher import Teacher
from enc_helpers import batch, tiny_bert


def test_weight_inheritance_copies_exactly_the_chosen_layers():
    teacher = SentenceEncoder(tiny_bert(layers=6))
    student = build_student(teacher, EncoderStudentConfig(num_layers=2, init="teacher", layers=[1, 4], dropout=0.0), 0)
    t_sd, s_sd = teacher.backbone.state_dict(), student.backbone.state_dict()
    for name, v in s_sd.items():
        src = name.replace("encoder.layer.0.", "encoder.layer.1.").replace("encoder.layer.1.", "encoder.layer.4.", 1) \
            if name.startswith("encoder.layer.1.") else name.replace("encoder.layer.0.", "encoder.layer.1.")
        assert torch.equal(v, t_sd[src]), name
    assert not torch.equal(s_sd["encoder.layer.0.output.dense.weight"], t_sd["encoder.layer.0.output.dense.weight"])
    assert uniform_layers(6, 2) == [2, 5] and uniform_layers(6, 3) == [1, 3, 5] and uniform_layers(4, 4) == [0, 1, 2, 3]
    with pytest.raises(ConfigError, match="student.layers"):
        inherit_layers(teacher.backbone, student.backbone, [0, 9])
    with pytest.raises(ConfigError, match="student.init"):
        build_student(teacher, EncoderStudentConfig(num_layers=2, init="teacher", hidden_size=16), 0)


def test_static_student_from_teacher_table():
    teacher = SentenceEncoder(tiny_bert())
    st = build_student(teacher, EncoderStudentConfig(kind="static", init="teacher", match_teacher_dim=False), 0)
    assert torch.equal(st.embed.weight, teacher.backbone.get_input_embeddings().weight)
    small = build_student(teacher, EncoderStudentConfig(kind="static", init="teacher", hidden_size=8), 0)
    assert small(**{k: v for k, v in batch().items()})["embedding"].shape == (8, 32)  # head to teacher width


def test_attention_kd_of_a_model_with_itself_is_zero():
    model = SentenceEncoder(tiny_bert())
    m = methods.get("attention_kd", "encoder").builder(model, Teacher(SentenceEncoder(tiny_bert())), layer_map="uniform")
    m._teacher = Teacher(model)  # the very same weights
    model.requires_grad_(True)
    terms = m(batch())
    assert terms["attention"].abs().item() < 1e-6 and terms["embed"].abs().item() < 1e-6
    m2 = methods.get("minilm_relations", "encoder").builder(model, Teacher(model))
    assert m2(batch())["relations"].abs().item() < 1e-6


@pytest.mark.parametrize("name", methods.names("encoder"))
@pytest.mark.parametrize("kind", ["bert", "static"])
def test_every_method_loss_is_finite_and_decreases(name, kind):
    entry = methods.get(name, "encoder")
    if kind == "static" and getattr(entry.builder, "needs_layers", False):
        pytest.skip("needs transformer layers")
    if getattr(entry.builder, "data_kind", None):  # rows of pairs / triples: test_enc_ranking_losses.py
        pytest.skip("trains on tabular pair data (tests/encoder/test_enc_ranking_losses.py)")
    teacher = Teacher(SentenceEncoder(tiny_bert(layers=4, hidden=32, seed=1)))
    torch.manual_seed(0)
    scfg = EncoderStudentConfig(kind=kind, num_layers=2, hidden_size=16, num_heads=2, dropout=0.0)
    student = build_student(teacher.module, scfg, 0)
    b = batch(16)
    if getattr(entry.builder, "needs_labels", False):  # logit methods act on a classification head
        from distill.families.encoder.task import TextClassifier

        teacher = Teacher(TextClassifier(teacher.module, 3))
        student = TextClassifier(student, 3)
        b["label"] = torch.arange(16) % 3
        b["label"][::4] = -1  # some unlabeled texts
    method = entry.builder(student, teacher if entry.builder.needs_teacher else None)
    opt = torch.optim.Adam(method.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        terms = method(b)
        loss = sum(method.weights.get(k, 1.0) * v for k, v in terms.items())
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) < sum(losses[:5]), losses


def test_layer_maps():
    teacher = Teacher(SentenceEncoder(tiny_bert(layers=6)))
    student = SentenceEncoder(tiny_bert(layers=3))
    hm = methods.get("hidden_mse", "encoder").builder
    assert hm(student, teacher).pairs == [(0, 0), (1, 2), (2, 4), (3, 6)]
    assert hm(student, teacher, layer_map="last_k", last_k=2, include_embeddings=False).pairs == [(2, 5), (3, 6)]
    assert hm(student, teacher, layer_map="explicit", pairs=[(0, 1)], include_embeddings=False).pairs == [(1, 2)]
    with pytest.raises(ConfigError, match="pairs"):
        hm(student, teacher, layer_map="explicit", pairs=[(5, 1)])
