"""End-to-end llm runs on a tiny local teacher folder: text and JSONL data, every method, summary."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("transformers")
from llm_helpers import corpus, tiny_lm  # noqa: E402

import distill  # noqa: E402
from distill.config import load_config  # noqa: E402
from distill.errors import ConfigError  # noqa: E402


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, tiny_tok):
    d = tmp_path_factory.mktemp("teacher")
    tiny_lm("llama", len(tiny_tok), hidden=24, seed=3).save_pretrained(d)
    tiny_tok.save_pretrained(d)
    return d


def _recipe(tmp_path: Path, teacher_dir: Path, data: dict, methods: list[dict]) -> dict:
    return {"name": "t", "family": "llm", "output_dir": str(tmp_path / "runs"), "cache_dir": str(tmp_path / "cache"),
            "teacher": {"path": str(teacher_dir)},
            "student": {"arch": "gpt2", "hidden_size": 16, "num_layers": 1, "num_heads": 2, "pad_vocab_to": 64},
            "data": {"seq_len": 48, "batch_size": 4, "eval_batch_size": 8, "prompt_tokens": 4, **data},
            "train": {"epochs": 1, "max_steps": 2}, "engine": {"device": "cpu", "progress": False},
            "eval": {"samples": 1, "sample_tokens": 4}, "methods": methods}


def test_text_run_with_every_method(tmp_path, teacher_dir):
    text = tmp_path / "train.txt"
    text.write_text("\n\n".join(corpus(40)))
    methods = [{"name": "sft"}, {"name": "token_kd", "params": {"divergence": "jsd", "ce_weight": 0.1}},
               {"name": "on_policy", "params": {"lmbda": 1.0, "max_new_tokens": 4}},
               {"name": "seq_kd", "params": {"max_new_tokens": 4}}]
    s = distill.run(_recipe(tmp_path, teacher_dir, {"source": "text", "path": str(text), "ood_path": str(text)}, methods),
                    log=lambda m: None)
    run = Path(s["run_dir"])
    summary = json.loads((run / "summary.json").read_text())
    assert summary["family"] == "llm" and summary["primary_metric"] == "bits_per_byte"
    assert summary["higher_is_better"] is False
    assert set(summary["students"]) == {"sft", "token_kd", "on_policy", "seq_kd"}
    for m in [summary["teacher"], *summary["students"].values()]:
        assert m["bits_per_byte"] > 0 and m["perplexity"] > 1 and "ood_bits_per_byte" in m
    assert 0 <= summary["students"]["token_kd"]["teacher_agreement"] <= 1
    assert (run / "report.md").is_file() and (run / "students" / "sft" / "config.json").is_file()
    # generation speed where a method generated: the student's own samples (on_policy, lambda 1:
    # every batch), the teacher's continuations (seq_kd); none for the others
    st = summary["students"]
    assert st["on_policy"]["student_tokens_per_s"] > 0 and "teacher_tokens_per_s" not in st["on_policy"]
    assert st["seq_kd"]["teacher_tokens_per_s"] > 0 and "student_tokens_per_s" not in st["seq_kd"]
    assert not {"student_tokens_per_s", "teacher_tokens_per_s"} & (set(st["sft"]) | set(st["token_kd"]))
    assert "on_policy: the student " in (run / "report.md").read_text()


def test_bench_ranks_bits_per_byte_lower_first(tmp_path, teacher_dir):
    """bits per byte is lower-is-better: the summary says so, and `distill bench` reads it."""
    import yaml

    from distill.bench import load_suite, run_suite

    text = tmp_path / "train.txt"
    text.write_text("\n\n".join(corpus(40)))
    recipe = _recipe(tmp_path, teacher_dir, {"source": "text", "path": str(text)}, [{"name": "sft"}])
    del recipe["name"], recipe["output_dir"], recipe["methods"]
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump({"name": "llm-t", "output_dir": str(tmp_path / "bench"), "seeds": [0],
                                     "recipe": recipe, "baselines": ["sft"],
                                     "methods": [{"name": "token_kd", "label": "kd-tvd", "params": {"divergence": "tvd"}}]}))
    out = run_suite(load_suite(suite), log=lambda m: None)
    cells = {c["method"]: c for c in out["cells"]}
    assert set(cells) == {"sft", "kd-tvd"}
    assert all(c["higher_is_better"] is False and c["primary_metric"] == "bits_per_byte" for c in cells.values())
    md = (tmp_path / "bench" / "results.md").read_text()
    assert "bits_per_byte last (lower is better)" in md


def test_jsonl_run_and_config_errors(tmp_path, teacher_dir):
    p = tmp_path / "pairs.jsonl"
    p.write_text("\n".join(json.dumps({"prompt": a, "response": b, "ok": i % 3 > 0})
                           for i, (a, b) in enumerate(zip(corpus(20), corpus(20, 1)))))
    s = distill.run(_recipe(tmp_path, teacher_dir, {"source": "jsonl", "path": str(p), "pack": True, "label_field": "ok"},
                            [{"name": "token_kd"}, {"name": "redi"}]), log=lambda m: None)
    assert s["students"]["token_kd"]["tokens"] > 0 and s["students"]["redi"]["bits_per_byte"] > 0
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(_recipe(tmp_path, teacher_dir, {"source": "jsonl", "path": str(p)},
                            [{"name": "token_kd", "params": {"temprature": 2}}]))
    with pytest.raises(ConfigError, match="data.path"):
        load_config(_recipe(tmp_path, teacher_dir, {"source": "text"}, [{"name": "sft"}]))


def test_recipes_validate():
    from distill.families.llm.config import expand

    if not Path(expand("$DISTILL_ASSETS/stories260K/stories260K.bin")).exists():
        pytest.skip("the llm recipes read ../shared/assets (or $DISTILL_ASSETS), absent here")
    for path in sorted(Path(__file__).resolve().parents[2].glob("recipes/llm/*.yaml")):
        load_config(path)


def test_cross_tokenizer_student_shows_no_nan_agreement(tmp_path, teacher_dir):
    """A student with its own tokenizer has no comparable top-1 agreement: "-", never "nan"."""
    text = tmp_path / "train.txt"
    text.write_text("\n\n".join(corpus(20)))
    recipe = _recipe(tmp_path, teacher_dir, {"source": "text", "path": str(text)}, [{"name": "sft"}])
    recipe["student"]["tokenizer"] = "byte"
    recipe["train"]["max_steps"] = 1
    lines: list[str] = []
    s = distill.run(recipe, log=lines.append)
    said = [m for m in lines if m.startswith("student sft: bits/byte")]
    assert len(said) == 1 and said[0].endswith("teacher agreement -"), said
    assert not any("nan" in m.lower() for m in lines), lines
    summary = json.loads((Path(s["run_dir"]) / "summary.json").read_text())
    assert "teacher_agreement" not in summary["students"]["sft"]
    assert "nan" not in (Path(s["run_dir"]) / "report.md").read_text().lower()


def test_cross_tokenizer_run_on_prompt_response_data_reads_the_prompts(tmp_path, teacher_dir, monkeypatch, tiny_tok):
    """`distill run` with jsonl data and a student tokenizer: the teacher's side of every pair
    carries its prompt (registered from the training set), not the response alone."""
    from distill.families.llm.cross_tokenizer.base import CrossTokenizerMethod

    prompts, responses = corpus(12, seed=4), corpus(12, seed=5)
    p = tmp_path / "pairs.jsonl"
    p.write_text("\n".join(json.dumps({"prompt": a, "response": b}) for a, b in zip(prompts, responses)))
    seen: list[str] = []
    pair = CrossTokenizerMethod.pair

    def spy(self, batch):
        out = pair(self, batch)
        seen.append(tiny_tok.decode(out.teacher_batch["input_ids"].reshape(-1).tolist(), skip_special_tokens=True))
        return out

    monkeypatch.setattr(CrossTokenizerMethod, "pair", spy)
    recipe = _recipe(tmp_path, teacher_dir, {"source": "jsonl", "path": str(p), "seq_len": 96}, [{"name": "alm"}])
    recipe["student"]["tokenizer"] = "byte"
    s = distill.run(recipe, log=lambda m: None)
    assert s["students"]["alm"]["bits_per_byte"] > 0 and seen
    read = "".join(seen)
    assert sum(q in read for q in prompts) >= 4                # the batches' prompts, on the teacher's side
