"""`mixlora gate train`: fit the learned top-1 gate on the adapters' task prompts."""

from __future__ import annotations

from pathlib import Path

import click

from ..validate import COUNT, NON_NEGATIVE_INT, POSITIVE, SEED
from .route_options import GreedyCommand, decision_options, inputs, prompts_option, split_list


@click.group()
def gate() -> None:
    """Train the learned routing gate."""


@gate.command("train", cls=GreedyCommand)
@inputs(adapters_help="Adapter directories (in gate output order).")
@click.option(
    "-o", "--out", "out", required=True, type=click.Path(), help="Gate directory to write."
)
@click.option("--tasks", help="Comma list: the task of each adapter (default: each config's task).")
@click.option(
    "--data",
    default="synthetic",
    show_default=True,
    help="Task data (synthetic, hub, a task data path), or your own routing data: a jsonl of "
    '{"prompt", "adapter"} rows, or a directory with one NAME.jsonl of prompts per adapter.',
)
@prompts_option(
    "Task prompts: the template plus each task's train phrasings, or the template only."
)
@click.option(
    "--n-per-task", type=COUNT, default=200, show_default=True, help="Training prompts per task."
)
@click.option(
    "--layer",
    type=NON_NEGATIVE_INT,
    default=None,
    help="Embedding layer L [lowest adapted layer, at most n/2].",
)
@click.option(
    "--pool",
    type=click.Choice(["mean", "last"]),
    default=None,
    help="Pool layer-L states over the prompt by their mean or take the last token's [mean].",
)
@click.option("--hidden", type=COUNT, default=64, show_default=True, help="Gate MLP width.")
@click.option("--steps", type=COUNT, default=300, show_default=True)
@click.option("--lr", type=POSITIVE, default=3e-3, show_default=True)
@decision_options(["top1", "topk", "threshold"], mode="top1", top_k=2, threshold=0.5)
@click.option(
    "--n-eval",
    type=NON_NEGATIVE_INT,
    default=100,
    show_default=True,
    help="Held-out prompts per task (0: skip).",
)
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
def train(
    model_dir,
    adapters,
    out,
    tasks,
    data,
    prompts,
    n_per_task,
    layer,
    pool,
    hidden,
    steps,
    lr,
    mode,
    top_k,
    threshold,
    n_eval,
    seed,
    overwrite,
) -> None:
    """Train a gate over ADAPTERS on the base MODEL and save it to OUT.

    With registry tasks (each adapter's config names its task) the gate trains on
    their train split and reports validation accuracy on the template and on
    held-out phrasings. With your own data (--data FILE.jsonl or DIR) it trains on
    90% of the prompts and reports accuracy on the other 10%.
    """
    import mlx_mixlora  # noqa: F401

    from ..errors import MixloraError
    from ..io import check_output
    from ..route.accuracy import evaluate_routing
    from ..route.embed import encode_prompts, feature_layer, feature_pool, prompt_features
    from ..route.gate import build_gate, save_gate
    from ..route.prompts import adapter_tasks, labelled_prompts
    from ..route.session import load_setup
    from ..route.user_data import is_routing_data, read_routing_rows, split_rows

    check_output(out, overwrite, model_dir, *adapters, *([data] if Path(data).exists() else []))
    if n_per_task < 1 or steps < 1 or hidden < 1:
        raise MixloraError("--n-per-task, --steps and --hidden must be >= 1")
    s = load_setup(model_dir, adapters)
    task_list = split_list(tasks)
    layer, pool = feature_layer(s.model, s.adapters, layer), feature_pool(pool)
    checks: dict[str, tuple[list[str], list[int]]] = {}
    features = None
    if is_routing_data(data, s.names):
        train_rows, val_rows = split_rows(*read_routing_rows(data, s.names))
        feats = prompt_features(
            s.model, encode_prompts(s.tokenizer, train_rows[0]), layer, pool=pool
        )
        features = (feats, train_rows[1])
        prompts = "user"
        if n_eval > 0 and val_rows[0]:
            checks["validation"] = val_rows
    elif n_eval > 0:
        names = adapter_tasks(s.adapters, task_list)
        for style in ("template", "heldout"):
            checks[f"validation_{style}"] = labelled_prompts(
                names, "validation", n_eval, data, seed, prompts=style
            )
    router = build_gate(
        s.model,
        s.tokenizer,
        s.adapters,
        layer=layer,
        tasks=task_list,
        n_per_task=n_per_task,
        data=str(data),
        hidden=hidden,
        steps=steps,
        lr=lr,
        mode=mode,
        top_k=top_k,
        threshold=threshold,
        base_model=s.base,
        seed=seed,
        features=features,
        pool=pool,
        prompts=prompts,
    )
    for name, (texts, labels) in checks.items():
        res = evaluate_routing(router, s.model, s.tokenizer, texts, labels)
        router.config.train[f"{name}_accuracy"] = res["accuracy"]
        router.config.train[f"n_{name}"] = res["n"]
    save_gate(out, router.gate, router.config, overwrite=overwrite)
    t = router.config.train
    msg = (
        f"gate over {', '.join(s.names)} at layer {router.layer} ({pool} pooled): "
        f"train accuracy {t['train_accuracy']:.1%}"
    )
    for name in checks:
        label = name.replace("_", " ").replace("heldout", "held-out phrasings")
        msg += f", {label} accuracy {t[f'{name}_accuracy']:.1%} (n={t[f'n_{name}']})"
    click.echo(msg)
    click.echo(f"wrote {out}")
