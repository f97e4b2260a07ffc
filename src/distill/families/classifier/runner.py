"""The classifier family's run: teacher (trained once and cached, or loaded), then one student per
method from the same initialisation, each evaluated; a table, summary.json, report and plots.

The loop in `train_phase` reads top to bottom; the engine does devices, precision, accumulation,
checkpoints and logging.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from distill.config import EngineConfig, TrainConfig
from distill.data.base import ArrayDataset, DataBundle, TensorLoader
from distill.engine import Engine
from distill.errors import ConfigError
from distill.eval.efficiency import cpu_latency_ms, size_on_disk
from distill.eval.metrics import classification_metrics, predict
from distill.families.classifier.base import ClassifierMethod
from distill.families.classifier.config import ClassifierRunConfig, MethodConfig
from distill.models.io import build_model, count_parameters, load_model, save_model
from distill.registry import datasets, methods, register_runner
from distill.teacher import FeatureCache, Teacher, TeacherCache
from distill.dist import barrier, is_main
from distill.utils import atomic_write_text, hash_json, seed_everything


def train_phase(method: ClassifierMethod, train: ArrayDataset, test: ArrayDataset, train_cfg: TrainConfig,
                engine_cfg: EngineConfig, *, batch_size: int, seed: int, out_dir: Path | None,
                metrics_path: Path | None = None, name: str = "train",
                weights: dict[str, float] | None = None, eval_fn: Callable | None = None,
                drop_last: bool = False, val: ArrayDataset | None = None) -> Engine:
    """Optimise `method.parameters()` on `train`; evaluate on `test` (and `val`); resume if `out_dir` has checkpoints."""
    engine = Engine(engine_cfg, out_dir, seed=seed, name=name, metrics_path=metrics_path)
    acc = engine.accelerator
    # batch_size is the global batch: each process takes its slice (the uneven last batch is dropped)
    loader = TensorLoader(train, batch_size, shuffle=True, seed=seed, drop_last=drop_last,
                          rank=acc.process_index, world=acc.num_processes)
    method.to(engine.device)
    method.setup(engine.to_device(next(iter(loader))))  # modules whose shapes the data decides
    model, optimizer, scheduler = engine.start(method, train_cfg, batches_per_epoch=len(loader))
    weights = {**method.weights, **(weights or {})}
    def default_eval():
        m = classification_metrics(predict(method.student, test.x, device=engine.device), test.y)
        if val is not None:
            m["val_accuracy"] = classification_metrics(predict(method.student, val.x, device=engine.device),
                                                       val.y)["accuracy"]
        return m

    eval_fn = eval_fn or default_eval

    model.train()
    for batch in engine.batches(loader, train_cfg.epochs, train_cfg.max_steps):
        method.on_step(engine.step_count, engine.epoch)
        with engine.autocast():
            terms = model(batch)
        engine.step(terms, weights)
        if engine.eval_due():
            engine.record_eval(eval_fn())
        engine.checkpoint_if_due(model, optimizer, scheduler)
    engine.finish()
    model.eval()
    return engine


def evaluate(model: nn.Module, bundle: DataBundle, folder: Path | None, cfg: ClassifierRunConfig,
             device: torch.device | str) -> tuple[dict[str, Any], torch.Tensor]:
    """Quality on the test split plus size and CPU latency. Returns (metrics, test logits)."""
    logits = predict(model, bundle.test.x, device=device)
    m = classification_metrics(logits, bundle.test.y, cfg.eval.ece_bins)
    m["params"] = count_parameters(model)
    if folder is not None and (folder / "model.safetensors").is_file():
        m["size_bytes"] = size_on_disk(folder / "model.safetensors")
    if is_main():  # the other processes of a multi-process run skip the timing
        m["latency_ms"] = cpu_latency_ms(model, bundle.test.x[:1], runs=cfg.eval.latency_runs)
    return m, logits


def teacher_key(cfg: ClassifierRunConfig) -> str:
    """Identifies a trained teacher: its model, training, data and seed (not the students)."""
    return hash_json({"model": cfg.teacher.model.model_dump(), "train": cfg.teacher.train.model_dump(),
                      "data": {"name": cfg.data.name, "params": cfg.data.params, "batch_size": cfg.data.batch_size},
                      "seed": cfg.seed, "precision": cfg.engine.precision})


def get_teacher(cfg: ClassifierRunConfig, bundle: DataBundle, log: Callable[[str], None]) -> tuple[nn.Module, Path]:
    """Load the teacher from teacher.checkpoint or the cache; train and cache it if absent."""
    if cfg.teacher.checkpoint is not None:
        log(f"teacher: loading {cfg.teacher.checkpoint}")
        return load_model(cfg.teacher.checkpoint), Path(cfg.teacher.checkpoint)
    folder = Path(cfg.cache_dir) / "teachers" / f"{cfg.data.name}-{cfg.teacher.model.name}-{teacher_key(cfg)}"
    barrier()  # every process decides on the same state of the cache
    if (folder / "model.safetensors").is_file():
        log(f"teacher: reusing the cached teacher in {folder}")
        return load_model(folder), folder
    log(f"teacher: training {cfg.teacher.model.name} on {cfg.data.name} (cached in {folder})")
    seed_everything(cfg.seed)
    model = build_model(cfg.teacher.model.name, cfg.teacher.model.params, bundle.input_shape, bundle.num_classes)
    scratch = methods.get("scratch", "classifier").builder(model, None)
    train_phase(scratch, bundle.teacher_train, bundle.test, cfg.teacher.train, cfg.engine,
                batch_size=cfg.data.batch_size, seed=cfg.seed, out_dir=folder, name="teacher",
                drop_last=cfg.data.drop_last)
    if is_main():
        save_model(model.cpu(), folder)
        shutil.rmtree(folder / "checkpoints", ignore_errors=True)
    barrier()
    return load_model(folder), folder


def build_method(mcfg: MethodConfig, student: nn.Module, teacher: Teacher) -> ClassifierMethod:
    entry = methods.get(mcfg.name, "classifier")
    return entry.builder(student, teacher if entry.builder.needs_teacher else None, **mcfg.params)


def cache_kind(method: ClassifierMethod | type[ClassifierMethod], cfg: ClassifierRunConfig) -> str | None:
    """Which teacher cache serves `method` (an instance or its class) under this recipe: "outputs",
    "features" or None (the live teacher)."""
    if cfg.teacher.cache_outputs and method.supports_cache:
        return "outputs"
    if cfg.teacher.cache_features and method.supports_feature_cache:
        return "features"
    return None


def attach_cache(method: ClassifierMethod, cfg: ClassifierRunConfig, teacher: Teacher, bundle: DataBundle,
                device, log: Callable[[str], None] = print) -> None:
    """Give a logit-only method the on-disk teacher outputs (`teacher.cache_outputs`), and a feature
    method the teacher's logits and tapped layers (`teacher.cache_features`), when the recipe asks."""
    data_hash = bundle.train.fingerprint()
    kind = cache_kind(method, cfg)
    if kind is None:
        return
    if kind == "outputs":
        t = getattr(method, "temperature", 1.0)
        k = cfg.teacher.cache_top_k or bundle.num_classes
        folder = Path(cfg.cache_dir) / "teacher_outputs" / f"{teacher.fingerprint()}-{data_hash}-T{t}-k{k}"

        def build_outputs():
            method.cache = TeacherCache.load_or_build(folder, teacher, bundle.train.x, data_hash=data_hash,
                                                      temperature=t, k=k, device=device)
        build = build_outputs
    else:
        layers = method.teacher_layers
        folder = Path(cfg.cache_dir) / "teacher_features" / f"{teacher.fingerprint()}-{data_hash}-{hash_json(layers)}"
        if not (folder / FeatureCache.META).exists():
            size = FeatureCache.estimate_bytes(method.teacher_pass, bundle.train.x[:2].to(device), len(bundle.train))
            log(f"teacher features: caching {layers} for {len(bundle.train)} samples ({size / 2**20:.0f} MiB) "
                f"in {folder}")

        def build_features():
            method.feature_cache = FeatureCache.load_or_build(folder, method.teacher_pass, bundle.train.x,
                                                              teacher=teacher, data_hash=data_hash, layers=layers,
                                                              device=device)
        build = build_features
    for turn in ("main", "others"):  # the main process builds, the others then read
        if (turn == "main") == is_main():
            build()
        barrier()


