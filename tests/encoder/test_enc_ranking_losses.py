"""margin_mse, parallel_mse and cross_encoder_kd: their losses against sentence-transformers' own
(MarginMSELoss, MSELoss, cross_encoder.losses.MSELoss / MarginMSELoss) on the same tiny models and
batch, precomputed margins against teacher-computed ones, tiny runs through the API whose students
load back in SentenceTransformer / CrossEncoder, and the errors of bad data."""
import json
import random

import pytest
import torch

from distill.errors import ConfigError
from distill.families.encoder.cross import load_cross_encoder
from distill.families.encoder.examples import read_examples, target_margins
from distill.families.encoder.loading import load_encoder_source, load_tokenizer
from distill.registry import methods
from distill.teacher import Teacher
from enc_helpers import WORDS, tiny_folder

st = pytest.importorskip("sentence_transformers")
NOTE = "pair data, tested here"


def tiny_cross_folder(path, layers=2, hidden=32, seed=0):
    """A tiny BERT cross-encoder (BertForSequenceClassification, one label) + tokenizer, saved."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    base = tiny_folder(path.parent / (path.name + "_base"), layers=layers, hidden=hidden)
    cfg = BertConfig.from_pretrained(str(base), num_labels=1)
    torch.manual_seed(seed)
    model = BertForSequenceClassification(cfg)
    with torch.no_grad():  # a classifier head that spreads the scores
        model.classifier.weight.normal_(0, 1.0)
    model.save_pretrained(str(path))
    AutoTokenizer.from_pretrained(str(base)).save_pretrained(str(path))
    return path


def triples(n=48, negatives=1, seed=0):
    """(query, positive, negative...) rows over the tiny vocabulary: the positive shares the query's words."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        q = [rng.choice(WORDS) for _ in range(rng.randint(2, 4))]
        row = {"query": " ".join(q), "positive": " ".join(q + [rng.choice(WORDS) for _ in range(3)])}
        for j in range(negatives):
            row["negative" if negatives == 1 else f"negative_{j + 1}"] = " ".join(rng.choice(WORDS) for _ in range(5))
        rows.append(row)
    return rows


def parallel(n=48, seed=0):
    """(source, translation) rows: the 'translation' is the source with every word reversed."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 6))]
        out.append({"source": " ".join(words), "translation": " ".join(w[::-1] for w in words)})
    return out


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def ce_logits(folder, pairs):
    """The teacher's logits as sentence-transformers computes them (identity activation)."""
    ce = st.CrossEncoder(str(folder), device="cpu")
    return torch.tensor(ce.predict(pairs, activation_fn=torch.nn.Identity(), convert_to_numpy=True))


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("ranking")
    return {"bi": tiny_folder(root / "bi", layers=2), "bi_teacher": tiny_folder(root / "bi_t", layers=3),
            "ce": tiny_cross_folder(root / "ce", layers=3, seed=1), "ce_student": tiny_cross_folder(root / "ce_s", seed=2)}


def _method(name, student, teacher=None, cross=None, tok=None, **params):
    entry = methods.get(name, "encoder")
    kw = {"cross_teacher": cross, "tokenizer": tok, "max_length": 32}
    return entry.builder(student, teacher, **{k: v for k, v in kw.items() if k in entry.injected}, **params)


def _examples(path, kind, **kw):
    return read_examples([path], "auto", kw.pop("columns", {}), kind, n_eval=20, seed=0, **kw)


