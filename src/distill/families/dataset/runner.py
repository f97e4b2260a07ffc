"""The dataset family's run: load and normalise the real data, distil one synthetic set per
(method, set seed), evaluate every set with the fixed protocol, and always beside it the
references: random real images at the same IPC (with and without augmentation), KD from the same
teacher on random real images for soft-label methods, and the full-data accuracy.
Writes synthetic/<label>_set<k>.safetensors, sets/<label>_set<k>.json (a resumed run skips the sets
it finished), metrics.jsonl, summary.json, report.md, plots/.
"""
from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch

from distill.engine import resolve_device
from distill.errors import ConfigError, DistillError
from distill.families.dataset.base import DistillContext, SyntheticSet
from distill.families.dataset.config import DatasetMethodConfig, DatasetRunConfig
from distill.families.dataset.evaluate import evaluate_set, load_synthetic, save_synthetic, train_one
from distill.models.io import build_model
from distill.registry import datasets, methods, register_runner
from distill.utils import atomic_torch_save, atomic_write_text, ProgressBar


def load_real(cfg: DatasetRunConfig) -> dict[str, Any]:
    """Real train/test tensors, normalised per channel with the training mean and std."""
    b = datasets.get(cfg.data.name, "dataset").builder(**cfg.data.params)
    x, y = b.teacher_train.x, b.teacher_train.y
    if x.dim() != 4:
        raise ConfigError(f"data: {cfg.data.name} gives inputs of shape {tuple(x.shape[1:])}; data-set distillation "
                          "needs images (C, H, W) (e.g. data.params.layout=image).")
    if cfg.data.train_per_class:
        g = torch.Generator().manual_seed(cfg.seed + 12345)
        keep = torch.cat([(y == c).nonzero().flatten()[torch.randperm(int((y == c).sum()), generator=g)
                                                        [:cfg.data.train_per_class]] for c in range(b.num_classes)])
        x, y = x[keep.sort().values], y[keep.sort().values]
    tx, ty = b.test.x, b.test.y
    if cfg.data.test_limit:
        tx, ty = tx[:cfg.data.test_limit], ty[:cfg.data.test_limit]
    mean, std = x.mean((0, 2, 3), keepdim=True), x.std((0, 2, 3), keepdim=True).clamp_min(1e-6)
    return {"x": (x - mean) / std, "y": y, "test_x": (tx - mean) / std, "test_y": ty, "num_classes": b.num_classes,
            "mean": mean.flatten().tolist(), "std": std.flatten().tolist(), "name": b.name,
            "class_names": b.class_names}


def net_builder(comp, shape, num_classes: int):
    def make(seed: int) -> torch.nn.Module:
        torch.manual_seed(seed)
        return build_model(comp.name, comp.params, shape, num_classes, family="dataset")
    return make


def _agg(accs: list[float]) -> dict[str, Any]:
    return {"accuracy": statistics.mean(accs), "accuracy_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
            "best_accuracy": statistics.mean(accs), "n_evals": len(accs)}


