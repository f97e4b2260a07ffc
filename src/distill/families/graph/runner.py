"""The graph family's run: a GNN teacher trained on the labelled nodes (model selection on the
validation nodes), then one MLP student per method from the same initialisation, each evaluated
on the test nodes (and, in the inductive setting, on the nodes held out of the graph); per-node
inference time of the MLP vs the GNN with neighbourhood fetching; summary.json, report.md, plots.
"""
from __future__ import annotations

import copy
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from distill.config import EngineConfig, TrainConfig
from distill.data.base import BatchSampler
from distill.data.graphs import Graph, GraphSplit, cpf_split
from distill.engine import Engine
from distill.families.graph.base import GraphMethod, NodeContext, masked_cross_entropy
from distill.families.graph.config import GraphMethodConfig, GraphRunConfig
from distill.families.graph.latency import gnn_latency_ms, mlp_latency_ms, single_thread
from distill.families.graph.ops import CSRGraph, GraphOps
from distill.models.io import build_model, count_parameters, load_model, save_model
from distill.registry import datasets, methods, register_runner
from distill.teacher import Teacher
from distill.utils import atomic_torch_save, atomic_write_text, seed_everything


class NodeLoader:
    """Batches {"idx": (B,) node ids} in an order fixed by (seed, epoch)."""

    def __init__(self, nodes: Tensor, batch_size: int, seed: int = 0):
        self.nodes = nodes
        self.sampler = BatchSampler(len(nodes), batch_size, shuffle=True, seed=seed)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        for chunk in self.sampler:
            yield {"idx": self.nodes[chunk]}


class SupervisedGNN(GraphMethod):
    """The teacher's own objective: CE on the labelled nodes, the GNN run over the observed graph."""

    needs_teacher = False

    def __init__(self, gnn: nn.Module):
        super().__init__(gnn, None)
        self.weights = {"ce": 1.0}

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        assert self.ctx is not None
        idx = batch["idx"]
        return {"ce": masked_cross_entropy(self.student(self.ctx.x, self.ctx.ops)[idx], self.ctx.y[idx])}


@dataclass
class Problem:
    """A graph, its split, and the observed graph the learners see (ids are the graph's own)."""

    graph: Graph
    split: GraphSplit
    ctx: NodeContext          # observed graph; labels only on the training nodes
    full_ops: GraphOps        # the whole graph (inductive test time)


def make_problem(graph: Graph, split: GraphSplit) -> Problem:
    """The observed graph drops the edges of the inductive test nodes (they stay as isolated rows,
    so node ids never change; no learner reads them during training)."""
    y = torch.full_like(graph.y, -1)
    y[split.train] = graph.y[split.train]
    ei = graph.edge_index
    if len(split.test_ind):
        held = torch.zeros(graph.num_nodes, dtype=torch.bool)
        held[split.test_ind] = True
        ei = ei[:, ~(held[ei[0]] | held[ei[1]])]
    # bag-of-words features are ~1% non-zero: a sparse copy makes every x @ W 2-3x cheaper
    x = graph.x.to_sparse() if float((graph.x != 0).float().mean()) < 0.1 else graph.x
    ctx = NodeContext(x, y, GraphOps(ei, graph.num_nodes), split.observed)
    return Problem(graph, split, ctx, GraphOps(graph.edge_index, graph.num_nodes))


@torch.no_grad()
def node_logits(model: nn.Module, prob: Problem, device) -> Tensor:
    """Logits (N, C) on CPU: an MLP reads features; a GNN runs on the observed graph, and on the
    whole graph for the inductive test nodes (which it may only see at test time)."""
    was = model.training
    model.eval()
    x = prob.ctx.x.to(device)
    if getattr(model, "hops", None) is None:
        out = model(x).float().cpu()
    else:
        out = model(x, prob.ctx.ops.to(device)).float().cpu()
        if len(prob.split.test_ind):
            full = model(x, prob.full_ops.to(device)).float().cpu()
            out[prob.split.test_ind] = full[prob.split.test_ind]
    model.train(was)
    return out


def node_metrics(logits: Tensor, prob: Problem) -> dict[str, float]:
    """Accuracy (%) on validation and test nodes; inductive runs add the observed-test ("tran") and
    held-out ("ind") parts; `accuracy` is over all test nodes (GLNN's production mix)."""
    s, y = prob.split, prob.graph.y
    acc = lambda ids: 100.0 * float((logits[ids].argmax(-1) == y[ids]).float().mean()) if len(ids) else float("nan")  # noqa: E731
    test_all = torch.cat([s.test, s.test_ind])
    m = {"accuracy": acc(test_all), "val_accuracy": acc(s.val)}
    if len(s.test_ind):
        m["accuracy_tran"], m["accuracy_ind"] = acc(s.test), acc(s.test_ind)
    return m


