"""The sgemm → sgemv shim (Linux): every one-row/one-column MLX matmul goes through it, exactly,
in front of each OpenBLAS that is installed (the scipy-openblas32 wheel, the system library)."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys

import mlx.core as mx
import numpy as np
import pytest
from helpers_blas import INSTALLED

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


EACH_BLAS = [
    pytest.param(name, marks=[] if isinstance(v, tuple) else pytest.mark.skip(reason=v))
    for name, v in INSTALLED.items()
]


def _status_in_subprocess(**env) -> str:
    code = (
        "import mlx_mixlora, mlx.core as mx; from mlx_mixlora.cpu.gemv_shim import shim_status;"
        "from mlx_mixlora.cpu.blas import blas_status;"
        "x = mx.ones((1, 8)) @ mx.ones((8, 3)); y = mx.ones((5, 8)) @ mx.ones((8, 3));"
        "print(shim_status()['reason'], blas_status()['name'], x.sum().item(), y.sum().item())"
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


@pytest.mark.skipif(isinstance(INSTALLED["system"], str), reason="needs the system OpenBLAS")
def test_off_switch_and_missing_compiler_leave_plain_system_openblas():
    assert (
        _status_in_subprocess(MIXLORA_BLAS="system", MIXLORA_NO_GEMV_SHIM="1")
        == "disabled by MIXLORA_NO_GEMV_SHIM=1 system 24.0 120.0"
    )
    out = _status_in_subprocess(MIXLORA_BLAS="system", CC="/nonexistent/cc")
    assert out.startswith("no C compiler") and out.endswith(" system 24.0 120.0")


@pytest.mark.skipif(
    isinstance(INSTALLED["scipy-openblas"], str) or shutil.which("cc") is None,
    reason="needs the scipy-openblas32 wheel and a C compiler",
)
def test_off_switch_keeps_the_forwarding_to_the_wheel():
    """Without the shim MLX cannot reach the prefixed wheel at all, so only the GEMV part turns off."""
    out = _status_in_subprocess(MIXLORA_BLAS="scipy-openblas", MIXLORA_NO_GEMV_SHIM="1")
    assert out == "disabled by MIXLORA_NO_GEMV_SHIM=1 (forwarding only) scipy-openblas 24.0 120.0"


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


@pytest.fixture(scope="module", params=EACH_BLAS)
def shim_and_blas(request, tmp_path_factory):
    """(a private copy of the shim pointed at one BLAS, that BLAS's own cblas_sgemm)."""
    if shutil.which("cc") is None:
        pytest.skip("needs a C compiler to build the shim")
    library, prefix = INSTALLED[request.param]
    blas = ctypes.CDLL(library)
    copy = tmp_path_factory.mktemp(request.param) / "shim.so"
    shutil.copy(build(["cc"]), copy)  # its own copy: its own function pointers and call count
    shim = ctypes.CDLL(str(copy), mode=ctypes.RTLD_LOCAL)
    shim.mixlora_gemv_shim_init.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int]
    shim.mixlora_gemv_shim_init(
        *(
            ctypes.cast(getattr(blas, f"{prefix}cblas_{n}"), ctypes.c_void_p)
            for n in ("sgemm", "sgemv", "dgemm", "cgemm")
        ),
        1,
    )
    shim.mixlora_gemv_shim_calls.restype = ctypes.c_longlong
    return shim, getattr(blas, f"{prefix}cblas_sgemm")


@pytest.mark.parametrize("ta", [111, 112])
@pytest.mark.parametrize("tb", [111, 112])
@pytest.mark.parametrize("m,n", [(1, 7), (6, 1), (1, 1), (4, 6)])
def test_shim_equals_the_blas_sgemm_for_every_layout_and_leading_dimension(
    shim_and_blas, ta, tb, m, n
):
    """Called directly, with padded leading dimensions MLX never passes (it copies first)."""
    shim, real = shim_and_blas
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
    before = shim.mixlora_gemv_shim_calls()
    _sgemm(shim.cblas_sgemm, *args, got, n + pad)
    assert shim.mixlora_gemv_shim_calls() == before + (m == 1 or n == 1)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)  # padding untouched as well
    op_a = a[:, :a_cols].astype(np.float64)
    op_b = b[:, :b_cols].astype(np.float64)
    op_a, op_b = (op_a if ta == 111 else op_a.T), (op_b if tb == 111 else op_b.T)
    exact = -1.5 * c0[:, :n].astype(np.float64) + 0.75 * op_a @ op_b
    np.testing.assert_allclose(got[:, :n], exact, rtol=1e-5, atol=1e-5)


