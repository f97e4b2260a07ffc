"""`distill run | eval | list` (more subcommands register here as families land)."""
from __future__ import annotations

import os
import sys
from typing import List, Optional

import typer

from distill.cli.common import fail

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Knowledge distillation: classifiers, language models, diffusion, data sets, graphs.")


@app.command()
def run(
    recipe: str = typer.Argument(..., help="recipe YAML, e.g. recipes/quickstart.yaml"),
    overrides: Optional[List[str]] = typer.Argument(None, help="key.sub=value overrides, e.g. train.epochs=5"),
    resume: bool = typer.Option(False, "--resume", help="continue runs/NAME from its last checkpoint"),
    overwrite: bool = typer.Option(False, "--overwrite", help="delete runs/NAME first (default: a new NAME-N folder)"),
    name: Optional[str] = typer.Option(None, "--name", help="run name (same as name=...)"),
    nproc: int = typer.Option(1, "--nproc", min=1, help="processes on this machine (DDP; data.batch_size is the global batch)"),
) -> None:
    """Run a recipe: train/load the teacher, distil each method, evaluate, write the run folder."""
    from distill.api import run as run_recipe
    from distill.errors import DistillError

    ov = list(overrides or [])
    if name:
        ov.append(f"name={name}")
    try:
        if nproc > 1 and "LOCAL_RANK" not in os.environ:
            from distill.api import launch

            raise typer.Exit(launch(recipe, ov, nproc, resume=resume, overwrite=overwrite))
        run_recipe(recipe, ov, resume=resume, overwrite=overwrite)
    except DistillError as e:
        fail(str(e))


@app.command("eval")
def eval_(
    synthetic_set: str = typer.Argument(..., help="a synthetic set, e.g. runs/NAME/synthetic/dm_set0.safetensors, "
                                        "or an encoder model folder (sentence-transformers, model2vec, runs/NAME)"),
    data: Optional[str] = typer.Option(None, "--data", help="data set to test on (default: the one in the set's header)"),
    data_param: Optional[List[str]] = typer.Option(None, "--data-param",
                                                   help="KEY=VALUE for the data set's params, e.g. size=16 (repeatable)"),
    models: Optional[int] = typer.Option(None, "--models", min=1, help="fresh evaluation networks (default: the run's)"),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1, help="training epochs per network (default: the run's)"),
    augment: Optional[str] = typer.Option(None, "--augment", help="dsa | none (default: the run's)"),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | mps"),
    seed: int = typer.Option(0, "--seed"),
    json_out: Optional[str] = typer.Option(None, "--json", help="also write the result and its card to this file"),
    sts: Optional[List[str]] = typer.Option(None, "--sts", help="encoder: sentence pairs with human scores "
                                            "(.tsv/.csv/.jsonl; repeatable)"),
    retrieval: Optional[List[str]] = typer.Option(None, "--retrieval", help="encoder: a BEIR folder (corpus.jsonl, "
                                                  "queries.jsonl, qrels/SPLIT.tsv; repeatable)"),
    mteb_task: Optional[List[str]] = typer.Option(None, "--mteb", help="encoder: an MTEB task run by mteb, e.g. "
                                                  "STSBenchmark (needs mteb and its data cached; repeatable)"),
    split: str = typer.Option("test", "--split", help="encoder: the qrels split / the rows of an STS file's "
                              "split column"),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="encoder: texts per encode call"),
) -> None:
    """Evaluate a synthetic set (data-set distillation) under the fixed protocol: train fresh
    networks on it alone and report test accuracy, mean +- std, with the protocol card.
    Given an encoder model folder, score it against human judgements instead: --sts (Spearman of
    cosine vs human score), --retrieval (nDCG@10, MRR@10, Recall@100), --mteb (mteb's runner); x100."""
    import json

    from distill.errors import DistillError

    if os.path.isdir(synthetic_set):  # an encoder model: human judgements
        if not (sts or retrieval or mteb_task):
            fail(f"{synthetic_set} is a folder: to evaluate an encoder, name what to evaluate it on: --sts FILE (pairs "
                 "with human scores), --retrieval DIR (a BEIR folder), --mteb TASK (needs mteb); each is repeatable.")
        from rich.console import Console

        from distill.families.encoder.judgements import evaluate_folder, results_table
        from distill.utils import atomic_write_text

        try:
            res = evaluate_folder(synthetic_set, sts or [], retrieval or [], mteb_task or [], batch_size=batch_size,
                                  split=split, log=lambda m: typer.echo(m, err=True))
        except DistillError as e:
            fail(str(e))
        Console().print(results_table(res))
        if json_out:
            atomic_write_text(json_out, json.dumps(res, indent=2))
        return
    if sts or retrieval or mteb_task:
        fail(f"{synthetic_set!r} is not a folder: --sts, --retrieval and --mteb evaluate an encoder model folder "
             "(sentence-transformers, model2vec, or a `distill run` folder).")
    from distill.families.dataset.runner import evaluate_file
    from distill.utils import atomic_write_text

    if augment is not None and augment not in ("dsa", "none"):
        fail(f"--augment must be dsa or none, not {augment!r}.")
    from distill.config import parse_override

    params = {}
    for item in data_param or []:
        try:
            keys, value = parse_override(item)
        except DistillError:
            keys, value = [], None
        if len(keys) != 1:
            fail(f"--data-param {item!r}: write KEY=VALUE, e.g. --data-param size=16.")
        params[keys[0]] = value
    try:
        out = evaluate_file(synthetic_set, data=data, data_params=params or None, n_models=models, epochs=epochs,
                            augment=augment, device=device, seed=seed, log=lambda m: typer.echo(m, err=True))
    except DistillError as e:
        fail(str(e))
    accs = ", ".join(f"{a:.2f}" for a in out["accs"])
    typer.echo(f"accuracy: {out['mean']:.2f} +- {out['std']:.2f}% over {len(out['accs'])} networks ({accs})")
    for k, v in out["card"].items():
        typer.echo(f"  {k}: {v}")
    if json_out:
        atomic_write_text(json_out, json.dumps(out, indent=2))


