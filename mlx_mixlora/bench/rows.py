"""One result row: a backend's figure for one (workload, case), with its spread and memory."""

from __future__ import annotations

from .timing import stats

# metric -> (unit shown in tables, higher is better)
METRICS = {
    "tokens_per_s": ("tokens/s", True),
    "seconds": ("s", False),
}


def row(
    workload: str,
    case: str,
    backend: str,
    metric: str,
    values: list[float],
    impl: str,
    peak_memory_gb: float | None = None,
    memory_kind: str | None = None,
    **extra,
) -> dict:
    """A measured row; `values` are per-run figures (already in the metric's unit)."""
    unit, higher = METRICS[metric]
    out = {
        "workload": workload,
        "case": case,
        "backend": backend,
        "impl": impl,
        "metric": metric,
        "unit": unit,
        "higher_is_better": higher,
        **stats(values),
        "peak_memory_gb": None if peak_memory_gb is None else round(peak_memory_gb, 3),
        "memory_kind": memory_kind,
    }
    out.update(extra)
    return out


def skipped(workload: str, backend: str, reason: str) -> dict:
    return {"workload": workload, "case": "*", "backend": backend, "skipped": reason}


def failed(workload: str, backend: str, error: str) -> dict:
    return {"workload": workload, "case": "*", "backend": backend, "error": error}


def train_row(backend: str, impl: str, r: dict, peak_gb: float, memory_kind: str, **common) -> dict:
    """A training row from a `timing.train_summary` (+ final loss); training always runs fp32."""
    return row("train", "lora", backend, "tokens_per_s", r["step_tokens_per_second"], impl,
               peak_gb, memory_kind, **common | {"dtype": "float32"},
               first_step_s=r["first_step_seconds"],
               tokens_per_cpu_second=r["tokens_per_cpu_second"], final_loss=r["final_loss"])  # fmt: skip