# ------------------------------------------------------------------------------ against sentence-transformers
@pytest.mark.parametrize("negatives, label_kind", [(1, "margins"), (2, "margins"), (2, "scores")])
def test_margin_mse_equals_sentence_transformers(folders, tmp_path, negatives, label_kind):
    rows = triples(30, negatives)
    k = negatives
    g = torch.Generator().manual_seed(0)
    labels = torch.randn(len(rows), k + 1 if label_kind == "scores" else k, generator=g)
    for r, lab in zip(rows, labels):
        r["label"] = lab.tolist() if lab.numel() > 1 else float(lab)
    ex = _examples(write_jsonl(tmp_path / "t.jsonl", rows), "ranking")
    batch_ex = ex.train[:8]
    student = load_encoder_source(str(folders["bi"]), "student.path")
    tok = load_tokenizer(str(folders["bi"]))
    m = _method("margin_mse", student, Teacher(load_encoder_source(str(folders["bi_teacher"]))), tok=tok)
    m.check_examples(ex)
    assert m.mode == "data"
    ours = m(m.collate(batch_ex))["margin"]

    ref_model = st.SentenceTransformer(str(folders["bi"]), device="cpu")  # Transformer + mean Pooling
    loss = st.sentence_transformer.losses.MarginMSELoss(ref_model)
    cols = [[e["query"] for e in batch_ex]] + [[e["passages"][j] for e in batch_ex] for j in range(k + 1)]
    features = [ref_model.tokenize(c) for c in cols]
    lab = torch.tensor([e["label"] if isinstance(e["label"], list) else [e["label"]] for e in batch_ex])
    ref = loss(features, lab.squeeze(1) if lab.shape[1] == 1 else lab)
    assert ours.item() == pytest.approx(ref.item(), abs=1e-5, rel=1e-5)


def test_parallel_mse_equals_sentence_transformers(folders, tmp_path):
    ex = _examples(write_jsonl(tmp_path / "p.jsonl", parallel(30)), "parallel")
    batch_ex = ex.train[:8]
    tok = load_tokenizer(str(folders["bi"]))
    m = _method("parallel_mse", load_encoder_source(str(folders["bi"]), "student.path"),
                Teacher(load_encoder_source(str(folders["bi_teacher"]))), tok=tok)
    terms = m(m.collate(batch_ex))

    student = st.SentenceTransformer(str(folders["bi"]), device="cpu")
    teacher = st.SentenceTransformer(str(folders["bi_teacher"]), device="cpu")
    src, tr = [e["source"] for e in batch_ex], [e["translations"][0] for e in batch_ex]
    labels = teacher.encode(src, convert_to_tensor=True).clone()  # out of inference mode
    ref = st.sentence_transformer.losses.MSELoss(student)([student.tokenize(src), student.tokenize(tr)], labels)
    # the paper adds the two terms; sentence-transformers averages its two columns
    assert (terms["source"] + terms["translation"]).item() / 2 == pytest.approx(ref.item(), abs=1e-5, rel=1e-5)
    only_src = st.sentence_transformer.losses.MSELoss(student)([student.tokenize(src)], labels)
    assert terms["source"].item() == pytest.approx(only_src.item(), abs=1e-6, rel=1e-5)


def test_cross_encoder_kd_equals_sentence_transformers(folders, tmp_path):
    ce_losses = pytest.importorskip("sentence_transformers.cross_encoder.losses")
    rows = triples(30, 1)
    ex = _examples(write_jsonl(tmp_path / "t.jsonl", rows), "ranking")
    batch_ex = ex.train[:8]
    teacher = Teacher(load_cross_encoder(str(folders["ce"])))
    m = _method("cross_encoder_kd", load_cross_encoder(str(folders["ce_student"]), "student"), cross=teacher,
                margin_weight=1.0)
    m.check_examples(ex)
    terms = m(m.collate(batch_ex))

    q, p, n = ([e["query"] for e in batch_ex], [e["passages"][0] for e in batch_ex],
               [e["passages"][1] for e in batch_ex])
    t_p, t_n = ce_logits(folders["ce"], list(zip(q, p))), ce_logits(folders["ce"], list(zip(q, n)))
    student = st.CrossEncoder(str(folders["ce_student"]), device="cpu")
    student.train()
    mse = ce_losses.MSELoss(student)  # identity activation by default: on the logits
    ref_score = mse([q + q, p + n], torch.cat([t_p, t_n]))
    ref_margin = ce_losses.MarginMSELoss(student)([q, p, n], t_p - t_n)
    assert terms["score"].item() == pytest.approx(ref_score.item(), abs=1e-5, rel=1e-5)
    assert terms["margin"].item() == pytest.approx(ref_margin.item(), abs=1e-5, rel=1e-5)


