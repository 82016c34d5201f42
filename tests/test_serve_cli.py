"""`mixlora serve` as a process: it prints where it listens, serves, and Ctrl-C drains.

The server runs on 127.0.0.1 with `--port 0` (a free port); every wait is bounded.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import openai
import pytest
from click.testing import CliRunner
from helpers_route_cli import _dirs

import mlx_mixlora  # noqa: F401
from mlx_mixlora.cli import main
from mlx_mixlora.serve.server import bind


def _start(args: list[str]) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "mlx_mixlora.cli", "serve", *args, "--port", "0"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    end = time.monotonic() + 60
    line = ""
    while time.monotonic() < end and proc.poll() is None:
        line = proc.stderr.readline()
        m = re.search(r"at (http://127\.0\.0\.1:\d+/v1)", line)
        if m:
            return proc, m.group(1)
    proc.kill()
    raise AssertionError(f"server did not start: {line!r}")


@pytest.mark.slow  # a fresh process imports MLX and the model: ~10-20 s here
def test_serve_process_answers_then_drains_on_ctrl_c():
    model_dir, ads = _dirs()
    proc, url = _start(["--model", str(model_dir), "--adapters", *ads[:2]])
    try:
        client = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=60)
        r = client.completions.create(model="ad1", prompt="hello", max_tokens=4, temperature=0)
        assert r.usage.completion_tokens == 4
        stream = client.completions.create(
            model="ad0", prompt="hello", max_tokens=300, temperature=0, stream=True
        )
        first = next(iter(stream))
        proc.send_signal(signal.SIGINT)  # mid-stream: the answer must still complete
        rest = list(stream)
        assert rest[-1].choices[0].finish_reason in ("length", "stop")
        n = len([c for c in [first, *rest] if c.choices[0].text])
        assert n > 1
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        proc.stderr.close()


def test_serve_refuses_bad_arguments_with_one_line():
    model_dir, ads = _dirs()
    r = CliRunner().invoke(
        main, ["serve", "--model", str(model_dir) + "-missing", "--adapters", *ads]
    )
    assert r.exit_code == 1 and r.output.startswith("error: model directory not found")
    r = CliRunner().invoke(
        main, ["serve", "--model", str(model_dir), "--adapters", ads[0], "--port", "70000"]
    )
    assert r.exit_code == 1 and "--port must be in 0..65535" in r.output
    r = CliRunner().invoke(
        main, ["serve", "--model", str(model_dir), "--adapters", ads[0], "--split-rows", "-1"]
    )
    assert r.exit_code == 1 and r.output == "error: --split-rows must be >= 0, got -1\n"
    r = CliRunner().invoke(
        main, ["serve", "--model", str(model_dir), "--adapters", ads[0], "--gate", str(model_dir)]
    )
    assert r.exit_code == 1 and r.output.startswith("error: ")
    taken = bind("127.0.0.1", 0)
    try:
        port = str(taken.getsockname()[1])
        r = CliRunner().invoke(
            main, ["serve", "--model", str(model_dir), "--adapters", ads[0], "--port", port]
        )
        assert r.exit_code == 1 and f"cannot listen on 127.0.0.1:{port}" in r.output
    finally:
        taken.close()
