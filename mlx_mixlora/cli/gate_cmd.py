"""`mixlora gate train`: fit the learned top-1 gate on the adapters' task prompts."""

from __future__ import annotations

import click

from ..validate import COUNT, FRACTION, NON_NEGATIVE_INT, POSITIVE, SEED


class GreedyCommand(click.Command):
    """Lets `--adapters A B C` take several values (rewritten to repeated options)."""

    greedy = ("--adapters",)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        out: list[str] = []
        current = None
        for a in args:
            if a in self.greedy:
                current = a
            elif current is not None and not a.startswith("-"):
                out += [current, a]
            else:
                current = None
                out.append(a)
        return super().parse_args(ctx, out)


def split_list(value: str | None) -> list[str] | None:
    return [x.strip() for x in value.split(",") if x.strip()] if value else None


@click.group()
def gate() -> None:
    """Train the learned routing gate."""


@gate.command("train", cls=GreedyCommand)
@click.option("--model", "model_dir", required=True, type=click.Path(), help="MLX model directory.")
@click.option(
    "--adapters", multiple=True, required=True, help="Adapter directories (in gate output order)."
)
@click.option(
    "-o", "--out", "out", required=True, type=click.Path(), help="Gate directory to write."
)
@click.option("--tasks", help="Comma list: the task of each adapter (default: each config's task).")
@click.option(
    "--data", default="synthetic", show_default=True, help="synthetic, hub, or a data path."
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
@click.option("--hidden", type=COUNT, default=64, show_default=True, help="Gate MLP width.")
@click.option("--steps", type=COUNT, default=300, show_default=True)
@click.option("--lr", type=POSITIVE, default=3e-3, show_default=True)
@click.option(
    "--mode", type=click.Choice(["top1", "topk", "threshold"]), default="top1", show_default=True
)
@click.option("--top-k", type=COUNT, default=2, show_default=True)
@click.option("--threshold", type=FRACTION, default=0.5, show_default=True)
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
    n_per_task,
    layer,
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
    """Train a gate over ADAPTERS on the base MODEL and save it to OUT."""
    from pathlib import Path

    import mlx_mixlora  # noqa: F401

    from ..errors import MixloraError
    from ..io import check_output
    from ..route import adapter_tasks, build_gate, evaluate_routing, labelled_prompts, save_gate
    from ..route.session import load_setup

    check_output(out, overwrite, model_dir, *adapters)
    if Path(out).exists() and not overwrite:
        raise MixloraError(
            f"output path {out} already exists (choose another path or pass --overwrite)"
        )
    if n_per_task < 1 or steps < 1 or hidden < 1:
        raise MixloraError("--n-per-task, --steps and --hidden must be >= 1")
    s = load_setup(model_dir, adapters)
    task_list = split_list(tasks)
    router = build_gate(
        s.model,
        s.tokenizer,
        s.adapters,
        layer=layer,
        tasks=task_list,
        n_per_task=n_per_task,
        data=data,
        hidden=hidden,
        steps=steps,
        lr=lr,
        mode=mode,
        top_k=top_k,
        threshold=threshold,
        base_model=s.base,
        seed=seed,
    )
    if n_eval > 0:
        prompts, labels = labelled_prompts(
            adapter_tasks(s.adapters, task_list), "validation", n_eval, data, seed
        )
        res = evaluate_routing(router, s.model, s.tokenizer, prompts, labels)
        router.config.train["validation_accuracy"] = res["accuracy"]
        router.config.train["n_validation"] = res["n"]
    save_gate(out, router.gate, router.config, overwrite=overwrite)
    t = router.config.train
    msg = f"gate over {', '.join(s.names)} at layer {router.layer}: train accuracy {t['train_accuracy']:.1%}"
    if "validation_accuracy" in t:
        msg += f", validation accuracy {t['validation_accuracy']:.1%} (n={t['n_validation']})"
    click.echo(msg)
    click.echo(f"wrote {out}")
