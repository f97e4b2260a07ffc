"""The classifier family's run: teacher (given, fine-tuned once and cached, or trained and cached),
then one student per method from the same initialisation, each evaluated; a table, summary.json,
report and plots.

Data is in memory (a tensor loader) or streamed (a torch DataLoader over views drawn per epoch,
`families/classifier/data.py`); the loop in `train_phase` reads top to bottom either way, and the
engine does devices, precision, accumulation, checkpoints and logging.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from distill.config import EngineConfig, TrainConfig
from distill.data.base import ArrayDataset, DataBundle
from distill.data.stream import ViewDataset
from distill.data.streamed import SourceBundle
from distill.dist import barrier, is_main, world_size
from distill.engine import Engine
from distill.errors import CacheMismatchError, ConfigError
from distill.eval.efficiency import cpu_latency_ms, size_on_disk
from distill.eval.metrics import classification_metrics
from distill.methods.base import ClassifierMethod, labels_complete
from distill.families.classifier.config import ClassifierRunConfig, MethodConfig
from distill.families.classifier.data import (OrderedInputs, example_inputs, hold_out_val, is_streamed, make_loader,
                                              predict_split, to_views)
from distill.models.io import build_from_config, copy_model_folder, count_parameters, load_model, read_spec, save_model
from distill.families.classifier.stages import StagePhases, run_stages
from distill.registry import datasets, methods, register_runner
from distill.teacher import CheckedCache, FeatureCache, Teacher, TeacherCache, write_checked
from distill.utils import atomic_write_bytes, atomic_write_text, hash_json, seed_everything


def train_phase(method: ClassifierMethod, train: ArrayDataset | ViewDataset | None, test, train_cfg: TrainConfig,
                engine_cfg: EngineConfig, *, batch_size: int, seed: int, out_dir: Path | None,
                metrics_path: Path | None = None, name: str = "train",
                weights: dict[str, float] | None = None, eval_fn: Callable | None = None,
                drop_last: bool = False, val=None, loader=None, num_workers: int = 0,
                pin_memory: bool | None = None, select: str = "last", num_classes: int | None = None) -> Engine:
    """Optimise `method.parameters()` on `train` (or the given `loader`); evaluate on `test` (and
    `val`); resume if `out_dir` has checkpoints. `select="best"` ends with the student weights of
    the evaluation with the best validation accuracy. The method's hooks are removed at the end."""
    engine = Engine(engine_cfg, out_dir, seed=seed, name=name, metrics_path=metrics_path)
    acc = engine.accelerator
    loader_given = loader
    if loader is None:
        # batch_size is the global batch: each process takes its slice (the uneven last batch is dropped)
        pin = engine.device.type == "cuda" if pin_memory is None else pin_memory
        loader = make_loader(train, batch_size, shuffle=True, seed=seed, drop_last=drop_last, rank=acc.process_index,
                             world=acc.num_processes, num_workers=num_workers, pin_memory=pin, num_classes=num_classes)
    try:
        method.to(engine.device)
        first = engine.to_device(next(iter(loader)))
        method.ensure_taps(first["x"])
        method.setup(first)  # modules whose shapes the data decides

        def default_eval():
            m = classification_metrics(predict_split(method.student, test, device=engine.device,
                                                     num_workers=num_workers), test.y)
            if val is not None:
                m["val_accuracy"] = classification_metrics(predict_split(method.student, val, device=engine.device,
                                                                         num_workers=num_workers), val.y)["accuracy"]
            return m

        best = _BestWeights(method.student, out_dir, engine) if select == "best" else None
        with labels_complete(_all_labelled(train) and loader_given is None):
            engine.fit(method, loader, train_cfg, weights=weights, eval_fn=eval_fn or default_eval,
                       on_eval=best.offer if best is not None else None,
                       after_start=lambda: method.ensure_taps(first["x"]))  # wrapping may replace tapped modules
        if best is not None:
            best.restore()
    finally:
        method.close()
    return engine


def _all_labelled(train) -> bool:
    """Whether every sample of `train` has a class label (none is -1); False when unknown."""
    labels = getattr(train, "y", None)
    if not isinstance(labels, torch.Tensor):
        labels = getattr(train, "labels", None)
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1 or labels.dtype.is_floating_point:
        return False
    return bool((labels >= 0).all())