@app.command("list")
def list_(what: str = typer.Argument("methods", help="methods | models | datasets"),
          family: Optional[str] = typer.Option(None, "--family", help="only this family")) -> None:
    """List registered methods, models or data sets with their family and a one-line description."""
    from rich.console import Console
    from rich.table import Table

    from distill import registry

    tables = {"methods": registry.methods, "models": registry.models, "datasets": registry.datasets}
    if what not in tables:
        from distill.errors import did_you_mean

        fail(f"list: unknown kind {what!r}.{did_you_mean(what, tables)} Allowed: methods, models, datasets.")
    table = Table(title=f"registered {what}")
    for col in ("name", "family", "description"):
        table.add_column(col)
    for e in tables[what].entries(family):
        table.add_row(e.name, e.family, e.description.splitlines()[0])
    Console().print(table)
    if what == "models":
        Console().print("Any model from its ecosystem, by name: torchvision:<arch>, timm:<arch>, hf:<folder or hub id>, "
                        "python:<module>:<callable> (with pretrained: true or weights: PATH; docs/classifier.md).",
                        markup=False, highlight=False)


from distill.cli.convert import app as _convert_app  # noqa: E402

app.add_typer(_convert_app, name="convert")


# `distill bench` lives in cli/bench.py (it imports only typer at module level)
from distill.cli.bench import bench as _bench  # noqa: E402

app.command("bench")(_bench)

from distill.cli.serve import serve_teacher as _serve_teacher  # noqa: E402

app.command("serve-teacher")(_serve_teacher)

from distill.cli.plan import plan as _plan  # noqa: E402

app.command("plan")(_plan)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.stderr.write("interrupted; resume with `distill run RECIPE --resume`\n")
        sys.exit(130)


if __name__ == "__main__":
    main()
