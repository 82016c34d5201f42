"""The top-level guard (issue 18): an unforeseen exception is one `error:` line, `--debug` shows it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from click.testing import CliRunner
from helpers_train import save_model_dir, tiny_model
from test_bad_inputs import assert_clean_failure, make_adapter

import mlx_mixlora.merge as merge_pkg
from mlx_mixlora.cli import main


@pytest.fixture
def adapter(tmp_path):
    model_dir = save_model_dir(tmp_path / "base", tiny_model(0))
    return make_adapter(tmp_path / "ad", model_dir)


def _boom(exc):
    def raise_(*a, **k):
        raise exc

    return raise_


def invoke(args, env=None):
    return CliRunner().invoke(main, [str(a) for a in args], env=env)


def test_unexpected_exception_is_one_line(tmp_path, adapter, monkeypatch):
    monkeypatch.setattr(merge_pkg, "merge_adapters", _boom(ValueError("boom\nsecond line")))
    out = tmp_path / "m"
    result = invoke(["merge", adapter, adapter, "-m", "linear", "-o", out])
    msg = assert_clean_failure(result, "ValueError: boom | second line", "--debug", out=out)
    assert result.exit_code == 2 and "Traceback" not in result.output, msg


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_shows_the_exception(tmp_path, adapter, monkeypatch, how):
    monkeypatch.setattr(merge_pkg, "merge_adapters", _boom(ValueError("boom")))
    args = ["merge", adapter, adapter, "-m", "linear", "-o", tmp_path / "m"]
    result = invoke(
        ["--debug", *args] if how == "flag" else args,
        env={"MIXLORA_DEBUG": "1"} if how == "env" else None,
    )
    assert isinstance(result.exception, ValueError) and str(result.exception) == "boom"
    assert "error:" not in result.output


def test_recursion_error_is_one_line(tmp_path, adapter, monkeypatch):
    monkeypatch.setattr(merge_pkg, "merge_adapters", _boom(RecursionError("maximum recursion")))
    result = invoke(["merge", adapter, adapter, "-m", "linear", "-o", tmp_path / "m"])
    assert_clean_failure(result, "nested too deeply")


def test_bad_option_value_is_one_line(tmp_path, adapter):
    result = invoke(["merge", adapter, "-m", "linear", "-o", tmp_path / "m", "--rank", "x"])
    assert_clean_failure(result, "Invalid value for '--rank'")
    assert result.exit_code == 2 and "Usage:" not in result.output


def test_real_process_traceback_only_with_debug(tmp_path, adapter):
    """Through a real `python -m mlx_mixlora.cli`: an OSError nobody foresaw (a directory as adapter file)."""
    (adapter / "adapters.safetensors").unlink()
    (adapter / "adapters.safetensors").mkdir()  # is_file() is False: our own check answers first
    cmd = [
        sys.executable,
        "-m",
        "mlx_mixlora.cli",
        "export",
        "peft",
        str(adapter),
        "-o",
        str(tmp_path / "p"),
    ]
    plain = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert plain.returncode == 1 and "Traceback" not in plain.stderr
    assert plain.stderr.strip().splitlines()[-1].startswith("error: ")
    env = {**os.environ, "MIXLORA_DEBUG": "1"}
    debug = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_console_script_exit_runs_exit_handlers_and_keeps_codes_and_output(tmp_path):
    """`run` ends the process with os._exit: exit handlers (temp-dir finalizers, logging) still
    run, the exit code and the buffered output are what `main` gave."""
    marker = tmp_path / "handler_ran"
    code = (
        "import atexit, sys, tempfile, pathlib\n"
        "from mlx_mixlora.cli import run\n"
        f"atexit.register(pathlib.Path({str(marker)!r}).write_text, 'yes')\n"
        "left = tempfile.TemporaryDirectory()  # never cleaned up explicitly\n"
        f"pathlib.Path({str(tmp_path / 'tmpdir')!r}).write_text(left.name)\n"
        "sys.argv = ['mixlora', *sys.argv[1:]]\n"
        "run()\n"
    )

    def mixlora(*args):
        return subprocess.run(
            [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120
        )

    ok = mixlora("--version")
    assert ok.returncode == 0 and "version" in ok.stdout, ok.stderr
    assert marker.read_text() == "yes"
    assert not os.path.exists((tmp_path / "tmpdir").read_text())  # its finalizer ran
    marker.unlink()
    bad = mixlora("merge", str(tmp_path / "nope"), "-m", "linear", "-o", str(tmp_path / "m"))
    assert bad.returncode == 1 and bad.stderr.strip().startswith("error: "), bad.stderr
    assert marker.read_text() == "yes"
    usage = mixlora("merge")  # click's own usage error: exit 2
    assert usage.returncode == 2
