"""Run the bench: check the request, prepare one spec, one worker process per (backend, workload).

Everything the user can get wrong (workload, backend, shape, dtype, --model dir,
an existing output) is checked before any work starts, so a bad request costs
nothing and leaves nothing behind.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from ..errors import MixloraError
from ..io import check_output
from .env import load_average, machine_record
from .process import peer_env, run_json
from .reference import m1_limits
from .report import ratios, write_report
from .rows import failed
from .spec import SHAPES, Sizes, check_model, prepare

WORKLOADS = ("train", "prefill", "decode", "merge", "route")
BACKENDS = ("mlx", "mlx-lm", "torch", "peft")
SUPPORT = {
    "mlx": set(WORKLOADS),
    "mlx-lm": {"train", "decode"},
    "torch": {"prefill", "decode"},
    "peft": {"train", "prefill", "decode", "merge", "route"},
}
WORKER = {"mlx": "mlx", "mlx-lm": "mlx-lm", "torch": "torch", "peft": "torch"}
HIGH_LOAD = 1.5  # load average per CPU above which results are flagged as noisy


def parse_choice(value: str | list[str], allowed: tuple[str, ...], what: str) -> list[str]:
    items = value.split(",") if isinstance(value, str) else list(value)
    items = [x.strip() for x in items if x.strip()]
    if what == "workload" and items == ["all"]:
        return list(allowed)
    if not items:
        raise MixloraError(f"no {what} given; use {', '.join(allowed)}")
    for x in items:
        if x not in allowed:
            extra = " or all" if what == "workload" else ""
            raise MixloraError(f"unknown {what} {x!r}; use {', '.join(allowed)}{extra}")
    return [x for x in allowed if x in items]


def run_worker(
    module: str, workload: str, spec_path: Path, labels: list[str], timeout: float
) -> list[dict]:
    out = spec_path.parent / f"rows-{module}-{workload}.json"
    cmd = [sys.executable, "-m", "mlx_mixlora.bench.worker", module, workload, str(spec_path),
           str(out), ",".join(labels)]  # fmt: skip
    res, _ = run_json(cmd, out, peer_env(ours=module == "mlx", torch=module == "torch"), timeout)
    if "rows" in res:
        return res["rows"]
    return [failed(workload, b, res["error"]) for b in labels]


def run_bench(
    workloads: str | list[str],
    backends: str | list[str],
    out: str | Path,
    shape: str = "tinyllama",
    layers: int | None = None,
    model: str | Path | None = None,
    dtype: str = "float32",
    quick: bool = False,
    sizes: Sizes | None = None,
    overwrite: bool = False,
    timeout: float = 1800,
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True),
) -> dict:
    """Run, write `out`/bench.{json,md,png}, return the result dict."""
    wls = parse_choice(workloads, WORKLOADS, "workload")
    bks = parse_choice(backends, BACKENDS, "backend")
    if quick and model is None:
        shape = "tiny"
    check_model(shape, layers, model, dtype)
    out = check_output(out, overwrite, model)  # before any work, not only at the final write
    sizes = sizes or (Sizes.quick() if quick else Sizes())
    t0 = time.perf_counter()
    record = machine_record()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="mixlora-bench-") as tmp:
        work = Path(tmp)
        torch_files = any(WORKER[b] == "torch" for b in bks)
        log("preparing model, adapters and data ...")
        spec = prepare(work, sizes, shape, layers, model, dtype, torch_files=torch_files)
        log(f"model: {spec.source}")
        spec_path = spec.save(work / "spec.json")
        for wl in wls:
            groups: dict[str, list[str]] = {}
            for b in bks:
                if wl in SUPPORT[b]:
                    groups.setdefault(WORKER[b], []).append(b)
            for module, labels in groups.items():
                log(f"[{wl}] {'+'.join(labels)} ...")
                t = time.perf_counter()
                got = run_worker(module, wl, spec_path, labels, timeout)
                for r in got:
                    r.setdefault("load_average", load_average())
                log(f"[{wl}] {'+'.join(labels)}: {_summary(got)} ({time.perf_counter() - t:.0f} s)")
                rows += got
    load_after = load_average()
    notes = []
    if model is None:
        notes.append(f"model: {spec.source}; speed depends on shapes, not on the weights' values")
    threads = sorted({r["threads"] for r in rows if "threads" in r})
    if threads:
        notes.append(f"torch ran with torch.set_num_threads(os.cpu_count()) = {threads[0]} threads; "
                     "its OpenMP threads suffer more than MLX's when other processes share the cores")  # fmt: skip
    peak = max([*(record["load_average"] or [0])[:1], *(load_after or [0])[:1]])
    if peak > HIGH_LOAD * (record["cpus"] or 1):
        notes.append(f"the machine was busy (1-min load average up to {peak} on {record['cpus']} CPUs): "
                     "other processes shared the cores, so timings are noisy")  # fmt: skip
    result = {
        "format": "mlx-mixlora/bench",
        "format_version": 1,
        "workloads": wls,
        "backends": bks,
        "machine": record,
        "model": {
            "source": spec.source,
            "random": model is None,
            "dtype": dtype,
            "config": spec.config,
            "adapters": len(spec.adapters),
        },  # fmt: skip
        "sizes": asdict(sizes),
        "m1_reference": {
            "this_model": m1_limits(spec.config),
            "tinyllama_1.1b": m1_limits(SHAPES["tinyllama"]),
        },
        "rows": rows,
        "ratios": ratios(rows),
        "notes": notes,
        "load_average_after": load_after,
        "wall_seconds": round(time.perf_counter() - t0, 1),
    }
    write_report(out, result, overwrite=overwrite)
    return result


def _summary(rows: list[dict]) -> str:
    parts = []
    for r in rows:
        if "median" in r:
            parts.append(f"{r['backend']} {r['case']} {r['median']:.4g} {r['unit']}")
        else:
            parts.append(f"{r['backend']} {r.get('skipped') or 'error: ' + r.get('error', '?')}")
    return "; ".join(parts)


__all__ = ["BACKENDS", "SHAPES", "SUPPORT", "WORKLOADS", "run_bench"]