def distil_one(cfg: DatasetRunConfig, mcfg: DatasetMethodConfig, ctx: DistillContext, evaluate_curve, log_metrics,
               ckpt_path: Path | None = None, log: Callable[[str], None] = print,
               ) -> tuple[Any, SyntheticSet, list[dict], float]:
    """Build the method, run its iterations (the explicit loop), return (method, set, curve, seconds).

    With `ckpt_path`, the method's state (images, labels, learned lr, optimisers), the random
    generators, the curve and the time spent are saved atomically every `engine.checkpoint_every`
    iterations (default 50); a run killed in between starts again from the last checkpoint and
    reaches the set an uninterrupted run gives. The file is removed once the set is finished."""
    method = methods.get(mcfg.name, "dataset").builder(ctx, **mcfg.params)
    t0 = time.perf_counter()
    method.setup()
    iters = mcfg.iterations if method.iterative else 0
    curve, every, start, before = [], cfg.eval.curve_every, 0, 0.0
    if ckpt_path is not None and ckpt_path.is_file() and iters:
        try:
            state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001
            raise DistillError(f"checkpoint {ckpt_path} cannot be read ({e}); delete it to start this set again.") from None
        method.load_state_dict(state["method"])
        ctx.gen.set_state(state["gen"])
        torch.set_rng_state(state["torch_rng"])
        start, curve, before = int(state["iteration"]), list(state["curve"]), float(state["spent"])
        log(f"{mcfg.display} set {ctx.seed}: resuming at iteration {start} of {iters} ({ckpt_path.name})")
        t0 = time.perf_counter()
    save_every = cfg.engine.checkpoint_every or 50
    with ProgressBar(cfg.engine.progress, f"{mcfg.display} set {ctx.seed}", iters) as bar:
        bar.update(start)
        for it in range(start, iters):
            terms = method.step(it, iters)
            bar.update(it + 1, terms)
            if (it + 1) % cfg.engine.log_every == 0 or it == iters - 1:
                log_metrics({"method": mcfg.display, "set_seed": ctx.seed, "iteration": it + 1, **terms})
            if every and (it + 1) % every == 0 and it + 1 < iters:
                spent = time.perf_counter() - t0
                curve.append({"iteration": it + 1, "accuracy": evaluate_curve(method.result().detach()),
                              "distill_s": before + spent})
                t0 += time.perf_counter() - t0 - spent  # curve checks do not count as distillation time
            if ckpt_path is not None and (it + 1) % save_every == 0 and it + 1 < iters:
                atomic_torch_save({"iteration": it + 1, "method": method.state_dict(), "gen": ctx.gen.get_state(),
                                   "torch_rng": torch.get_rng_state(), "curve": curve,
                                   "spent": before + time.perf_counter() - t0}, ckpt_path)
    result = method.result().detach()
    if ckpt_path is not None:
        ckpt_path.unlink(missing_ok=True)
    return method, result, curve, before + time.perf_counter() - t0