class _BestWeights:
    """Keeps the student's weights at its best validation accuracy (a file in the phase's folder,
    so a resumed run still knows them); `restore()` loads them back at the end."""

    def __init__(self, student: nn.Module, out_dir: Path | None, engine: Engine):
        self.student, self.path = student, (out_dir / "best.safetensors" if out_dir else None)
        self.state: dict[str, torch.Tensor] | None = None
        self.engine = engine

    @property
    def history(self) -> list[dict]:  # the engine's, as restored by a resume
        return self.engine.history

    def best_so_far(self) -> float:
        scores = [h["val_accuracy"] for h in self.history[:-1] if "val_accuracy" in h]
        return max(scores) if scores else float("-inf")

    def offer(self, rec: dict) -> None:
        if "val_accuracy" not in rec:
            raise ConfigError("eval.select=best needs a validation split: set eval.val_fraction > 0 or give data "
                              "with a val split.")
        if rec["val_accuracy"] > self.best_so_far():
            from safetensors.torch import save

            self.state = {k: v.detach().cpu().clone().contiguous() for k, v in self.student.state_dict().items()}
            if self.path is not None and is_main():
                atomic_write_bytes(self.path, save(self.state))

    def restore(self) -> None:
        if self.state is None and self.path is not None and self.path.is_file():
            from safetensors.torch import load_file

            self.state = load_file(str(self.path))
        if self.state is not None:
            self.student.load_state_dict(self.state)


def evaluate(model: nn.Module, bundle: DataBundle, folder: Path | None, cfg: ClassifierRunConfig,
             device: torch.device | str, val_logits: dict[str, torch.Tensor] | None = None
             ) -> tuple[dict[str, Any], torch.Tensor]:
    """Quality on the test split plus size and CPU latency. Returns (metrics, test logits); the
    validation logits go into `val_logits["val"]` when it is given."""
    logits = predict_split(model, bundle.test, device=device, num_workers=cfg.data.num_workers)
    m = classification_metrics(logits, bundle.test.y, cfg.eval.ece_bins)
    if bundle.val is not None:  # what chooses the best student: never the test set
        vl = predict_split(model, bundle.val, device=device, num_workers=cfg.data.num_workers)
        m["val_accuracy"] = classification_metrics(vl, bundle.val.y)["accuracy"]
        if val_logits is not None:
            val_logits["val"] = vl
    m["params"] = count_parameters(model)
    if folder is not None and (folder / "model.safetensors").is_file():
        m["size_bytes"] = size_on_disk(folder / "model.safetensors")
    if is_main():  # the other processes of a multi-process run skip the timing
        m["latency_ms"] = cpu_latency_ms(model, example_inputs(bundle.test, 1), runs=cfg.eval.latency_runs)
    return m, logits


class TeacherEvalCache(CheckedCache):
    """The teacher's logits on the test (and validation) split, so that a later run with the same
    teacher weights, data and view does not predict them again (benchmark seeds, added methods)."""
    FILE, WHAT = "logits.safetensors", "teacher evaluation cache"

    def __init__(self, folder: Path, meta: dict[str, Any], tensors: dict[str, torch.Tensor]):
        self.folder, self.meta, self.tensors = folder, meta, tensors


def split_key(split) -> str | None:
    """What identifies a split's evaluation inputs: its content fingerprint, and for streamed
    images the eval view (size, resize, normalisation)."""
    if split is None:
        return None
    from distill.families.classifier.view_cache import transform_key

    return split.fingerprint() + (f"-{transform_key(split)}" if isinstance(split, ViewDataset) else "")


