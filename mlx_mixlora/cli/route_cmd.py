"""`mixlora route eval`: routing accuracy, confusion matrices and per-prompt weight plots."""

from __future__ import annotations

import click

from .route_options import GreedyCommand, inputs, split_list


@click.group()
def route() -> None:
    """Evaluate prompt routing."""


@route.command("eval", cls=GreedyCommand)
@inputs(gate_help="Gate directory (for the gate router).")
@click.option(
    "--routers",
    default=None,
    help="Comma list of router names (an unknown name lists them) "
    "[every router that routes by the prompt alone; the gate only with --gate].",
)
@click.option("--tasks", help="Comma list: the task of each adapter (default: each config's task).")
@click.option(
    "--data", default="synthetic", show_default=True, help="synthetic, hub, or a data path."
)
@click.option(
    "--split", type=click.Choice(["validation", "test"]), default="test", show_default=True
)
@click.option(
    "--n", "n_per_task", type=int, default=100, show_default=True, help="Prompts per task."
)
@click.option(
    "--n-train",
    type=int,
    default=200,
    show_default=True,
    help="Centroid: training prompts per task.",
)
@click.option(
    "--layer", type=int, default=None, help="Centroid embedding layer [the gate's, else default]."
)
@click.option(
    "--score",
    "n_score",
    type=int,
    default=0,
    show_default=True,
    help="Also score N prompts per task on each router's routed adapters (and the oracle's).",
)
@click.option("--plots/--no-plots", default=True, show_default=True)
@click.option("-o", "--out", "out", required=True, type=click.Path(), help="Output directory.")
@click.option("--overwrite", is_flag=True)
def eval_(
    model_dir,
    adapters,
    gate_dir,
    routers,
    tasks,
    data,
    split,
    n_per_task,
    n_train,
    layer,
    n_score,
    plots,
    out,
    overwrite,
) -> None:
    """Route held-out prompts with each router; write routing.json (+ plots) to OUT.

    Accuracy is reported three ways: task prompts in their template, the same
    test rows in held-out phrasings (wordings no training saw), and the
    hand-written natural-request set. Plots show the template prompts.
    """
    import mlx_mixlora  # noqa: F401

    from ..errors import MixloraError
    from ..io import atomic_dir, check_output, write_json
    from ..route.accuracy import accuracy_summary, evaluate_routing, plot_confusion, plot_weights
    from ..route.prompts import STYLE_NAMES, adapter_tasks, routing_prompt_sets
    from ..route.routers import ROUTERS, make_router, router_kind
    from ..route.session import load_setup

    check_output(out, overwrite, model_dir, *adapters, gate_dir)
    kinds = split_list(routers) or [
        k for k, kind in ROUTERS.items() if kind.routes and (gate_dir or k != "gate")
    ]
    for k in kinds:
        router_kind(k)  # an unknown name fails before anything loads
    if n_per_task < 1:
        raise MixloraError("--n must be >= 1")
    s = load_setup(model_dir, adapters)
    task_list = adapter_tasks(s.adapters, split_list(tasks))
    prompt_sets = routing_prompt_sets(task_list, split, n_per_task, data)
    prompts, labels = prompt_sets["template"]
    built = {}
    for k in kinds:  # build every router (and fail) before writing anything
        gate = built.get("gate")
        built[k] = make_router(
            k,
            s,
            gate_dir=gate_dir,
            layer=layer if layer is not None else (gate.layer if gate else None),
            tasks=task_list,
            n_per_task=n_train,
            data=data,
            pool=gate.pool if gate else None,
        )
    by_prompts: dict[str, dict] = {}
    for style, (texts, truth) in prompt_sets.items():
        by_prompts[style] = {
            k: evaluate_routing(r, s.model, s.tokenizer, texts, truth, mode=ROUTERS[k].mode)
            for k, r in built.items()
        }
    results = by_prompts["template"]
    scores = _task_scores(s, built, task_list, split, n_score, data) if n_score > 0 else None
    with atomic_dir(out, overwrite=overwrite) as tmp:
        if plots:
            for k, res in results.items():
                plot_confusion(res, s.names, tmp / f"confusion_{k}.png")
                plot_weights(res, s.names, tmp / f"weights_{k}.png")
        write_json(
            tmp / "routing.json",
            {
                "adapters": [a.identity() for a in s.adapters],
                "tasks": task_list,
                "split": split,
                "data": data,
                "n_per_task": n_per_task,
                "labels": labels,
                "results": results,
                "by_prompts": {
                    style: {k: accuracy_summary(res, task_list) for k, res in per.items()}
                    for style, per in by_prompts.items()
                },
                **({"scores": scores} if scores else {}),
            },
        )
    styles = list(by_prompts)
    click.echo(
        f"{'router':<10} "
        + " ".join(f"{STYLE_NAMES[st]:>18}" for st in styles)
        + f"   (routing accuracy; {split} split, n per task: {n_per_task}; natural set)"
    )
    for k in built:
        line = f"{k:<10} " + " ".join(f"{by_prompts[st][k]['accuracy']:>18.1%}" for st in styles)
        if scores:
            sc = scores[k]
            ret = sc["retention_vs_oracle"]
            line += f"   task score {sc['mean']:.4f}"
            line += f" ({ret:.1%} of oracle)" if ret is not None else " (oracle scores 0)"
        click.echo(line)
    click.echo(f"wrote {out}")


def _task_scores(s, built: dict, task_list: list[str], split: str, n: int, data: str) -> dict:
    """Task metrics with each router's decisions fused in; mean and retention vs the oracle."""
    from ..route.routers import ROUTERS, make_router
    from ..route.score import score_routed
    from ..tasks import get_task, load_examples

    routers = dict(built)
    if "oracle" not in routers:
        routers["oracle"] = make_router("oracle", s)
    out: dict = {}
    for k, r in routers.items():
        per = {}
        for i, t in enumerate(task_list):
            task = get_task(t)
            ex = load_examples(task, data, split, n=n)
            mode = ROUTERS[k].mode
            res = score_routed(s.model, s.tokenizer, task, ex, r, s.adapters, label=i, mode=mode)
            per[t] = {key: round(v, 4) if isinstance(v, float) else v for key, v in res.items()}
        out[k] = {"tasks": per, "mean": sum(v["score"] for v in per.values()) / len(per)}
    for v in out.values():
        v["retention_vs_oracle"] = (
            v["mean"] / out["oracle"]["mean"] if out["oracle"]["mean"] else 0.0
        )
    return out
