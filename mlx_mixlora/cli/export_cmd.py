"""`mixlora export peft|mlx-lm|hf`: hand adapters to PEFT / mlx-lm / Transformers users."""

from __future__ import annotations

import click


@click.group()
def export() -> None:
    """Export adapters for PEFT or mlx-lm, or a fused full checkpoint for Transformers."""


@export.command("peft")
@click.argument("adapter_dir", type=click.Path())
@click.option(
    "-o", "--out", required=True, type=click.Path(), help="Output PEFT adapter directory."
)
@click.option(
    "--base-model-id", default=None, help="base_model_name_or_path to record (e.g. a hub id)."
)
@click.option("--overwrite", is_flag=True)
def export_peft_cmd(adapter_dir, out, base_model_id, overwrite) -> None:
    """Write ADAPTER_DIR as adapter_model.safetensors + adapter_config.json for PeftModel.from_pretrained."""
    from ..convert.peft import export_peft
    from ..io import check_output

    check_output(out, overwrite, adapter_dir)
    click.echo(
        f"wrote {export_peft(adapter_dir, out, base_model_id=base_model_id, overwrite=overwrite)}"
    )


@export.command("mlx-lm")
@click.argument("adapter_dir", type=click.Path())
@click.option(
    "-o", "--out", required=True, type=click.Path(), help="Output mlx-lm adapter directory."
)
@click.option("--overwrite", is_flag=True)
def export_mlx_lm_cmd(adapter_dir, out, overwrite) -> None:
    """Write ADAPTER_DIR as adapters.safetensors + adapter_config.json for mlx-lm's --adapter-path."""
    from ..convert.mlx_lm_export import export_mlx_lm
    from ..io import check_output

    check_output(out, overwrite, adapter_dir)
    click.echo(f"wrote {export_mlx_lm(adapter_dir, out, overwrite=overwrite)}")


@export.command("hf")
@click.argument("model_dir", type=click.Path())
@click.option(
    "--adapter",
    "adapter_dir",
    default=None,
    type=click.Path(),
    help="Adapter to fuse into the base.",
)
@click.option(
    "--merged",
    default=None,
    type=click.Path(),
    help="A merged model dir (`mixlora merge --into-base`).",
)
@click.option("-o", "--out", required=True, type=click.Path())
@click.option("--overwrite", is_flag=True)
def export_hf_cmd(model_dir, adapter_dir, merged, out, overwrite) -> None:
    """Write a full Transformers checkpoint of MODEL_DIR with an adapter fused in."""
    from ..convert.to_hf import export_hf
    from ..errors import MixloraError
    from ..io import check_output

    check_output(out, overwrite, model_dir, adapter_dir, merged)
    if adapter_dir and merged:
        raise MixloraError("give either --adapter or --merged, not both")
    src = merged or model_dir
    click.echo(f"wrote {export_hf(src, out, adapter_dir=adapter_dir, overwrite=overwrite)}")
