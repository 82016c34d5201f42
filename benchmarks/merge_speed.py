"""Merge speed and reconstruction error against PEFT's `add_weighted_adapter`, as JSON.

Three rank-8 adapters on q/k/v/o of TinyLlama-shaped layers (hidden 2048, kv dim
256, intermediate 5632, 4 layers, small vocab) live in one PEFT model; the very
same A/B numbers are merged by `mlx_mixlora.merge.merge_adapters`. For each
comparable combination type we time PEFT once and ours cold (first call, MLX
compile included) and warm (best of --repeats), and report the relative
Frobenius error of each result against the exact dense merge.

Error reference: PEFT's own `merge_utils` math on the dense deltas (what its
`*_svd` types then truncate). DARE draws random masks; for the error run both
sides are fed the same masks (PEFT's `random_pruning` patched, ours via
`mask_fn`), while the timed runs use each side's own RNG.

What a user waits for is the whole command: every case is also run as
`mixlora merge ... --json` in --command-runs fresh processes (interpreter start,
imports, reading the adapters, MLX's first-call compilation, the merge, writing
the merged adapter), after one untimed run that fills MLX's on-disk kernel cache
as any earlier merge on the machine would; `ours_command_s` gives their median,
min and spread, `speedup_command` PEFT's in-process seconds over that median (and
`speedup_command_best` over the min). `ours_first_run_s` is one more command with
an empty kernel cache (a fresh TMPDIR: MLX compiles its fused CPU kernels with
the C++ compiler), what the very first merge on a machine costs.

Our in-process merges are timed in a worker process that never imports torch (as in
`mixlora merge`): with torch loaded, its BLAS/OpenMP threads contend with MLX's.
Timings are wall-clock; ours also reports process CPU time, and the speedup is
also given against PEFT's times measured on a quiet machine (--peft-reference),
because on a shared 2-core box PEFT's multi-threaded SVD slows down far more
under load than our mostly single-threaded kernels.

Into-base: fusing into a saved MLX model dir vs one read+write pass over the
affected weights (and vs copying the whole weights file). The new model dir
clones the base's files where the filesystem shares blocks (APFS, XFS, Btrfs),
else copies them: run it once per filesystem with --into-base-tmp DIR (repeatable;
e.g. an XFS loop mount on Linux); each run records the filesystem and the mode used.
The committed run's XFS mount (as root; xfsprogs from Debian):

    truncate -s 3G /tmp/xfs.img && mkfs.xfs -q -m reflink=1 /tmp/xfs.img
    mkdir -p /mnt/xfs && mount -o loop /tmp/xfs.img /mnt/xfs

    python benchmarks/merge_speed.py --out benchmarks/results/merge_speed.json
"""

from __future__ import annotations

import argparse
import json
import resource
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import mlx_mixlora  # noqa: F401  (OpenBLAS before mlx.core: without it MLX's GEMM/QR are ~4× slower)

# isort: split
import mlx.core as mx
import numpy as np

from mlx_mixlora.bench.env import load_average, machine_record
from mlx_mixlora.bench.process import peer_env, run_json
from mlx_mixlora.bench.report import publish
from mlx_mixlora.bench.spec import MERGE_CASES, TARGETS, TINYLLAMA
from mlx_mixlora.bench.spec import MERGE_WEIGHTS as WEIGHTS
from mlx_mixlora.bench.timing import repeat, stats, timed

NAMES = ["t1", "t2", "t3"]
TILE_MIB = [0.5, 1, 2, 4, 8, 16, 64]  # 64 MiB: every weight here in one piece


