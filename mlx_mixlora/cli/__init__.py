"""`mixlora` command line: a thin click shell over the Python API.

Subcommands live in their own modules and are imported only when invoked, so
`mixlora --help` stays fast and one command's optional dependency never breaks
another. A `MixloraError` becomes one `error: ...` line and exit code 1.
"""

from __future__ import annotations

import importlib
import sys

import click

from ..errors import MixloraError

# name -> "module:attribute" (module relative to this package)
COMMANDS: dict[str, str] = {
    "base": "base_cmd:base",
    "bench": "bench_cmd:bench",
    "demo": "demo_cmd:demo",
    "doctor": "doctor:doctor",
    "convert": "convert_cmd:convert",
    "export": "export_cmd:export",
    "import": "import_cmd:import_",
    "merge": "merge_cmd:merge",
    "train": "train_cmd:train",
    "gate": "gate_cmd:gate",
    "generate": "generate_cmd:generate",
    "route": "route_cmd:route",
    "serve": "serve_cmd:serve",
}


class LazyGroup(click.Group):
    """A click group that imports each subcommand's module on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(f"{__name__}.{module}"), attr)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except MixloraError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(1)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mlx-mixlora")
def main() -> None:
    """mlx-mixlora: train, merge, route and export LoRA adapters on MLX."""
