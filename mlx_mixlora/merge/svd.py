"""Rank reduction of merged deltas, with the relative Frobenius error it costs.

- `factored_svd(B, A, r)`: ΔW = B·A is already low rank (a rank-Σr product-space
  merge). QR of both factors and an SVD of the small R_B·R_Aᵀ give the *exact*
  truncated SVD without ever forming ΔW: optimal rank-r, error from the tail
  singular values.
- `randomized_svd(D, r)`: dense deltas (TIES/DARE/prune). Halko, Martinsson &
  Tropp (2011): a sketch with oversampling, power iterations with QR
  re-orthonormalisation, seeded. Only (r+p)-sized SVDs are computed. A merge's
  sketch starts from its adapters' own row spaces (their A factors, `start`):
  trimming, dropping and sign election perturb a sum of low-rank deltas but keep
  most of it there. Two power iterations from there came as close to the optimal
  rank-r error as three from a Gaussian sketch on the demo's trained adapters at
  rank 8 (within 2e-5 relative of it for TIES), a little less close at rank Σr
  (5e-3 against 2e-3), and closer on random adapters; each iteration is two
  passes over D, most of a TIES merge's time.

Both return (B' [out, r], A' [r, in], rel_err, ‖ΔW‖²_F) with ΔW ≈ B'·A' (scale 1).
Their QRs are of tall, thin matrices ([dim, a few dozen]): `_qr` does them as
CholeskyQR2 in float64 (a Gram matrix and its Cholesky factor, twice), whose work
is BLAS products; MLX's Householder QR runs its level-2 loops in the wheel's
reference BLAS, 5× slower at 2048×24 here (3.5 against 0.65 ms). A numerically
rank-deficient input falls back to that QR. QR/SVD run on a CPU stream (MLX
implements them there only): the current stream when the default device is the
CPU (a merge worker's own, `cpu.streams`), else the CPU's default stream.
"""

from __future__ import annotations

import mlx.core as mx


def _cpu() -> mx.Stream | mx.Device | None:
    """Where QR/SVD run: the current stream on the CPU device, else the CPU (GPU defaults)."""
    return None if mx.default_device() == mx.cpu else mx.cpu


# CholeskyQR2 in float64 is accurate while cond(Y) is well below 1/√eps64 ≈ 7e7;
# below this ratio of R's smallest to largest diagonal entry, Householder QR is used.
_CHOL_MIN_DIAG = 1e-6


def _qr(y: mx.array) -> tuple[mx.array, mx.array]:
    """Thin QR of a tall y [m, k] (k ≤ m): (Q [m, k] orthonormal columns, R [k, k]), in y's dtype."""
    s = _cpu()
    y64 = y.astype(mx.float64, stream=s)
    r1 = mx.linalg.cholesky(mx.matmul(y64.T, y64, stream=s), upper=True, stream=s)
    d = mx.abs(mx.diagonal(r1, stream=s), stream=s)
    ok = mx.min(d, stream=s) > _CHOL_MIN_DIAG * mx.max(d, stream=s)
    if not ok.item():  # NaN (not positive definite) compares False too
        return mx.linalg.qr(y, stream=s)
    q1 = mx.matmul(y64, mx.linalg.tri_inv(r1, upper=True, stream=s), stream=s)
    # second pass: Q1 is orthonormal only to ~eps·cond(Y)²; this one to float64 rounding
    r2 = mx.linalg.cholesky(mx.matmul(q1.T, q1, stream=s), upper=True, stream=s)
    q = mx.matmul(q1, mx.linalg.tri_inv(r2, upper=True, stream=s), stream=s)
    r = mx.matmul(r2, r1, stream=s)
    return q.astype(y.dtype, stream=s), r.astype(y.dtype, stream=s)


def _small_svd(m: mx.array) -> tuple[mx.array, mx.array, mx.array]:
    return mx.linalg.svd(m, stream=_cpu())


