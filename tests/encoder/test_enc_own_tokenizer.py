"""Students with a tokenizer of their own (`student.path` with another vocabulary: an XLM-R student
under a BERT teacher, the multilingual setting of Reimers & Gurevych 2020): parallel_mse against
sentence-transformers' MSELoss with each model on its own tokenization, a run whose evaluation and
saved folder use the student's tokenizer (checked through SentenceTransformer and an independent
Spearman), the task's logit KD with each model reading its own ids, and the refusal of token-level
layer methods."""
import json

import pytest
import torch

from distill.errors import ConfigError
from distill.families.encoder.examples import read_examples
from distill.families.encoder.loading import load_encoder_source, load_tokenizer
from distill.registry import methods
from distill.teacher import Teacher
from enc_helpers import corpus, tiny_folder, tiny_xlmr_folder

st = pytest.importorskip("sentence_transformers")


def parallel(n=60, seed=0):
    """(source, translation) rows: the 'translation' is the source with every word reversed."""
    return [{"source": s, "translation": " ".join(w[::-1] for w in s.split())} for s in corpus(n, seed)]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("own_tok")
    texts = [r[k] for r in parallel(200, seed=5) for k in ("source", "translation")]
    return {"teacher": tiny_folder(root / "teacher", layers=3), "same": tiny_folder(root / "same", layers=2),
            "xlmr": tiny_xlmr_folder(root / "xlmr", texts)}


def test_the_student_tokenizer_is_its_own_only_where_the_ids_differ(folders):
    from distill.families.encoder.runner import same_tokenizer

    t = load_tokenizer(str(folders["teacher"]))
    assert same_tokenizer(t, load_tokenizer(str(folders["same"])))
    x = load_tokenizer(str(folders["xlmr"]))
    assert not same_tokenizer(t, x)
    assert x("the cat sat.")["input_ids"] != t("the cat sat.")["input_ids"]


def test_parallel_mse_with_its_own_tokenizer_equals_sentence_transformers(folders, tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in parallel(30)))
    ex = read_examples([path], "auto", {}, "parallel", n_eval=10, seed=0)
    rows = ex.train[:8]
    entry = methods.get("parallel_mse", "encoder")
    m = entry.builder(load_encoder_source(str(folders["xlmr"]), "student.path"),
                      Teacher(load_encoder_source(str(folders["teacher"]))),
                      tokenizer=load_tokenizer(str(folders["teacher"])),
                      student_tokenizer=load_tokenizer(str(folders["xlmr"]), "student.path"), max_length=64)
    batch = m.collate(rows)
    assert "student_input_ids" in batch and int(batch["student_input_ids"][0, 0]) == 0  # XLM-R's <s>
    terms = m(batch)

    student = st.SentenceTransformer(str(folders["xlmr"]), device="cpu")
    teacher = st.SentenceTransformer(str(folders["teacher"]), device="cpu")
    src, tr = [e["source"] for e in rows], [e["translations"][0] for e in rows]
    labels = teacher.encode(src, convert_to_tensor=True).clone()
    ref = st.sentence_transformer.losses.MSELoss(student)([student.tokenize(src), student.tokenize(tr)], labels)
    assert (terms["source"] + terms["translation"]).item() / 2 == pytest.approx(ref.item(), abs=1e-5, rel=1e-5)


def _recipe(tmp_path, folders, data, methods_, **over):
    r = {"name": "own", "family": "encoder", "output_dir": str(tmp_path / "runs"), "cache_dir": str(tmp_path / "cache"),
         "teacher": {"path": str(folders["teacher"])},
         "student": {"path": str(folders["xlmr"]), "dropout": 0.0},
         "data": {"paths": [str(data)], "eval_sentences": 24, "batch_size": 8, "max_length": 64},
         "train": {"epochs": 4, "max_steps": 16, "optimizer": {"lr": 0.003}},
         "engine": {"device": "cpu", "progress": False},
         "eval": {"pair_sentences": 24, "throughput_sentences": 8},
         "methods": methods_}
    r.update(over)
    return r


