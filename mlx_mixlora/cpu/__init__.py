"""CPU tuning for MLX on Linux: the OpenBLAS preload, the GEMV shim, heap tuning, fast exp/SiLU
and the machine facts `mixlora doctor` reports.

`blas`, `gemv_shim` and `heap` must not import mlx: the package runs them before
mlx.core is loaded. On macOS every piece is a no-op.
"""