def test_cross_encoder_saved_by_sentence_transformers_loads_as_teacher(folders, tmp_path):
    st.CrossEncoder(str(folders["ce"]), device="cpu").save_pretrained(str(tmp_path / "st_ce"))
    ours = load_cross_encoder(str(tmp_path / "st_ce"))
    pairs = [("the cat", "the cat sat on a mat"), ("a dog ran", "sun was big")]
    got = ours.score([a for a, _ in pairs], [b for _, b in pairs], 32)
    assert torch.allclose(got, ce_logits(folders["ce"], pairs), atol=1e-5)


# ------------------------------------------------------------------------------ precomputed margins
def test_precomputed_margins_equal_teacher_margins(folders, tmp_path):
    rows = triples(30, 2)
    q = [r["query"] for r in rows]
    t = torch.stack([ce_logits(folders["ce"], list(zip(q, [r[c] for r in rows])))
                     for c in ("positive", "negative_1", "negative_2")], 1)         # (N, 3)
    plain = write_jsonl(tmp_path / "plain.jsonl", rows)
    for r, margin in zip(rows, (t[:, :1] - t[:, 1:]).tolist()):
        r["margin"] = margin  # as in the MS MARCO hard-negative files: one margin per negative
    scored = write_jsonl(tmp_path / "scored.jsonl", rows)
    tok = load_tokenizer(str(folders["bi"]))
    cross = Teacher(load_cross_encoder(str(folders["ce"])))
    student = load_encoder_source(str(folders["bi"]), "student.path")
    bi_teacher = Teacher(load_encoder_source(str(folders["bi_teacher"])))
    values = {}
    for name, path in (("teacher", plain), ("data", scored)):
        ex = _examples(path, "ranking")
        m = _method("margin_mse", student, bi_teacher, cross=cross, tok=tok)
        m.check_examples(ex)
        assert m.mode == ("cross_encoder" if name == "teacher" else "data")
        values[name] = m(m.collate(ex.train[:16]))["margin"].item()
    assert values["data"] == pytest.approx(values["teacher"], abs=1e-5, rel=1e-5)


def test_bi_encoder_teacher_margins_equal_sentence_transformers_dot_products(folders, tmp_path):
    rows = triples(30, 1)
    teacher = st.SentenceTransformer(str(folders["bi_teacher"]), device="cpu")
    e = {c: teacher.encode([r[c] for r in rows], convert_to_tensor=True) for c in ("query", "positive", "negative")}
    margin = (e["query"] * e["positive"]).sum(-1) - (e["query"] * e["negative"]).sum(-1)
    plain = write_jsonl(tmp_path / "plain.jsonl", rows)
    for r, v in zip(rows, margin.tolist()):
        r["label"] = v
    scored = write_jsonl(tmp_path / "scored.jsonl", rows)
    tok = load_tokenizer(str(folders["bi"]))
    student = load_encoder_source(str(folders["bi"]), "student.path")
    bi_teacher = Teacher(load_encoder_source(str(folders["bi_teacher"])))
    values = {}
    for name, path in (("bi_encoder", plain), ("data", scored)):
        ex = _examples(path, "ranking")
        m = _method("margin_mse", student, bi_teacher, tok=tok)
        m.check_examples(ex)
        assert m.mode == name
        values[name] = m(m.collate(ex.train[:16]))["margin"].item()
    assert values["data"] == pytest.approx(values["bi_encoder"], abs=1e-5, rel=1e-5)