@register_runner("dataset")
def run_dataset(cfg: DatasetRunConfig, *, run_dir: Path | None, log: Callable[[str], None] = print) -> dict[str, Any]:
    device = torch.device(resolve_device(cfg.engine.device))
    d = load_real(cfg)
    x, y = d["x"].to(device), d["y"].to(device)
    tx, ty = d["test_x"].to(device), d["test_y"].to(device)
    K, shape, p = d["num_classes"], tuple(x.shape[1:]), cfg.eval
    make_net, make_eval = net_builder(cfg.model, shape, K), net_builder(p.model, shape, K)
    log(f"data: {d['name']}: {len(x)} real training images, {len(tx)} test, {K} classes, IPC {cfg.ipc}")
    card = {**p.card(), "data": d["name"], "train_images": len(x), "test_images": len(tx), "ipc": cfg.ipc,
            "synthetic_sets": cfg.synthetic_sets, "distill_model": {"name": cfg.model.name, **cfg.model.params},
            "device": str(device)}
    results: dict[str, Any] = {"family": "dataset", "primary_metric": "accuracy", "teacher": {}, "students": {},
                               "baselines": {}, "card": card}
    metrics_path = Path(run_dir) / "metrics.jsonl" if run_dir else None

    def log_metrics(rec: dict) -> None:
        if metrics_path is not None:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(rec) + "\n")

    seeds = [cfg.seed + s for s in range(cfg.synthetic_sets)]
    bar_name = lambda name: name if cfg.engine.progress else None  # noqa: E731
    ctx_of = lambda seed: DistillContext(x, y, K, cfg.ipc, make_net, device, seed, cfg.model.name,  # noqa: E731
                                         cfg.model.params)
    if cfg.baselines:
        if p.full_data_epochs:
            t0 = time.perf_counter()
            fe = p.full_data_epochs
            with ProgressBar(cfg.engine.progress, "full data", p.full_data_models * fe) as bar:
                accs = [train_one(make_eval, x, y, tx, ty, p, cfg.seed * 1000 + 999 - k, epochs=fe,
                                  on_epoch=lambda e, k=k: bar.update(k * fe + e)) for k in range(p.full_data_models)]
            results["teacher"] = {**_agg(accs), "model": f"full data ({len(x)} images, {p.full_data_epochs} epochs)",
                                  "wall_s": time.perf_counter() - t0}
            log(f"full data: {results['teacher']['accuracy']:.2f}%")
        for aug, key in ((True, "random_real"), (False, "random_real_noaug")):
            accs = []
            for seed in seeds:
                accs += evaluate_set(make_eval, ctx_of(seed).random_real_set(), tx, ty, p, seed, augment=aug,
                                     device=device, progress=bar_name(f"eval {key} set {seed}"))["accs"]
            results["baselines"][key] = _agg(accs)
            log(f"{key}: {results['baselines'][key]['accuracy']:.2f} +- {results['baselines'][key]['accuracy_std']:.2f}%")

    grids: dict[str, SyntheticSet] = {}
    for mcfg in cfg.methods:
        label, accs, kd_accs, curves, secs = mcfg.display, [], [], [], []
        soft = False
        for seed in seeds:
            done = Path(run_dir) / "sets" / f"{label}_set{seed}.json" if run_dir is not None else None
            if done is not None and done.is_file():  # a resumed run keeps the sets it finished
                rec = json.loads(done.read_text())
                accs += rec["accs"]
                kd_accs += rec["kd_accs"]
                curves.append(rec["curve"])
                secs.append(rec["distill_s"])
                soft = rec["soft"]
                grids.setdefault(label, load_synthetic(Path(run_dir) / "synthetic" / f"{label}_set{seed}.safetensors")[0])
                log(f"{label} set {seed}: already done (resumed run)")
                continue
            ctx = ctx_of(seed)
            curve_fn = lambda s, seed=seed: evaluate_set(make_eval, s, tx, ty, p, seed, n_models=1,  # noqa: E731
                                                         device=device)["mean"]
            ckpt = Path(run_dir) / "sets" / f"{label}_set{seed}.ckpt.pt" if run_dir is not None else None
            if ckpt is not None:
                ckpt.parent.mkdir(parents=True, exist_ok=True)
            method, syn, curve, spent = distil_one(cfg, mcfg, ctx, curve_fn, log_metrics, ckpt, log)
            soft = syn.soft
            secs.append(spent)
            if run_dir is not None:
                save_synthetic(syn, Path(run_dir) / "synthetic" / f"{label}_set{seed}.safetensors",
                               {"method": mcfg.name, "params": mcfg.params, "ipc": cfg.ipc, "data": d["name"],
                                "mean": d["mean"], "std": d["std"], "normalised": True, "seed": seed,
                                "data_config": cfg.data.model_dump(mode="json"),
                                "eval": p.model_dump(mode="json")})
            ev = evaluate_set(make_eval, syn, tx, ty, p, seed, device=device, progress=bar_name(f"eval {label} set {seed}"))
            accs += ev["accs"]
            curves.append(curve + [{"iteration": mcfg.iterations if method.iterative else 0,
                                    "accuracy": ev["accs"][0], "distill_s": spent}])
            if method.soft_labels and method.teacher is not None:  # the same teacher's KD on random real images
                rr = ctx_of(seed + 777).random_real_set()
                with torch.no_grad():
                    method.teacher.eval()
                    rr.labels = method.teacher(rr.images)
                rr.teacher = syn.teacher  # relabelled per batch exactly when the set is
                kd_accs += evaluate_set(make_eval, rr, tx, ty, p, seed, device=device,
                                        progress=bar_name(f"eval KD on random real set {seed}"))["accs"]
            grids.setdefault(label, syn)
            if done is not None:
                n_kd = p.n_models if (method.soft_labels and method.teacher is not None) else 0
                atomic_write_text(done, json.dumps({"accs": ev["accs"], "kd_accs": kd_accs[len(kd_accs) - n_kd:],
                                                    "curve": curves[-1], "distill_s": spent, "soft": soft}))
        m = {**_agg(accs), "method": mcfg.name, "soft_labels": soft, "iterations": mcfg.iterations,
             "distill_s": statistics.mean(secs), "curve": curves[0]}
        if kd_accs:
            m["kd_random_real"] = statistics.mean(kd_accs)
            m["kd_random_real_std"] = statistics.stdev(kd_accs) if len(kd_accs) > 1 else 0.0
        if "random_real" in results["baselines"]:
            m["vs_random_real"] = m["accuracy"] - results["baselines"]["random_real"]["accuracy"]
        results["students"][label] = m
        log(f"{label}: {m['accuracy']:.2f} +- {m['accuracy_std']:.2f}% ({mcfg.iterations} iterations, "
            f"{m['distill_s']:.1f}s to distil)" + (f"; KD on random real {m['kd_random_real']:.2f}%" if kd_accs else ""))
    if run_dir is not None:
        from distill.families.dataset.report import write_report

        atomic_write_text(Path(run_dir) / "summary.json", json.dumps(results, indent=2))
        write_report(Path(run_dir), cfg, results, grids, d)
    return results


