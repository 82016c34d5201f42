"""The whole pipeline in one call: base → four adapters → merges → task × method matrix.

`run_demo` is what `mixlora demo` runs. Offline by default (nano base +
synthetic data); with a hub model and `--data hub` it runs the real thing. The
output directory is written atomically: a failed or interrupted run leaves
nothing behind.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import MixloraError
from ..io import atomic_dir, write_json
from ..scoring import Method, adapter_method, base_method, evaluate_matrix
from ..tasks import BUILTIN_TASKS, get_task, load_examples
from ..tasks.natural import natural_examples

# The demo's merge line-up: (label, method, options). Equal weights throughout.
MERGES: tuple[tuple[str, str, dict], ...] = (
    ("merge:linear", "linear", {}),
    ("merge:task_arithmetic", "task_arithmetic", {}),
    ("merge:layer_wise", "layer_wise", {"layer_ranges": "even"}),
    ("merge:ties", "ties", {"density": 0.2}),
    ("merge:dare_ties", "dare_ties", {"drop": 0.5}),
)

# Default recipes (adapters/<task>.nano.yaml and .tinyllama.yaml hold the same; tests check it).
NANO_TRAIN = {
    "rank": 8,
    "alpha": 16,
    "targets": ["q_proj", "k_proj", "v_proj", "o_proj"],
    # 4 passes: varied prompts need more than the template's 240 steps (classification
    # 0.94 at 240, 0.99 at 480 on template prompts; 120 steps at 2e-3 were seed-dependent)
    "iters": 480,
    "batch_size": 32,
    "lr": 1.0e-3,
    "warmup": 10,
    "pack": False,
    "max_seq_len": 256,
    "seed": 0,
}
NANO_EXAMPLES = 3840
# Training prompts: the template plus each task's train phrasings (tasks.phrasing), so an
# adapter answers a task however it is asked, not only in its template.
TRAIN_PROMPTS = "varied"
HUB_TRAIN = {
    "rank": 8,
    "alpha": 16,
    "targets": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "epochs": 1,
    "batch_size": 4,
    "lr": 2.0e-4,
    "max_seq_len": 1024,
    "seed": 0,
}
HUB_EXAMPLES = 200


@dataclass
class DemoConfig:
    out: Path = Path("runs/demo")
    model: str | None = None  # None: the nano base (built and cached on first use)
    data: str = "synthetic"  # synthetic | hub | a directory of local files
    tasks: list[str] = field(default_factory=lambda: [t.name for t in BUILTIN_TASKS])
    eval_examples: int = 100
    train_examples: int | None = None  # None: from the recipe
    iters: int | None = None  # None: from the recipe
    seed: int = 0
    prompts: str = TRAIN_PROMPTS  # style of the training prompts (adapters and gate)
    merges: bool = True
    routing: bool = True
    plots: bool = True
    overwrite: bool = False
    progress: bool = True


def _log(cfg: DemoConfig, msg: str) -> None:
    if cfg.progress:
        import click

        click.echo(msg, err=True)


def resolve_base(model: str | None, log: Callable[[str], None], progress: bool = True) -> Path:
    """The MLX model dir: nano base (cached), a local dir, or a hub id converted into the cache."""
    if model is None or model == "nano":
        from ..nano import ensure_nano_base

        return ensure_nano_base(progress=progress, log=log)
    path = Path(model)
    if path.is_dir():
        return path
    if "/" not in model or path.exists():
        raise MixloraError(f"--model {model!r} is neither a model directory nor a hub id")
    from ..convert import convert_hf_to_mlx
    from ..nano import cache_root

    dst = cache_root() / ("converted-" + model.replace("/", "--"))
    if not (dst / "config.json").is_file():
        log(f"converting {model} into {dst}")
        convert_hf_to_mlx(model, dst)
    return dst


def run_demo(cfg: DemoConfig) -> dict[str, Any]:
    """Run the pipeline and write report.md, results.json, plots and adapters to `cfg.out`."""
    import mlx_mixlora

    from ..model import base_identity, load
    from ..train import TrainConfig, train_adapter

    out = Path(cfg.out)
    if out.exists() and not cfg.overwrite:
        raise MixloraError(
            f"output path {out} already exists (choose another path or pass --overwrite)"
        )
    tasks = [get_task(t) for t in cfg.tasks]
    timings: dict[str, float] = {}
    t_all = time.perf_counter()

    t0 = time.perf_counter()
    base_dir = resolve_base(cfg.model, lambda m: _log(cfg, m), progress=cfg.progress)
    from ..nano import SOURCE as NANO_SOURCE

    nano = base_identity(base_dir)["name_or_path"] == NANO_SOURCE
    timings["base"] = time.perf_counter() - t0
    model, tok = load(base_dir)
    identity = base_identity(base_dir)
    train_opts = dict(NANO_TRAIN if nano else HUB_TRAIN)
    if cfg.iters is not None:
        train_opts["iters"] = cfg.iters
    train_opts["seed"] = cfg.seed
    n_train = cfg.train_examples or (NANO_EXAMPLES if nano else HUB_EXAMPLES)

    with atomic_dir(out, overwrite=cfg.overwrite) as tmp:
        eval_sets = {
            t.name: load_examples(t, cfg.data, "test", n=cfg.eval_examples, seed=cfg.seed)
            for t in tasks
        }
        natural_sets = {t.name: natural_examples(t) for t in tasks}
        adapters: dict[str, Path] = {}
        train_info: dict[str, dict] = {}
        for t in tasks:
            _log(cfg, f"training the {t.name} adapter ({n_train} {cfg.data} examples)")
            examples = load_examples(
                t, cfg.data, "train", n=n_train, seed=cfg.seed, prompts=cfg.prompts
            )
            tcfg = TrainConfig.from_dict(
                {**train_opts, "name": t.name, "task": t.name}, source="demo recipe"
            )
            t0 = time.perf_counter()
            res = train_adapter(
                (model, tok),
                examples,
                tmp / "adapters" / t.name,
                tcfg,
                progress=cfg.progress,
                base=identity,
            )
            timings[f"train:{t.name}"] = time.perf_counter() - t0
            adapters[t.name] = tmp / "adapters" / t.name
            train_info[t.name] = {
                "examples": len(examples),
                "steps": res.steps,
                "train_loss": None if res.train_loss is None else round(float(res.train_loss), 4),
                "tokens_per_second": round(float(res.tokens_per_second), 1),
                "seconds": round(timings[f"train:{t.name}"], 1),
            }

        methods: list[Method] = [base_method()]
        methods += [adapter_method(f"adapter:{n}", p, base=identity) for n, p in adapters.items()]
        if cfg.merges and len(adapters) > 1:
            methods += _merge_methods(adapters, tmp / "merged", identity, cfg, timings)
        routing_accuracy = {}
        if cfg.routing and len(adapters) > 1:
            routes, routing_accuracy = _routing_methods(
                model, tok, adapters, identity, cfg, timings
            )
            methods += routes

        t0 = time.perf_counter()
        results = evaluate_matrix(model, tok, tasks, eval_sets, methods, progress=cfg.progress)
        timings["evaluate"] = time.perf_counter() - t0
        if all(natural_sets.values()):  # end to end on the natural requests: route, then answer
            t0 = time.perf_counter()
            natural = evaluate_matrix(model, tok, tasks, natural_sets, methods, cfg.progress)
            results["natural"] = {"scores": natural["scores"], "retention": retention(natural)}
            timings["evaluate:natural"] = time.perf_counter() - t0
        timings["total"] = time.perf_counter() - t_all

        results.update(
            base={"path": str(base_dir), **identity},
            data=cfg.data,
            seed=cfg.seed,
            eval_examples=cfg.eval_examples,
            train=train_info,
            train_options=train_opts,
            train_prompts=cfg.prompts,
            routing_accuracy=routing_accuracy,
            retention=retention(results),
            timings_s={k: round(v, 1) for k, v in timings.items()},
            version=mlx_mixlora.__version__,
        )
        for m in results["methods"]:  # paths inside the temp dir → paths in the final dir
            if "adapter" in m:
                m["adapter"] = str(out / Path(m["adapter"]).relative_to(tmp))
        write_json(tmp / "results.json", results)
        figures = {}
        if cfg.plots:
            from .plots import plot_heatmap, plot_retention

            figures["heatmap"] = plot_heatmap(results, tmp / "heatmap.png")
            if len(results["retention"]) > 0:
                figures["retention"] = plot_retention(results, tmp / "retention.png")
        from .report import render_report

        (tmp / "report.md").write_text(
            render_report(results, {k: p.name for k, p in figures.items()})
        )
    _log(cfg, f"wrote {out}/report.md in {timings['total']:.0f} s")
    return results


def _merge_methods(
    adapters: dict[str, Path], where: Path, identity: dict, cfg: DemoConfig, timings
) -> list[Method]:
    from ..adapter_format import load_adapter
    from ..merge import METHODS, merge_adapters

    loaded = [load_adapter(p) for p in adapters.values()]
    n = len(loaded)
    methods = []
    for label, method, opts in MERGES:
        if method not in METHODS:
            continue
        kwargs = dict(opts)
        kwargs.setdefault("weights", [1.0 / n] * n if method == "linear" else [1.0] * n)
        if method == "layer_wise":
            kwargs.pop("weights")
        t0 = time.perf_counter()
        res = merge_adapters(loaded, method, seed=cfg.seed, name=method, **kwargs)
        res.save(where / method)
        timings[label] = time.perf_counter() - t0
        methods.append(adapter_method(label, where / method, base=identity, kind="merge"))
        methods[-1].info["rel_error"] = round(float(res.rel_error), 6)
    return methods


def _routing_methods(
    model, tok, adapters: dict[str, Path], identity: dict, cfg: DemoConfig, timings
) -> tuple[list[Method], dict]:
    """Per-prompt routing, learned and training-free, plus its bounds (issue: seed 003).

    Every router of `route.ROUTERS`: the learned top-1 gate (the seed's MixLoRA,
    trained here rather than loaded), nearest centroid of the adapters' training
    prompts, Arrow (no training data at all), a uniform merge of every adapter
    (what routing should beat) and the oracle (each prompt on its own task's
    adapter: the ceiling). Gate and centroid share one pass over the training
    prompts (template plus train phrasings). Also returns the routing accuracy of
    each router that routes by the prompt alone, on template prompts, held-out
    phrasings and the natural-request set.
    """
    from .. import route as R
    from ..route.accuracy import accuracy_summary
    from ..route.prompts import fit_features, routing_prompt_sets
    from ..route.session import Setup

    t0 = time.perf_counter()
    loaded = R.load_adapters(list(adapters.values()), base=identity)
    layer, pool, feats, labels = fit_features(
        model, tok, loaded, data=cfg.data, seed=cfg.seed, prompts=cfg.prompts
    )
    shared = dict(layer=layer, pool=pool, features=(feats, labels))  # one pass, gate and centroid
    gate = R.build_gate(
        model, tok, loaded, data=cfg.data, seed=cfg.seed, prompts=cfg.prompts, **shared
    )
    timings["route:gate"] = time.perf_counter() - t0
    setup = Setup(model, tok, loaded, identity)
    routers = {  # the gate is trained here; every other router comes from the table
        name: gate if name == "gate" else R.make_router(name, setup, **shared) for name in R.ROUTERS
    }
    names = list(adapters)

    def scorer(router, mode):
        def score(model_, tok_, task, examples):
            label = names.index(task.name) if task.name in names else None
            return R.score_routed(model_, tok_, task, examples, router, loaded, label, mode)

        return score

    t0 = time.perf_counter()
    tasks = R.adapter_tasks(loaded)
    sets = routing_prompt_sets(tasks, "test", cfg.eval_examples, cfg.data, cfg.seed)
    accuracy = {
        f"route:{R.ROUTERS[name].title}": {
            style: accuracy_summary(R.evaluate_routing(r, model, tok, *sets[style]), tasks)
            for style in sets
        }
        for name, r in routers.items()
        if R.ROUTERS[name].routes
    }
    timings["route:accuracy"] = time.perf_counter() - t0
    methods = [
        Method(
            f"route:{R.ROUTERS[name].title}", kind="route", score=scorer(r, R.ROUTERS[name].mode)
        )
        for name, r in routers.items()
    ]
    return methods, accuracy


def retention(results: dict) -> dict[str, dict[str, float]]:
    """score(method, task) / score(task's own adapter, task), for merges and routers."""
    scores = results["scores"]
    out: dict[str, dict[str, float]] = {}
    for m in results["methods"]:
        if m["kind"] not in ("merge", "route"):
            continue
        row = {}
        for t in results["tasks"]:
            own = scores.get(f"adapter:{t}", {}).get(t)
            if own and own["score"] > 0:
                row[t] = scores[m["name"]][t]["score"] / own["score"]
        out[m["name"]] = row
    return out