def _sq_norm(x: mx.array) -> float:
    """‖x‖²_F with fp32 row sums added in fp64: a flat fp32 sum drifts ~1e-4 at 4M entries.

    fp32 rows go through NumPy's einsum on a zero-copy view: one pass, 4× faster
    than MLX's square-then-sum on the CPU (2 vs 8.5 ms for 2048²).
    """
    mx.eval(x)
    if x.dtype == mx.float32 and x.ndim == 2:
        import numpy as np  # here, not at the top: exact merges (svd, linear) never need it

        v = np.array(memoryview(x), copy=False)
        return float(np.einsum("ij,ij->i", v, v).sum(dtype=np.float64))
    rows = mx.sum(x * x, axis=-1).astype(mx.float64, stream=_cpu())
    return float(mx.sum(rows, stream=_cpu()).item())


def factored_svd(b: mx.array, a: mx.array, rank: int) -> tuple[mx.array, mx.array, float, float]:
    """Best rank-`rank` approximation of B·A (B [out,R], A [R,in]) and its relative error."""
    qb, rb = _qr(b)  # [out,R], [R,R]
    qa, ra = _qr(a.T)  # [in,R], [R,R]
    u, s, vt = _small_svd(rb @ ra.T)
    r = min(rank, s.shape[0])
    new_b = (qb @ u[:, :r]) * s[:r]
    new_a = vt[:r] @ qa.T
    total = mx.sum(s * s)
    tail = mx.sum(s[r:] * s[r:]) if r < s.shape[0] else mx.array(0.0)
    mx.eval(new_b, new_a, total, tail)
    err = float(mx.sqrt(tail / total).item()) if total.item() > 0 else 0.0
    return new_b, new_a, err, float(total.item())


def randomized_svd(
    d: mx.array,
    rank: int,
    oversample: int = 16,
    power_iters: int = 3,
    key: mx.array | None = None,
    start: mx.array | None = None,
) -> tuple[mx.array, mx.array, float, float]:
    """Rank-`rank` factors of dense `d` [out, in] by randomized SVD; error measured exactly.

    `start` [in, k]: directions expected to hold most of d's row space; the sketch
    uses them and Gaussian columns for the rest of its width (rank + oversample).
    """
    out_dim, in_dim = d.shape
    if key is None:
        key = mx.random.key(0)
    cols = [] if start is None else [start.astype(d.dtype)]
    given = 0 if start is None else start.shape[1]
    width = min(max(rank + oversample, given), out_dim, in_dim)
    if given < width:
        cols.append(mx.random.normal((in_dim, width - given), key=key, dtype=d.dtype))
    omega = mx.concatenate(cols, axis=1)[:, :width] if len(cols) > 1 else cols[0][:, :width]
    q, _ = _qr(d @ omega)
    for _ in range(power_iters):
        # dᵀ·q as (qᵀ·d)ᵀ: the same product, but BLAS streams d row-major (~30% faster)
        z, _ = _qr((q.T @ d).T)
        q, _ = _qr(d @ z)
    small = q.T @ d  # [width, in]
    # SVD of the wide `small` through a QR of its transpose: only width×width SVDs.
    qs, rs = _qr(small.T)  # [in,w], [w,w]
    u2, s, v2t = _small_svd(rs.T)  # small = u2·diag(s)·(qs·v2tᵀ)ᵀ
    r = min(rank, s.shape[0])
    new_b = (q @ u2[:, :r]) * s[:r]
    new_a = v2t[:r] @ qs.T
    # B'·A' is the orthogonal projection of d onto span(q·u2[:, :r]), so
    # ‖d − B'A'‖² = ‖d‖² − Σ s_r²: one pass over d instead of forming the residual.
    # Below 1e-2 relative error that difference cancels in fp32; measure it directly.
    kept = mx.sum(s[:r].astype(mx.float64, stream=_cpu()) ** 2, stream=_cpu())
    mx.eval(new_b, new_a, kept)
    d2, k2 = _sq_norm(d), float(kept.item())
    err = (max(d2 - k2, 0.0) / d2) ** 0.5 if d2 > 0 else 0.0
    if err < 1e-2 and d2 > 0:
        resid = mx.addmm(d, new_b, new_a, alpha=-1.0, beta=1.0)
        err = (_sq_norm(resid) / d2) ** 0.5
    return new_b, new_a, err, d2