def evaluate_teacher(teacher: Teacher, bundle: DataBundle, folder: Path | None, cfg: ClassifierRunConfig,
                     device: torch.device | str, log: Callable[[str], None]) -> tuple[dict[str, Any], torch.Tensor]:
    """`evaluate` for the teacher, its logits read from `cache_dir/teacher_eval/` when an earlier run
    predicted the same splits with the same weights (one process only; the metrics are always
    recomputed from the logits, the latency is always measured)."""
    if world_size() > 1:
        return evaluate(teacher.module, bundle, folder, cfg, device)
    key = {"teacher": teacher.fingerprint(), "test": split_key(bundle.test), "val": split_key(bundle.val),
           "device": torch.device(device).type, "precision": cfg.engine.precision}
    cache = Path(cfg.cache_dir) / "teacher_eval" / hash_json(key)
    try:
        hit = TeacherEvalCache.open_or_build(cache, lambda: key, lambda: None)
    except CacheMismatchError as e:
        log(f"teacher evaluation: {e}; predicting again")
        hit = None
    if hit is None:
        val: dict[str, torch.Tensor] = {}
        m, logits = evaluate(teacher.module, bundle, folder, cfg, device, val)
        tensors = {name: t.float().contiguous() for name, t in (("test", logits), *val.items())}
        write_checked(cache, TeacherEvalCache.FILE, TeacherEvalCache.META, tensors, key)
        return m, logits
    log(f"teacher evaluation: logits read from {cache}")
    logits = hit.tensors["test"]
    m = classification_metrics(logits, bundle.test.y, cfg.eval.ece_bins)
    if bundle.val is not None:
        m["val_accuracy"] = classification_metrics(hit.tensors["val"], bundle.val.y)["accuracy"]
    m["params"] = count_parameters(teacher.module)
    if folder is not None and (folder / "model.safetensors").is_file():
        m["size_bytes"] = size_on_disk(folder / "model.safetensors")
    m["latency_ms"] = cpu_latency_ms(teacher.module, example_inputs(bundle.test, 1), runs=cfg.eval.latency_runs)
    return m, logits


def _weights_id(model_cfg) -> Any:
    """What identifies a local weights file in a cache key: its path, size and modification time."""
    w = getattr(model_cfg, "weights", None)
    if w is None or str(w).startswith("python:"):
        return w
    p = Path(str(w)).expanduser()
    st = p.stat() if p.is_file() else None
    return [str(w), st.st_size if st else None, st.st_mtime_ns if st else None]


def teacher_key(cfg: ClassifierRunConfig) -> str:
    """Identifies a trained teacher: its model, training, data and seed (not the students)."""
    data = {"name": cfg.data.name, "params": cfg.data.params, "batch_size": cfg.data.batch_size}
    if cfg.data.transforms is not None:
        data["transforms"] = cfg.data.transforms.model_dump(mode="json")
    if cfg.eval.val_fraction:
        data["val_fraction"] = cfg.eval.val_fraction
    return hash_json({"model": cfg.teacher.model.model_dump(), "weights": _weights_id(cfg.teacher.model),
                      "train": cfg.teacher.train.model_dump(), "data": data, "seed": cfg.seed,
                      "precision": cfg.engine.precision})


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[-60:]


def get_teacher(cfg: ClassifierRunConfig, bundle: DataBundle, log: Callable[[str], None]) -> tuple[nn.Module, Path | None]:
    """The teacher: loaded from teacher.checkpoint, used as given (its weights cover the whole model),
    or trained / fine-tuned once on the teacher's data and cached."""
    if cfg.teacher.checkpoint is not None:
        log(f"teacher: loading {cfg.teacher.checkpoint}")
        return load_model(cfg.teacher.checkpoint), Path(cfg.teacher.checkpoint)
    mc = cfg.teacher.model
    folder = Path(cfg.cache_dir) / "teachers" / f"{cfg.data.name}-{_slug(mc.name)}-{teacher_key(cfg)}"
    barrier()  # every process decides on the same state of the cache
    if (folder / "model.safetensors").is_file():
        log(f"teacher: reusing the cached teacher in {folder}")
        return load_model(folder), folder
    seed_everything(cfg.seed)
    model = build_from_config(mc, bundle.input_shape, bundle.num_classes, where="teacher.model")
    given = getattr(model, "distill_pretrained", False) and not getattr(model, "distill_head_fresh", False)
    if cfg.teacher.fit == "never" or (cfg.teacher.fit == "auto" and given):
        log(f"teacher: using {mc.name} as given ({'its weights cover the whole model' if given else 'teacher.fit=never'})")
        return model, None
    what = "fine-tuning" if getattr(model, "distill_pretrained", False) else "training"
    log(f"teacher: {what} {mc.name} on {bundle.name} (cached in {folder})")
    scratch = methods.get("scratch", "classifier").builder(model, None)
    train_phase(scratch, bundle.teacher_train, bundle.test, cfg.teacher.train, cfg.engine,
                batch_size=cfg.data.batch_size, seed=cfg.seed, out_dir=folder, name="teacher",
                drop_last=cfg.data.drop_last, num_workers=cfg.data.num_workers, pin_memory=cfg.data.pin_memory,
                num_classes=bundle.num_classes)
    if is_main():
        save_model(model.cpu(), folder)
        shutil.rmtree(folder / "checkpoints", ignore_errors=True)
    barrier()
    return load_model(folder), folder


