"""`mixlora plot`: the loss curves of one or several trained adapters (their metrics.jsonl)."""

from __future__ import annotations

import click


@click.command()
@click.argument("adapters", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--out", required=True, type=click.Path(), help="PNG (or .svg/.pdf) to write.")
@click.option("--overwrite", is_flag=True, help="Replace an existing file.")
def plot(adapters, out, overwrite) -> None:
    """Draw train/validation loss against step for ADAPTERS (dirs or metrics.jsonl files)."""
    from ..io import check_output
    from ..train.plot import plot_runs

    check_output(out, overwrite, *adapters, kind="file")
    click.echo(f"wrote {plot_runs(list(adapters), out)}")
