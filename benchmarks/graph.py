"""Graph family benchmark: GNN teacher, plain MLP, GLNN and FF-G2M on Cora, 10 seeds, mean +- std,
in the transductive and inductive settings of GLNN; per-node CPU inference time of the MLP vs the
GNN with neighbourhood fetching.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/graph.py            # 10 seeds, both settings
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/graph.py --seeds 2 --json runs/bench_graph.json

Recipes: recipes/graph/cora_glnn.yaml (transductive) and cora_glnn_inductive.yaml (inductive).
`--settings inductive --merge old.json` reruns one setting and takes the other from an earlier run.
Each seed draws its own CPF split (20 labelled / 30 validation nodes per class, the rest test)
and trains its own teacher. Published GLNN figures (Zhang et al. 2022, SAGE teacher, Cora) are
printed beside ours. `suite()` returns the same rows for a `distill bench` command.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {"transductive": ROOT / "recipes" / "graph" / "cora_glnn.yaml",
           "inductive": ROOT / "recipes" / "graph" / "cora_glnn_inductive.yaml"}
PUBLISHED = {  # GLNN paper, Cora, SAGE teacher: transductive / production (inductive mix)
    "teacher": (80.52, 79.29), "mlp": (59.22, 58.98), "glnn": (80.54, 78.28), "ffg2m": (None, None),
}


def mean_std(xs: list[float]) -> str:
    if not xs:
        return "-"
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.mean(xs):.2f} +- {sd:.2f}"


def run_setting(setting: str, seeds: int, overrides: list[str], log=print) -> dict:
    from distill.config import load_config
    from distill.families.graph.runner import run_graph

    rows: dict[str, dict[str, list[float]]] = {}
    lat: list[dict] = []
    for seed in range(seeds):
        t0 = time.perf_counter()
        cfg = load_config(RECIPES[setting], [f"seed={seed}", f"split.setting={setting}", "engine.progress=false", *overrides])
        r = run_graph(cfg, run_dir=None, log=lambda m: None)
        for label, m in [("teacher", r["teacher"]), *r["students"].items()]:
            d = rows.setdefault(label, {})
            for k in ("accuracy", "accuracy_tran", "accuracy_ind"):
                if k in m:
                    d.setdefault(k, []).append(m[k])
        if "latency" in r:
            lat.append(r["latency"])
        log(f"[{setting} seed {seed}] " + ", ".join(f"{k} {v['accuracy'][-1]:.1f}" for k, v in rows.items())
            + f" ({time.perf_counter() - t0:.0f}s)")
    return {"rows": rows, "latency": lat}


def suite(seeds: int = 10, overrides: list[str] | None = None, log=print,
          settings: tuple[str, ...] = ("transductive", "inductive")) -> dict:
    return {s: run_setting(s, seeds, overrides or [], log) for s in settings}


def table(res: dict, seeds: int) -> str:
    empty = {"rows": {}, "latency": []}
    tr, ind = res.get("transductive", empty)["rows"], res.get("inductive", empty)["rows"]
    lines = [f"Cora (largest component, CPF splits), {seeds} seeds, test accuracy % mean +- std",
             "",
             "| model | transductive | published | inductive: prod (all test) | tran | ind | published prod |",
             "|---|---|---|---|---|---|---|"]
    for label in dict.fromkeys([*tr, *ind]):
        pub = PUBLISHED.get(label, (None, None))
        fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
        i = ind.get(label, {})
        lines.append(f"| {label} | {mean_std(tr.get(label, {}).get('accuracy', []))} | {fmt(pub[0])} | {mean_std(i.get('accuracy', []))} "
                     f"| {mean_std(i.get('accuracy_tran', []))} | {mean_std(i.get('accuracy_ind', []))} | {fmt(pub[1])} |")
    lat = res.get("transductive", empty)["latency"] + res.get("inductive", empty)["latency"]
    if lat:
        med = lambda k: statistics.median(x[k] for x in lat)  # noqa: E731
        lines += ["", "Inference per node, batch size 1, one CPU thread (median over seeds of the median over 50 test nodes):",
                  "", "| GNN (2-hop neighbourhood fetch + forward) | MLP (own features) | MLP speed-up |", "|---|---|---|",
                  f"| {med('gnn_ms_per_node'):.3f} ms | {med('mlp_ms_per_node'):.4f} ms | {med('speedup'):.1f}x |"]
    return "\n".join(lines)


def latency_scaling(nodes: int = 300, seed: int = 0, graph=None, hidden: int = 128, layers=(1, 2, 3),
                    batch_sizes=(1, 64)) -> str:
    """Per-node time of SAGE with 1-3 layers (the neighbourhood to fetch grows with depth) vs the MLP,
    one node at a time and in batches (a batch fetches the union of its nodes' neighbourhoods once).
    Timing does not depend on the weights, so untrained models are timed."""
    import numpy as np
    import torch

    from distill.data.graphs import cora
    from distill.families.graph.gnn import sage
    from distill.families.graph.latency import gnn_latency_ms, mlp_latency_ms, single_thread
    from distill.families.graph.ops import CSRGraph
    from distill.models.mlp import mlp

    g = graph if graph is not None else cora()
    csr = CSRGraph(g.edge_index, g.num_nodes)
    C = int(g.y.max()) + 1
    perm = torch.randperm(g.num_nodes, generator=torch.Generator().manual_seed(seed))
    student = mlp((g.x.shape[1],), C, hidden=[hidden])
    lines = [f"{g.num_nodes} nodes, {g.num_edges} edges, {g.x.shape[1]} features; SAGE hidden {hidden} vs MLP "
             f"{g.x.shape[1]}-{hidden}-{C}; per-node ms, one CPU thread", "",
             "| SAGE layers | batch | mean neighbourhood fetched (nodes) | GNN ms / node | MLP ms / node | MLP speed-up |",
             "|---|---|---|---|---|---|"]
    for hops in layers:
        gnn = sage((g.x.shape[1],), C, hidden=hidden, num_layers=hops, aggregator="gcn")
        for b in batch_sizes:
            ids = perm[:nodes] if b == 1 else perm[:max(nodes, 6 * b)]
            size = float(np.mean([len(csr.khop(np.sort(ids[i:i + b].numpy()), hops))
                                  for i in range(0, len(ids) - b + 1, b)]))
            ms = single_thread(gnn_latency_ms, gnn, g.x, csr, ids, hops, b, 3 if b == 1 else 1)
            mlp_ms = single_thread(mlp_latency_ms, student, g.x, ids, b, 3 if b == 1 else 1)
            lines.append(f"| {hops} | {b} | {size:.1f} | {ms:.4f} | {mlp_ms:.4f} | {ms / mlp_ms:.1f}x |")
    return "\n".join(lines)


def large_graph(num_nodes: int = 100_000, avg_degree: float = 20.0, num_features: int = 500, seed: int = 0):
    """A synthetic graph of production size (contextual SBM) for timing only."""
    from distill.data.graphs import contextual_sbm

    return contextual_sbm(num_nodes=num_nodes, num_classes=10, num_features=num_features, avg_degree=avg_degree,
                          seed=seed)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    ap.add_argument("overrides", nargs="*", help="recipe overrides, e.g. teacher.model.name=gcn")
    ap.add_argument("--settings", default="transductive,inductive")
    ap.add_argument("--merge", type=Path, default=None, help="a --json file whose other settings fill the table")
    ap.add_argument("--latency-scaling", action="store_true", help="only time SAGE with 1-3 layers vs the MLP on Cora")
    ap.add_argument("--latency-large", action="store_true",
                    help="only time SAGE with 2-3 layers vs the MLP on a synthetic 100k-node graph (average degree 20)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    if args.latency_scaling:
        print(latency_scaling())
        return
    if args.latency_large:
        print(latency_scaling(nodes=100, graph=large_graph(), hidden=256, layers=(2, 3)))
        return
    settings = tuple(args.settings.split(","))
    res = suite(args.seeds, args.overrides, log=lambda m: print(m, file=sys.stderr, flush=True), settings=settings)
    if args.merge and args.merge.is_file():  # keep the other setting's results from an earlier run
        res = {**json.loads(args.merge.read_text()), **res}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=1))
    print(table(res, args.seeds))
    print(f"\n({time.perf_counter() - t0:.0f}s; command: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/graph.py "
          + " ".join(argv if argv is not None else sys.argv[1:]) + ")")


if __name__ == "__main__":
    main()
