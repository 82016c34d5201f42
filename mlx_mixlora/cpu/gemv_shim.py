"""Stand in front of MLX's `cblas_*gemm`: forward them to the chosen OpenBLAS, one-row/one-column sgemm to its GEMV (Linux).

MLX's CPU backend computes every fp32 matmul with `cblas_sgemm`, decode steps
included (one token: M = 1). OpenBLAS 0.3.21 (Debian 12) runs such a product
through its full GEMM path, which packs the whole weight matrix first: a
1×2048 @ 2048×5632 product took 1.5 ms as `cblas_sgemm` and 0.38 ms as
`cblas_sgemv` on the same matrix (OpenBLAS >= 0.3.27 can forward these itself
when built with GEMM_GEMV_FORWARD; Debian's build cannot).

So the few lines of C below define `cblas_sgemm` (and `cblas_dgemm`,
`cblas_cgemm`, the other two MLX calls): a product with one row or one column
goes to the BLAS's `cblas_sgemv`, every other call to its `cblas_sgemm`,
unchanged. The BLAS is reached through function pointers, so its symbols may
carry a prefix: the `scipy-openblas32` wheel names them `scipy_cblas_sgemm`, and
this shim is what makes MLX use it at all. `blas` loads the shim into the global
symbol scope ahead of MLX (and of a system OpenBLAS), so MLX's `cblas_sgemm`
resolves to it. It is compiled once with the system C compiler ($CC, else cc)
into the cache dir. MIXLORA_NO_GEMV_SHIM=1 turns the GEMV diversion off (with a
system OpenBLAS the shim is then not loaded at all). This module must not import mlx.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

from ..cache import cache_root

SOURCE = r"""
typedef void (*gemm_t)(int, int, int, int, int, int, float, const float *, int,
                       const float *, int, float, float *, int);
typedef void (*gemv_t)(int, int, int, int, float, const float *, int, const float *,
                       int, float, float *, int);
typedef void (*dgemm_t)(int, int, int, int, int, int, double, const double *, int,
                        const double *, int, double, double *, int);
typedef void (*cgemm_t)(int, int, int, int, int, int, const void *, const void *, int,
                        const void *, int, const void *, void *, int);
static gemm_t real_gemm;
static gemv_t real_gemv;
static dgemm_t real_dgemm;
static cgemm_t real_cgemm;
static int use_gemv;
static long long gemv_calls;

enum { ROW_MAJOR = 101, NO_TRANS = 111, TRANS = 112 };

void mixlora_gemv_shim_init(gemm_t gemm, gemv_t gemv, dgemm_t dgemm, cgemm_t cgemm, int gemv_on) {
  real_gemm = gemm; real_gemv = gemv; real_dgemm = dgemm; real_cgemm = cgemm; use_gemv = gemv_on;
}
long long mixlora_gemv_shim_calls(void) { return __atomic_load_n(&gemv_calls, __ATOMIC_RELAXED); }

/* y = alpha * op(a) x + beta * y with a row-major a of rows x cols; ny = len(y). */
static void gemv(int trans, int rows, int cols, float alpha, const float *a, int lda,
                 const float *x, int incx, float beta, float *y, int incy, int ny) {
  if (beta == 0.0f) /* sgemm ignores C when beta is 0: never let its old bits (NaN) through */
    for (long i = 0; i < ny; i++) y[i * incy] = 0.0f;
  __atomic_add_fetch(&gemv_calls, 1, __ATOMIC_RELAXED);
  real_gemv(ROW_MAJOR, trans, rows, cols, alpha, a, lda, x, incx, beta, y, incy);
}

