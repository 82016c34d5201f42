"""`mixlora train`: one LoRA adapter from a jsonl file (options: defaults < recipe < flags)."""

from __future__ import annotations

import click

from ..validate import COUNT, FRACTION, NON_NEGATIVE, NON_NEGATIVE_INT, POSITIVE, SEED


@click.command()
@click.option("--model", "model_dir", required=True, type=click.Path(), help="MLX model directory.")
@click.option(
    "--data",
    required=True,
    type=click.Path(),
    help="Training jsonl: text, prompt/completion or messages.",
)
@click.option(
    "--out", "out_dir", required=True, type=click.Path(), help="Adapter directory to write."
)
@click.option("--val-data", type=click.Path(), default=None, help="Validation jsonl (same shapes).")
@click.option(
    "--config", "recipe", type=click.Path(), default=None, help="YAML recipe of training options."
)
@click.option("--rank", type=COUNT, default=None, help="LoRA rank r [8].")
@click.option("--alpha", type=POSITIVE, default=None, help="LoRA alpha; scale alpha/r [16].")
@click.option("--rslora/--no-rslora", "use_rslora", default=None, help="Scale alpha/sqrt(r).")
@click.option("--dropout", type=FRACTION, default=None, help="LoRA dropout [0].")
@click.option(
    "--targets", default=None, help="Comma list of modules [q_proj,k_proj,v_proj,o_proj]."
)
@click.option("--layers", default=None, help="all, 0-7, 0,3,5 or last:4 [all].")
@click.option("--iters", type=COUNT, default=None, help="Optimizer steps (overrides --epochs).")
@click.option(
    "--epochs", type=POSITIVE, default=None, help="Passes over the data, instead of --iters [1]."
)
@click.option(
    "--batch-size",
    type=COUNT,
    default=None,
    help="Examples per batch, packed or not [4].",
)
@click.option("--grad-accum", type=COUNT, default=None, help="Batches per optimizer step [1].")
@click.option("--max-seq-len", type=int, default=None, help="Max tokens per example / row [512].")
@click.option("--lr", type=POSITIVE, default=None, help="Peak learning rate [2e-4].")
@click.option(
    "--warmup",
    type=NON_NEGATIVE_INT,
    default=None,
    help="Linear warmup steps before cosine decay [0].",
)
@click.option("--weight-decay", type=NON_NEGATIVE, default=None, help="AdamW weight decay [0].")
@click.option("--clip-grad", type=POSITIVE, default=None, help="Max gradient norm [1.0].")
@click.option("--seed", type=SEED, default=None, help="Seed for init, data order and dropout [0].")
@click.option("--mask-prompt/--no-mask-prompt", default=None, help="Loss on completions only [on].")
@click.option(
    "--pack/--no-pack",
    default=None,
    help="Lay a batch's examples into as few rows as fit (removes padding only) [auto: short examples].",
)
@click.option(
    "--long",
    "long_policy",
    type=click.Choice(["truncate", "skip"]),
    default=None,
    help="Over-long examples [truncate].",
)
@click.option(
    "--grad-checkpoint/--no-grad-checkpoint",
    default=None,
    help="Recompute activations in backward: less memory, slower (README: measured trade).",
)
@click.option(
    "--val-every", type=NON_NEGATIVE_INT, default=None, help="Validate every N steps [end only]."
)
@click.option(
    "--steps-per-report",
    type=COUNT,
    default=None,
    help="An `Iter N: Train loss ...` line and a metrics.jsonl record every N steps [10].",
)
@click.option(
    "--save-every", type=NON_NEGATIVE_INT, default=None, help="Checkpoint every N steps [never]."
)
@click.option("--name", default=None, help="Adapter name recorded in its config.")
@click.option("--task", default=None, help="Task name recorded in its config.")
@click.option(
    "--resume", is_flag=True, help="Continue from the newest checkpoint in OUT.checkpoints."
)
@click.option("--overwrite", is_flag=True, help="Replace an existing adapter directory.")
@click.option("--quiet", is_flag=True, help="No progress bar or log lines.")
def train(model_dir, data, out_dir, val_data, recipe, resume, overwrite, quiet, **flags) -> None:
    """Train a LoRA adapter on MODEL with DATA and write it to OUT."""
    from ..io import check_output
    from ..train import TrainConfig, load_recipe, train_adapter

    check_output(out_dir, overwrite, model_dir, data, val_data, recipe)
    options = load_recipe(recipe) if recipe else {}
    options.update({k: v for k, v in flags.items() if v is not None})
    cfg = TrainConfig.from_dict(options, source="options")
    res = train_adapter(
        model_dir,
        data,
        out_dir,
        cfg,
        progress=not quiet,
        val_data=val_data,
        resume=resume,
        overwrite=overwrite,
    )
    val = f", val loss {res.val_loss:.4f}" if res.val_loss is not None else ""
    click.echo(
        f"{res.adapter_dir}: {res.steps} steps, train loss {res.train_loss:.4f}{val}, "
        f"{res.tokens_per_second:.0f} tok/s, peak {res.peak_memory_gb:.2f} GiB"
    )
