"""The learned half of `mixlora merge`: --method adamerging|lorahub, and --search.

Kept apart from `merge_cmd` so a fixed merge never imports mlx-lm (the model
and tokenizer loaders) and stays a fast one-shot command.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import click

from ..errors import MixloraError

LEARNED_OPTIONS = (
    "model",
    "calib",
    "data",
    "calib_examples",
    "granularity",
    "objective",
    "steps",
    "lr",
    "budget",
    "masks",
    "search",
)


def options():
    """The click options of the learned merges (applied to `mixlora merge`)."""
    from ..merge.methods import CALIB_EXAMPLES, GRANULARITIES, LEARN_LR, LEARN_STEPS, LORAHUB_BUDGET
    from ..validate import COUNT, FINITE

    opts = [
        click.option("--model", type=click.Path(), help="Base MLX model dir (learned merges, --search)."),
        click.option(
            "--calib",
            help="Calibration data: 'validation' (the adapters' tasks' validation split from "
            "--data) or a jsonl of {prompt, task, labels?, completion?} rows. Never the test split.",
        ),
        click.option("--data", default="synthetic", show_default=True,
                     help="Where --calib validation reads: synthetic | hub | a directory."),
        click.option("--calib-examples", type=COUNT, default=CALIB_EXAMPLES,
                     show_default=True, help="Validation prompts per task."),
        click.option("--granularity", type=click.Choice(GRANULARITIES), default="layer",
                     show_default=True, help="adamerging: λ per adapter, × layer, or × layer × module."),
        click.option("--objective", type=click.Choice(["entropy", "distill"]), default="entropy",
                     show_default=True,
                     help="adamerging: prediction entropy (AdaMerging) or KL from each prompt's own adapter."),
        click.option("--steps", type=COUNT, default=LEARN_STEPS, show_default=True,
                     help="adamerging: Adam steps."),
        click.option("--lr", type=FINITE, default=LEARN_LR, show_default=True,
                     help="adamerging: Adam learning rate."),
        click.option("--budget", type=COUNT, default=LORAHUB_BUDGET, show_default=True,
                     help="lorahub: evaluations of the merged model."),
        click.option("--masks", type=click.Choice(["ties"]),
                     help="adamerging: learn over TIES-masked deltas at --density (AdaMerging++)."),
        click.option("--search", is_flag=True,
                     help="task_arithmetic/ties/dare_ties: choose λ and density/drop on --calib."),
    ]  # fmt: skip

    def apply(f):
        for o in reversed(opts):
            f = o(f)
        return f

    return apply


def wants_model(method_kind: str, search: bool) -> bool:
    return method_kind == "learned" or search


def learned_merge(
    adapters: Sequence,
    method: str,
    opts: dict,
    merge_options: dict,
    log: Callable[[str], None] | None = None,
):
    """Load the base, read the calibration data, and learn (or search) the merge; a MergeResult."""
    from ..merge.calibration import CALIB_SPLIT, read_calibration, task_calibration
    from ..merge.learned import learn_merge, search_merge
    from ..merge.methods import METHODS
    from ..model import load
    from ..tasks import resolve_task

    if opts["model"] is None:
        raise MixloraError(
            f"{method}{' --search' if opts['search'] else ''} needs --model (the base dir)"
        )
    if opts["calib"] is None:
        raise MixloraError(f"{method} needs --calib: 'validation' or a jsonl file")
    if opts["calib"] == "test":
        raise MixloraError(
            "calibration never reads the test split: use --calib validation or a jsonl"
        )
    tasks = [a.task for a in adapters]
    if opts["calib"] == CALIB_SPLIT:
        if any(t is None for t in tasks):
            raise MixloraError(
                "--calib validation needs every adapter to record its task; give a jsonl instead"
            )
        calib = task_calibration(
            [resolve_task(t) for t in tasks], opts["data"], opts["calib_examples"],
            seed=merge_options.get("seed", 0),
        )  # fmt: skip
    else:
        calib = read_calibration(
            opts["calib"], [t or a.name for t, a in zip(tasks, adapters, strict=True)]
        )
    model, tok = load(opts["model"])
    seed, rank, name = (merge_options.get(k) for k in ("seed", "rank", "name"))
    if opts["search"]:
        return search_merge(model, tok, adapters, method, calib, seed=seed or 0, rank=rank,
                            name=name, log=log)  # fmt: skip
    if METHODS[method].kind != "learned":
        raise MixloraError(
            f"{method} is a fixed merge: add --search to choose its options on --calib"
        )
    return learn_merge(
        model, tok, adapters, method, calib, granularity=opts["granularity"],
        objective=opts["objective"], steps=opts["steps"], lr=opts["lr"], budget=opts["budget"],
        seed=seed or 0, rank=rank, name=name, masks=opts["masks"],
        density=merge_options.get("density"), log=log,
    )  # fmt: skip