def test_a_run_evaluates_and_saves_the_student_in_its_own_tokenizer(folders, tmp_path):
    from scipy.stats import spearmanr

    from distill.api import run
    from distill.config import load_config
    from distill.families.encoder.runner import Context

    data = tmp_path / "parallel.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in parallel(80)))
    r = _recipe(tmp_path, folders, data, [{"name": "parallel_mse"}, {"name": "embedding_kd"}])
    s = run(r, show_table=False, log=lambda m: None)
    run_dir = tmp_path / "runs" / "own"
    held = Context(load_config(run_dir / "config.yaml"), lambda m: None).texts(load_config(r).data)[1][:24]
    teacher = st.SentenceTransformer(str(folders["teacher"]), device="cpu")
    e_t = teacher.encode(held, convert_to_tensor=True, normalize_embeddings=True)
    iu = torch.triu_indices(len(held), len(held), 1)
    for label in ("parallel_mse", "embedding_kd"):
        folder = run_dir / "students" / label
        assert load_tokenizer(str(folder)).get_vocab() == load_tokenizer(str(folders["xlmr"])).get_vocab()
        model = st.SentenceTransformer(str(folder), device="cpu")
        e_s = model.encode(held, convert_to_tensor=True, normalize_embeddings=True)
        rho = spearmanr((e_s @ e_s.T)[iu[0], iu[1]].numpy(), (e_t @ e_t.T)[iu[0], iu[1]].numpy())[0]
        assert s["students"][label]["spearman"] == pytest.approx(float(rho), abs=1e-4)
    # training moved the student towards the teacher on its own ids
    before = st.SentenceTransformer(str(folders["xlmr"]), device="cpu").encode(held, convert_to_tensor=True)
    after = st.SentenceTransformer(str(run_dir / "students" / "parallel_mse"), device="cpu").encode(
        held, convert_to_tensor=True)
    e_raw = teacher.encode(held, convert_to_tensor=True)
    assert (after - e_raw).pow(2).mean() < (before - e_raw).pow(2).mean()


def test_token_level_layer_methods_are_refused_for_a_student_with_its_own_tokenizer(folders, tmp_path):
    from distill.api import run

    data = tmp_path / "text.txt"
    data.write_text("\n\n".join(corpus(80)))
    with pytest.raises(ConfigError, match=r"student\.path: .*own tokenizer.*hidden_mse"):
        run(_recipe(tmp_path, folders, data, [{"name": "embedding_kd"}, {"name": "hidden_mse"}]),
            show_table=False, log=lambda m: None)


def test_head_logits_give_teacher_and_student_their_own_ids():
    from distill.families.encoder.logits import HeadLogits, classifier_batch

    seen = {}

    class Record(torch.nn.Module):
        def __init__(self, who):
            super().__init__()
            self.who = who

        def forward(self, ids, mask):
            seen[self.who] = (ids.clone(), mask.clone())
            return {"logits": torch.zeros(ids.shape[0], 2)}

    t_ids, t_mask = torch.tensor([[2, 7, 3, 0], [2, 8, 9, 3]]), torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    s_ids, s_mask = torch.tensor([[0, 5, 6, 2, 1, 1], [0, 4, 2, 1, 1, 1]]), torch.tensor([[1] * 4 + [0] * 2, [1] * 3 + [0] * 3])
    b = classifier_batch({"input_ids": t_ids, "attention_mask": t_mask, "student_input_ids": s_ids[:, :4],
                          "student_attention_mask": s_mask[:, :4], "label": torch.tensor([0, 1])})
    HeadLogits(Record("teacher"))(b["x"])
    HeadLogits(Record("student"), student=True)(b["x"])
    assert torch.equal(seen["teacher"][0], t_ids) and torch.equal(seen["teacher"][1], t_mask)
    assert torch.equal(seen["student"][0], s_ids[:, :4]) and torch.equal(seen["student"][1], s_mask[:, :4])
    long_s = classifier_batch({"input_ids": t_ids, "attention_mask": t_mask, "student_input_ids": s_ids,
                               "student_attention_mask": s_mask, "label": torch.tensor([0, 1])})
    assert long_s["x"].shape == (2, 4, 6)  # padded to the longer side; each side is cut back to its own length
    HeadLogits(Record("teacher"))(long_s["x"])
    HeadLogits(Record("student"), student=True)(long_s["x"])
    assert torch.equal(seen["teacher"][0], t_ids) and torch.equal(seen["student"][0], s_ids[:, :4])


def test_task_kd_with_a_student_in_its_own_tokenizer(folders, tmp_path):
    from distill.api import run

    text = tmp_path / "text.txt"
    text.write_text("\n%\n".join(corpus(150)))
    sents = corpus(400, seed=3)
    (tmp_path / "cat").write_text("\n%\n".join(x for x in sents if " cat " in f" {x} "))
    (tmp_path / "other").write_text("\n%\n".join(x for x in sents if " cat " not in f" {x} "))
    r = _recipe(tmp_path, folders, text, [{"name": "kd"}],
                task={"paths": [str(tmp_path / "cat"), str(tmp_path / "other")], "min_chars": 5, "max_per_class": 80,
                      "labels_per_class": 20, "teacher_train": {"epochs": 60, "max_steps": 80, "optimizer": {"lr": 0.003}}},
                train={"epochs": 3, "max_steps": 12, "optimizer": {"lr": 0.003}})
    r["data"] = {"paths": [str(text)], "separator": "%", "min_chars": 5, "eval_sentences": 40, "batch_size": 16}
    s = run(r, show_table=False, log=lambda m: None)
    m = s["students"]["kd"]
    assert {"kd", "ce"} <= set(m["last_terms"])
    # the reported accuracy is the saved student's, reading the test texts with its own tokenizer
    from safetensors.torch import load_file

    from distill.config import load_config
    from distill.families.encoder.export import CLASSIFIER
    from distill.families.encoder.task import build_task

    texts = build_task(load_config(r).task, lambda x, **kw: {"input_ids": list(x)}, 64)  # rows = the texts
    folder = tmp_path / "runs" / "own" / "students" / "kd"
    e = st.SentenceTransformer(str(folder), device="cpu").encode(texts.test_rows, convert_to_tensor=True)
    head = load_file(str(folder / CLASSIFIER))
    pred = (e @ head["weight"].T + head["bias"]).argmax(-1)
    assert m["accuracy"] == pytest.approx(float((pred == torch.tensor(texts.test_labels)).float().mean()), abs=1e-6)


