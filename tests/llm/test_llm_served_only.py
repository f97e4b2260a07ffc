"""A recipe with only `teacher.url` (no local teacher): the tokenizer comes from the server, token_kd
trains from the served targets with the losses and weights of the in-process teacher, and what
needs the teacher model here is refused with a clear error."""
from __future__ import annotations

import threading

import pytest

pytest.importorskip("transformers")
from llm_helpers import assert_same_token_kd_runs, corpus, tiny_lm  # noqa: E402

import distill  # noqa: E402
from distill.errors import ConfigError  # noqa: E402


@pytest.fixture(scope="module")
def served_teacher(tmp_path_factory, tiny_tok):
    from distill.families.llm.models import load_causal_lm
    from distill.serve import make_server
    from distill.teacher import Teacher

    root = tmp_path_factory.mktemp("served_only")
    teacher_dir = root / "teacher"
    tiny_lm("llama", len(tiny_tok), hidden=24, seed=3).save_pretrained(teacher_dir)
    tiny_tok.save_pretrained(teacher_dir)
    text = root / "train.txt"
    text.write_text("\n\n".join(corpus(24)))
    # the CLI's way: the model is loaded from its folder, whose tokenizer files the server offers
    server = make_server(Teacher(load_causal_lm(str(teacher_dir))), "127.0.0.1", 0, max_k=len(tiny_tok))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield {"dir": teacher_dir, "text": text, "vocab": len(tiny_tok),
           "url": f"http://127.0.0.1:{server.server_address[1]}"}
    server.shutdown()
    server.server_close()


def _recipe(tmp_path, served, teacher, **over):
    r = {"family": "llm", "output_dir": str(tmp_path / "runs"), "cache_dir": str(tmp_path / "cache"),
         "teacher": teacher,
         "student": {"arch": "llama", "hidden_size": 16, "num_layers": 1, "num_heads": 2, "num_kv_heads": 1},
         "data": {"source": "text", "path": str(served["text"]), "seq_len": 48, "batch_size": 4, "prompt_tokens": 4,
                  "pack": True},
         "train": {"epochs": 1, "max_steps": 3, "optimizer": {"name": "sgd", "lr": 0.5}},
         "engine": {"device": "cpu", "progress": False, "log_every": 1},
         "eval": {"samples": 0}, "methods": [{"name": "token_kd", "params": {"temperature": 2.0}}]}
    r.update(over)
    return r


def test_url_only_token_kd_equals_in_process_teacher(tmp_path, served_teacher):
    s = served_teacher
    local = distill.run(dict(_recipe(tmp_path, s, {"path": str(s["dir"])}), name="local"), log=lambda m: None)
    logs: list[str] = []
    hidden = s["dir"].with_name("teacher_moved_away")
    s["dir"].rename(hidden)  # nothing of the teacher may be read from disk here
    try:
        remote = distill.run(dict(_recipe(tmp_path, s, {"url": s["url"], "served_top_k": s["vocab"]}), name="served"),
                             log=logs.append)
    finally:
        hidden.rename(s["dir"])
    assert_same_token_kd_runs(tmp_path / "runs")
    ls, rs = local["students"]["token_kd"], remote["students"]["token_kd"]
    for key in ("bits_per_byte", "loss", "token_accuracy"):  # student metrics unchanged
        assert ls[key] == pytest.approx(rs[key], rel=1e-4), key
    # the teacher agreement comes from the served top-1
    assert rs["teacher_agreement"] == pytest.approx(ls["teacher_agreement"], abs=1e-9)
    # the served tokenizer is the teacher's: same data, and the student is saved with it
    assert local["data"] == remote["data"]
    assert (tmp_path / "runs" / "served" / "students" / "token_kd" / "tokenizer.json").is_file()
    # the teacher itself is not evaluated here, and the summary and report say so
    t = remote["teacher"]
    assert t["served"] and t["note"] == "teacher served: not evaluated locally" and "bits_per_byte" not in t
    assert t["source"] == s["url"] and len(t["fingerprint"]) > 8
    assert "bits_per_byte" in local["teacher"]
    assert "teacher served: not evaluated locally" in (tmp_path / "runs" / "served" / "report.md").read_text()
    assert any("not loaded here" in line for line in logs)


def test_url_only_refuses_what_needs_the_teacher_here(tmp_path, served_teacher):
    from distill.config import load_config

    s = served_teacher
    teacher = {"url": s["url"]}
    with pytest.raises(ConfigError, match=r"data\.source: 'teacher'.*teacher\.path"):
        load_config(_recipe(tmp_path, s, teacher, data={"source": "teacher"}))
    with pytest.raises(ConfigError, match=r"methods\.0\.name: 'seq_kd' generates its training text with the teacher"
                                          r".*give teacher\.path"):
        load_config(_recipe(tmp_path, s, teacher, methods=[{"name": "seq_kd"}]))
    with pytest.raises(ConfigError, match=r"methods\.1\.name: 'on_policy' runs the teacher in this process.*"
                                          r"cannot read the served teacher's targets"):
        load_config(_recipe(tmp_path, s, teacher, methods=[{"name": "sft"}, {"name": "on_policy"}]))
    with pytest.raises(ConfigError, match=r"methods\.0\.name: 'first'"):
        load_config(_recipe(tmp_path, s, teacher, methods=[{"name": "first"}]))
    with pytest.raises(ConfigError, match=r"teacher\.path: required.*teacher\.url"):
        load_config(_recipe(tmp_path, s, {}))
    # sft and token_kd with only a url are accepted
    load_config(_recipe(tmp_path, s, teacher, methods=[{"name": "sft"}, {"name": "token_kd"}]))