def model_config(args) -> dict:
    return dict(TINYLLAMA, hidden_size=args.hidden, intermediate_size=args.intermediate,
                num_hidden_layers=args.layers, num_attention_heads=args.hidden // 64,
                num_key_value_heads=args.kv // 64, vocab_size=args.vocab)  # fmt: skip


def build(args):
    """A PEFT model with three random adapters, and the very same factors as our adapters."""
    import peft
    import torch

    from mlx_mixlora.adapter_format import Adapter, AdapterConfig
    from mlx_mixlora.bench.torch_backend import lora_modules, random_torch_llama

    cfg = model_config(args)
    base = random_torch_llama(cfg).eval()
    model = None
    for i, name in enumerate(NAMES):
        torch.manual_seed(100 + i)
        lc = peft.LoraConfig(
            r=args.rank, lora_alpha=2 * args.rank, target_modules=TARGETS, init_lora_weights=False
        )
        if model is None:
            model = peft.get_peft_model(base, lc, adapter_name=name)
        else:
            model.add_adapter(name, lc)
    ours = []
    for name in NAMES:
        w = {}
        for p, mod in lora_modules(model):
            if name in mod.lora_A:
                w[f"{p}.lora_a"] = mx.array(mod.lora_A[name].weight.detach().numpy())
                w[f"{p}.lora_b"] = mx.array(mod.lora_B[name].weight.detach().numpy())
        mx.eval(w)
        layers = list(range(args.layers))
        acfg = AdapterConfig(args.rank, 2.0 * args.rank, TARGETS, layers, name=name)
        ours.append(Adapter(acfg, w, name))
    return model, ours, cfg


def peft_deltas(model, adapter):
    from mlx_mixlora.bench.torch_backend import lora_modules

    return {
        p: m.get_delta_weight(adapter).detach().numpy()
        for p, m in lora_modules(model)
        if adapter in m.lora_A
    }


class FixedMasks:
    """PEFT's random_pruning fed with given masks in its call order (module, then adapter)."""

    def __init__(self, masks, order):
        self.masks, self.order = masks, list(order)

    def __call__(self, tensor, density, rescale):
        import torch

        m = torch.from_numpy(self.masks[self.order.pop(0)])
        out = tensor * m
        return out / density if rescale else out


def rel_err(got: dict, ref: dict) -> float:
    num = sum(float(np.sum((np.asarray(got[p], np.float64) - ref[p]) ** 2)) for p in ref)
    den = sum(float(np.sum(np.asarray(ref[p], np.float64) ** 2)) for p in ref)
    return float(np.sqrt(num / den))


def reference(model, ct, pkw, masks=None):
    """The exact dense merge by PEFT's own math (before any SVD), per module."""
    import torch
    from peft.utils import merge_utils

    from mlx_mixlora.bench.torch_backend import lora_modules

    out = {}
    ws = torch.tensor(WEIGHTS)
    for p, m in lora_modules(model):
        ds = [m.get_delta_weight(n) for n in NAMES]
        if ct == "svd":
            d = merge_utils.task_arithmetic(ds, ws)
        elif ct == "ties_svd":
            d = merge_utils.ties(ds, ws, pkw["density"], "total")
        elif ct == "magnitude_prune_svd":
            d = merge_utils.magnitude_prune(ds, ws, pkw["density"])
        else:  # DARE with the shared masks
            kept = [ds[i] * torch.from_numpy(masks[(p, i)]) / pkw["density"] for i in range(3)]
            st = torch.stack(kept)
            if ct == "dare_linear_svd":
                d = (st * ws.view(-1, 1, 1)).sum(0)
            else:
                sign_mask = merge_utils.calculate_majority_sign_mask(st, "total")
                d = merge_utils.disjoint_merge(st * ws.view(-1, 1, 1), sign_mask)
        out[p] = d.detach().numpy().astype(np.float64)
    return out


def time_ours(ours, method, kw, repeats):
    """Cold and warm wall/CPU seconds of one merge, in this process."""
    from mlx_mixlora.merge import merge_adapters

    def merge():
        merge_adapters(ours, method, weights=WEIGHTS, **kw)

    cold = timed(merge)[0]
    warm, cpu = zip(*(timed(merge) for _ in range(repeats)), strict=True)
    return cold, list(warm), list(cpu)


def worker(spec: dict) -> dict:
    """Our timings in a process that never imports torch.

    With torch loaded, its BLAS/OpenMP threads contend with MLX's on 2 cores and
    our randomized SVD ran ~7× slower; `mixlora merge` never loads torch.
    """
    from mlx_mixlora.adapter_format import read_adapter

    ours = [read_adapter(d) for d in spec["adapters"]]
    if spec.get("model_dir"):
        return into_base_timings(ours, spec)
    cold, warm, cpu = time_ours(ours, spec["method"], spec["kw"], spec["repeats"])
    return {"cold": cold, "warm": warm, "cpu": cpu, "torch_loaded": "torch" in sys.modules}


def in_worker(spec: dict) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        res, _ = run_json(
            [sys.executable, __file__, "--worker", json.dumps(spec), "--result", str(out)], out
        )
    if "error" in res:
        raise SystemExit(f"merge worker failed: {res['error']}")
    return res


def mixlora_command() -> list[str]:
    """How a user starts `mixlora`: the installed console script, else `python -m`."""
    exe = Path(sys.executable).with_name("mixlora")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "mlx_mixlora.cli"]