def evaluate_file(path: str | Path, *, data: str | None = None, data_params: dict[str, Any] | None = None,
                  n_models: int | None = None, epochs: int | None = None, augment: str | None = None,
                  device: str = "auto", seed: int = 0, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Evaluate a saved synthetic set under the protocol it was written with (overridable):
    {"accs", "mean", "std", "card"}. The data come from the set's header unless `data` is given."""
    s, meta = load_synthetic(path)
    data_cfg = dict(meta.get("data_config") or {})
    if data:
        data_cfg = {"name": data, "params": data_params or {}}
    elif data_params:
        data_cfg["params"] = {**data_cfg.get("params", {}), **data_params}
    if not data_cfg.get("name"):
        raise ConfigError(f"{path}: the set does not name its data set; pass it (`distill eval SET --data digits`).")
    ev = dict(meta.get("eval") or {})
    ev.update({k: v for k, v in (("n_models", n_models), ("epochs", epochs), ("augment", augment)) if v is not None})
    ev["full_data_epochs"], ev["curve_every"] = 0, 0
    cfg = DatasetRunConfig.model_validate({"family": "dataset", "data": data_cfg, "ipc": int(meta.get("ipc", 1)),
                                           "eval": ev, "engine": {"device": device}})
    dev = torch.device(resolve_device(cfg.engine.device))
    d = load_real(cfg)
    tx, ty = d["test_x"], d["test_y"]
    if meta.get("mean") is not None and meta.get("std") is not None:  # the set's own normalisation
        m0, s0 = torch.tensor(d["mean"]).view(1, -1, 1, 1), torch.tensor(d["std"]).view(1, -1, 1, 1)
        m1, s1 = torch.tensor(meta["mean"]).view(1, -1, 1, 1), torch.tensor(meta["std"]).view(1, -1, 1, 1)
        tx = (tx * s0 + m0 - m1) / s1
    if tuple(s.images.shape[1:]) != tuple(tx.shape[1:]):
        raise ConfigError(f"{path}: images of shape {tuple(s.images.shape[1:])} but {data_cfg['name']} test images "
                          f"are {tuple(tx.shape[1:])}; pass the data set (and its params) the set was distilled on.")
    K = d["num_classes"]
    n_cls = int(s.labels.shape[-1]) if s.soft else int(s.labels.max()) + 1
    if n_cls > K:
        raise ConfigError(f"{path}: labels name {n_cls} classes but {data_cfg['name']} has {K}.")
    p = cfg.eval
    log(f"evaluating {path}: {len(s.images)} images ({meta.get('method', '?')}, IPC {meta.get('ipc', '?')}) on "
        f"{d['name']} ({len(tx)} test images), {p.n_models} fresh {p.model.name} networks x {p.epochs} epochs")
    out = evaluate_set(net_builder(p.model, tuple(tx.shape[1:]), K), s, tx.to(dev), ty.to(dev), p, seed,
                       device=dev, progress="eval")
    out["card"] = {**p.card(), "data": d["name"], "set": str(path), "method": meta.get("method"),
                   "ipc": meta.get("ipc"), "soft_labels": s.soft, "relabel_teacher": s.teacher is not None,
                   "device": str(dev)}
    return out