def test_served_sentencepiece_tokenizer_matches_the_converted_one(tmp_path):
    pytest.importorskip("sentencepiece")
    from distill.families.llm.convert import save_sentencepiece_tokenizer
    from distill.families.llm.config import assets_dir
    from distill.families.llm.models import load_tokenizer
    from distill.families.llm.served import ServedTeacher
    from distill.serve import make_server
    from distill.teacher import Teacher

    spm = assets_dir() / "stories260K" / "tok512.model"
    if not spm.is_file():
        pytest.skip("tok512.model asset absent")
    save_sentencepiece_tokenizer(spm, tmp_path / "converted")
    local = load_tokenizer(str(tmp_path / "converted"))
    server = make_server(Teacher(tiny_lm("llama", 512, hidden=8, layers=1)), "127.0.0.1", 0, max_k=4, tokenizer=spm)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        served = ServedTeacher(f"http://127.0.0.1:{server.server_address[1]}")
        assert served.remote.info["tokenizer"] == "sentencepiece"
        for tok in (served.tokenizer(), served.tokenizer(str(spm))):  # from the server; a local .model
            text = "Once upon a time, there was a little girl."
            assert tok(text)["input_ids"] == local(text)["input_ids"]
            assert (tok.bos_token_id, tok.eos_token_id, len(tok)) == (local.bos_token_id, local.eos_token_id, len(local))
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("method", ["alm", "uld"])
def test_url_only_cross_tokenizer_student_equals_in_process_teacher(tmp_path, served_teacher, method):
    """alm or uld with only teacher.url and a student with its own tokenizer: the teacher's tokenizer
    comes from the server, its token log-probs (alm) or top-k (uld, k covering its vocabulary) too,
    and the losses equal those with the teacher here; alm's hidden-state term, which needs the
    teacher's hidden states, is refused."""
    import json

    from distill.config import load_config

    s = served_teacher

    def losses(name):
        rows = [json.loads(line) for line in (tmp_path / "runs" / name / "metrics.jsonl").read_text().splitlines()]
        return [r[f"loss/{method}"] for r in rows if r.get("phase") == method and f"loss/{method}" in r]

    params = {"tau": 1.0} if method == "alm" else {"temperature": 1.5}
    over = {"student": {"arch": "llama", "hidden_size": 16, "num_layers": 1, "num_heads": 2, "tokenizer": "byte"},
            "methods": [{"name": method, "params": params}]}
    distill.run(dict(_recipe(tmp_path, s, {"path": str(s["dir"])}, **over), name="local"), log=lambda m: None)
    logs: list[str] = []
    hidden = s["dir"].with_name("teacher_moved_away")
    s["dir"].rename(hidden)  # nothing of the teacher may be read from disk here
    try:
        distill.run(dict(_recipe(tmp_path, s, {"url": s["url"], "served_top_k": s["vocab"]}, **over), name="served"),
                    log=logs.append)
    finally:
        hidden.rename(s["dir"])
    what = "token log-probs" if method == "alm" else "top-k"
    assert any(f"{what} from the served teacher" in line for line in logs), logs
    a, b = losses("local"), losses("served")
    assert len(a) == 3 and a == pytest.approx(b, rel=1e-5)
    if method != "alm":
        return
    bad = dict(over, methods=[{"name": "alm", "params": {"hidden_weight": 1.0}}])
    with pytest.raises(ConfigError, match=r"methods\.0\.params\.hidden_weight: .*give teacher\.path"):
        load_config(_recipe(tmp_path, s, {"url": s["url"]}, **bad))


def test_a_served_top_k_above_the_servers_limit_is_refused_before_training(tmp_path, served_teacher):
    s = served_teacher
    teacher = {"url": s["url"], "served_top_k": s["vocab"] + 1}
    for methods in ([{"name": "token_kd"}],
                    [{"name": "uld"}]):
        over = {"methods": methods}
        if methods[0]["name"] == "uld":
            over["student"] = {"arch": "llama", "hidden_size": 16, "num_layers": 1, "num_heads": 2, "tokenizer": "byte"}
        with pytest.raises(ConfigError, match=rf"teacher\.served_top_k: {s['vocab'] + 1}, but the served teacher .* "
                                              rf"answers at most k = {s['vocab']}"):
            distill.run(dict(_recipe(tmp_path, s, teacher, **over), name=methods[0]["name"]), log=lambda m: None)
        assert not list((tmp_path / "runs").glob(f"{methods[0]['name']}*/students/*/checkpoints"))
