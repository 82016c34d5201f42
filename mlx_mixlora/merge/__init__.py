"""Merge LoRA adapters without retraining, in exact product space, with MLX kernels.

Every method works on the per-weight deltas ΔWᵢ = sᵢ·Bᵢ·Aᵢ of the adapters
(`Adapter`s from `adapter_format.read_adapter`), streamed one target weight at a
time. Adapters may differ in rank and in target set (an adapter that lacks a
module, or has weight 0 at its layer, takes no part there); adapters made for
different bases are refused.

The methods — their kind (exact / dense / factor), math and PEFT counterpart —
are the `METHODS` table in `methods.py`; `mixlora merge --help` prints it. Each
merges, per module, with wᵢ the per-layer weight vector (`weights`,
`layer_ranges` or `layer_weights`): exact methods keep ΔW = Σ wᵢ·ΔWᵢ as a
rank-Σr factor pair (linear/cat, task_arithmetic's λ, layer_wise's one-hot
ranges, svd's best rank-r); dense ones (TIES, DARE, magnitude pruning) merge the
stacked ΔWᵢ elementwise; `factor_*` are PEFT's factor-space variants (A and B
merged separately), not ΔW-exact, for users who need PEFT's numbers.

PEFT's ``density`` for DARE is the keep probability: ``drop = 1 - density``.
Dense methods (ties/dare/prune) come back as a low-rank adapter by randomized SVD
at `rank` (default Σr): Gaussian sketch with oversampling 16 and 3 power
iterations, seeded, within ~1e-8 of the optimal rank-r error on merged deltas.
The relative Frobenius error is reported per module (`errors`) and overall
(`rel_error`). With ``output="deltas"`` any method returns dense ΔW per module.

API::

    from mlx_mixlora.adapter_format import read_adapter
    from mlx_mixlora.merge import merge_adapters, fuse_deltas, restore, merge_into_base
    res = merge_adapters([read_adapter(d) for d in dirs], "ties", density=0.2, rank=16)
    res.config, res.weights           # low-rank adapter (scale 1): save with res.save(out)
    res.deltas                        # {path: ΔW} when output="deltas"
    handle = fuse_deltas(model, res.updates())   # add into an mlx-lm model in place
    restore(model, handle)                       # bit-identical originals back
    merge_into_base(model_dir, res.updates(), out_dir)   # new MLX model dir, atomically

Kernels: the stacked deltas come from one batched matmul and go through
`mx.compile`d elementwise passes (trim/elect/merge, `kernels.merge_slices`); a
hand-written Metal kernel for TIES' elect/merge is opt-in (`kernel="metal"`).
Factor pairs are fused into base weights with one `mx.addmm` each in memory
(`fuse_deltas`), and one per 2 MiB row tile when writing a model dir
(`merge_into_base`: reads, addmms and writes overlap).
"""

from importlib import import_module

# name -> module that defines it. Loaded on first use (PEP 562): `mixlora --help`
# reads the method table without importing MLX and NumPy (~0.3 s of its start-up).
_API = {
    name: module
    for module, names in (
        (".methods", "METHODS Method"),
        (".options", "MergeOptions"),
        (".engine", "MergeResult check_compatible merge_adapters"),
        (".into_base", "merge_into_base"),
        (".layers", "even_split parse_layer_ranges parse_layer_weights parse_weights"),
        ("..fuse", "fuse_deltas restore"),
    )
    for name in names.split()
}
__all__ = sorted(_API)


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(_API[name], __name__), name)
