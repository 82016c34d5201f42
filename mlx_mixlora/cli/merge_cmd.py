"""`mixlora merge`: combine adapters into one adapter, or into the base model's weights."""

from __future__ import annotations

import json

import click

from ..merge.methods import METHODS, describe_methods
from ..merge.options import MergeOptions
from ..validate import COUNT, FINITE, FRACTION, NON_NEGATIVE_INT, SEED
from . import merge_learned


@click.command(epilog="\b\nMethods (kind, math):\n" + describe_methods())
@click.argument("adapters", nargs=-1, required=True, type=click.Path())
@click.option("--method", "-m", required=True, type=click.Choice(METHODS), help="Merge method.")
@click.option("--weights", help="Comma-separated weight per adapter (default 1 each).")
@click.option(
    "--lam", type=FINITE, default=MergeOptions.lam, show_default=True, help="task_arithmetic's λ."
)
@click.option(
    "--density",
    type=FRACTION,
    help="TIES/prune: fraction of entries kept per weight [ties: 1, no trim, as mergekit].",
)
@click.option("--drop", type=FRACTION, help="DARE: drop probability p (PEFT's density is 1-p).")
@click.option(
    "--layer-ranges", help="NAME:FIRST-LAST,... per adapter (name, task or position), or 'even'."
)
@click.option("--layer-weights", help="Per-layer weight vectors: FIRST-LAST=w1,w2,...;...")
@click.option("--rank", type=COUNT, help="Compress the result to this rank (SVD).")
@click.option(
    "--seed",
    type=SEED,
    default=MergeOptions.seed,
    show_default=True,
    help="DARE and randomized-SVD seed.",
)
@click.option(
    "--majority-sign",
    type=click.Choice(["total", "frequency"]),
    default=MergeOptions.majority_sign,
    show_default=True,
    help="TIES sign election.",
)
@click.option(
    "--oversample",
    type=NON_NEGATIVE_INT,
    default=MergeOptions.oversample,
    show_default=True,
    help="Randomized SVD.",
)
@click.option(
    "--power-iters",
    type=NON_NEGATIVE_INT,
    default=MergeOptions.power_iters,
    show_default=True,
    help="Randomized SVD.",
)
@click.option("--name", help="Name recorded in the merged adapter's config.")
@click.option("-o", "--out", "out", required=True, type=click.Path(), help="Output directory.")
@click.option(
    "--into-base",
    "into_base",
    type=click.Path(),
    help="Fuse into this MLX model dir and write a full model to OUT instead of an adapter.",
)
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
@merge_learned.options()
def merge(adapters, method, out, into_base, overwrite, as_json, **options) -> None:
    """Merge ADAPTER directories with --method into OUT (an adapter, or a model with --into-base).

    The other options are `merge_adapters`' (`MergeOptions`), passed through by name;
    learned merges (adamerging, lorahub) and --search also load --model and read --calib.
    """
    learned = {k: options.pop(k) for k in merge_learned.LEARNED_OPTIONS}
    # Only what this merge needs: the into-base writer pulls in mlx.nn and the fuse
    # path, numpy comes with the kernels; no mlx_lm, transformers or torch unless the
    # merge is learned (tests/test_merge_startup.py keeps it so).
    from ..adapter_format import read_adapter
    from ..cpu.heap import one_arena
    from ..io import check_output
    from ..merge import merge_adapters

    check_output(out, overwrite, *adapters, into_base)
    learns = merge_learned.wants_model(METHODS[method].kind, learned["search"])
    if not learns:  # two worker threads making a few large buffers: keep them in the heap
        one_arena()
    loaded = [read_adapter(a) for a in adapters]
    dense_into_base = into_base is not None and METHODS[method].kind == "dense"
    output = "deltas" if dense_into_base and options["rank"] is None else "adapter"
    if learns:
        res = merge_learned.learned_merge(loaded, method, learned, options)
        if res.info.get("learned"):
            _echo_learned(res.info["learned"])
    else:
        res = merge_adapters(loaded, method, output=output, **options)
    if into_base is not None:
        from ..merge import merge_into_base

        card = {"adapters": [str(a) for a in adapters], "merge": res.info}
        merge_into_base(
            into_base,
            res.updates(),
            out,
            base_identity=loaded[0].config.base_model,
            card=card,
            overwrite=overwrite,
        )
    else:
        res.save(out, overwrite=overwrite)
    summary = {
        "method": res.method,
        "output": str(out),
        "into_base": into_base,
        "modules": len(res.module_paths()),
        "rank": None if res.config is None else res.config.rank,
        "rel_error": res.rel_error,
    }
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        rank_txt = "" if summary["rank"] is None else f", rank {summary['rank']}"
        click.echo(
            f"merged {len(adapters)} adapters with {res.method} over {summary['modules']} modules"
            f"{rank_txt}, relative error {res.rel_error:.3g} -> {out}"
        )


def _echo_learned(info: dict) -> None:
    calib = info.get("calibration_examples", {})
    click.echo(
        f"learned on {sum(calib.values())} calibration prompts ({len(calib)} tasks) "
        f"in {info.get('seconds', 0):.1f} s",
        err=True,
    )