def fit(method: GraphMethod, prob: Problem, nodes: Tensor, train_cfg: TrainConfig, engine_cfg: EngineConfig, *,
        batch_size: int, seed: int, patience: int, out_dir: Path | None, metrics_path: Path | None = None,
        name: str = "train", weights: dict[str, float] | None = None) -> Engine:
    """Optimise `method` over batches of `nodes`; evaluate each epoch; keep the weights of the best
    validation accuracy and stop after `patience` epochs without improvement."""
    loader = NodeLoader(nodes, batch_size, seed)
    engine = Engine(engine_cfg, out_dir, seed=seed, name=name, metrics_path=metrics_path)
    method.to(engine.device)
    method.attach(prob.ctx.to(engine.device))
    best_file = out_dir / "best_student.pt" if out_dir is not None else None
    best: dict = {"val": -1.0, "epoch": 0, "state": None}

    def resumed() -> None:  # the best so far is in the restored history and on disk
        for h in engine.history:
            if h["val_accuracy"] >= best["val"]:
                best.update(val=h["val_accuracy"], epoch=h["epoch"])
        if best_file is not None and best_file.is_file() and engine.history:
            best["state"] = torch.load(best_file, weights_only=True)

    def on_eval(rec: dict) -> None:
        if rec["val_accuracy"] >= best["val"]:  # ties: the later (more trained) weights
            best.update(val=rec["val_accuracy"], epoch=rec["epoch"], state=copy.deepcopy(method.student.state_dict()))
            if best_file is not None:
                atomic_torch_save(best["state"], best_file)

    engine.fit(method, loader, train_cfg, weights=weights, after_start=resumed, on_eval=on_eval,
               eval_fn=lambda: node_metrics(node_logits(method.student, prob, engine.device), prob),
               stop=lambda: bool(engine.history) and engine.history[-1]["epoch"] - best["epoch"] >= patience)
    if best["state"] is not None:
        method.student.load_state_dict(best["state"])
    method.eval()
    engine.best_epoch = best["epoch"]  # type: ignore[attr-defined]
    return engine


def build_method(mcfg: GraphMethodConfig, student: nn.Module, teacher: Teacher) -> GraphMethod:
    entry = methods.get(mcfg.name, "graph")
    return entry.builder(student, teacher if entry.builder.needs_teacher else None, **mcfg.params)


def load_problem(cfg: GraphRunConfig) -> Problem:
    graph: Graph = datasets.get(cfg.data.name, "graph").builder(**cfg.data.params)
    sc = cfg.split
    split = cpf_split(graph.y, sc.train_per_class, sc.val_per_class, cfg.seed if sc.seed is None else sc.seed,
                      setting=sc.setting, inductive_fraction=sc.inductive_fraction)
    return make_problem(graph, split)


def _phase(prob: Problem, folder: Path, cfg: GraphRunConfig, train_cfg: TrainConfig, make: Callable[[], tuple],
           log, name: str, metrics_path: Path | None, weights=None, device=None) -> tuple[nn.Module, dict]:
    """Train (or reuse, on a resumed run) one model in `folder`; return it and its result record."""
    done = folder / "result.json"
    if done.is_file() and (folder / "model.safetensors").is_file():
        log(f"{name}: already trained (resumed run), reusing {folder}")
        return load_model(folder, device=device or "cpu"), json.loads(done.read_text())
    seed_everything(cfg.seed)  # every student starts from the same initialisation
    model, method, nodes, extra = make()
    engine = fit(method, prob, nodes, train_cfg, cfg.engine, batch_size=cfg.data.batch_size, seed=cfg.seed,
                 patience=cfg.eval.patience, out_dir=folder, metrics_path=metrics_path, name=name, weights=weights)
    save_model(model.cpu(), folder, extra=extra)
    res = {"history": engine.history, "best_epoch": engine.best_epoch, "epochs_run": engine.epoch + 1}
    atomic_write_text(done, json.dumps(res))
    shutil.rmtree(folder / "checkpoints", ignore_errors=True)
    (folder / "best_student.pt").unlink(missing_ok=True)
    return model.to(device or "cpu"), res


def evaluate(model: nn.Module, prob: Problem, res: dict, device) -> tuple[dict[str, Any], Tensor]:
    logits = node_logits(model, prob, device)
    m = node_metrics(logits, prob)
    accs = [h["accuracy"] for h in res.get("history", [])]
    m["best_accuracy"] = max(accs) if accs else m["accuracy"]
    m["best_epoch"] = res.get("best_epoch", 0)
    m["params"] = count_parameters(model)
    return m, logits


def measure_latency(teacher: nn.Module, student: nn.Module, prob: Problem, n: int, seed: int) -> dict[str, float]:
    """Per-node CPU inference time of the GNN (neighbourhood fetching included) and the MLP."""
    g = torch.Generator().manual_seed(seed)
    test = torch.cat([prob.split.test, prob.split.test_ind])
    nodes = test[torch.randperm(len(test), generator=g)[:n]]
    csr = CSRGraph(prob.graph.edge_index, prob.graph.num_nodes)
    t_ms = single_thread(gnn_latency_ms, copy.deepcopy(teacher), prob.graph.x, csr, nodes, teacher.hops)
    s_ms = single_thread(mlp_latency_ms, copy.deepcopy(student), prob.graph.x, nodes)
    return {"gnn_ms_per_node": t_ms, "mlp_ms_per_node": s_ms, "speedup": t_ms / s_ms}