# ------------------------------------------------------------------------------ runs through the API
def _recipe(tmp_path, folders, data, methods_, **over):
    r = {"name": "rank", "family": "encoder", "output_dir": str(tmp_path / "runs"),
         "teacher": {"path": str(folders["bi_teacher"]), "cross_encoder": str(folders["ce"])},
         "student": {"num_layers": 2, "init": "teacher", "dropout": 0.0},
         "data": {"paths": [str(data)], "eval_sentences": 20, "batch_size": 8, "max_length": 32},
         "train": {"epochs": 4, "max_steps": 12, "optimizer": {"lr": 0.003}},
         "engine": {"device": "cpu", "progress": False},
         "eval": {"pair_sentences": 20, "throughput_sentences": 8, "at_init": True},
         "methods": methods_}
    r.update(over)
    return r


def _loss_on(run_dir, label, student_loader):
    """The method's loss on its first training batch with the saved student (and with a fresh one)."""
    from distill.config import load_config
    from distill.families.encoder.runner import Context

    cfg = load_config(run_dir / "config.yaml")
    ctx = Context(cfg, lambda m: None)
    mcfg = next(m for m in cfg.methods if m.display == label)
    out = []
    for student in (ctx.new_student(mcfg), student_loader(run_dir / "students" / label)):
        method = ctx.build_method(mcfg, student)
        method.eval()
        b = next(iter(ctx.loader(method)))
        with torch.no_grad():
            out.append(sum(method.weights.get(k, 1.0) * v for k, v in method(b).items()).item())
    return out


def test_margin_mse_and_parallel_mse_runs_save_loadable_students(folders, tmp_path):
    from distill.api import run
    from distill.families.encoder.export import load_encoder

    data = write_jsonl(tmp_path / "triples.jsonl", triples(48, 2))
    s = run(_recipe(tmp_path, folders, data, [{"name": "margin_mse"}]), show_table=False, log=lambda m: None)
    m = s["students"]["margin_mse"]
    assert m["steps"] == 12 and -1 <= m["spearman"] <= 1
    run_dir = tmp_path / "runs" / "rank"
    before, after = _loss_on(run_dir, "margin_mse", load_encoder)
    assert after < before
    texts = ["the cat sat", "a dog ran to park"]
    ours = load_encoder(run_dir / "students" / "margin_mse")
    ref = st.SentenceTransformer(str(run_dir / "student"), device="cpu").encode(texts, convert_to_tensor=True)
    tok = load_tokenizer(str(folders["bi_teacher"]))
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(ours(enc["input_ids"], enc["attention_mask"])["embedding"], ref, atol=1e-5)

    pdata = write_jsonl(tmp_path / "parallel.jsonl", parallel(48))
    s = run(_recipe(tmp_path / "p", folders, pdata, [{"name": "parallel_mse"}]), show_table=False, log=lambda m: None)
    assert {"source", "translation"} <= set(s["students"]["parallel_mse"]["last_terms"])
    run_dir = tmp_path / "p" / "runs" / "rank"
    before, after = _loss_on(run_dir, "parallel_mse", load_encoder)
    assert after < before
    st.SentenceTransformer(str(run_dir / "student"), device="cpu").encode(texts)


def test_cross_encoder_kd_run_saves_a_cross_encoder_giving_the_evaluated_scores(folders, tmp_path):
    from distill.api import run

    data = write_jsonl(tmp_path / "triples.jsonl", triples(48, 1))
    r = _recipe(tmp_path, folders, data, [{"name": "cross_encoder_kd", "params": {"margin_weight": 1.0}}],
                student={"num_layers": 2, "init": "random", "dropout": 0.0})  # a copy of the head starts near 0
    s = run(r, show_table=False, log=lambda m: None)
    m = s["students"]["cross_encoder_kd"]
    assert {"score", "margin"} <= set(m["last_terms"]) and 0 <= m["margin_agreement"] <= 1
    run_dir = tmp_path / "runs" / "rank"
    folder = run_dir / "students" / "cross_encoder_kd"
    before, after = _loss_on(run_dir, "cross_encoder_kd", lambda f: load_cross_encoder(str(f), "student"))
    assert after < before
    # the saved folder scores as the run's student did, through sentence-transformers itself
    from distill.families.encoder.examples import read_examples

    held = read_examples([data], "auto", {}, "ranking", 20, 0).held
    pairs = [(e["query"], p) for e in held for p in e["passages"]]
    ce = st.CrossEncoder(str(folder), device="cpu")
    got = torch.tensor(ce.predict(pairs, convert_to_numpy=True))
    ours = load_cross_encoder(str(folder), "student").score([a for a, _ in pairs], [b for _, b in pairs], 32)
    assert torch.allclose(got, ours, atol=1e-5)
    from scipy.stats import spearmanr

    teacher = ce_logits(folders["ce"], pairs)
    assert float(spearmanr(got.numpy(), teacher.numpy())[0]) == pytest.approx(m["spearman"], abs=1e-5)


