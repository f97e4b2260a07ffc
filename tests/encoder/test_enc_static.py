"""Static students from the teacher's vocabulary (model2vec's construction), checked against the
construction written out independently here (each token framed as [CLS] t [SEP], mean of the
teacher's outputs, PCA by SVD, Zipf SIF weights from the formula), their training with cached
teacher embeddings, and the model2vec export (`StaticModel.from_pretrained` gives our embeddings)."""
import numpy as np
import pytest
import torch

from distill.config import load_config
from distill.errors import ConfigError
from distill.families.encoder.config import EncoderStudentConfig
from distill.families.encoder.data import SentenceLoader, tokenize
from distill.families.encoder.embedding_kd import EmbeddingKD
from distill.families.encoder.export import load_encoder, save_encoder, save_model2vec
from distill.families.encoder.loading import load_encoder_source, load_tokenizer
from distill.families.encoder.sources import added_special_ids
from distill.families.encoder.students import build_student
from distill.families.encoder.vocab import VocabTable
from distill.teacher import Teacher
from enc_helpers import corpus, tiny_folder
from test_enc_run import _recipe


@pytest.fixture
def teacher(tmp_path):
    folder = tiny_folder(tmp_path / "teacher", layers=2, hidden=32)
    return load_encoder_source(str(folder)), load_tokenizer(str(folder))


