"""Options and parsing shared by the routing commands (`gate train`, `route eval`, `generate`, `serve`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import click

from ..tasks.phrasing import TRAIN_STYLES
from ..validate import COUNT, FRACTION


class GreedyCommand(click.Command):
    """Lets `--adapters A B C` take several values (rewritten to repeated options)."""

    greedy = ("--adapters",)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        out: list[str] = []
        current = None
        for a in args:
            if a in self.greedy:
                current = a
            elif current is not None and not a.startswith("-"):
                out += [current, a]
            else:
                current = None
                out.append(a)
        return super().parse_args(ctx, out)


def split_list(value: str | None) -> list[str] | None:
    return [x.strip() for x in value.split(",") if x.strip()] if value else None


class RouterChoice(click.Choice):
    """A router name from `route.ROUTERS` (those `offered` says), read when first needed.

    Importing the route package loads MLX and mlx-lm (seconds), and `mixlora --help`
    imports every command module, so the table is read only when the option is.
    """

    def __init__(self, offered: Callable[[Any], bool] = lambda kind: True):
        super().__init__([])
        self.offered = offered

    @property
    def choices(self) -> list[str]:  # type: ignore[override]
        from ..route.routers import ROUTERS

        return [name for name, kind in ROUTERS.items() if self.offered(kind)]

    @choices.setter
    def choices(self, value: Any) -> None:  # click.Choice sets it; the table decides
        pass


def _stack(*options: Callable) -> Callable:
    """Apply click options so that they show in the order given."""

    def deco(f: Any) -> Any:
        for opt in reversed(options):
            f = opt(f)
        return f

    return deco


def inputs(adapters_help: str = "Adapter directories.", gate_help: str | None = None) -> Callable:
    """--model and --adapters (several values, with `GreedyCommand`), and --gate given its help."""
    opts = [
        click.option(
            "--model", "model_dir", required=True, type=click.Path(), help="MLX model directory."
        ),
        click.option("--adapters", multiple=True, required=True, help=adapters_help),
    ]
    if gate_help:
        opts.append(click.option("--gate", "gate_dir", type=click.Path(), help=gate_help))
    return _stack(*opts)


def prompts_option(help: str) -> Callable:
    """--prompts: the training prompt style (`tasks.phrasing.TRAIN_STYLES`)."""
    return click.option(
        "--prompts", type=click.Choice(TRAIN_STYLES), default="varied", show_default=True, help=help
    )


def decision_options(
    modes: Sequence[str],
    mode: str | None = None,
    top_k: int | None = None,
    threshold: float | None = None,
    mode_help: str | None = None,
) -> Callable:
    """--mode, --top-k and --threshold (`route.decide`), with these defaults."""
    return _stack(
        click.option(
            "--mode",
            type=click.Choice(list(modes)),
            default=mode,
            show_default=True,
            help=mode_help,
        ),
        click.option("--top-k", type=COUNT, default=top_k, show_default=True),
        click.option("--threshold", type=FRACTION, default=threshold, show_default=True),
    )
