"""`mixlora bench`: ours (MLX) vs mlx-lm vs PyTorch+PEFT on the same model, data and adapters."""

from __future__ import annotations

import click


@click.command("bench")
@click.argument("workloads", default="all", metavar="[all|train|prefill|decode|merge|route]")
@click.option("--model", type=click.Path(), help="real MLX model dir (all its layers)")
@click.option(
    "--shape", default="tinyllama", show_default=True, help="random model shape: tinyllama"
)
@click.option("--layers", type=int, help="decoder layers of the random model [default: 2]")
@click.option("--backends", default="mlx,mlx-lm,torch,peft", show_default=True)
@click.option("--dtype", default="float32", show_default=True,
              help="inference dtype (float16/bfloat16 is the Metal/MPS default); training is fp32")  # fmt: skip
@click.option("--repeats", type=int, help="timed runs per figure [default: 3]")
@click.option(
    "--out",
    type=click.Path(),
    help="output dir [default: benchmarks/results/bench-<time>; with --quick a new temp dir]",
)
@click.option("--overwrite", is_flag=True, help="replace an existing output dir")
@click.option("--quick", is_flag=True, help="tiny shapes and sizes: a smoke test, not a result")
def bench(workloads, model, shape, layers, backends, dtype, repeats, out, overwrite, quick):
    """Benchmark WORKLOADS (comma list or all); write bench.json, bench.md and bench.png.

    Each backend runs in its own process on its best device (MLX: Metal → CUDA →
    CPU; torch: mps → cuda → cpu). Without --model the model is TinyLlama-shaped
    with random weights and --layers layers. Without torch, its rows are skipped.
    """
    import tempfile
    import time
    from pathlib import Path

    import mlx_mixlora  # noqa: F401  (BLAS preload before mlx.core)

    from ..bench.runner import run_bench
    from ..bench.spec import Sizes
    from ..errors import MixloraError

    if model is None and layers is None and not quick:
        layers = 2
    sizes = Sizes.quick() if quick else Sizes()
    if repeats is not None:
        if repeats < 1:
            raise MixloraError(f"--repeats must be >= 1, got {repeats}")
        sizes.repeats = repeats
    if out is None and quick:  # a smoke test is not a result: keep it out of benchmarks/results/
        out = str(Path(tempfile.mkdtemp(prefix="mixlora-bench-quick-")) / "bench")
    out = out or f"benchmarks/results/bench-{time.strftime('%Y%m%d-%H%M%S')}"
    result = run_bench(workloads, backends, out, shape=shape, layers=layers, model=model,
                       dtype=dtype, quick=quick, sizes=sizes, overwrite=overwrite)  # fmt: skip
    from ..bench.report import table

    click.echo(table(result))
    for n in result["notes"]:
        click.echo(f"note: {n}")
    click.echo(f"wrote {out}/bench.json, bench.md, bench.png ({result['wall_seconds']:.0f} s)")
