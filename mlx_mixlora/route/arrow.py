"""Arrow prototypes (Ostapenko et al. 2024): the top input-space direction of each LoRA.

For ΔW = s·B·A ([out, in]) the prototype is its top right singular vector v
(the input direction the adapter amplifies most), found without forming B·A:
Aᵀ = Qa·Ra and B = Qb·Rb (thin QR), so ΔW = s·Qb·(Rb·Raᵀ)·Qaᵀ; the SVD of the
r×r core Rb·Raᵀ = U·S·Vᵀ gives v = Qa·V[:, 0]. Cost O((in+out)·r²), never O(in·out).
The sign of v is arbitrary; routing uses |⟨x, v⟩|.
"""

from __future__ import annotations

import mlx.core as mx


def top_right_singular(b: mx.array, a: mx.array) -> tuple[mx.array, float]:
    """(v [in], σ₁) of B·A for B [out, r], A [r, in], via two thin QRs and an r×r SVD."""
    a32 = a.astype(mx.float32)
    b32 = b.astype(mx.float32)
    qa, ra = mx.linalg.qr(a32.T, stream=mx.cpu)  # [in, r], [r, r]
    qb, rb = mx.linalg.qr(b32, stream=mx.cpu)  # [out, r], [r, r]
    _, s, vt = mx.linalg.svd(rb @ ra.T, stream=mx.cpu)
    v = qa @ vt[0]
    return v, float(s[0])


def arrow_prototypes(adapters: list, paths: list[str]) -> dict[str, mx.array]:
    """{module path: V [in, n_adapters]}, column i the prototype of adapter i at that module."""
    out = {}
    for p in paths:
        cols = [
            top_right_singular(ad.weights[f"{p}.lora_b"], ad.weights[f"{p}.lora_a"])[0]
            for ad in adapters
        ]
        out[p] = mx.stack(cols, axis=1)
    mx.eval(out)
    return out