@register_runner("graph")
def run_graph(cfg: GraphRunConfig, *, run_dir: Path | None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train the teacher and every student; write summary.json and report.md when `run_dir` is set."""
    prob = load_problem(cfg)
    g, s = prob.graph, prob.split
    log(f"data: {g.name}: {g.num_nodes} nodes, {g.num_edges // 2} edges, {g.x.shape[1]} features, {g.num_classes} "
        f"classes; {s.setting}: {len(s.train)} train / {len(s.val)} val / {len(s.test)} test"
        + (f" + {len(s.test_ind)} held out of the graph" if len(s.test_ind) else ""))
    tmp = None
    if run_dir is None:  # benchmarks: no folder wanted; phases still need a scratch place
        import tempfile

        tmp = tempfile.TemporaryDirectory()
        base = Path(tmp.name)
    else:
        base = Path(run_dir)
    metrics_path = base / "metrics.jsonl"
    device = Engine(cfg.engine, None, seed=cfg.seed).device
    shape, C = (g.x.shape[1],), g.num_classes

    def make_teacher():
        model = build_model(cfg.teacher.model.name, cfg.teacher.model.params, shape, C, family="graph")
        return model, SupervisedGNN(model), s.train, {"role": "teacher"}

    log(f"teacher: training {cfg.teacher.model.name}")
    t_model, t_res = _phase(prob, base / "teacher", cfg, cfg.teacher.train, make_teacher, log, "teacher",
                            metrics_path, device=device)
    teacher = Teacher(t_model.to(device))
    t_metrics, t_logits = evaluate(teacher.module, prob, t_res, device)
    t_metrics["model"] = cfg.teacher.model.name
    results: dict[str, Any] = {"family": "graph", "primary_metric": "accuracy", "teacher": t_metrics, "students": {}}
    histories, logits = {"teacher": t_res["history"]}, {"teacher": t_logits}

    for mcfg in cfg.methods:
        label = mcfg.display

        def make_student(mcfg=mcfg):
            student = build_model(cfg.student.model.name, cfg.student.model.params, shape, C, family="graph")
            method = build_method(mcfg, student, teacher)
            nodes = prob.ctx.nodes if method.needs_teacher else s.train
            return student, method, nodes, {"method": mcfg.name, "method_params": mcfg.params}

        log(f"student [{label}]: training {cfg.student.model.name} with {mcfg.name}")
        student, res = _phase(prob, base / "students" / label, cfg, mcfg.train or cfg.train, make_student, log,
                              label, metrics_path, weights=mcfg.weights, device=device)
        m, lg = evaluate(student, prob, res, device)
        m["method"] = mcfg.name
        results["students"][label] = m
        histories[label], logits[label] = res["history"], lg

    if cfg.eval.latency_nodes:
        first = next(iter(results["students"]))
        student = load_model(base / "students" / first)
        results["latency"] = measure_latency(teacher.module, student, prob, cfg.eval.latency_nodes, cfg.seed)
        log(f"latency per node (1 CPU thread): GNN {results['latency']['gnn_ms_per_node']:.3f} ms with neighbourhood "
            f"fetching, MLP {results['latency']['mlp_ms_per_node']:.4f} ms ({results['latency']['speedup']:.0f}x)")
    results["data"] = {"name": g.name, "nodes": g.num_nodes, "edges": g.num_edges // 2, "classes": C,
                       "setting": s.setting, "train": len(s.train), "val": len(s.val), "test": len(s.test),
                       "test_ind": len(s.test_ind)}
    for name, m in [(f"teacher ({cfg.teacher.model.name})", t_metrics), *results["students"].items()]:
        extra = f" (tran {m['accuracy_tran']:.2f}, ind {m['accuracy_ind']:.2f})" if "accuracy_ind" in m else ""
        log(f"{name}: test accuracy {m['accuracy']:.2f}%{extra}, validation {m['val_accuracy']:.2f}%")
    if run_dir is not None:
        distilled = [k for k, v in results["students"].items() if methods.get(v["method"], "graph").builder.needs_teacher]
        best = max(distilled or list(results["students"]), key=lambda k: results["students"][k]["val_accuracy"])
        results["best"] = best
        shutil.copytree(base / "students" / best, base / "student", dirs_exist_ok=True)
        atomic_write_text(base / "summary.json", json.dumps(results, indent=2))
        from distill.families.graph.report import write_report

        write_report(base, cfg, results, histories)
    if tmp is not None:
        tmp.cleanup()
    return results