def build_method(mcfg: MethodConfig, student: nn.Module, teacher: Teacher) -> ClassifierMethod:
    entry = methods.get(mcfg.name, "classifier")
    return entry.builder(student, teacher if entry.builder.needs_teacher else None, **mcfg.params)


def cache_plan(method: ClassifierMethod | type[ClassifierMethod], cfg: ClassifierRunConfig,
               bundle: DataBundle | None = None) -> tuple[str | None, str]:
    """Which teacher cache serves `method` (an instance or its class) under this recipe, and why
    not when none does: "outputs" (top-k logits per sample), "views" (per epoch and augmented view),
    "features" (tapped layers) or None (the live teacher)."""
    random_views = bundle is not None and is_streamed(bundle.train) and bundle.train.transform.cfg.random
    if cfg.teacher.cache_outputs and method.supports_cache:
        if not random_views:
            return "outputs", ""
        if bundle.train.transform.cfg.replayable:
            return "views", ""
        return None, (f"data.transforms.auto_augment={bundle.train.transform.cfg.auto_augment} cannot be replayed "
                      "from a cache (only crops and flips can), so the live teacher runs")
    if cfg.teacher.cache_features and method.supports_feature_cache:
        if random_views:
            return None, "the feature cache holds one view per sample and this data is augmented, so the live teacher runs"
        return "features", ""
    if cfg.teacher.cache_outputs or cfg.teacher.cache_features:
        return None, (f"{getattr(method, '__name__', type(method).__name__)} cannot read its teacher signal from a "
                      "cache, so it runs the live teacher (teacher.cache_outputs serves logit-only methods, "
                      "teacher.cache_features feature methods)")
    return None, ""


def cache_kind(method, cfg: ClassifierRunConfig, bundle: DataBundle | None = None) -> str | None:
    return cache_plan(method, cfg, bundle)[0]


def attach_cache(method: ClassifierMethod, cfg: ClassifierRunConfig, teacher: Teacher, bundle: DataBundle,
                 device, log: Callable[[str], None] = print, epochs: int | None = None) -> None:
    """Give a logit-only method the on-disk teacher outputs (`teacher.cache_outputs`: per sample, or per
    epoch and view under augmentation), and a feature method the teacher's logits and tapped layers
    (`teacher.cache_features`), when the recipe asks."""
    kind = cache_kind(method, cfg, bundle)
    if kind is None:
        return
    data_hash = bundle.train.fingerprint()
    nw = cfg.data.num_workers
    if kind == "views":
        from distill.families.classifier.view_cache import ViewTeacherCache, transform_key

        t = getattr(method, "temperature", 1.0)
        k = cfg.teacher.cache_top_k or bundle.num_classes
        e = epochs if epochs is not None else cfg.train.epochs
        folder = (Path(cfg.cache_dir) / "teacher_views" /
                  f"{teacher.fingerprint()}-{data_hash}-{transform_key(bundle.train)}-s{bundle.train.seed}-e{e}-T{t}-k{k}")
        if not (folder / ViewTeacherCache.META).exists():
            log(f"teacher views: recording {e} epochs x {len(bundle.train)} augmented views and the teacher's top-{k} "
                f"on each in {folder}")

        def build():
            method.cache = ViewTeacherCache.load_or_build(folder, teacher, bundle.train, epochs=e, temperature=t, k=k,
                                                          dtype=cfg.teacher.cache_dtype, device=device,
                                                          num_workers=nw, progress=cfg.engine.progress)
    elif kind == "outputs":
        t = getattr(method, "temperature", 1.0)
        k = cfg.teacher.cache_top_k or bundle.num_classes
        folder = Path(cfg.cache_dir) / "teacher_outputs" / f"{teacher.fingerprint()}-{data_hash}-T{t}-k{k}"

        def build():
            method.cache = TeacherCache.load_or_build(folder, teacher, OrderedInputs(bundle.train, nw).resolve(),
                                                      data_hash=data_hash, temperature=t, k=k, device=device)
    else:
        layers = method.teacher_layers
        folder = Path(cfg.cache_dir) / "teacher_features" / f"{teacher.fingerprint()}-{data_hash}-{hash_json(layers)}"
        if not (folder / FeatureCache.META).exists():
            size = FeatureCache.estimate_bytes(method.teacher_pass, example_inputs(bundle.train, 2).to(device),
                                               len(bundle.train))
            log(f"teacher features: caching {layers} for {len(bundle.train)} samples ({size / 2**20:.0f} MiB) "
                f"in {folder}")

        def build():
            method.feature_cache = FeatureCache.load_or_build(folder, method.teacher_pass,
                                                              OrderedInputs(bundle.train, nw).resolve(),
                                                              teacher=teacher, data_hash=data_hash, layers=layers,
                                                              device=device)
    for turn in ("main", "others"):  # the main process builds, the others then read
        if (turn == "main") == is_main():
            build()
        barrier()