def _reference_table(enc, tok, dim, a):
    """The model2vec recipe written out: framed tokens, mean over the 3 positions, centred PCA by SVD
    over the text tokens, then row r of the text tokens (in id order) times a / (a + p_r) with
    p_r = (1 / (r + 2)) / sum_j 1 / (j + 2); finally one global scale (mean text-row norm 1), which
    changes no sentence embedding's direction."""
    cls, sep = tok.cls_token_id, tok.sep_token_id
    v = enc.config.vocab_size
    with torch.no_grad():
        ids = torch.tensor([[cls, i, sep] for i in range(v)])
        h = enc.backbone(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state.mean(1).double().numpy()
    text = [i for i in range(v) if i not in set(tok.all_special_ids)]
    mu = h[text].mean(0)
    _, _, vt = np.linalg.svd(h[text] - mu, full_matrices=False)
    red = (h - mu) @ vt[:dim].T
    z = np.array([1.0 / (r + 2) for r in range(len(text))])
    z = z / z.sum()
    w = np.ones(v)
    for r, i in enumerate(text):
        w[i] = a / (a + z[r])
    table = red * w[:, None]
    return table / np.linalg.norm(table[text], axis=1).mean()  # the scale distill gives every table


def test_vocab_init_equals_the_model2vec_construction(teacher):
    enc, tok = teacher
    st = build_student(enc, EncoderStudentConfig(kind="static", init="vocab", hidden_size=8, sif=1e-2), 0,
                       skip_ids=added_special_ids(tok), vocab=VocabTable.from_teacher(enc, tok, progress=False))
    assert st.head is None and st.embedding_dim == 8 and st.teacher_basis.shape == (32, 8)
    ref = _reference_table(enc, tok, 8, 1e-2)
    ours = st.embed.weight.detach().double().numpy()
    signs = np.sign((ours * ref).sum(0))  # PCA directions are defined up to sign
    assert np.all(signs != 0)
    np.testing.assert_allclose(ours * signs, ref, atol=1e-4)
    # frequent (low-rank) tokens are down-weighted relative to rare ones
    first, last = 5, enc.config.vocab_size - 1
    assert np.linalg.norm(ref[first]) / np.linalg.norm(_reference_table(enc, tok, 8, 1e9)[first]) < \
        np.linalg.norm(ref[last]) / np.linalg.norm(_reference_table(enc, tok, 8, 1e9)[last])


def test_corpus_weights_follow_token_counts(teacher):
    enc, tok = teacher
    rows = tokenize(tok, ["the the the the cat"] * 5, 16)
    table = VocabTable.from_teacher(enc, tok, rows, added_special_ids(tok), progress=False)
    none, _ = table.table(8, "none")
    corpus_w, _ = table.table(8, "corpus", 0.05)
    ratio = (corpus_w.norm(dim=1) / none.norm(dim=1))
    the, cat, dog = tok.convert_tokens_to_ids(["the", "cat", "dog"])
    n = sum(len(r) for r in rows) - 2 * len(rows)  # counts leave [CLS] and [SEP] out
    v = enc.config.vocab_size
    w = {tid: 0.05 / (0.05 + (count + 1) / (n + v)) for tid, count in ((the, 20), (cat, 5), (dog, 0))}
    for tid in (the, cat):  # relative to an unseen token (the tables differ by one global scale)
        assert (ratio[tid] / ratio[dog]).item() == pytest.approx(w[tid] / w[dog], rel=1e-4)
    assert w[the] < w[cat] < w[dog]


def test_narrow_student_trains_against_the_projected_teacher_with_a_teacher_cache(teacher):
    enc, tok = teacher
    skip = added_special_ids(tok)
    rows = tokenize(tok, corpus(48, seed=2), 24)
    st = build_student(enc, EncoderStudentConfig(kind="static", init="vocab", hidden_size=8), 0, skip_ids=skip,
                       vocab=VocabTable.from_teacher(enc, tok, progress=False))
    calls = []
    t = Teacher(enc)
    method = EmbeddingKD(st, t)
    live = EmbeddingKD(st, t, cache_teacher=False)
    method.run_teacher = lambda b, *a, **k: (calls.append(b["input_ids"].shape[0]) or EmbeddingKD.run_teacher(method, b))
    loader = SentenceLoader(rows, 16, 0, seed=0)
    for epoch in range(2):
        loader.set_epoch(epoch)
        for b in loader:
            got, want = method(b), live(b)
            for k in want:  # the cached teacher gives the live teacher's loss
                assert got[k].item() == pytest.approx(want[k].item(), abs=1e-6), k
            e_t = live.run_teacher(b)[0]["embedding"]
            target = e_t @ st.teacher_basis
            e_s = st(b["input_ids"], b["attention_mask"])["embedding"]
            cos = torch.nn.functional.cosine_similarity(e_s, target, dim=-1)
            assert got["match"].item() == pytest.approx((1 - cos).mean().item(), abs=1e-6)
    assert sum(calls) == len(rows)  # each sentence through the teacher once, over both epochs


def test_model2vec_export_gives_our_embeddings(teacher, tmp_path):
    model2vec = pytest.importorskip("model2vec")
    st_lib = pytest.importorskip("sentence_transformers")
    enc, tok = teacher
    for cfg in (dict(init="vocab", hidden_size=8), dict(init="teacher", hidden_size=16)):  # the second has a head
        st = build_student(enc, EncoderStudentConfig(kind="static", **cfg), 0, skip_ids=added_special_ids(tok),
                           vocab=VocabTable.from_teacher(enc, tok, progress=False)).eval()
        texts = corpus(6, seed=4)
        b = tok(texts, padding=True, return_tensors="pt")
        with torch.no_grad():
            ours = st(b["input_ids"], b["attention_mask"])["embedding"]
        out = save_model2vec(st, tmp_path / f"m2v_{cfg['init']}", tok)
        theirs = torch.tensor(model2vec.StaticModel.from_pretrained(str(out)).encode(texts))
        assert theirs.shape == ours.shape
        assert torch.allclose(theirs, ours, atol=1e-5)
        assert torch.allclose(st_lib.SentenceTransformer(str(out), device="cpu").encode(texts, convert_to_tensor=True),
                              ours, atol=1e-5)
        back = load_encoder(out)
        with torch.no_grad():
            assert torch.allclose(back(b["input_ids"], b["attention_mask"])["embedding"], ours, atol=1e-5)
    with pytest.raises(Exception, match="not a static"):
        save_model2vec(enc, tmp_path / "bad", tok)
    save_encoder(st, tmp_path / "st", tok, 32)  # the sentence-transformers layout is unchanged


def test_static_vocab_recipe_end_to_end(tmp_path):
    from distill.api import run

    r = _recipe(tmp_path, student={"kind": "static", "init": "vocab", "hidden_size": 16},
                methods=[{"name": "embedding_kd"}], train={"epochs": 2, "optimizer": {"lr": 3e-3}})
    s = run(r, show_table=False, log=lambda m: None)
    m = s["students"]["embedding_kd"]
    assert m["steps"] == 2 * (s["data"]["train"] // 16) and m["spearman"] > m["init_spearman"]
    folder = tmp_path / "runs" / "enc" / "students" / "embedding_kd"
    assert (folder / "model2vec" / "config.json").is_file() and (tmp_path / "runs" / "enc" / "student" / "model2vec").is_dir()


@pytest.mark.parametrize("override, field", [
    (["student.init=vocab"], "student.init"),                                     # a transformer student
    (["student.kind=static", "student.init=vocab", "student.hidden_size=64"], "student.hidden_size"),
    (["student.kind=static", "student.token_weights=zip"], "student.token_weights"),
    (["student.kind=static", "student.sif=0"], "student.sif"),
])
def test_bad_static_settings_name_the_field(tmp_path, override, field):
    from distill.api import run

    if "hidden_size=64" in override[-1]:  # only known once the teacher is loaded (its width is 32)
        r = _recipe(tmp_path, methods=[{"name": "embedding_kd"}],
                    student={"kind": "static", "init": "vocab", "hidden_size": 64})
        with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
            run(r, show_table=False, log=lambda m: None)
        return
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(_recipe(tmp_path), override)