def merge_command(adapters: list[str], method: str, kw: dict, out: Path) -> list[str]:
    """`mixlora merge` for one MERGE_CASES row: the same merge as merge_adapters(**kw)."""
    opts = [f"--{k.replace('_', '-')}={v}" for k, v in kw.items()]
    weights = ",".join(str(w) for w in WEIGHTS)
    return [*mixlora_command(), "merge", *adapters, "--method", method, "--weights", weights,
            *opts, "-o", str(out), "--json"]  # fmt: skip


def run_command(cmd: list[str], work: Path, env: dict | None = None) -> tuple[dict, float, float]:
    """One whole command in a fresh process: (its --json summary, wall s, CPU s of the process)."""
    summary, tmp = work / "summary.json", work / "summary.json.tmp"
    shell = f"{shlex.join(cmd)} > {shlex.quote(str(tmp))} && mv {shlex.quote(str(tmp))} {shlex.quote(str(summary))}"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    res, wall = run_json(["sh", "-c", shell], summary, env=env)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return res, wall, cpu


def command_env() -> dict:
    """A user's environment: ours as it ships, and Python's bytecode cache allowed (an
    installed package has its .pyc files; PYTHONDONTWRITEBYTECODE in a dev shell would
    recompile every module on every start)."""
    env = peer_env(ours=True)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def time_command(adapters: list[str], method: str, kw: dict, runs: int) -> dict:
    """The whole `mixlora merge` command, cold, `runs` times (median, min, spread), and its first run."""
    with tempfile.TemporaryDirectory(prefix="merge_cmd_") as tmp:
        work = Path(tmp)
        out = work / "merged"

        def once(env=None):
            cmd = merge_command(adapters, method, kw, out)
            res, wall, cpu = run_command(cmd, work, env or command_env())
            if "error" in res:
                raise SystemExit(f"mixlora merge --method {method} failed: {res['error']}")
            shutil.rmtree(out)  # untimed: every run writes a new adapter, as a user's does
            return res, wall, cpu

        fresh = work / "tmpdir"  # an empty MLX kernel cache: the very first merge on a machine
        fresh.mkdir()
        _, first_wall, first_cpu = once(command_env() | {"TMPDIR": str(fresh)})
        once()  # fills the default kernel cache, as any earlier merge on this machine has
        timings = [once() for _ in range(runs)]
    summary = timings[0][0]
    return {
        "command": shlex.join(
            [Path(merge_command([], method, kw, Path("OUT"))[0]).name]
            + merge_command(["A1", "A2", "A3"], method, kw, Path("OUT"))[1:]
        ),
        "wall": stats([w for _, w, _ in timings]),
        "cpu": stats([c for _, _, c in timings]),
        "first_run_wall": first_wall,
        "first_run_cpu": first_cpu,
        "rel_error": summary["rel_error"],
    }


