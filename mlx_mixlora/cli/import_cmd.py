"""`mixlora import peft|mlx-lm`: bring adapters made elsewhere into our format."""

from __future__ import annotations

import click

from ..io import check_output


@click.group("import")
def import_() -> None:
    """Import PEFT or mlx-lm LoRA adapters."""


def _common(f):
    f = click.option("--overwrite", is_flag=True)(f)
    f = click.option("--name", default=None, help="Adapter name to record.")(f)
    f = click.option(
        "--model",
        "model_dir",
        default=None,
        type=click.Path(),
        help="Base MLX model dir to check shapes against.",
    )(f)
    f = click.option(
        "-o", "--out", required=True, type=click.Path(), help="Output adapter directory."
    )(f)
    return f


@import_.command("peft")
@click.argument("peft_dir", type=click.Path())
@_common
def import_peft_cmd(peft_dir, out, model_dir, name, overwrite) -> None:
    """Import a PEFT LoRA directory (adapter_model.safetensors + adapter_config.json)."""
    from ..convert.peft import import_peft

    _run(import_peft, peft_dir, out, model_dir, name, overwrite)


@import_.command("mlx-lm")
@click.argument("adapter_dir", type=click.Path())
@_common
def import_mlx_lm_cmd(adapter_dir, out, model_dir, name, overwrite) -> None:
    """Import an mlx-lm LoRA adapter directory."""
    from ..convert.mlx_lm_adapters import import_mlx_lm

    _run(import_mlx_lm, adapter_dir, out, model_dir, name, overwrite)


def _run(import_fn, src, out, model_dir, name, overwrite) -> None:
    check_output(out, overwrite, src, model_dir)
    written = import_fn(src, out, model_dir=model_dir, name=name, overwrite=overwrite)
    click.echo(f"wrote {written}")