void cblas_sgemm(int order, int ta, int tb, int m, int n, int k, float alpha,
                 const float *a, int lda, const float *b, int ldb, float beta,
                 float *c, int ldc) {
  if (use_gemv && order == ROW_MAJOR && k > 0 && m > 0 && n > 0) {
    if (m == 1) { /* c[0, :] = alpha * a[0, :] op(b) + beta * c[0, :] */
      int incx = ta == NO_TRANS ? 1 : lda;
      if (incx > 0) {
        if (tb == NO_TRANS) gemv(TRANS, k, n, alpha, b, ldb, a, incx, beta, c, 1, n);
        else gemv(NO_TRANS, n, k, alpha, b, ldb, a, incx, beta, c, 1, n);
        return;
      }
    } else if (n == 1) { /* c[:, 0] = alpha * op(a) op(b)[:, 0] + beta * c[:, 0] */
      int incx = tb == NO_TRANS ? ldb : 1;
      if (incx > 0 && ldc > 0) {
        if (ta == NO_TRANS) gemv(NO_TRANS, m, k, alpha, a, lda, b, incx, beta, c, ldc, m);
        else gemv(TRANS, k, m, alpha, a, lda, b, incx, beta, c, ldc, m);
        return;
      }
    }
  }
  real_gemm(order, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

void cblas_dgemm(int order, int ta, int tb, int m, int n, int k, double alpha,
                 const double *a, int lda, const double *b, int ldb, double beta,
                 double *c, int ldc) {
  real_dgemm(order, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

void cblas_cgemm(int order, int ta, int tb, int m, int n, int k, const void *alpha,
                 const void *a, int lda, const void *b, int ldb, const void *beta,
                 void *c, int ldc) {
  real_cgemm(order, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
"""

_state: dict[str, object] = {"reason": "not attempted", "path": None, "gemv": False}
_lib: ctypes.CDLL | None = None


def _compiler() -> list[str] | None:
    cc = shlex.split(os.environ.get("CC", "")) or ["cc"]
    return cc if shutil.which(cc[0]) else None


def build(cc: list[str]) -> Path:
    """Compile SOURCE into the cache dir once (named by its hash); return the library path."""
    key = hashlib.sha256((SOURCE + " ".join(cc)).encode()).hexdigest()[:12]
    out = cache_root() / "blas" / f"gemv_shim-{key}-{platform.machine()}.so"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        src, lib = Path(tmp) / "gemv_shim.c", Path(tmp) / "gemv_shim.so"
        src.write_text(SOURCE)
        subprocess.run(
            [*cc, "-O2", "-shared", "-fPIC", "-o", str(lib), str(src)],
            check=True,
            capture_output=True,
            text=True,
        )
        os.replace(lib, out)  # atomic: a concurrent build of the same source is identical
    for old in out.parent.glob("gemv_shim-*.so"):  # builds of older sources
        if old != out:
            old.unlink(missing_ok=True)
    return out


def install(blas: ctypes.CDLL, prefix: str = "", forward_only: bool = False) -> bool:
    """Load the shim globally, pointed at `blas`'s own `{prefix}cblas_*gemm` and sgemv.

    Call it after loading the BLAS with RTLD_LOCAL and before promoting a system
    OpenBLAS to RTLD_GLOBAL: the global scope is searched in load order, so the
    shim's `cblas_sgemm` must enter it first. `forward_only`: the caller needs the
    forwarding even when MIXLORA_NO_GEMV_SHIM=1 (a prefixed BLAS has no other way in).
    """
    global _lib
    gemv_on = os.environ.get("MIXLORA_NO_GEMV_SHIM") != "1"
    if not gemv_on and not forward_only:
        _state["reason"] = "disabled by MIXLORA_NO_GEMV_SHIM=1"
        return False
    cc = _compiler()
    if cc is None:
        _state["reason"] = "no C compiler (set CC or install gcc) to build it"
        return False
    try:
        path = build(cc)
        try:
            lib = ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
        except OSError:
            if path.exists():
                raise
            # a process running another version of this source removed our build meanwhile
            lib = ctypes.CDLL(str(build(cc)), mode=ctypes.RTLD_GLOBAL)
    except (OSError, subprocess.CalledProcessError) as e:
        detail = (getattr(e, "stderr", "") or str(e)).strip().splitlines() or [type(e).__name__]
        _state["reason"] = f"build or load failed: {detail[-1]}"
        return False
    lib.mixlora_gemv_shim_init.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int]
    lib.mixlora_gemv_shim_init(
        *(
            ctypes.cast(getattr(blas, f"{prefix}cblas_{name}"), ctypes.c_void_p)
            for name in ("sgemm", "sgemv", "dgemm", "cgemm")
        ),
        int(gemv_on),
    )
    lib.mixlora_gemv_shim_calls.restype = ctypes.c_longlong
    _lib = lib
    reason = "active" if gemv_on else "disabled by MIXLORA_NO_GEMV_SHIM=1 (forwarding only)"
    _state.update(reason=reason, path=str(path), gemv=gemv_on)
    return True


def gemv_calls() -> int | None:
    """How many sgemm calls went to sgemv so far in this process (None: shim not active)."""
    return int(_lib.mixlora_gemv_shim_calls()) if _lib is not None and _state["gemv"] else None


def shim_status() -> dict[str, object]:
    """`active`: one-row/one-column products go to sgemv; `loaded`: the shim stands in front of MLX."""
    active = _lib is not None and bool(_state["gemv"])
    return {**_state, "active": active, "loaded": _lib is not None, "gemv_calls": gemv_calls()}
