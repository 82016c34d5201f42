"""The whole pipeline in one call: base → four adapters → merges → task × method matrix.

`run_demo` is what `mixlora demo` runs. Offline by default (nano base +
synthetic data); with a hub model and `--data hub` it runs the real thing. The
output directory is written atomically: a failed or interrupted run leaves
nothing behind.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import click

from .. import __version__
from .. import route as R
from ..adapter_format import read_adapter
from ..bench.env import machine_record
from ..cache import cache_root
from ..convert import convert_hf_to_mlx
from ..errors import MixloraError
from ..io import atomic_dir, output_path, write_json
from ..merge import merge_adapters
from ..merge.calibration import task_calibration
from ..merge.learned import learn_merge, search_merge
from ..merge.methods import CALIB_EXAMPLES, METHODS
from ..merge.search import searchable
from ..model import base_identity, load
from ..nano import SOURCE as NANO_SOURCE
from ..nano import ensure_nano_base
from ..route.accuracy import accuracy_summary
from ..route.prompts import fit_features, routing_prompt_sets
from ..route.session import Setup
from ..scoring import Method, adapter_method, base_method, evaluate_matrix
from ..tasks import BUILTIN_TASKS, load_examples, resolve_task
from ..tasks.natural import natural_examples
from ..train import train_adapter
from ..train.recipe import HUB, NANO, builtin_recipe
from .plots import plot_heatmap, plot_retention
from .report import render_report

# The demo's merge line-up, (label, method, options): the methods `merge.METHODS` gives demo
# options, in its order (equal weights for fixed ones, see `Method.demo` for "mean"), then a
# second AdaMerging objective and each searchable method with its options chosen on the
# validation split (`--search`).
MERGES: tuple[tuple[str, str, dict], ...] = tuple(
    (f"merge:{name}", name, m.demo)
    for name, m in METHODS.items()
    if name == m.name and m.demo is not None
) + (
    # AdaMerging's own objective above; here the unlabelled distillation from each prompt's
    # own adapter with λ per module, the best learned merge on the nano demo
    ("merge:adamerging-distill", "adamerging", {"objective": "distill", "granularity": "module"}),
    *((f"merge:{name}-search", name, {"search": True}) for name in searchable()),
)


@dataclass
class DemoConfig:
    out: Path = Path("runs/demo")
    model: str | None = None  # None: the nano base (built and cached on first use)
    data: str = "synthetic"  # synthetic | hub | a directory of local files
    tasks: list[str] = field(
        default_factory=lambda: [t.name for t in BUILTIN_TASKS]
    )  # or yaml paths
    eval_examples: int = 100
    calib_examples: int = CALIB_EXAMPLES  # per task, validation split: learned merges
    train_examples: int | None = None  # None: from the recipe
    iters: int | None = None  # None: from the recipe
    seed: int = 0
    prompts: str | None = None  # style of the training prompts (adapters and gate); None: recipe
    merges: bool = True
    learned: bool = True  # the learned merges and searches among the merges
    routing: bool = True
    plots: bool = True
    overwrite: bool = False
    progress: bool = True


def _log(cfg: DemoConfig, msg: str) -> None:
    if cfg.progress:
        click.echo(msg, err=True)


def resolve_base(model: str | None, log: Callable[[str], None], progress: bool = True) -> Path:
    """The MLX model dir: nano base (cached), a local dir, or a hub id converted into the cache."""
    if model is None or model == "nano":
        return ensure_nano_base(progress=progress, log=log)
    path = Path(model)
    if path.is_dir():
        return path
    if "/" not in model or path.exists():
        raise MixloraError(f"--model {model!r} is neither a model directory nor a hub id")
    dst = cache_root() / ("converted-" + model.replace("/", "--"))
    if not (dst / "config.json").is_file():
        log(f"converting {model} into {dst}")
        convert_hf_to_mlx(model, dst)
    return dst


def run_demo(cfg: DemoConfig) -> dict[str, Any]:
    """Run the pipeline and write report.md, results.json, plots and adapters to `cfg.out`."""
    out = Path(cfg.out)
    output_path(out, cfg.overwrite)  # before the base build and the training runs
    tasks = [resolve_task(t) for t in cfg.tasks]  # a registered name or a task yaml
    timings: dict[str, float] = {}
    t_all = time.perf_counter()

    t0 = time.perf_counter()
    base_dir = resolve_base(cfg.model, lambda m: _log(cfg, m), progress=cfg.progress)
    nano = base_identity(base_dir)["name_or_path"] == NANO_SOURCE
    timings["base"] = time.perf_counter() - t0
    model, tok = load(base_dir)
    identity = base_identity(base_dir)
    recipes = {t.name: builtin_recipe(t.name, NANO if nano else HUB) for t in tasks}
    cfg = replace(cfg, prompts=cfg.prompts or recipes[tasks[0].name].prompts)
    overrides = {"seed": cfg.seed, **({"iters": cfg.iters} if cfg.iters is not None else {})}
    train_opts = {t: {**r.train, **overrides} for t, r in recipes.items()}

    with atomic_dir(out, overwrite=cfg.overwrite) as tmp:
        eval_sets = {
            t.name: load_examples(t, cfg.data, "test", n=cfg.eval_examples, seed=cfg.seed)
            for t in tasks
        }
        natural_sets = {t.name: natural_examples(t) for t in tasks}
        adapters: dict[str, Path] = {}
        train_info: dict[str, dict] = {}
        for t in tasks:
            n_train = cfg.train_examples or recipes[t.name].examples
            _log(cfg, f"training the {t.name} adapter ({n_train} {cfg.data} examples)")
            examples = load_examples(
                t, cfg.data, "train", n=n_train, seed=cfg.seed, prompts=cfg.prompts
            )
            tcfg = recipes[t.name].train_config(**overrides, name=t.name)
            t0 = time.perf_counter()
            res = train_adapter(
                (model, tok),
                examples,
                tmp / "adapters" / t.name,
                tcfg,
                progress=cfg.progress,
                base=identity,
                log_as=out / "adapters" / t.name,  # tmp is renamed to out at the end
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
            calib = (
                task_calibration(tasks, cfg.data, cfg.calib_examples, seed=cfg.seed)
                if cfg.learned
                else []
            )
            methods += merge_methods(
                (model, tok), calib, adapters, tmp / "merged", identity, cfg, timings
            )
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
            train_options=_common(train_opts),
            train_prompts=cfg.prompts,
            routing_accuracy=routing_accuracy,
            retention=retention(results),
            timings_s={k: round(v, 1) for k, v in timings.items()},
            version=__version__,
            machine=machine_record(gemm=False),  # scores and times vary with CPU and BLAS kernels
        )
        for m in results["methods"]:  # paths inside the temp dir → paths in the final dir
            if "adapter" in m:
                m["adapter"] = str(out / Path(m["adapter"]).relative_to(tmp))
        write_json(tmp / "results.json", results)
        figures = {}
        if cfg.plots:
            figures["heatmap"] = plot_heatmap(results, tmp / "heatmap.png")
            if len(results["retention"]) > 0:
                figures["retention"] = plot_retention(results, tmp / "retention.png")
        (tmp / "report.md").write_text(
            render_report(results, {k: p.name for k, p in figures.items()})
        )
    _log(cfg, f"wrote {out}/report.md in {timings['total']:.0f} s")
    return results


def merge_methods(
    model_tok, calib, adapters: dict[str, Path], where: Path, identity: dict, cfg, timings
) -> list[Method]:
    """Every row of `MERGES`, saved under `where`; learned ones fitted on `calib` (validation)."""
    loaded = [read_adapter(p) for p in adapters.values()]
    n = len(loaded)
    methods = []
    for label, method, opts in MERGES:
        learns = METHODS[method].kind == "learned" or opts.get("search")
        if learns and not cfg.learned:
            continue
        if learns:
            _log(cfg, f"{label}: learning on {len(calib)} validation prompts")
        kwargs = dict(opts)
        name = label.removeprefix("merge:")
        equal = kwargs.pop("weights", "ones")  # 1 each; "mean": 1/n each; None: none given
        t0 = time.perf_counter()
        if kwargs.pop("search", False):
            res = search_merge(*model_tok, loaded, method, calib, seed=cfg.seed, name=name)
        elif METHODS[method].kind == "learned":
            if method == "lorahub" and importlib.util.find_spec("cma") is None:
                _log(cfg, "skipping merge:lorahub: it needs the 'cma' package (mlx-mixlora[learn])")
                continue
            res = learn_merge(*model_tok, loaded, method, calib, seed=cfg.seed, **kwargs)
        else:
            if equal is not None:
                kwargs["weights"] = [1.0 / n if equal == "mean" else 1.0] * n
            res = merge_adapters(loaded, method, seed=cfg.seed, name=method, **kwargs)
        res.save(where / name)
        timings[label] = time.perf_counter() - t0
        methods.append(adapter_method(label, where / name, base=identity, kind="merge"))
        methods[-1].info["rel_error"] = round(float(res.rel_error), 6)
        if "learned" in res.info:
            learned = res.info["learned"]
            methods[-1].info["learned"] = {
                k: learned[k]
                for k in (
                    "chosen",
                    "coefficients",
                    "calibration_examples",
                    "seconds",
                    "granularity",
                )
                if k in learned
            }
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


def _common(per_task: dict[str, dict]) -> dict:
    """The training options, once when every task's recipe gives the same ones (the built-ins do)."""
    first = next(iter(per_task.values()), {})
    return first if all(o == first for o in per_task.values()) else per_task


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
