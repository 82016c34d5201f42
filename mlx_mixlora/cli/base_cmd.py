"""`mixlora base`: build (or locate) the offline nano base model."""

from __future__ import annotations

import click


@click.group()
def base() -> None:
    """The nano base: a small Llama pretrained here on synthetic text (no downloads)."""


@base.command()
@click.option(
    "-o",
    "--out",
    "out_dir",
    type=click.Path(),
    default=None,
    help="Write the model dir here (default: the user cache, reused when present).",
)
@click.option(
    "--steps", type=int, default=None, help="Pretraining steps (default from the recipe)."
)
@click.option("--seed", type=int, default=None, help="Seed for corpus, init and batches.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output dir.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def build(out_dir, steps, seed, overwrite, quiet) -> None:
    """Train the BPE tokenizer, pretrain the nano base and save it like a converted model."""
    import dataclasses

    from ..errors import MixloraError
    from ..nano import NanoRecipe, build_nano_base, ensure_nano_base

    recipe = NanoRecipe()
    changes = {k: v for k, v in {"steps": steps, "seed": seed}.items() if v is not None}
    if changes.get("steps", 1) < 1:
        raise MixloraError(f"--steps must be >= 1, got {steps}")
    recipe = dataclasses.replace(recipe, **changes)
    if out_dir is None:
        path = ensure_nano_base(recipe, progress=not quiet, log=lambda m: click.echo(m, err=True))
    else:
        path = build_nano_base(out_dir, recipe, progress=not quiet, overwrite=overwrite)
    click.echo(str(path))


@base.command()
def path() -> None:
    """Print where the default nano base is (or will be) cached."""
    from ..nano import NanoRecipe, cached_path, is_complete

    p = cached_path(NanoRecipe())
    click.echo(f"{p}{'' if is_complete(p) else '  (not built yet)'}")