def test_double_and_complex_products_are_forwarded_too(shim_and_blas):
    shim, _ = shim_and_blas
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((3, 4)), rng.standard_normal((4, 2))
    c = np.zeros((3, 2))
    d, i = ctypes.c_double, ctypes.c_int
    shim.cblas_dgemm.argtypes = [i] * 6 + [d, ctypes.c_void_p, i, ctypes.c_void_p, i, d]
    shim.cblas_dgemm.argtypes += [ctypes.c_void_p, i]
    shim.cblas_dgemm(101, 111, 111, 3, 2, 4, 1.0, a.ctypes.data, 4, b.ctypes.data, 2, 0.0,
                     c.ctypes.data, 2)  # fmt: skip
    np.testing.assert_allclose(c, a @ b, rtol=1e-12)
    za = (a + 1j * a[::-1]).astype(np.complex64)
    zb = (b - 2j * b).astype(np.complex64)
    zc = np.zeros((3, 2), np.complex64)
    one, zero = np.array([1 + 0j], np.complex64), np.array([0j], np.complex64)
    shim.cblas_cgemm(101, 111, 111, 3, 2, 4, ctypes.c_void_p(one.ctypes.data),
                     ctypes.c_void_p(za.ctypes.data), 4, ctypes.c_void_p(zb.ctypes.data), 2,
                     ctypes.c_void_p(zero.ctypes.data), ctypes.c_void_p(zc.ctypes.data), 2)  # fmt: skip
    np.testing.assert_allclose(zc, za.astype(np.complex128) @ zb, rtol=1e-5, atol=1e-5)


MLX_PRODUCTS = """
import mlx_mixlora, mlx.core as mx, numpy as np
from mlx_mixlora.cpu.blas import blas_status
from mlx_mixlora.cpu.gemv_shim import gemv_calls
r = lambda *s, seed: mx.random.normal(s, key=mx.random.key(seed))
f = lambda x: np.array(x, dtype=np.float64)
W, X, A = r(48, 40, seed=1), r(1, 40, seed=2), r(40, 5, seed=3)
cases = [(X @ W.T, f(X) @ f(W).T), (W @ A[:, 2:3], f(W) @ f(A)[:, 2:3]),
         (A[:, 3:4].T @ W.T, f(A)[:, 3:4].T @ f(W).T), (r(7, 40, seed=4) @ W.T, f(r(7, 40, seed=4)) @ f(W).T),
         (W.T @ r(48, 9, seed=5), f(W).T @ f(r(48, 9, seed=5)))]
err = max(float(np.abs(np.array(g) - w).max()) for g, w in cases)
with mx.stream(mx.cpu):  # float64 goes through cblas_dgemm
    d = mx.array(f(W), dtype=mx.float64) @ mx.array(f(A), dtype=mx.float64)
    err = max(err, float(np.abs(np.array(d) - f(W) @ f(A)).max()))
print(blas_status()["name"], gemv_calls(), err < 1e-4)
"""


@pytest.mark.parametrize("name", EACH_BLAS)
def test_mlx_matmuls_are_exact_with_each_installed_blas(name):
    out = subprocess.run(
        [sys.executable, "-c", MLX_PRODUCTS],
        capture_output=True,
        text=True,
        env={**os.environ, "MIXLORA_BLAS": name},
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    used, calls, exact = out.stdout.split()
    assert used == name and exact == "True"
    if shutil.which("cc"):
        assert calls == "3"  # the three one-row/one-column products went to sgemv


def test_a_compiler_that_fails_leaves_plain_openblas_and_says_why(tmp_path):
    cc = tmp_path / "cc"
    cc.write_text("#!/bin/sh\necho 'cc: fatal error: no space left' >&2\nexit 1\n")
    cc.chmod(0o755)
    env = {"CC": str(cc), "MIXLORA_CACHE": str(tmp_path / "cache")}
    if not isinstance(INSTALLED["system"], str):
        out = _status_in_subprocess(MIXLORA_BLAS="system", **env)
        assert out == "build or load failed: cc: fatal error: no space left system 24.0 120.0"
    # auto: the wheel needs the shim, so the system library (or MLX's own) is next
    fallback = "reference" if isinstance(INSTALLED["system"], str) else "system"
    out = _status_in_subprocess(**env)
    assert out.endswith(f"{fallback} 24.0 120.0")
