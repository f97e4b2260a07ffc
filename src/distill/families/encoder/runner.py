"""The encoder family's run: load the teacher and its tokenizer, read and split the text, then one
student per method from the same initialisation (same seed), each trained with the engine and
compared with the teacher on held-out sentences; summary.json and report.md in the run folder."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import torch

from distill.engine import Engine
from distill.families.encoder.base import EncoderMethod
from distill.families.encoder.config import EncoderMethodConfig, EncoderRunConfig
from distill.families.encoder.data import SentenceLoader, read_sentences, split_sentences, tokenize
from distill.families.encoder.evaluate import agreement, encode, throughput
from distill.families.encoder.models import (SentenceEncoder, build_student, count_parameters, load_backbone,
                                             load_tokenizer, resolve_path)
from distill.families.llm.config import expand
from distill.registry import methods, register_runner
from distill.teacher import Teacher
from distill.utils import atomic_write_text, seed_everything


def train_student(method: EncoderMethod, rows: list[list[int]], cfg: EncoderRunConfig, mcfg: EncoderMethodConfig,
                  pad_id: int, out_dir: Path | None, metrics_path: Path | None, label: str) -> Engine:
    """The training loop: reads top to bottom; the engine does devices, accumulation and checkpoints."""
    train_cfg = mcfg.train or cfg.train
    loader = SentenceLoader(rows, cfg.data.batch_size, pad_id, seed=cfg.seed)
    engine = Engine(cfg.engine, out_dir, seed=cfg.seed, name=label, metrics_path=metrics_path)
    model, optimizer, scheduler = engine.start(method, train_cfg, batches_per_epoch=len(loader))
    weights = {**method.weights, **mcfg.weights}

    model.train()
    for batch in engine.batches(loader, train_cfg.epochs, train_cfg.max_steps):
        with engine.autocast():
            terms = model(batch)
        engine.step(terms, weights)
        engine.checkpoint_if_due(model, optimizer, scheduler)
    engine.finish()
    model.eval()
    return engine


def evaluate(model, rows, e_t, cfg: EncoderRunConfig, pad_id: int, device) -> dict[str, Any]:
    e = encode(model, rows, pad_id, cfg.data.eval_batch_size, device)
    m = agreement(e, e_t, cfg.eval.pair_sentences, cfg.eval.top_k)
    m["sentences_per_s"] = throughput(model, rows[: cfg.eval.throughput_sentences], pad_id, cfg.data.eval_batch_size, device)
    m["params"] = count_parameters(model)
    m["size_mb"] = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    return m


@register_runner("encoder")
def run_encoder(cfg: EncoderRunConfig, *, run_dir: Path | None, log: Callable[[str], None] = print) -> dict[str, Any]:
    device = Engine(cfg.engine, None, seed=cfg.seed).device
    tok = load_tokenizer(cfg.teacher.path)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    teacher_enc = SentenceEncoder(load_backbone(cfg.teacher.path), cfg.teacher.pooling).to(device)
    teacher = Teacher(teacher_enc)
    d = cfg.data
    sentences = read_sentences([expand(p) for p in d.paths], d.separator, d.min_chars, d.max_chars)  # type: ignore[misc]
    if d.max_sentences:
        sentences = sentences[: d.max_sentences]
    train, held = split_sentences(sentences, d.eval_sentences, d.split_seed)
    train_rows, held_rows = tokenize(tok, train, d.max_length), tokenize(tok, held, d.max_length)
    log(f"teacher: {resolve_path(cfg.teacher.path)} ({count_parameters(teacher_enc):,} parameters); "
        f"data: {len(train)} train / {len(held)} held-out sentences")

    e_t = encode(teacher_enc, held_rows, pad_id, d.eval_batch_size, device)
    t_metrics = agreement(e_t, e_t, cfg.eval.pair_sentences, cfg.eval.top_k)
    t_metrics["sentences_per_s"] = throughput(teacher_enc, held_rows[: cfg.eval.throughput_sentences], pad_id,
                                              d.eval_batch_size, device)
    t_metrics["params"] = count_parameters(teacher_enc)
    t_metrics["size_mb"] = sum(p.numel() * p.element_size() for p in teacher_enc.parameters()) / 2**20
    results: dict[str, Any] = {"family": "encoder", "primary_metric": "spearman", "teacher": t_metrics, "students": {}}
    metrics_path = run_dir / "metrics.jsonl" if run_dir else None

    for mcfg in cfg.methods:
        label = mcfg.display
        out = run_dir / "students" / label if run_dir else None
        done = out / "result.json" if out else None
        if done is not None and done.is_file():
            log(f"student {label}: already trained (resumed run), reusing {done}")
            results["students"][label] = json.loads(done.read_text())
            continue
        entry = methods.get(mcfg.name, "encoder")
        seed_everything(cfg.seed)  # every method starts from the same student initialisation
        student = build_student(teacher_enc, cfg.student, pad_id).to(device)
        init = agreement(encode(student, held_rows, pad_id, d.eval_batch_size, device), e_t,
                         cfg.eval.pair_sentences, cfg.eval.top_k) if cfg.eval.at_init else {}
        method = entry.builder(student, teacher if entry.builder.needs_teacher else None, **mcfg.params)
        engine = train_student(method, train_rows, cfg, mcfg, pad_id, out, metrics_path, label)
        m = evaluate(student, held_rows, e_t, cfg, pad_id, device)
        m.update({f"init_{k}": v for k, v in init.items()})
        m.update(method=mcfg.name, steps=engine.step_count, last_terms=engine.last_terms,
                 speedup=m["sentences_per_s"] / t_metrics["sentences_per_s"])
        results["students"][label] = m
        if out is not None:
            from safetensors.torch import save_file

            out.mkdir(parents=True, exist_ok=True)
            save_file({k: v.contiguous() for k, v in student.state_dict().items()}, str(out / "student.safetensors"))
            atomic_write_text(out / "student.json", json.dumps(cfg.student.model_dump(mode="json")))
            atomic_write_text(done, json.dumps(m))  # type: ignore[arg-type]
            import shutil

            shutil.rmtree(out / "checkpoints", ignore_errors=True)
        log(f"student {label}: spearman {m['spearman']:.3f} (init {init.get('spearman', float('nan')):.3f}), "
            f"top{cfg.eval.top_k} {m[f'top{cfg.eval.top_k}_overlap']:.3f}, {m['speedup']:.1f}x teacher throughput")

    results["best"] = max(results["students"], key=lambda k: results["students"][k]["spearman"])
    results["data"] = {"train": len(train), "held_out": len(held)}
    if run_dir is not None:
        atomic_write_text(run_dir / "summary.json", json.dumps(results, indent=2))
        atomic_write_text(run_dir / "report.md", report(cfg, results))
    return results


def report(cfg: EncoderRunConfig, results: dict[str, Any]) -> str:
    k = cfg.eval.top_k
    cols = ["params", "size_mb", "spearman", "init_spearman", f"top{k}_overlap", "sentences_per_s", "speedup"]
    lines = [f"# {cfg.name}: encoder distillation", "",
             f"Teacher `{cfg.teacher.path}`, student `{cfg.student.kind}` ({cfg.student.num_layers} layers, init "
             f"{cfg.student.init}); {results['data']['train']} train / {results['data']['held_out']} held-out sentences. "
             "Spearman: student vs teacher cosine similarities on held-out pairs; overlap: shared top-k neighbours.", "",
             "| model | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, m in [("teacher", results["teacher"]), *results["students"].items()]:
        cells = [f"{m[c]:,}" if c == "params" else (f"{m[c]:.3f}" if c in m else "-") for c in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