def fit_student(student: nn.Module, mcfg: MethodConfig, teacher: Teacher, bundle: DataBundle,
                cfg: ClassifierRunConfig, out: Path, metrics_path: Path, label: str, device,
                train_cfg: TrainConfig | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Distil `student` with one method; save it to `out` (main process) and return its record."""
    tcfg = train_cfg or mcfg.train or cfg.train
    method = build_method(mcfg, student, teacher)
    if method.hard_labels and is_streamed(bundle.train) and bundle.train.transform.cfg.mixes:
        raise ConfigError(f"methods: {mcfg.name} uses labels as class indices, and data.transforms.mixup/cutmix "
                          "turn them into mixtures; turn mixing off for this recipe or drop the method.")
    attach_cache(method, cfg, teacher, bundle, device, log, epochs=tcfg.epochs)
    replayed = getattr(method.cache, "views", None) if method.cache is not None else None
    if replayed is not None:  # the student sees exactly the recorded views
        bundle.train.replay = replayed
    t0 = time.perf_counter()
    try:
        engine = train_phase(method, bundle.train, bundle.test, tcfg, cfg.engine,
                             batch_size=cfg.data.batch_size, seed=cfg.seed, out_dir=out, metrics_path=metrics_path,
                             name=label, weights=mcfg.weights, drop_last=cfg.data.drop_last, val=bundle.val,
                             num_workers=cfg.data.num_workers, pin_memory=cfg.data.pin_memory, select=cfg.eval.select,
                             num_classes=bundle.num_classes)
    finally:
        if replayed is not None:
            bundle.train.replay = None
    # training time without the evaluations (epochs per hour compare like with like)
    spent = time.perf_counter() - t0 - getattr(engine, "eval_seconds", 0.0)
    res = {"history": engine.history, "method": mcfg.name, "train_seconds": round(spent, 2),
           "epochs": tcfg.epochs, "steps": engine.step_count}
    if is_main():
        save_model(student.cpu(), out, extra={"method": mcfg.name, "method_params": mcfg.params})
        atomic_write_text(out / "result.json", json.dumps(res))
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
        (out / "best.safetensors").unlink(missing_ok=True)
    barrier()
    student.to(device)
    return res


def summarize(student: nn.Module, bundle: DataBundle, out: Path, cfg: ClassifierRunConfig, device,
              res: dict[str, Any]) -> tuple[dict[str, Any], torch.Tensor]:
    """Test metrics of a trained student, with its best epoch (chosen on validation when there is one)."""
    m, lg = evaluate(student, bundle, out, cfg, device)
    m["method"] = res["method"]
    for k in ("train_seconds", "epochs", "steps"):
        if k in res:
            m[k] = res[k]
    hist = [h for h in res.get("history", []) if "accuracy" in h]
    if hist and all("val_accuracy" in h for h in hist):
        pick = max(hist, key=lambda h: h["val_accuracy"])
        m["best_accuracy"], m["best_val_accuracy"] = pick["accuracy"], pick["val_accuracy"]
        m["best_selected_on"] = "val"
    elif "val_accuracy" in m:  # no evaluation during training (max_steps within the first epoch)
        m["best_accuracy"], m["best_selected_on"] = m["accuracy"], "val"
    else:  # no validation split: the best test accuracy seen (optimistic)
        m["best_accuracy"] = max(h["accuracy"] for h in hist) if hist else m["accuracy"]
        m["best_selected_on"] = "test"
    return m, lg


def load_data(cfg: ClassifierRunConfig, log: Callable[[str], None]) -> DataBundle:
    """The recipe's data as a DataBundle: in memory, or streamed views (sources, or `data.transforms`),
    with a validation split held out of train when the data has none (`eval.val_fraction`)."""
    entry = datasets.get(cfg.data.name, "classifier")
    raw = entry.builder(**cfg.data.params)
    if isinstance(raw, SourceBundle) or cfg.data.transforms is not None:
        from distill.models.sources import peek_data_config

        if cfg.teacher.checkpoint is not None:
            spec = read_spec(Path(cfg.teacher.checkpoint)) or {}
            dc = spec.get("data_config")
        else:
            mc = cfg.teacher.model
            dc = peek_data_config(mc.name, mc.params, mc.pretrained)
        bundle = to_views(raw, cfg.data.transforms, seed=cfg.seed, model_data_config=dc)
        t = bundle.train.transform
        log(f"data: streamed views {bundle.input_shape} (train: crop {t.cfg.crop}, flip {t.cfg.hflip}, "
            f"{t.cfg.auto_augment}; normalise {'mean ' + str([round(v, 3) for v in t.mean]) if t.mean else 'none'}), "
            f"{cfg.data.num_workers} loader workers")
    else:
        bundle = raw
    if bundle.val is None and cfg.eval.val_fraction > 0:
        bundle = hold_out_val(bundle, cfg.eval.val_fraction, cfg.seed)
    return bundle


@register_runner("classifier")
def run_classifier(cfg: ClassifierRunConfig, *, run_dir: Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    bundle = load_data(cfg, log)
    log(f"data: {bundle.name}: {len(bundle.train)} train ({100 * bundle.labeled_fraction:.0f}% labeled for the "
        f"student), {len(bundle.val) if bundle.val is not None else 0} validation, {len(bundle.test)} test, "
        f"{bundle.num_classes} classes, input {bundle.input_shape}")
    metrics_path = run_dir / "metrics.jsonl"
    # fail fast on a student that cannot take this data, before any teacher training
    build_from_config(cfg.student.model, bundle.input_shape, bundle.num_classes, where="student.model")

    teacher_model, teacher_dir = get_teacher(cfg, bundle, log)
    device = Engine(cfg.engine, None, seed=cfg.seed).device
    teacher = Teacher(teacher_model.to(device))
    results: dict[str, Any] = {"family": "classifier", "primary_metric": "accuracy", "teacher": None, "students": {}}
    t_metrics, t_logits = evaluate_teacher(teacher, bundle, teacher_dir, cfg, device, log)
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
            kind, why = cache_plan(entry.builder, cfg, bundle)
            if why and entry.builder.needs_teacher:
                log(f"student [{label}]: {why}")
            seed_everything(cfg.seed)  # every method starts from the same student initialisation
            student = build_from_config(cfg.student.model, bundle.input_shape, bundle.num_classes, where="student.model")
            res = fit_student(student, mcfg, teacher, bundle, cfg, out, metrics_path, label, device, log=log)
        m, lg = summarize(student, bundle, out, cfg, device, res)
        results["students"][label] = m
        histories[label] = res.get("history", [])
        logits[label] = lg

    if cfg.stages:
        label, m, lg, hist = run_stages(cfg, bundle, run_dir, metrics_path, device, log,
                                        StagePhases(fit_student, get_teacher, load_data, summarize))
        results["students"][label] = m
        histories[label], logits[label] = hist, lg

    # the student/ folder holds the best distilled student (baselines excluded), chosen on the
    # validation split when there is one (never on test unless the data has no validation split)
    distilled = [k for k, v in results["students"].items()
                 if v["method"] == "staged" or methods.get(v["method"], "classifier").builder.needs_teacher]
    pool = distilled or list(results["students"])
    on_val = all("val_accuracy" in results["students"][k] for k in pool)
    best = max(pool, key=lambda k: results["students"][k]["val_accuracy" if on_val else "accuracy"])
    results["best"] = best
    results["best_selected_on"] = "val" if on_val else "test"
    results["data"] = {"name": bundle.name, "train": len(bundle.train), "test": len(bundle.test),
                       "val": len(bundle.val) if bundle.val is not None else 0,
                       "labeled_fraction": bundle.labeled_fraction, "classes": bundle.num_classes}
    if not is_main():
        barrier()
        return results
    copy_model_folder(Path(results["students"][best].get("folder") or run_dir / "students" / best), run_dir / "student")
    atomic_write_text(run_dir / "summary.json", json.dumps(results, indent=2))

    from distill.report.classifier import write_report

    write_report(run_dir, cfg, results, histories, logits, bundle.test.y)
    barrier()
    return results
