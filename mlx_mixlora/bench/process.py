"""One measurement in a fresh process, its result back as JSON.

A process of its own keeps torch's and MLX's threads and memory apart, gives a
cold start its whole cost, and lets one peer fail without taking the run down.
Used by the `mixlora bench` runner and by the scripts in `benchmarks/`.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path


def peer_env(ours: bool, torch: bool = False, heap: bool = False) -> dict[str, str]:
    """The environment a peer runs in: as it ships, except MLX peers keep the OpenBLAS preload.

    `torch`: keep our OpenBLAS out (torch brings its own BLAS); `heap`: a peer gets
    our glibc heap setting too (see `mlx_mixlora.cpu.heap`), which ours always has.
    """
    env = dict(os.environ)
    if torch:
        env["MIXLORA_BLAS"] = "reference"
    if not ours and not heap:
        env["MIXLORA_NO_MALLOC_TUNING"] = "1"
    return env


def run_json(
    cmd: list[str], out: Path, env: dict | None = None, timeout: float | None = None
) -> tuple[dict, float]:
    """Run `cmd`, which writes JSON to `out`: (that JSON, wall seconds).

    A process that times out or leaves no `out` gives {"error": why} (its last stderr line).
    """
    out.unlink(missing_ok=True)  # a stale file is not this run's answer
    t = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}, time.perf_counter() - t
    wall = time.perf_counter() - t
    if out.is_file():
        return json.loads(out.read_text()), wall
    tail = proc.stderr.strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
    return {"error": tail[0]}, wall
