"""Evaluation against human judgements: the STS and retrieval metrics against independent
references (scipy on cosines computed here with numpy, sklearn's ndcg_score, a worked nDCG
example), the loaders' formats and errors, `distill eval FOLDER --sts --retrieval` on a tiny
sentence-transformers model, the recipe keys, and mteb's runner when mteb is installed."""
import importlib.util
import json
import random
import zlib

import numpy as np
import pytest
import torch

from distill.errors import DistillError
from distill.families.encoder.judgements import (load_beir, load_encoder, load_sts, retrieval_scores, STSPairs,
                                                 sts_scores)
from enc_helpers import WORDS

DIM = 24


class BagOfWords:
    """A fixed fake encoder: a sentence is the sum of its words' random vectors (seeded by the word)."""

    def vec(self, text: str) -> np.ndarray:
        out = np.zeros(DIM)
        for w in text.lower().replace(".", " ").split():
            out += np.random.default_rng(zlib.crc32(w.encode())).standard_normal(DIM)
        return out

    def __call__(self, texts):
        return torch.tensor(np.stack([self.vec(t) for t in texts]), dtype=torch.float32)


def _sts_pairs(n: int = 40, seed: int = 0):
    """Pairs whose human score is known by construction: a sentence against itself shuffled with one
    word swapped (paraphrase-like, 4-5), with half its words swapped (2-3), or an unrelated one (0-1)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a = [rng.choice(WORDS) for _ in range(8)]
        kind = i % 3
        if kind == 0:
            b, score = rng.sample(a[1:], len(a) - 1) + [rng.choice(WORDS)], 4 + rng.random()
        elif kind == 1:
            b, score = a[:4] + [rng.choice(WORDS) for _ in range(4)], 2 + rng.random()
        else:
            b, score = [rng.choice(WORDS) for _ in range(8)], rng.random()
        rows.append((" ".join(a) + ".", " ".join(b) + ".", round(score, 3)))
    return rows


def _write_sts(tmp_path, rows):
    tsv = tmp_path / "sts-b.tsv"  # the GLUE STS-B layout: extra columns, a quote character left unbalanced
    tsv.write_text("index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
                   + "".join(f"{i}\tmain\tx\t2012\t{i}\tnone\tnone\t{a}\t{b}\t{s}\n" for i, (a, b, s) in enumerate(rows)))
    csv_f = tmp_path / "pairs.csv"
    q = lambda t: '"' + t.replace('"', '""') + '"'  # noqa: E731  (csv quoting)
    csv_f.write_text("sentence1,sentence2,label\n" + "".join(f"{q(a)},{q(b)},{s}\n" for a, b, s in rows))
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text("".join(json.dumps({"sentence1": a, "sentence2": b, "score": s}) + "\n" for a, b, s in rows))
    return tsv, csv_f, jsonl


def _cos(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (x * y).sum(-1) / (np.linalg.norm(x, axis=-1) * np.linalg.norm(y, axis=-1))


def test_sts_spearman_and_pearson_equal_scipy_on_hand_computed_cosines(tmp_path):
    from scipy.stats import pearsonr, spearmanr

    rows = _sts_pairs()
    rows[5] = ('He said "hi there.', rows[5][1], rows[5][2])  # a lone quote, as GLUE files have
    tsv, csv_f, jsonl = _write_sts(tmp_path, rows)
    pairs = load_sts(tsv)
    assert pairs.sentence1[5] == 'He said "hi there.' and len(pairs.score) == 40
    for other in (csv_f, jsonl):  # the three layouts read the same
        assert load_sts(other) == pairs
    enc = BagOfWords()
    got = sts_scores(enc, pairs)
    ref = BagOfWords()
    cos = _cos(np.stack([ref.vec(a) for a, _, _ in rows]), np.stack([ref.vec(b) for _, b, _ in rows]))
    human = [s for _, _, s in rows]
    assert got["spearman"] == pytest.approx(100 * spearmanr(cos, human)[0], abs=1e-4)
    assert got["pearson"] == pytest.approx(100 * pearsonr(cos, human)[0], abs=1e-4)
    assert got["pairs"] == 40 and got["spearman"] > 50  # word overlap tracks the constructed scores


def test_sts_split_column_and_score_aliases(tmp_path):
    f = tmp_path / "all.tsv"  # sentence-transformers' stsbenchmark.tsv layout: every split in one file
    f.write_text("split\tgenre\tscore\tsentence1\tsentence2\n"
                 "train\tx\t1.0\ta b\tc d\ntest\tx\t5.0\ta b\ta b\ntest\tx\t0.5\ta b\tc e\ntest\tx\t2.5\ta b\ta e\n")
    p = load_sts(f)
    assert p.score == [5.0, 0.5, 2.5] and p.sentence2 == ["a b", "c e", "a e"]
    with pytest.raises(DistillError, match="1 scored pair"):
        load_sts(f, split="train")
    g = tmp_path / "alias.jsonl"
    g.write_text('{"sentence1": "a", "sentence2": "b", "similarity_score": 0.2}\n'
                 '{"sentence1": "a", "sentence2": "a", "label": 1}\n')
    assert load_sts(g).score == [0.2, 1.0]


@pytest.mark.parametrize("name, text, match", [
    ("nohead.tsv", "a\tb\t1\nc\td\t2\n", r"line 1.*sentence1 / sentence2"),
    ("noscore.tsv", "sentence1\tsentence2\ngenre\na\tb\n", r"line 1.*no score column"),
    ("bad.csv", "sentence1,sentence2,score\na,b,1\nc,d,high\n", r"line 3.*'high' is not a number"),
    ("miss.jsonl", '{"sentence1": "a", "sentence2": "b", "score": 1}\n{"sentence1": "a", "label": 2}\n',
     r"line 2: no sentence2 field"),
    ("noscore.jsonl", '{"sentence1": "a", "sentence2": "b"}\n', r"line 1: no score field"),
    ("broken.jsonl", '{"sentence1": \n', r"line 1: not JSON"),
    ("pairs.parquet", "x", r"unknown format"),
])
def test_sts_errors_name_the_file_the_line_and_the_fix(tmp_path, name, text, match):
    f = tmp_path / name
    f.write_text(text)
    with pytest.raises(DistillError, match=match) as e:
        load_sts(f)
    assert name in str(e.value)
    with pytest.raises(DistillError, match="does not exist"):
        load_sts(tmp_path / "absent.tsv")


def _beir(tmp_path, seed: int = 0):
    """30 documents, 8 queries written from some documents' words, graded qrels (2: the source
    document, 1: a neighbour); q7 judged non-relevant only (skipped); one row naming a missing doc."""
    rng = random.Random(seed)
    root = tmp_path / "beir"
    (root / "qrels").mkdir(parents=True)
    docs = {f"d{i}": (" ".join(rng.choice(WORDS) for _ in range(3)), " ".join(rng.choice(WORDS) for _ in range(10)))
            for i in range(30)}
    (root / "corpus.jsonl").write_text("".join(json.dumps({"_id": d, "title": t, "text": x}) + "\n"
                                               for d, (t, x) in docs.items()))
    queries, qrels = {}, []
    for q in range(8):
        src = f"d{3 * q}"
        queries[f"q{q}"] = " ".join(rng.sample((docs[src][0] + " " + docs[src][1]).split(), 5))
        if q == 7:
            qrels.append((f"q{q}", src, 0))
            continue
        qrels += [(f"q{q}", src, 2), (f"q{q}", f"d{3 * q + 1}", 1)]
        if q % 2:
            qrels.append((f"q{q}", f"d{(3 * q + 11) % 30}", 1))
    qrels.append(("q0", "d999", 1))
    (root / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in queries.items()))
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n"
                                             + "".join(f"{q}\t{d}\t{r}\n" for q, d, r in qrels))
    return root, docs, queries, qrels


def test_retrieval_equals_sklearn_ndcg_and_hand_computed_mrr_recall(tmp_path):
    from sklearn.metrics import ndcg_score

    root, docs, queries, qrels = _beir(tmp_path)
    data = load_beir(root)
    assert len(data.corpus) == 30 and "d999" not in data.qrels["q0"]
    got = retrieval_scores(BagOfWords(), *data, k=10, recall_at=5, batch_size=7, query_chunk=3)
    assert got["queries"] == 7 and got["queries_skipped"] == 1 and got["corpus"] == 30

    enc = BagOfWords()
    ids = list(docs)
    e_d = np.stack([enc.vec((t + " " + x).strip()) for t, x in docs.values()])
    ndcg, mrr, recall = [], [], []
    for q in [f"q{i}" for i in range(7)]:
        rel = np.array([next((r for qq, d, r in qrels if qq == q and d == doc), 0) for doc in ids], dtype=float)
        s = _cos(enc.vec(queries[q])[None, :], e_d)
        ndcg.append(ndcg_score(rel[None, :], s[None, :], k=10))  # gain = rel (linear), 1/log2(rank+1)
        order = np.argsort(-s)
        hits = rel[order] > 0
        mrr.append(1.0 / (np.argmax(hits[:10]) + 1) if hits[:10].any() else 0.0)
        recall.append(hits[:5].sum() / hits.sum())
    assert got["ndcg@10"] == pytest.approx(100 * np.mean(ndcg), abs=1e-4)
    assert got["mrr@10"] == pytest.approx(100 * np.mean(mrr), abs=1e-4)
    assert got["recall@5"] == pytest.approx(100 * np.mean(recall), abs=1e-4)


def test_ndcg_worked_example():
    """Ranking d3, d2, d1 with relevance d1=2, d3=1: DCG = 1/log2(2) + 0/log2(3) + 2/log2(4) = 2;
    ideal d1, d3: 2/log2(2) + 1/log2(3) = 2.63093; nDCG = 0.76018. MRR = 1 (d3 first)."""
    vecs = {"q": [1.0, 0.0], "d1": [0.2, 1.0], "d2": [0.6, 1.0], "d3": [1.0, 0.3]}
    enc = lambda texts: torch.tensor([vecs[t] for t in texts])  # noqa: E731
    corpus = {d: {"title": "", "text": d} for d in ("d1", "d2", "d3")}
    got = retrieval_scores(enc, corpus, {"q1": "q"}, {"q1": {"d1": 2, "d3": 1}}, k=10, recall_at=2)
    assert got["ndcg@10"] == pytest.approx(76.018, abs=1e-3)
    assert got["mrr@10"] == pytest.approx(100.0) and got["recall@2"] == pytest.approx(50.0)


def test_retrieval_never_returns_the_query_itself():
    vecs = {"a": [1.0, 0.0], "b": [0.9, 0.1], "c": [0.0, 1.0]}
    enc = lambda texts: torch.tensor([vecs[t] for t in texts])  # noqa: E731
    corpus = {i: {"title": "", "text": i} for i in vecs}
    got = retrieval_scores(enc, corpus, {"a": "a"}, {"a": {"b": 1}}, k=1, recall_at=1)
    assert got["ndcg@1"] == pytest.approx(100.0)  # "a" itself would rank first


def test_beir_errors(tmp_path):
    root, *_ = _beir(tmp_path)
    with pytest.raises(DistillError, match=r"no qrels/dev.tsv.*holds test.tsv"):
        load_beir(root, split="dev")
    (root / "qrels" / "bad.tsv").write_text("query-id\tcorpus-id\tscore\nq0\tnope\t1\nzz\td0\t1\nq1\tnope\t2\n")
    with pytest.raises(DistillError, match=r"none of its 3 rows is usable \(1 name a query.*2 a document"):
        load_beir(root, split="bad")
    (root / "qrels" / "cols.tsv").write_text("query-id\tcorpus-id\tscore\nq0\td0\n")
    with pytest.raises(DistillError, match=r"cols.tsv, line 2: 2 columns"):
        load_beir(root, split="cols")
    (root / "qrels" / "trec.tsv").write_text("q0 0 d0 1\nq1 0 d3 2\n")  # TREC qrels, no header
    assert load_beir(root, split="trec").qrels == {"q0": {"d0": 1}, "q1": {"d3": 2}}
    (root / "queries.jsonl").write_text('{"_id": "q0", "text": "x"}\n{"id": "q1", "text": "y"}\n')
    with pytest.raises(DistillError, match=r"queries.jsonl, line 2: no '_id' field"):
        load_beir(root)
    (root / "corpus.jsonl").unlink()
    with pytest.raises(DistillError, match="no corpus.jsonl"):
        load_beir(root)
    with pytest.raises(DistillError, match="does not exist"):
        load_beir(tmp_path / "absent")


@pytest.fixture
def tiny(tmp_path):
    from distill.families.encoder.loading import load_encoder_source, load_tokenizer
    from enc_helpers import tiny_folder

    t = tiny_folder(tmp_path / "teacher", layers=1, hidden=16)
    return load_encoder_source(str(t)), load_tokenizer(str(t))


@pytest.fixture
def st_folder(tiny, tmp_path):
    """A tiny BERT student written as a sentence-transformers folder (`save_encoder`)."""
    from distill.families.encoder.config import EncoderStudentConfig
    from distill.families.encoder.export import save_encoder
    from distill.families.encoder.students import build_student

    pytest.importorskip("sentence_transformers")
    enc, tok = tiny
    return save_encoder(build_student(enc, EncoderStudentConfig(num_layers=1, dropout=0.0), 0), tmp_path / "st", tok, 32)


def test_load_encoder_reads_model2vec_folders(tiny, tmp_path):
    model2vec = pytest.importorskip("model2vec")
    from distill.families.encoder.config import EncoderStudentConfig
    from distill.families.encoder.export import save_encoder, save_model2vec
    from distill.families.encoder.students import build_student

    enc, tok = tiny
    st = build_student(enc, EncoderStudentConfig(kind="static", hidden_size=8), 0)
    texts = ["the cat sat.", "a dog ran to the park."]
    m2v = save_model2vec(st, tmp_path / "m2v", tok)
    got = load_encoder(m2v)
    assert got.kind == "model2vec"
    assert torch.allclose(got(texts), torch.tensor(model2vec.StaticModel.from_pretrained(str(m2v)).encode(texts)))
    student = save_encoder(st, tmp_path / "student", tok, 32)  # a run's static student: both layouts
    save_model2vec(st, student / "model2vec", tok)
    both = load_encoder(student)
    assert both.kind == "sentence-transformers" and torch.allclose(both(texts), got(texts), atol=1e-5)


def test_load_encoder_reads_student_and_run_folders(st_folder, tmp_path):
    from sentence_transformers import SentenceTransformer

    texts = ["the cat sat.", "a dog ran to the park."]
    enc = load_encoder(st_folder)
    assert enc.kind == "sentence-transformers" and enc(texts).shape == (2, 16)
    ref = SentenceTransformer(str(st_folder), device="cpu").encode(texts, convert_to_tensor=True)
    assert torch.allclose(enc(texts), ref, atol=1e-6)
    run = tmp_path / "runs" / "x"
    (run / "students" / "a").mkdir(parents=True)
    (run / "students" / "a" / "modules.json").write_text("[]")
    with pytest.raises(DistillError, match=r"no modules.json.*students/\{a\}"):
        load_encoder(run)
    import shutil

    shutil.copytree(st_folder, run / "student")
    assert load_encoder(run).folder == run / "student"
    with pytest.raises(DistillError, match="not a folder"):
        load_encoder(tmp_path / "nothing")


def test_cli_eval_folder_sts_and_retrieval(st_folder, tmp_path):
    from typer.testing import CliRunner

    from distill.cli.main import app

    tsv, _, _ = _write_sts(tmp_path, _sts_pairs(12))
    root, *_ = _beir(tmp_path)
    out = tmp_path / "out.json"
    r = CliRunner().invoke(app, ["eval", str(st_folder), "--sts", str(tsv), "--retrieval", str(root),
                                 "--batch-size", "8", "--json", str(out)])
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text())
    assert res["kind"] == "sentence-transformers" and set(res["sts"]) == {str(tsv)}
    m = res["retrieval"][str(root)]
    assert 0 <= m["ndcg@10"] <= 100 and m["queries"] == 7 and m["queries_skipped"] == 1
    assert -100 <= res["sts"][str(tsv)]["spearman"] <= 100 and "ndcg@10" in r.output

    bad = tmp_path / "bad.tsv"
    bad.write_text("sentence1\tsentence2\tscore\na\tb\tlots\n")
    r = CliRunner().invoke(app, ["eval", str(st_folder), "--sts", str(bad)])
    assert r.exit_code == 2 and "line 2" in r.output and "not a number" in r.output
    r = CliRunner().invoke(app, ["eval", str(st_folder)])
    assert r.exit_code == 2 and "--sts" in r.output and "--retrieval" in r.output
    r = CliRunner().invoke(app, ["eval", str(tmp_path / "set.safetensors"), "--sts", str(tsv)])
    assert r.exit_code == 2 and "not a folder" in r.output


def test_recipe_eval_sts_and_retrieval_reach_results_and_report(tmp_path):
    from distill.api import run
    from distill.config import load_config
    from distill.errors import ConfigError
    from test_enc_run import _recipe

    tsv, _, _ = _write_sts(tmp_path, _sts_pairs(20))
    root, *_ = _beir(tmp_path)
    ev = {"pair_sentences": 30, "throughput_sentences": 16, "at_init": False, "sts": [str(tsv)],
          "retrieval": [str(root)]}
    r = _recipe(tmp_path, methods=[{"name": "embedding_kd"}], eval=ev, train={"epochs": 1, "max_steps": 2})
    s = run(r, show_table=False, log=lambda m: None)
    for m in (s["teacher"], s["students"]["embedding_kd"]):
        assert -100 <= m["sts:sts-b"] <= 100 and 0 <= m["ndcg@10:beir"] <= 100
    report = (tmp_path / "runs" / "enc" / "report.md").read_text()
    assert "sts:sts-b" in report and "ndcg@10:beir" in report
    with pytest.raises(ConfigError, match="eval.sts.0"):
        load_config(_recipe(tmp_path, eval={"sts": [str(tmp_path / "absent.tsv")]}))


def test_sts_pairs_type_unpacks_as_lists():
    p = STSPairs(["a"], ["b"], [1.0])
    s1, s2, score = p
    assert s1 == ["a"] and score == [1.0]


@pytest.mark.skipif(importlib.util.find_spec("mteb") is None, reason="mteb is not installed")
def test_mteb_runner_agrees_with_sts_scores(st_folder, tmp_path):
    """mteb's own STS evaluation of an in-memory task equals `sts_scores` (its main score is the
    cosine Spearman); an unknown task name is a DistillError."""
    import mteb
    from datasets import Dataset, DatasetDict

    from distill.families.encoder.judgements import mteb_scores

    rows = _sts_pairs(30)
    task = mteb.get_task("STSBenchmark")
    task.dataset = DatasetDict({"test": Dataset.from_dict({"sentence1": [a for a, _, _ in rows],
                                                           "sentence2": [b for _, b, _ in rows],
                                                           "score": [s for _, _, s in rows]})})
    task.data_loaded = True
    got = mteb_scores(st_folder, [task], batch_size=8)
    ours = sts_scores(load_encoder(st_folder), STSPairs(*map(list, zip(*rows))))
    assert got["STSBenchmark"] == pytest.approx(ours["spearman"], abs=1e-3)
    with pytest.raises(DistillError, match="unknown task"):
        mteb_scores(st_folder, ["NoSuchTaskAnywhere"])


def test_mteb_missing_is_a_clear_error(st_folder, monkeypatch):
    import sys

    from distill.families.encoder.judgements import mteb_scores

    monkeypatch.setitem(sys.modules, "mteb", None)  # as if not installed
    with pytest.raises(DistillError, match="pip install mteb"):
        mteb_scores(st_folder, ["STSBenchmark"])
