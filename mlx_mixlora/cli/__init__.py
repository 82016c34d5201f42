"""`mixlora` command line: a thin click shell over the Python API.

Subcommands live in their own modules and are imported only when invoked, so
`mixlora --help` stays fast and one command's optional dependency never breaks
another. A `MixloraError` becomes one `error: ...` line and exit code 1. The
guard around every command turns anything else (a bug, or a library error we
did not foresee) into one `error:` line too, with exit code 2; `--debug` or
`MIXLORA_DEBUG=1` shows the traceback instead. The specific checks come first:
the guard is the net, not the fix.
"""

from __future__ import annotations

import atexit
import importlib
import os
import sys

import click

from ..cpu.blas import config_error
from ..errors import MixloraError, one_line
from ..identity import FORCE_ENV
from ..validate import env_flag

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
    "plot": "plot_cmd:plot",
    "train": "train_cmd:train",
    "gate": "gate_cmd:gate",
    "generate": "generate_cmd:generate",
    "route": "route_cmd:route",
    "serve": "serve_cmd:serve",
}

DEBUG_ENV = "MIXLORA_DEBUG"


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
        debug = ctx.params.get("debug") or env_flag(DEBUG_ENV)
        try:
            return super().invoke(ctx)
        except MixloraError as e:
            if debug:
                raise
            _fail(one_line(e), 1)
        except click.UsageError as e:  # a bad option value: one line, not click's usage block
            _fail(one_line(e.format_message()), e.exit_code)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except KeyboardInterrupt:
            _fail("interrupted", 130)
        except RecursionError:
            if debug:
                raise
            _fail(
                "input nested too deeply (recursion limit) (run with --debug for the traceback)", 2
            )
        except Exception as e:
            if debug:
                raise
            _fail(
                f"{type(e).__name__}: {one_line(e)} (unexpected; run with --debug for the traceback)",
                2,
            )


def _fail(message: str, code: int) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--debug",
    is_flag=True,
    help=f"Show the full traceback of an unexpected error (or set {DEBUG_ENV}=1).",
)
@click.version_option(package_name="mlx-mixlora")
@click.option(
    "--force",
    is_flag=True,
    help="UNSAFE: use adapters on a base other than the one they were trained on "
    f"(warn instead of refusing; same as {FORCE_ENV}=1). On another model their outputs are meaningless.",
)
def main(debug: bool, force: bool) -> None:
    """mlx-mixlora: train, merge, route and export LoRA adapters on MLX."""
    blas_error = config_error()  # a bad MIXLORA_BLAS, found when the package was imported
    if blas_error:
        raise MixloraError(blas_error)
    if force:  # read by identity.check_same_base, wherever a command checks an adapter's base
        os.environ[FORCE_ENV] = "1"


def run() -> None:
    """The `mixlora` console script: `main`, then the process ends once its work is done.

    Python's teardown after a command (clearing every module, joining MLX's and
    OpenBLAS's threads) took 70-110 ms after a merge here, ~8% of the whole command,
    and does nothing a finished command needs: the exit handlers (temporary
    directories' finalizers, logging) still run and the output is flushed, then
    `os._exit` skips the rest.
    """
    try:
        main()  # standalone mode: always ends in SystemExit
        code = 0
    except SystemExit as e:
        code = e.code
    if code is None:
        code = 0
    elif not isinstance(code, int):  # sys.exit("message"): print it, exit 1
        print(code, file=sys.stderr)
        code = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`mixlora ... | head`) or stream
            code = code or 1
    os._exit(code)
