"""`mixlora demo`: the whole pipeline, offline by default, with a report."""

from __future__ import annotations

from pathlib import Path

import click

from ..tasks.phrasing import TRAIN_STYLES


@click.command()
@click.option(
    "--model",
    default=None,
    help="MLX model dir or hub id (default: the nano base, built once and cached).",
)
@click.option(
    "--data",
    default="synthetic",
    show_default=True,
    help="synthetic | hub | a directory of jsonl/parquet/csv files.",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(),
    default="runs/demo",
    show_default=True,
    help="Output directory.",
)
@click.option(
    "--tasks",
    default=None,
    help="Comma-separated task names or task yaml files (default: the four built-in tasks).",
)
@click.option(
    "--eval-examples", type=int, default=100, show_default=True, help="Test examples per task."
)
@click.option(
    "--train-examples",
    type=int,
    default=None,
    help="Training examples per adapter (default: recipe).",
)
@click.option(
    "--iters", type=int, default=None, help="Training steps per adapter (default: recipe)."
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--prompts",
    type=click.Choice(TRAIN_STYLES),
    default=None,
    help="Training prompts of adapters and gate: template plus train phrasings (varied), or "
    "template only [default: the recipe's, varied].",
)
@click.option("--no-merge", is_flag=True, help="Skip the merge methods.")
@click.option("--no-learned", is_flag=True, help="Skip the learned merges and the --search rows.")
@click.option("--no-route", is_flag=True, help="Skip routing.")
@click.option("--no-plots", is_flag=True, help="Skip the PNG plots.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output dir.")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
def demo(
    model,
    data,
    out_dir,
    tasks,
    eval_examples,
    train_examples,
    iters,
    seed,
    prompts,
    no_merge,
    no_learned,
    no_route,
    no_plots,
    overwrite,
    quiet,
) -> None:
    """Build/load the base, train four adapters, merge, route, evaluate, write report.md."""
    from ..demo import DemoConfig, run_demo
    from ..demo.report import score_table
    from ..errors import MixloraError
    from ..tasks import list_tasks

    if eval_examples < 1:
        raise MixloraError(f"--eval-examples must be >= 1, got {eval_examples}")
    names = [t.strip() for t in tasks.split(",") if t.strip()] if tasks else list_tasks()[:4]
    cfg = DemoConfig(
        out=Path(out_dir),
        model=model,
        data=data,
        tasks=names,
        eval_examples=eval_examples,
        train_examples=train_examples,
        iters=iters,
        seed=seed,
        prompts=prompts,
        merges=not no_merge,
        learned=not no_learned,
        routing=not no_route,
        plots=not no_plots,
        overwrite=overwrite,
        progress=not quiet,
    )
    results = run_demo(cfg)
    click.echo(score_table(results))
    click.echo(f"\nwrote {out_dir}/report.md, results.json ({results['timings_s']['total']} s)")