def fit_student(student: nn.Module, mcfg: MethodConfig, teacher: Teacher, bundle: DataBundle,
                cfg: ClassifierRunConfig, out: Path, metrics_path: Path, label: str, device,
                train_cfg: TrainConfig | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Distil `student` with one method; save it to `out` (main process) and return its record."""
    method = build_method(mcfg, student, teacher)
    attach_cache(method, cfg, teacher, bundle, device, log)
    engine = train_phase(method, bundle.train, bundle.test, train_cfg or mcfg.train or cfg.train, cfg.engine,
                         batch_size=cfg.data.batch_size, seed=cfg.seed, out_dir=out, metrics_path=metrics_path,
                         name=label, weights=mcfg.weights, drop_last=cfg.data.drop_last, val=bundle.val)
    res = {"history": engine.history, "method": mcfg.name}
    if is_main():
        save_model(student.cpu(), out, extra={"method": mcfg.name, "method_params": mcfg.params})
        atomic_write_text(out / "result.json", json.dumps(res))
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
    barrier()
    student.to(device)
    return res


def summarize(student: nn.Module, bundle: DataBundle, out: Path, cfg: ClassifierRunConfig, device,
              res: dict[str, Any]) -> tuple[dict[str, Any], torch.Tensor]:
    """Test metrics of a trained student, with its best epoch (chosen on validation when there is one)."""
    m, lg = evaluate(student, bundle, out, cfg, device)
    m["method"] = res["method"]
    hist = [h for h in res.get("history", []) if "accuracy" in h]
    if hist and all("val_accuracy" in h for h in hist):
        m["best_accuracy"] = max(hist, key=lambda h: h["val_accuracy"])["accuracy"]
        m["best_selected_on"] = "val"
    else:  # no validation split: the best test accuracy seen (optimistic)
        m["best_accuracy"] = max(h["accuracy"] for h in hist) if hist else m["accuracy"]
        m["best_selected_on"] = "test"
    return m, lg


@register_runner("classifier")
def run_classifier(cfg: ClassifierRunConfig, *, run_dir: Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    entry = datasets.get(cfg.data.name, "classifier")
    bundle: DataBundle = entry.builder(**cfg.data.params)
    log(f"data: {bundle.name}: {len(bundle.train)} train ({100 * bundle.labeled_fraction:.0f}% labeled for the "
        f"student), {len(bundle.test)} test, {bundle.num_classes} classes, input {bundle.input_shape}")
    metrics_path = run_dir / "metrics.jsonl"
    # fail fast on models that cannot take this data, before any training
    for where, comp in (("teacher.model", cfg.teacher.model), ("student.model", cfg.student.model)):
        try:
            build_model(comp.name, comp.params, bundle.input_shape, bundle.num_classes)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None

    teacher_model, teacher_dir = get_teacher(cfg, bundle, log)
    device = Engine(cfg.engine, None, seed=cfg.seed).device
    teacher = Teacher(teacher_model.to(device))
    results: dict[str, Any] = {"family": "classifier", "primary_metric": "accuracy", "teacher": None, "students": {}}
    t_metrics, t_logits = evaluate(teacher.module, bundle, teacher_dir, cfg, device)
    t_metrics["model"] = cfg.teacher.model.name
    results["teacher"] = t_metrics
    logits = {"teacher": t_logits}
    histories: dict[str, list] = {}

    for mcfg in cfg.methods:
        label = mcfg.display
        out = run_dir / "students" / label
        barrier()
        if (out / "result.json").is_file() and (out / "model.safetensors").is_file():
            log(f"student [{label}]: already trained (resumed run), reusing {out}")
            res = json.loads((out / "result.json").read_text())
            student = load_model(out, device=device)
        else:
            log(f"student [{label}]: training {cfg.student.model.name} with {mcfg.name}")
            entry = methods.get(mcfg.name, "classifier")
            live = entry.builder.needs_teacher and cache_kind(entry.builder, cfg) is None
            if live and (cfg.teacher.cache_outputs or cfg.teacher.cache_features):
                log(f"student [{label}]: {mcfg.name} cannot read its teacher signal from a cache, so it runs the "
                    "live teacher (teacher.cache_outputs serves logit-only methods, teacher.cache_features "
                    "feature methods)")
            seed_everything(cfg.seed)  # every method starts from the same student initialisation
            student = build_model(cfg.student.model.name, cfg.student.model.params, bundle.input_shape,
                                  bundle.num_classes)
            res = fit_student(student, mcfg, teacher, bundle, cfg, out, metrics_path, label, device, log=log)
        m, lg = summarize(student, bundle, out, cfg, device, res)
        results["students"][label] = m
        histories[label] = res.get("history", [])
        logits[label] = lg

    if cfg.stages:
        from distill.families.classifier.stages import run_stages

        label, m, lg, hist = run_stages(cfg, bundle, run_dir, metrics_path, device, log)
        results["students"][label] = m
        histories[label], logits[label] = hist, lg

    # the student/ folder holds the best distilled student (highest test accuracy; baselines excluded)
    distilled = [k for k, v in results["students"].items()
                 if v["method"] == "staged" or methods.get(v["method"], "classifier").builder.needs_teacher]
    pool = distilled or list(results["students"])
    best = max(pool, key=lambda k: results["students"][k]["accuracy"])
    results["best"] = best
    results["data"] = {"name": bundle.name, "train": len(bundle.train), "test": len(bundle.test),
                       "labeled_fraction": bundle.labeled_fraction, "classes": bundle.num_classes}
    if not is_main():
        barrier()
        return results
    shutil.copytree(results["students"][best].get("folder") or run_dir / "students" / best, run_dir / "student", dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("checkpoints"))
    atomic_write_text(run_dir / "summary.json", json.dumps(results, indent=2))

    from distill.report.classifier import write_report

    write_report(run_dir, cfg, results, histories, logits, bundle.test.y)
    barrier()
    return results
