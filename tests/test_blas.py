"""MIXLORA_BLAS: which OpenBLAS serves MLX, what `mixlora doctor` says about it, and bad values."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers_blas import HAVE_SYSTEM

from mlx_mixlora.cpu.blas import wheel_library

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the BLAS preload is Linux-only"
)

HAVE_WHEEL = wheel_library() is not None and shutil.which("cc") is not None
MIXLORA = [str(Path(sys.executable).with_name("mixlora"))]  # the installed command, as users run it
STATUS = (
    "import json, mlx_mixlora, mlx.core as mx; from mlx_mixlora.cpu import blas;"
    "s = blas.blas_status(); x = (mx.ones((64, 32)) @ mx.ones((32, 16))).sum().item();"
    "print(json.dumps({'name': s['name'], 'why': s['why'], 'reason': s['reason'],"
    " 'threads': blas.get_num_threads(), 'x': x}))"
)


def _run(cmd: list[str], **env) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k not in ("MIXLORA_BLAS", "MIXLORA_NO_OPENBLAS")}
    return subprocess.run(cmd, capture_output=True, text=True, env={**full, **env}, timeout=120)


def _status(**env) -> dict:
    out = _run([sys.executable, "-c", STATUS], **env)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.skipif(not HAVE_WHEEL, reason="needs the scipy-openblas32 wheel and a C compiler")
def test_the_wheel_is_the_first_choice_and_its_threads_are_controllable():
    s = _status()
    assert s["name"] == "scipy-openblas" and s["why"].startswith("first choice")
    assert s["x"] == 64 * 16 * 32.0 and s["threads"] >= 1
    code = (
        "import mlx_mixlora; from mlx_mixlora.cpu import blas; blas.set_num_threads(1);"
        "a = blas.get_num_threads(); blas.set_num_threads(2); print(a, blas.get_num_threads())"
    )
    assert _run([sys.executable, "-c", code]).stdout.split() == ["1", "2"]


@pytest.mark.skipif(not HAVE_SYSTEM, reason="needs the system OpenBLAS (libopenblas.so.0)")
def test_without_the_wheel_the_system_library_is_the_fallback_and_says_why():
    s = _status(MIXLORA_SCIPY_OPENBLAS_LIB="")
    assert s["name"] == "system" and s["x"] == 64 * 16 * 32.0
    assert (
        s["why"]
        == "fallback: scipy-openblas: the scipy-openblas32 wheel is not installed (pip install scipy-openblas32)"
    )


@pytest.mark.parametrize(
    "env, name",
    [
        ({"MIXLORA_BLAS": "reference"}, "reference"),
        ({"MIXLORA_BLAS": " Reference "}, "reference"),
        ({"MIXLORA_NO_OPENBLAS": "1"}, "reference"),  # the older switch still works
        pytest.param(
            {"MIXLORA_BLAS": "system"},
            "system",
            marks=pytest.mark.skipif(not HAVE_SYSTEM, reason="needs the system OpenBLAS"),
        ),
        pytest.param(
            {"MIXLORA_BLAS": "scipy-openblas", "MIXLORA_NO_OPENBLAS": "1"},
            "scipy-openblas",  # the new variable wins over the old one
            marks=pytest.mark.skipif(not HAVE_WHEEL, reason="needs the wheel and cc"),
        ),
    ],
)
def test_mixlora_blas_forces_a_choice(env, name):
    s = _status(**env)
    assert s["name"] == name and s["x"] == 64 * 16 * 32.0
    if name == "reference":
        assert s["reason"].startswith("chosen by") and s["threads"] is None
    else:
        assert s["why"].startswith("chosen by MIXLORA_BLAS=")


@pytest.mark.parametrize(
    "env, message",
    [
        (
            {"MIXLORA_BLAS": "mkl"},
            "error: MIXLORA_BLAS='mkl' is not one of auto, scipy-openblas, system, reference",
        ),
        (
            {"MIXLORA_BLAS": "scipy-openblas", "MIXLORA_SCIPY_OPENBLAS_LIB": ""},
            "error: MIXLORA_BLAS=scipy-openblas: the scipy-openblas32 wheel is not installed "
            "(pip install scipy-openblas32)",
        ),
        (
            {"MIXLORA_BLAS": "system", "MIXLORA_OPENBLAS_LIB": "libnot-a-blas.so.0"},
            "error: MIXLORA_BLAS=system: libnot-a-blas.so.0 not found",
        ),
    ],
)
def test_a_bad_or_unavailable_choice_is_one_error_line(env, message):
    out = _run([*MIXLORA, "doctor"], **env)
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.strip().splitlines() == [message]
    lib = _run([sys.executable, "-c", "import mlx_mixlora"], **env)  # library use: a warning
    assert lib.returncode == 0 and message.removeprefix("error: ") in lib.stderr


def test_doctor_says_which_blas_why_and_how_fast():
    out = _run([*MIXLORA, "doctor", "--json", "--size", "256"], MIXLORA_BLAS="reference")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["blas"] == "reference BLAS from the mlx wheel [reference]"
    assert report["blas_why"] == "chosen by MIXLORA_BLAS=reference"
    assert report["gemm_fp32_gflops"] > 0
    if HAVE_WHEEL:
        report = json.loads(_run([*MIXLORA, "doctor", "--json", "--size", "256"]).stdout)
        assert report["blas"].startswith("OpenBLAS ") and "[scipy-openblas]" in report["blas"]
        assert report["blas_why"] == "first choice (the scipy-openblas32 wheel)"