# ------------------------------------------------------------------------------ every new method trains
@pytest.mark.parametrize("name", ["margin_mse", "parallel_mse", "cross_encoder_kd"])
def test_pair_method_loss_is_finite_and_decreases(folders, tmp_path, name):
    kind = "parallel" if name == "parallel_mse" else "ranking"
    ex = _examples(write_jsonl(tmp_path / "d.jsonl", parallel(30) if kind == "parallel" else triples(30, 2)), kind)
    tok = load_tokenizer(str(folders["bi"]))
    cross = Teacher(load_cross_encoder(str(folders["ce"])))
    torch.manual_seed(0)
    student = (load_cross_encoder(str(folders["ce_student"]), "student") if name == "cross_encoder_kd"
               else load_encoder_source(str(folders["bi"]), "student.path"))
    m = _method(name, student, Teacher(load_encoder_source(str(folders["bi_teacher"]))), cross=cross, tok=tok)
    m.check_examples(ex)
    b = m.collate(ex.train[:10])
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = sum(m.weights.get(k, 1.0) * v for k, v in m(b).items())
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-3:]) < sum(losses[:3]), losses


# ------------------------------------------------------------------------------ bad data
def test_bad_columns_name_the_column_and_file(tmp_path):
    rows = triples(30, 1)
    f = write_jsonl(tmp_path / "t.jsonl", rows)
    with pytest.raises(ConfigError, match=r"data\.columns\.query: column 'q' is not in .*t\.jsonl"):
        _examples(f, "ranking", columns={"query": "q"})
    with pytest.raises(ConfigError, match=r"data\.columns\.source: .*t\.jsonl has no source column"):
        _examples(f, "parallel")
    with pytest.raises(ConfigError, match=r"data\.columns\.quary: unknown role"):
        _examples(f, "ranking", columns={"quary": "query"})
    rows[3]["negative"] = None
    with pytest.raises(ConfigError, match=r"t2\.jsonl line 4: column 'negative'"):
        _examples(write_jsonl(tmp_path / "t2.jsonl", rows), "ranking")
    rows[3]["negative"] = "x y"
    for r in rows:
        r["label"] = [1.0, 2.0, 3.0]
    with pytest.raises(ConfigError, match=r"line 1: column 'label' holds 3 number\(s\) for 1 negative"):
        _examples(write_jsonl(tmp_path / "t3.jsonl", rows), "ranking")
    tsv = tmp_path / "t.tsv"
    tsv.write_text("question\tdoc\tbad\n" + "".join(f"q{i}\td{i}\tn{i}\n" for i in range(30)))
    ex = _examples(tsv, "ranking", columns={"passage": "doc", "negatives": ["bad"]})
    assert ex.columns == {"query": ["question"], "positive": ["doc"], "negatives": ["bad"], "label": []}
    with pytest.raises(ConfigError, match=r"eval_sentences"):
        read_examples([tsv], "auto", {"passage": "doc"}, "ranking", n_eval=25, seed=0)