def test_the_shipped_xlmr_recipe_runs_with_local_stand_ins(folders, tmp_path):
    """recipes/encoder/parallel_xlmr.yaml as shipped, its hub models and data pointed at tiny local ones."""
    from pathlib import Path

    from distill.api import run

    data = tmp_path / "d.tsv"
    data.write_text("english\tnon_english\n" + "".join(f"{r['source']}\t{r['translation']}\n" for r in parallel(40)))
    path = Path(__file__).resolve().parents[2] / "recipes" / "encoder" / "parallel_xlmr.yaml"
    over = [f"teacher.path={folders['teacher']}", f"student.path={folders['xlmr']}", f"data.paths=[{data}]",
            "data.eval_sentences=20", "data.batch_size=8", "data.max_length=64", "train.epochs=2", "train.max_steps=3",
            f"output_dir={tmp_path / 'runs'}", "engine.device=cpu", "engine.progress=false",
            "eval.pair_sentences=20", "eval.throughput_sentences=8"]
    s = run(str(path), over, show_table=False, log=lambda m: None)
    assert s["students"]["parallel_mse"]["steps"] == 3
    saved = load_tokenizer(str(tmp_path / "runs" / "parallel_xlmr" / "student"))
    assert saved("the cat sat.")["input_ids"] == load_tokenizer(str(folders["xlmr"]))("the cat sat.")["input_ids"]


def test_a_stage_with_its_own_data_cuts_both_tokenizations_at_its_max_length(folders, tmp_path):
    from distill.config import load_config
    from distill.families.encoder.runner import Context

    data = tmp_path / "text.txt"
    data.write_text("\n\n".join(corpus(80)))
    cfg = load_config(_recipe(tmp_path, folders, data, [{"name": "embedding_kd"}]))
    ctx = Context(cfg, lambda m: None)
    method = ctx.build_method(cfg.methods[0], ctx.new_student(cfg.methods[0]))
    short = cfg.data.model_copy(update={"max_length": 6})
    for b in ctx.loader(method, short):
        assert b["input_ids"].shape[1] <= 6 and b["student_input_ids"].shape[1] <= 6
    full = next(iter(ctx.loader(method)))
    assert full["student_input_ids"].shape[1] > 6  # the recipe's own length is longer


def test_margin_mse_with_its_own_tokenizer_equals_sentence_transformers(folders, tmp_path):
    import random

    from enc_helpers import WORDS

    rng = random.Random(0)
    rows = []
    for _ in range(30):
        q = [rng.choice(WORDS) for _ in range(3)]
        rows.append({"query": " ".join(q), "positive": " ".join(q + [rng.choice(WORDS)]),
                     "negative": " ".join(rng.choice(WORDS) for _ in range(5)), "label": rng.uniform(-2, 2)})
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ex = read_examples([path], "auto", {}, "ranking", n_eval=10, seed=0)
    m = methods.get("margin_mse", "encoder").builder(
        load_encoder_source(str(folders["xlmr"]), "student.path"), Teacher(load_encoder_source(str(folders["teacher"]))),
        tokenizer=load_tokenizer(str(folders["teacher"])),
        student_tokenizer=load_tokenizer(str(folders["xlmr"]), "student.path"), max_length=64)
    m.check_examples(ex)
    batch = m.collate(ex.train[:8])
    assert int(batch["student_passage_ids"][0, 0]) == 0  # XLM-R's <s>
    ours = m(batch)["margin"]

    student = st.SentenceTransformer(str(folders["xlmr"]), device="cpu")
    loss = st.sentence_transformer.losses.MarginMSELoss(student)
    b = ex.train[:8]
    cols = [[e["query"] for e in b]] + [[e["passages"][j] for e in b] for j in range(2)]
    ref = loss([student.tokenize(c) for c in cols], torch.tensor([e["label"] for e in b]))
    assert ours.item() == pytest.approx(ref.item(), abs=1e-5, rel=1e-5)
