"""`mixlora bench`: the same workloads on MLX (ours), mlx-lm and PyTorch+PEFT, side by side.

One runner (`runner.run_bench`) prepares one model, one set of adapters and one
seeded token set (`spec`), runs every (backend, workload) in its own process
(`worker`), and writes JSON + a markdown table + a PNG of ratios (`report`).
Backends import lazily: the core package never imports torch, and a machine
without torch gets "skipped" rows, not a crash.

    mixlora bench all --shape tinyllama --layers 2 --out benchmarks/results/bench-linux-cpu

The scripts in `benchmarks/` measure with the same pieces: models, adapters and
merge cases from `spec`, the peers' trainers and decode loops from the
`*_backend` modules, `timing` (repeat, timed, stats), `process` (a measurement in
its own process), `env` (the machine record) and `report.publish`.
"""

from .runner import BACKENDS, WORKLOADS, run_bench

__all__ = ["BACKENDS", "WORKLOADS", "run_bench"]
