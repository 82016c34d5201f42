"""`mixlora doctor`: what MLX runs on here and how fast its fp32 GEMM is."""

from __future__ import annotations

import json

import click


@click.command()
@click.option("--size", default=1024, show_default=True, help="GEMM size n for the n×n×n timing.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
def doctor(size: int, as_json: bool) -> None:
    """Print MLX version, device, BLAS in use and measured fp32 GEMM GFLOP/s."""
    from ..cpu.system import system_report

    report = system_report(gemm_size=size)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    for key, value in report.items():
        click.echo(f"{key:>16}: {value}")