def bench_merges(model, ours, args):
    from peft.utils import merge_utils

    from mlx_mixlora.bench.torch_backend import lora_modules
    from mlx_mixlora.merge import merge_adapters

    rows = []
    paths = [p for p, _ in lora_modules(model)]
    for ct, (method, kw, pkw) in MERGE_CASES.items():
        if args.only and ct not in args.only.split(","):
            continue
        row = {"peft": ct, "ours": method, "ours_kwargs": kw, "peft_kwargs": pkw}
        tw = in_worker(
            {"adapters": args.adapter_dirs, "method": method, "kw": kw, "repeats": args.repeats}
        )
        cold, warm, cpu = tw["cold"], tw["warm"], tw["cpu"]
        row.update(
            ours_cold_s=cold, ours_warm_s=min(warm), ours_warm_all_s=warm, ours_cpu_s=min(cpu)
        )
        if args.command_runs:
            cmd = time_command(args.adapter_dirs, method, kw, args.command_runs)
            row.update(
                ours_command_s=cmd["wall"],
                ours_command_cpu_s=cmd["cpu"],
                ours_first_run_s=cmd["first_run_wall"],
                ours_first_run_cpu_s=cmd["first_run_cpu"],
                ours_command=cmd["command"],
                rel_err_reported_by_command=cmd["rel_error"],
            )
        res = merge_adapters(ours, method, weights=WEIGHTS, **kw)  # for the error, untimed
        if args.peft_reference and ct in args.peft_reference:
            ref = row["peft_reference_s"] = args.peft_reference[ct]
            row["speedup_vs_reference"] = ref / row["ours_warm_s"]
            if args.command_runs:
                row["speedup_command_vs_reference"] = ref / row["ours_command_s"]["median"]
        if not args.skip_peft:
            name = f"m_{ct}"
            row["peft_s"], row["peft_cpu_s"] = timed(
                lambda n=name, c=ct, k=pkw: model.add_weighted_adapter(NAMES, WEIGHTS, n, c, **k)
            )
            row["speedup_warm"] = row["peft_s"] / row["ours_warm_s"]
            row["speedup_cold"] = row["peft_s"] / row["ours_cold_s"]
            if args.command_runs:
                row["speedup_command"] = row["peft_s"] / row["ours_command_s"]["median"]
                row["speedup_command_best"] = row["peft_s"] / row["ours_command_s"]["min"]
            peft_d = peft_deltas(model, name)
            model.delete_adapter(name)
        if ct.endswith("_svd") or ct == "svd":
            masks = None
            if ct.startswith("dare"):  # the same masks on both sides for the error run
                rng = np.random.default_rng(7)
                shapes = {p: m.get_base_layer().weight.shape for p, m in lora_modules(model)}
                masks = {
                    (p, i): (rng.random(shapes[p]) < pkw["density"]).astype(np.float32)
                    for p in paths
                    for i in range(3)
                }
                res = merge_adapters(
                    ours,
                    method,
                    weights=WEIGHTS,
                    mask_fn=lambda key, i, shape, _m=masks: mx.array(_m[(key, i)] > 0),
                    **kw,
                )
                if not args.skip_peft:
                    orig = merge_utils.random_pruning
                    merge_utils.random_pruning = FixedMasks(
                        masks, [(p, i) for p in paths for i in range(3)]
                    )
                    try:
                        model.add_weighted_adapter(
                            NAMES, WEIGHTS, "m_err", combination_type=ct, **pkw
                        )
                    finally:
                        merge_utils.random_pruning = orig
                    peft_d = peft_deltas(model, "m_err")
                    model.delete_adapter("m_err")
            ref = reference(model, ct, pkw, masks)
            ours_d = {p: np.array(res.delta(p)) for p in ref}
            row["rel_err_ours"] = rel_err(ours_d, ref)
            row["rel_err_reported_by_ours"] = res.rel_error
            if not args.skip_peft:
                row["rel_err_peft"] = rel_err(peft_d, ref)
        elif not args.skip_peft:  # exact / factor-space: agreement with PEFT's ΔW
            ours_d = {p: np.array(res.delta(p)) for p in peft_d}
            row["rel_diff_vs_peft"] = rel_err(
                ours_d, {k: v.astype(np.float64) for k, v in peft_d.items()}
            )
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "ours_warm_all_s"}), flush=True)
    return rows