def test_recipe_errors_exit_2(folders, tmp_path):
    from typer.testing import CliRunner

    from distill.cli.main import app

    f = write_jsonl(tmp_path / "t.jsonl", [{k: v for k, v in r.items() if k != "negative"} for r in triples(40, 1)])
    recipe = _recipe(tmp_path, folders, f, [{"name": "margin_mse"}])
    import yaml

    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    res = CliRunner().invoke(app, ["run", str(tmp_path / "r.yaml")])
    out = " ".join(res.output.split())  # the message as one line (the console wraps it)
    assert res.exit_code == 2, res.output
    assert "no negative column" in out and "t.jsonl" in out
    text = tmp_path / "text.txt"
    text.write_text("\n\n".join("a long enough sentence number %d here" % i for i in range(60)))
    recipe["data"]["paths"] = [str(text)]
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    res = CliRunner().invoke(app, ["run", str(tmp_path / "r.yaml")])
    assert res.exit_code == 2 and "text files" in " ".join(res.output.split()), res.output
    del recipe["teacher"]["cross_encoder"]
    recipe["methods"] = [{"name": "margin_mse", "params": {"scores": "cross_encoder"}}]
    from distill.config import load_config

    with pytest.raises(ConfigError, match=r"methods\.0\.params.*teacher\.cross_encoder"):
        load_config(recipe)


# ------------------------------------------------------------------------------ the shipped recipes
@pytest.mark.parametrize("recipe, rows, fmt", [("margin_mse_msmarco", "triples", "jsonl"),
                                               ("parallel_minilm", "parallel", "tsv")])
def test_shipped_recipe_runs_on_tiny_data(folders, tmp_path, recipe, rows, fmt):
    """The recipe as shipped, with its teacher, data and length pointed at tiny local stand-ins."""
    from pathlib import Path

    from distill.api import run

    if rows == "triples":
        data = write_jsonl(tmp_path / "d.jsonl", triples(40, 1))
    else:  # the column names the recipe expects, in a tsv with a header line
        data = tmp_path / "d.tsv"
        data.write_text("english\tnon_english\n" + "".join(f"{r['source']}\t{r['translation']}\n" for r in parallel(40)))
    path = Path(__file__).resolve().parents[2] / "recipes" / "encoder" / f"{recipe}.yaml"
    over = [f"teacher.path={folders['bi_teacher']}", f"data.paths=[{data}]", "data.eval_sentences=20",
            "data.batch_size=8", "data.max_length=32", "train.epochs=2", "train.max_steps=3", "student.num_layers=2",
            f"output_dir={tmp_path / 'runs'}", "engine.device=cpu", "engine.progress=false",
            "eval.pair_sentences=20", "eval.throughput_sentences=8"]
    if recipe == "margin_mse_msmarco":
        over.append(f"teacher.cross_encoder={folders['ce']}")
    s = run(str(path), over, show_table=False, log=lambda m: None)
    assert all(m["steps"] == 3 for m in s["students"].values()) and s["best"] in s["students"]


# ------------------------------------------------------------------------------ MS MARCO files of ids
def _msmarco_files(tmp_path, n=40, jsonl=False):
    """collection / queries by id, and Hofstatter's headerless score file (score_pos, score_neg, qid,
    pid_pos, pid_neg) over them; returns the paths and the rows as written (texts and scores)."""
    rows = triples(n, 1, seed=3)
    rng = random.Random(1)
    coll, queries, lines, want = {}, {}, [], []
    for i, r in enumerate(rows):
        qid, pp, pn = f"{1000 + i}", f"{7 * i}", f"{7 * i + 3}"
        queries[qid], coll[pp], coll[pn] = r["query"], r["positive"], r["negative"]
        sp, sn = round(rng.uniform(5, 10), 3), round(rng.uniform(-5, 5), 3)
        lines.append(f"{sp}\t{sn}\t{qid}\t{pp}\t{pn}\n")
        want.append((r["query"], r["positive"], r["negative"], sp, sn))
    coll["999999"] = "a passage no row uses"
    if jsonl:
        c = write_jsonl(tmp_path / "corpus.jsonl", [{"_id": k, "title": "", "text": v} for k, v in coll.items()])
        q = write_jsonl(tmp_path / "queries.jsonl", [{"_id": k, "text": v} for k, v in queries.items()])
    else:
        c, q = tmp_path / "collection.tsv", tmp_path / "queries.tsv"
        c.write_text("".join(f"{k}\t{v}\n" for k, v in coll.items()))
        q.write_text("".join(f"{k}\t{v}\n" for k, v in queries.items()))
    scores = tmp_path / "scores_ids.tsv"
    scores.write_text("".join(lines))
    return scores, c, q, want


