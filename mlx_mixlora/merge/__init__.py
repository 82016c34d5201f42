"""Merge LoRA adapters without retraining, in exact product space, with MLX kernels.

Every method works on the per-weight deltas ΔWᵢ = sᵢ·Bᵢ·Aᵢ of the adapters
(`(AdapterConfig, weights)` pairs from `adapter_format.load_adapter`), streamed
one target weight at a time. Adapters may differ in rank and in target set (an
adapter that lacks a module, or has weight 0 at its layer, takes no part there);
adapters made for different bases are refused.

Methods (`METHODS`), with wᵢ the per-layer weight vector (`weights`, `layer_ranges`
or `layer_weights`):

=====================  =====================================================  ==================
method                 math                                                   PEFT counterpart
=====================  =====================================================  ==================
linear (weighted), cat ΔW = Σ wᵢ·ΔWᵢ, exact at rank Σr (concatenation)         cat
task_arithmetic        ΔW = λ·Σ wᵢ·ΔWᵢ                                         —
layer_wise             each layer range takes one adapter (one-hot wᵢ)        —
svd                    linear, then best rank-r (exact factored SVD)          svd
ties                   trim each ΔWᵢ to its top int(k·numel) |values|,        ties_svd (+ rank)
                       elect sign by total mass, disjoint weighted mean
dare_linear            drop entries with prob p, rescale 1/(1-p), Σ wᵢ        dare_linear_svd
dare_ties              DARE, then elect + disjoint mean (+ trim if density)   dare_ties_svd
magnitude_prune        trim each ΔWᵢ, then Σ wᵢ                                magnitude_prune_svd
factor_<m>             PEFT's factor-space `m` (A, B merged separately,       linear, ties, ...
                       weights √|wᵢsᵢ|); not ΔW-exact, for PEFT's numbers
=====================  =====================================================  ==================

PEFT's ``density`` for DARE is the keep probability: ``drop = 1 - density``.
Dense methods (ties/dare/prune) come back as a low-rank adapter by randomized SVD
at `rank` (default Σr): Gaussian sketch with oversampling 16 and 3 power
iterations, seeded, within ~1e-8 of the optimal rank-r error on merged deltas.
The relative Frobenius error is reported per module (`errors`) and overall
(`rel_error`). With ``output="deltas"`` any method returns dense ΔW per module.

API::

    from mlx_mixlora.merge import merge_adapters, fuse_deltas, restore, merge_into_base
    res = merge_adapters([load_adapter(d) for d in dirs], "ties", density=0.2, rank=16)
    res.config, res.weights           # low-rank adapter (scale 1): save with res.save(out)
    res.deltas                        # {path: ΔW} when output="deltas"
    handle = fuse_deltas(model, res.updates())   # add into an mlx-lm model in place
    restore(model, handle)                       # bit-identical originals back
    merge_into_base(model_dir, res.updates(), out_dir)   # new MLX model dir, atomically

Kernels: `kernels.combine` is one `mx.compile`d elementwise pass (trim/elect/merge)
over the stacked deltas from one batched matmul; on Metal an optional
`mx.fast.metal_kernel` does the elect/merge step. Factor pairs are fused into base
weights with one `mx.addmm` each in memory (`fuse_deltas`), and one per 2 MiB row
tile when writing a model dir (`merge_into_base`: reads, addmms and writes overlap).
"""

from ..fuse import fuse_deltas, restore
from .into_base import merge_into_base
from .layers import even_split, parse_layer_ranges, parse_layer_weights, parse_weights
from .methods import METHODS, MergeResult, check_compatible, merge_adapters

__all__ = [
    "METHODS",
    "MergeResult",
    "check_compatible",
    "even_split",
    "fuse_deltas",
    "merge_adapters",
    "merge_into_base",
    "parse_layer_ranges",
    "parse_layer_weights",
    "parse_weights",
    "restore",
]