def into_base_timings(ours, spec) -> dict:
    """Fuse into the saved model dir vs one read+write pass over the affected weights."""
    from mlx_mixlora.io import check_safetensors_header
    from mlx_mixlora.merge import into_base, merge_adapters

    src, work, repeats = Path(spec["model_dir"]), Path(spec["work"]), spec["repeats"]
    shard = src / "model.safetensors"
    header = check_safetensors_header(shard)
    with open(shard, "rb") as f:
        data_start = 8 + int.from_bytes(f.read(8), "little")
    keys = [f"{p}.weight" for p in ours[0].module_paths()]

    def pass_affected():
        out = work / "pass.bin"
        with open(shard, "rb") as fin, open(out, "wb") as fout:
            for k in keys:
                a, b = header[k]["data_offsets"]
                fin.seek(data_start + a)
                fout.write(fin.read(b - a))
        out.unlink()

    def pass_copy():
        shutil.copyfile(shard, work / "copy.safetensors")
        (work / "copy.safetensors").unlink()

    results = {
        "filesystem": _fs_type(work),
        "weights_file_bytes": shard.stat().st_size,
        "affected_bytes": sum(
            header[k]["data_offsets"][1] - header[k]["data_offsets"][0] for k in keys
        ),
    }
    for name, fn in (("read_write_affected_s", pass_affected), ("copy_file_s", pass_copy)):
        results[name] = min(repeat(fn, repeats, warmup=0))
    for method, kw, output in (("cat", {}, "adapter"), ("ties", {"density": 0.2}, "deltas")):
        res = merge_adapters(ours, method, weights=WEIGHTS, output=output, **kw)
        best, results["file_modes"] = best_into_base(src, res.updates(), work, repeats)
        results[f"into_base_{method}_s"] = best
        results[f"into_base_{method}_vs_read_write_affected"] = (
            best / results["read_write_affected_s"]
        )
        results[f"into_base_{method}_vs_copy_file"] = best / results["copy_file_s"]
    results["tile_bytes"] = into_base.TILE_BYTES
    results["into_base_cat_vs_read_write_affected_by_tile_mib"] = tile_sweep(
        ours, src, work, repeats, results["read_write_affected_s"]
    )
    return results


def best_into_base(src: Path, updates: dict, work: Path, repeats: int) -> tuple[float, dict]:
    """Best of `repeats` timed `merge_into_base` runs (the output is removed untimed) and
    the clone/copy mode of each file."""
    from mlx_mixlora.merge import merge_into_base

    ts, out = [], work / "out"
    for _ in range(repeats):
        t = time.perf_counter()
        merge_into_base(src, updates, out)
        ts.append(time.perf_counter() - t)
        modes = json.loads((out / "mixlora_merge.json").read_text())["files"]
        shutil.rmtree(out)
    return min(ts), modes


def tile_sweep(ours, src: Path, work: Path, repeats: int, pass_s: float) -> dict:
    """Into-base `cat` for several tile sizes, as a ratio to the read+write pass (picks TILE_BYTES)."""
    from mlx_mixlora.merge import into_base, merge_adapters

    updates = merge_adapters(ours, "cat", weights=WEIGHTS).updates()
    default, ratios = into_base.TILE_BYTES, {}
    try:
        for mib in TILE_MIB:
            into_base.TILE_BYTES = int(mib * (1 << 20))
            ratios[str(mib)] = best_into_base(src, updates, work, repeats)[0] / pass_s
    finally:
        into_base.TILE_BYTES = default
    return ratios


def _fs_type(path: Path) -> str:
    """The filesystem type of `path` (Linux: /proc/mounts, longest mount point that contains it)."""
    best, kind = "", "unknown"
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            mnt, fs = line.split()[1:3]
            if str(path.resolve()).startswith(mnt) and len(mnt) > len(best):
                best, kind = mnt, fs
    except OSError:
        pass
    return kind


