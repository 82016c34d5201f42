"""The sgemm → sgemv shim (Linux): every one-row/one-column MLX matmul goes through it, exactly."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import mlx.core as mx
import numpy as np
import pytest

from mlx_mixlora.cpu.blas import blas_status
from mlx_mixlora.cpu.gemv_shim import build, gemv_calls, shim_status

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the shim sits between MLX and OpenBLAS on Linux"
)


def _expect_active() -> bool:
    return bool(blas_status()["loaded"]) and shutil.which("cc") is not None


def test_the_shim_is_active_where_openblas_and_a_compiler_are():
    status = shim_status()
    assert status["active"] == _expect_active(), status["reason"]


def _rand(*shape, seed=0):
    return mx.random.normal(shape, key=mx.random.key(seed))


def _f64(a):
    return np.array(a, dtype=np.float64)


# (name, thunk returning (MLX result, float64 reference)); every one is a 1-row or 1-column product
W = _rand(48, 40, seed=1)  # [out, in]
X = _rand(1, 40, seed=2)
C = _rand(1, 48, seed=3)
COL = _rand(40, 1, seed=4)
CASES = {
    "x @ W.T (decode)": lambda: (X @ W.T, _f64(X) @ _f64(W).T),
    "x @ W (b not transposed)": lambda: (X @ W[:40], _f64(X) @ _f64(W[:40])),
    "W @ col (one column)": lambda: (W @ COL, _f64(W) @ _f64(COL)),
    "W.T @ col (a transposed)": lambda: (
        W.T @ _rand(48, 1, seed=5),
        _f64(W).T @ _f64(_rand(48, 1, seed=5)),
    ),
    "col.T @ W.T (a transposed, one row)": lambda: (COL.T @ W.T, _f64(COL).T @ _f64(W).T),
    "W @ a column of a wider matrix (strided)": lambda: (
        W @ _rand(40, 5, seed=10)[:, 2:3],
        _f64(W) @ _f64(_rand(40, 5, seed=10))[:, 2:3],
    ),
    "a row of a wider matrix @ W.T (strided)": lambda: (
        _rand(40, 5, seed=11)[:, 3:4].T @ W.T,
        _f64(_rand(40, 5, seed=11))[:, 3:4].T @ _f64(W).T,
    ),
    "1-D vector": lambda: (X[0] @ W.T, _f64(X[0]) @ _f64(W).T),
    "addmm alpha/beta": lambda: (
        mx.addmm(C, X, W.T, alpha=0.5, beta=-2.0),
        -2.0 * _f64(C) + 0.5 * (_f64(X) @ _f64(W).T),
    ),
    "batched, one row per matrix": lambda: (
        _rand(3, 1, 40, seed=6) @ _rand(3, 40, 48, seed=9),
        _f64(_rand(3, 1, 40, seed=6)) @ _f64(_rand(3, 40, 48, seed=9)),
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_one_row_and_one_column_products_match_float64(name):
    before = gemv_calls()
    got, want = CASES[name]()
    got = np.array(got)
    assert got.shape == want.shape
    err = np.abs(got - want).max() / max(1.0, np.abs(want).max())
    assert err < 1e-5, err
    if shim_status()["active"]:
        assert gemv_calls() > before  # it really went through sgemv


def test_beta_zero_ignores_the_old_output_even_if_it_is_nan():
    c = mx.full((1, 48), float("nan"))
    got = np.array(mx.addmm(c, X, W.T, alpha=1.0, beta=0.0))
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, np.array(X @ W.T), rtol=1e-6, atol=1e-6)


def test_real_matrix_products_are_left_to_sgemm():
    before = gemv_calls()
    a, b = _rand(4, 40, seed=7), _rand(40, 6, seed=8)
    np.testing.assert_allclose(np.array(a @ b), _f64(a) @ _f64(b), rtol=1e-5, atol=1e-5)
    assert gemv_calls() == before


def _status_in_subprocess(**env) -> str:
    code = (
        "import mlx_mixlora, mlx.core as mx; from mlx_mixlora.cpu.gemv_shim import shim_status;"
        "x = mx.ones((1, 8)) @ mx.ones((8, 3)); print(shim_status()['reason'], x.sum().item())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_off_switch_and_missing_compiler_leave_plain_openblas():
    assert (
        _status_in_subprocess(MIXLORA_NO_GEMV_SHIM="1") == "disabled by MIXLORA_NO_GEMV_SHIM=1 24.0"
    )
    out = _status_in_subprocess(CC="/nonexistent/cc")
    assert out.startswith("no C compiler") and out.endswith(" 24.0")


@pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler")
def test_build_is_cached_by_source_hash(tmp_path, monkeypatch):
    monkeypatch.setenv("MIXLORA_CACHE", str(tmp_path))
    first = build(["cc"])
    mtime = first.stat().st_mtime_ns
    assert build(["cc"]) == first and first.stat().st_mtime_ns == mtime  # not rebuilt
    assert first.parent == tmp_path / "blas" and list(first.parent.iterdir()) == [first]


def _sgemm(fn, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    import ctypes

    f = ctypes.c_float
    p = ctypes.c_void_p
    fn.argtypes = [ctypes.c_int] * 6 + [f, p, ctypes.c_int, p, ctypes.c_int, f, p, ctypes.c_int]
    fn(
        101,
        ta,
        tb,
        m,
        n,
        k,
        alpha,
        a.ctypes.data,
        lda,
        b.ctypes.data,
        ldb,
        beta,
        c.ctypes.data,
        ldc,
    )


@pytest.mark.skipif(not _expect_active(), reason="needs the shim active")
@pytest.mark.parametrize("ta", [111, 112])
@pytest.mark.parametrize("tb", [111, 112])
@pytest.mark.parametrize("m,n", [(1, 7), (6, 1), (1, 1)])
def test_shim_equals_openblas_sgemm_for_every_layout_and_leading_dimension(ta, tb, m, n):
    """Called directly, with padded leading dimensions MLX never passes (it copies first)."""
    import ctypes

    shim = ctypes.CDLL(shim_status()["path"]).cblas_sgemm
    real = ctypes.CDLL(blas_status()["path"]).cblas_sgemm
    k, pad = 5, 3
    rng = np.random.default_rng(m * 100 + n + ta + 2 * tb)
    a_rows, a_cols = (m, k) if ta == 111 else (k, m)
    b_rows, b_cols = (k, n) if tb == 111 else (n, k)
    a = rng.standard_normal((a_rows, a_cols + pad)).astype(np.float32)
    b = rng.standard_normal((b_rows, b_cols + pad)).astype(np.float32)
    c0 = rng.standard_normal((m, n + pad)).astype(np.float32)
    want, got = c0.copy(), c0.copy()
    args = (ta, tb, m, n, k, 0.75, a, a_cols + pad, b, b_cols + pad, -1.5)
    _sgemm(real, *args, want, n + pad)
    before = gemv_calls()
    _sgemm(shim, *args, got, n + pad)
    assert gemv_calls() == before + 1
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)  # padding untouched as well


def test_a_compiler_that_fails_leaves_plain_openblas_and_says_why(tmp_path):
    cc = tmp_path / "cc"
    cc.write_text("#!/bin/sh\necho 'cc: fatal error: no space left' >&2\nexit 1\n")
    cc.chmod(0o755)
    out = _status_in_subprocess(CC=str(cc), MIXLORA_CACHE=str(tmp_path / "cache"))
    assert out == "build or load failed: cc: fatal error: no space left 24.0"