ID_COLUMNS = {"query": "qid", "positive": "pid_pos", "negatives": ["pid_neg"], "label": ["score_pos", "score_neg"]}
ID_NAMES = ["score_pos", "score_neg", "qid", "pid_pos", "pid_neg"]


@pytest.mark.parametrize("jsonl", [False, True], ids=["tsv", "beir_jsonl"])
def test_id_rows_read_the_texts_and_the_two_score_columns(tmp_path, jsonl):
    scores, c, q, want = _msmarco_files(tmp_path, jsonl=jsonl)
    ex = read_examples([scores], "auto", ID_COLUMNS, "ranking", n_eval=10, seed=0, column_names=ID_NAMES,
                       collection=str(c), queries=str(q))
    got = {(e["query"], *e["passages"]): e["label"] for e in ex.train + ex.held}
    assert len(got) == len(want) and ex.has_labels
    for query, pos, neg, sp, sn in want:
        assert got[(query, pos, neg)] == [sp, sn]
    m = target_margins([e["label"] for e in ex.train], 1)  # the teacher's margin: score_pos - score_neg
    by_text = {(w[0], w[1], w[2]): w[3] - w[4] for w in want}
    assert m[:, 0].tolist() == pytest.approx([by_text[(e["query"], *e["passages"])] for e in ex.train])


def test_id_rows_errors_name_the_row_and_the_fix(tmp_path):
    scores, c, q, _ = _msmarco_files(tmp_path)
    scores.write_text(scores.read_text() + "1.0\t2.0\t1000\t12345678\t3\n")
    with pytest.raises(ConfigError, match=r"scores_ids.tsv line 41: column 'pid_pos' holds id '12345678', which "
                                          r"data.collection .* does not have"):
        read_examples([scores], "auto", ID_COLUMNS, "ranking", n_eval=10, seed=0, column_names=ID_NAMES,
                      collection=str(c), queries=str(q))
    scores.write_text("1.0\t2.0\t1000\n")
    with pytest.raises(ConfigError, match=r"line 1: 3 columns, data.column_names names 5"):
        read_examples([scores], "auto", ID_COLUMNS, "ranking", n_eval=10, seed=0, column_names=ID_NAMES,
                      collection=str(c), queries=str(q))
    with pytest.raises(ConfigError, match=r"data.queries: .* is not a file"):
        read_examples([_msmarco_files(tmp_path)[0]], "auto", ID_COLUMNS, "ranking", n_eval=10, seed=0,
                      column_names=ID_NAMES, collection=str(c), queries=str(tmp_path / "nope.tsv"))


def test_id_recipe_runs_margin_mse_from_the_scores(folders, tmp_path):
    """The shipped MS MARCO id recipe, its files pointed at tiny stand-ins: margin_mse learns the
    score file's margins (no cross-encoder in the recipe)."""
    from pathlib import Path

    from distill.api import run

    scores, c, q, _ = _msmarco_files(tmp_path)
    path = Path(__file__).resolve().parents[2] / "recipes" / "encoder" / "margin_mse_msmarco_ids.yaml"
    over = [f"teacher.path={folders['bi_teacher']}", f"data.paths=[{scores}]", f"data.collection={c}",
            f"data.queries={q}", "data.eval_sentences=20", "data.batch_size=8", "data.max_length=32",
            "train.epochs=2", "train.max_steps=3", f"output_dir={tmp_path / 'runs'}", "engine.device=cpu",
            "engine.progress=false", "eval.pair_sentences=20", "eval.throughput_sentences=8"]
    s = run(str(path), over, show_table=False, log=lambda m: None)
    assert s["students"]["margin_mse"]["steps"] == 3