def bench_into_base(model, cfg, args, where):
    """Save the base as an MLX model dir, then time fusing into it in a torch-free worker."""
    work = Path(tempfile.mkdtemp(prefix="merge_bench_", dir=where))
    try:
        src = work / "base"
        src.mkdir()
        base_sd = {
            k.replace("base_layer.", ""): v
            for k, v in model.get_base_model().state_dict().items()
            if "lora_" not in k
        }
        mx.save_safetensors(
            str(src / "model.safetensors"),
            {k: mx.array(v.detach().numpy()) for k, v in base_sd.items()},
        )
        (src / "config.json").write_text(json.dumps(cfg))
        results = in_worker(
            {
                "adapters": args.adapter_dirs,
                "model_dir": str(src),
                "work": str(work),
                "repeats": args.repeats,
            }
        )
        print(json.dumps(results), flush=True)
        return results
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/merge_speed.json")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--kv", type=int, default=256)
    ap.add_argument("--intermediate", type=int, default=5632)
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--command-runs",
        type=int,
        default=5,
        help="whole `mixlora merge` commands timed per case, each a fresh process (0: none)",
    )
    ap.add_argument("--only", help="comma-separated PEFT combination types to run")
    ap.add_argument("--skip-peft", action="store_true")
    ap.add_argument("--skip-into-base", action="store_true")
    ap.add_argument("--tmp", default=None, help="where the adapters and into-base model dirs go")
    ap.add_argument(
        "--into-base-tmp",
        action="append",
        default=[],
        help="also time into-base with the model dirs in DIR (repeatable; e.g. a reflink filesystem)",
    )
    ap.add_argument(
        "--peft-reference",
        default="ties_svd=21.3,svd=13.4",
        help="PEFT seconds measured on a quiet machine (the issue's numbers), TYPE=S,...",
    )
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        Path(args.result).write_text(json.dumps(worker(json.loads(args.worker))))
        return
    args.peft_reference = {
        k: float(v) for k, v in (kv.split("=") for kv in args.peft_reference.split(",") if kv)
    }
    if (args.hidden, args.kv, args.layers, args.rank) != (2048, 256, 4, 8):
        args.peft_reference = {}  # the reference numbers are for the TinyLlama shapes only

    import peft
    import torch
    import transformers

    load_before = load_average()
    t0 = time.perf_counter()
    model, ours, cfg = build(args)
    build_s = time.perf_counter() - t0
    from mlx_mixlora.adapter_format import save_adapter

    adapter_root = Path(tempfile.mkdtemp(prefix="merge_bench_adapters_", dir=args.tmp))
    args.adapter_dirs = [
        str(save_adapter(adapter_root / a.name, a.config, a.weights)) for a in ours
    ]
    rows = bench_merges(model, ours, args)
    into = None
    if not args.skip_into_base:
        into = [bench_into_base(model, cfg, args, d) for d in [args.tmp, *args.into_base_tmp]]
    report = {
        "benchmark": "merge_speed",
        "shapes": {
            "layers": args.layers,
            "hidden": args.hidden,
            "kv_dim": args.kv,
            "targets": TARGETS,
            "adapters": len(NAMES),
            "rank": args.rank,
            "weights": WEIGHTS,
            "command_runs": args.command_runs,
            "command_env": "as shipped, bytecode cache allowed (PYTHONDONTWRITEBYTECODE unset)",
        },
        "machine": machine_record(gemm=False)
        | {
            "loadavg_before": load_before,
            "loadavg_after": load_average(),
            "mlx": mx.__version__,
            "mlx_device": str(mx.default_device()),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "peft": peft.__version__,
            "transformers": transformers.__version__,
        },
        "build_s": build_s,
        "merges": rows,
        "into_base": into,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    shutil.rmtree(adapter_root, ignore_errors=True)
    publish(report, args.out)


if __name__ == "__main__":
    main()
