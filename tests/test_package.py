"""Packaging and environment: BLAS preload, doctor, CLI wiring, pyproject completeness."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from click.testing import CliRunner
from helpers_blas import HAVE_SYSTEM

from mlx_mixlora.cli import COMMANDS, main

ROOT = Path(__file__).resolve().parents[1]


def _python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=120,
    )


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="OpenBLAS preload is Linux-only")
def test_openblas_is_preloaded_before_mlx():
    out = _python(
        "import mlx_mixlora, mlx.core; from mlx_mixlora.cpu.blas import blas_status; print(blas_status()['loaded'])"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"
    assert "not found" not in out.stderr


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="OpenBLAS preload is Linux-only")
def test_missing_openblas_warns_once_with_install_hint():
    out = _python(
        "import mlx_mixlora",
        MIXLORA_SCIPY_OPENBLAS_LIB="",  # as if the wheel were not installed
        MIXLORA_OPENBLAS_LIB="libnot-a-blas.so.0",
    )
    assert out.returncode == 0
    lines = [line for line in out.stderr.splitlines() if "libnot-a-blas" in line]
    assert len(lines) == 1 and "pip install scipy-openblas32" in lines[0]


def test_doctor_reports_blas_and_gemm():
    result = CliRunner().invoke(main, ["doctor", "--json", "--size", "256"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["gemm_fp32_gflops"] > 0
    assert report["mlx"] and report["device"]
    if sys.platform.startswith("linux"):
        assert report["blas"].startswith("OpenBLAS")
    assert report["heap"]


def test_every_command_module_imports():
    for name in COMMANDS:
        assert main.get_command(None, name) is not None, name


def test_pyproject_lists_every_package():
    """Non-editable installs only ship the packages listed in pyproject."""
    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {
        "mlx_mixlora." + ".".join(p.parent.relative_to(ROOT / "mlx_mixlora").parts)
        for p in (ROOT / "mlx_mixlora").rglob("__init__.py")
    }
    found = {f.rstrip(".") for f in found} | {"mlx_mixlora.convert"}
    assert found <= listed, f"add to pyproject packages: {sorted(found - listed)}"


def test_core_package_does_not_import_torch():
    code = (
        "import sys, mlx_mixlora, mlx_mixlora.model, mlx_mixlora.adapter_format, mlx_mixlora.convert;"
        "print([m for m in ('torch', 'peft') if m in sys.modules])"
    )
    out = _python(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_non_editable_install_gives_working_cli(tmp_path):
    """`pip install .` (not editable) ships every module the CLI needs."""
    target = tmp_path / "site"
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    env = {**os.environ, "PYTHONPATH": str(target)}
    code = "import mlx_mixlora, sys; from mlx_mixlora.cli import main, COMMANDS; [main.get_command(None, c) for c in COMMANDS]; print(mlx_mixlora.__file__)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().startswith(str(target))


def test_scripts_import_mlx_mixlora_before_mlx():
    """Benchmarks run as scripts: `import mlx_mixlora` must come before mlx.core (OpenBLAS preload).

    ruff's import sorting puts third-party `mlx` first unless an `# isort: split` follows the
    preload import, and a benchmark would then silently measure the slow reference BLAS.
    """
    import ast

    for script in sorted((ROOT / "benchmarks").glob("*.py")):
        tree = ast.parse(script.read_text())
        order = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                order += [(node.lineno, a.name) for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                order.append((node.lineno, node.module))
        mlx_lines = [
            line for line, name in order if name == "mlx" or name.startswith(("mlx.", "mlx_lm"))
        ]
        ours = [
            line for line, name in order if name == "mlx_mixlora" or name.startswith("mlx_mixlora.")
        ]
        if mlx_lines:
            assert ours and min(ours) < min(mlx_lines), (
                f"{script.name}: import mlx_mixlora before mlx"
            )


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc heap tuning is Linux-only")
def test_heap_tuning_is_on_by_default_and_can_be_switched_off():
    code = "import mlx_mixlora; from mlx_mixlora.cpu.heap import malloc_status; print(malloc_status()['tuned'])"
    assert _python(code).stdout.strip() == "True"
    assert _python(code, MIXLORA_NO_MALLOC_TUNING="1").stdout.strip() == "False"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc heap tuning is Linux-only")
def test_one_arena_reuses_large_buffers_freed_on_worker_threads():
    """`one_arena` (the merge command's): worker threads' large buffers stay in the heap.

    Page faults per round of two threads each making two 32 MB buffers; the median of
    five rounds, since now and then the one heap is too fragmented for one buffer.
    """
    code = (
        "import os, mlx_mixlora, resource\n"
        "import mlx.core as mx\n"
        "from mlx_mixlora.cpu.heap import one_arena\n"
        "from mlx_mixlora.cpu.streams import map_on_streams\n"
        "on = one_arena() if os.environ['ONE_ARENA'] == '1' else False\n"
        "def work(_):\n"
        "    y = mx.random.normal((2048, 4096)) + 1.0  # 32 MB, then freed\n"
        "    mx.eval(y)\n"
        "    return None\n"
        "rounds = int(os.environ['ROUNDS'])\n"
        "map_on_streams(work, range(2), workers=2) if rounds else None\n"
        "faults = []\n"
        "for _ in range(rounds):\n"
        "    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "    map_on_streams(work, range(2), workers=2)\n"
        "    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n"
        "print(on, sorted(faults)[len(faults) // 2] if faults else 0)\n"
    )

    def run(**env) -> tuple[bool, int]:
        on, median = _python(code, **env).stdout.split()
        return on == "True", int(median)

    buffer_pages = (32 << 20) // 4096
    on, median = run(ONE_ARENA="1", ROUNDS="5")
    assert on and median < buffer_pages // 20, median
    on, median = run(ONE_ARENA="0", ROUNDS="5")  # the default: the threads' arenas fault again
    assert not on and median > buffer_pages, median
    assert run(ONE_ARENA="1", ROUNDS="0", MIXLORA_NO_MALLOC_TUNING="1")[0] is False


AMD_ZEN5 = "vendor_id\t: AuthenticAMD\nflags\t\t: fpu avx2 fma avx512f avx512dq avx512cd avx512bw avx512vl\n"


def test_openblas_core_choice_from_cpuinfo():
    from mlx_mixlora.cpu.blas import coretype_for

    assert coretype_for(AMD_ZEN5) == "SkylakeX"
    assert coretype_for(AMD_ZEN5.replace(" avx512bw", "")) is None  # Zen 3 and older: no AVX-512
    intel = AMD_ZEN5.replace("AuthenticAMD", "GenuineIntel")
    assert coretype_for(intel) is None  # OpenBLAS's own detection knows these
    assert coretype_for("") is None


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or not HAVE_SYSTEM,
    reason="needs the system OpenBLAS (Linux)",
)
def test_a_named_openblas_core_type_is_respected_and_ours_is_not_left_in_the_environment():
    code = (
        "import os, mlx_mixlora; from mlx_mixlora.cpu.blas import blas_status; s = blas_status(); "
        "print(s['core'], s['core_chosen_by'], os.environ.get('OPENBLAS_CORETYPE'), sep='|')"
    )
    named = _python(code, OPENBLAS_CORETYPE="Haswell").stdout.strip().split("|")
    assert named == ["Haswell", "OPENBLAS_CORETYPE", "Haswell"]
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
    env["MIXLORA_BLAS"] = "system"  # our core choice is for Debian's 0.3.21 only
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    core, chosen_by, left = out.stdout.strip().split("|")
    assert left == "None"
    from mlx_mixlora.cpu.blas import _read_cpuinfo, coretype_for

    if coretype_for(_read_cpuinfo()):
        assert (core, chosen_by) == ("SkylakeX", "mlx_mixlora (AMD CPU with AVX-512)")
    else:
        assert chosen_by == "OpenBLAS"
