"""`mixlora convert`: Hugging Face Llama → MLX model directory."""

from __future__ import annotations

import click

from ..convert.hf_to_mlx import DTYPES
from ..validate import COUNT


@click.command()
@click.argument("src")
@click.option(
    "-o", "--out", "dst", required=True, type=click.Path(), help="Output MLX model directory."
)
@click.option(
    "--dtype",
    type=click.Choice(("auto",) + DTYPES),
    default="auto",
    show_default=True,
    help="auto = float16 on Metal, float32 on CPU (half-precision matmul is slow on CPU).",
)
@click.option("--quantize", is_flag=True, help="Quantize linear layers (QLoRA base).")
@click.option("--q-bits", default=4, show_default=True, type=int)
@click.option("--q-group-size", default=64, show_default=True, type=COUNT)
@click.option("--revision", default=None, help="Hub revision (branch, tag or commit).")
@click.option("--overwrite", is_flag=True, help="Replace an existing output directory.")
def convert(src, dst, **options) -> None:
    """Convert SRC (a local HF Llama dir or a hub id such as TinyLlama/TinyLlama-1.1B-Chat-v1.0).

    RoPE settings in any form transformers 4.x or 5.x wrote are rewritten into
    the one mlx-lm reads; the source's fingerprint is recorded so adapters
    trained on this conversion load on every other dtype or quantisation of it.
    """
    from ..convert import ConvertOptions, convert_hf_to_mlx
    from ..convert.hf_to_mlx import describe
    from ..io import check_output

    check_output(dst, options["overwrite"], src)
    click.echo(describe(convert_hf_to_mlx(src, dst, ConvertOptions(**options))))
