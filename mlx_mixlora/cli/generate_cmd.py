"""`mixlora generate`: route a prompt (or a jsonl of prompts) to its adapter and answer."""

from __future__ import annotations

import click

from ..validate import COUNT, NON_NEGATIVE, SEED, texts
from .route_options import GreedyCommand, RouterChoice, decision_options, inputs


@click.command(cls=GreedyCommand)
@inputs(gate_help="Gate directory (from `mixlora gate train`).")
@click.option(
    "--router",
    type=RouterChoice(lambda kind: not kind.needs_labels and not kind.fits_prompts),
    default=None,
    help="Router [gate if --gate is given, else arrow].",
)
@click.option("--prompt", help="One prompt.")
@click.option(
    "--jsonl",
    "jsonl",
    type=click.Path(),
    help="Batch mode: a jsonl with a 'prompt' field per line.",
)
@click.option(
    "-o", "--out", "out", type=click.Path(), help="Batch mode: write results here (jsonl)."
)
@decision_options(
    ["top1", "topk", "threshold", "all"], mode_help="Routing mode [the gate's, else the router's]."
)
@click.option("--max-tokens", type=COUNT, default=64, show_default=True)
@click.option(
    "--temp",
    type=NON_NEGATIVE,
    default=0.0,
    show_default=True,
    help="Sampling temperature (0: greedy).",
)
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option(
    "--batch-size",
    type=COUNT,
    default=8,
    show_default=True,
    help="Batch mode: prompts per mixed-adapter batch (1: one prompt at a time, fused).",
)
@click.option("--overwrite", is_flag=True)
def generate(
    model_dir,
    adapters,
    gate_dir,
    router,
    prompt,
    jsonl,
    out,
    mode,
    top_k,
    threshold,
    max_tokens,
    temp,
    seed,
    batch_size,
    overwrite,
) -> None:
    """Route to an adapter, print the choice and the router's weights, then the answer."""
    import json
    from pathlib import Path

    import mlx.core as mx
    from mlx_lm.sample_utils import make_sampler

    import mlx_mixlora  # noqa: F401

    from ..errors import MixloraError
    from ..io import atomic_file, check_output
    from ..route.fused import generate_many, generate_routed
    from ..route.routers import ROUTERS, make_router
    from ..route.session import load_setup
    from ..tasks import read_table

    if (prompt is None) == (jsonl is None):
        raise MixloraError("give exactly one of --prompt or --jsonl")
    if out and not jsonl:
        raise MixloraError("--out is for batch mode (--jsonl)")
    if out:
        check_output(out, overwrite, jsonl, model_dir, gate_dir, *adapters, kind="file")
    if max_tokens < 1:
        raise MixloraError("--max-tokens must be >= 1")
    if batch_size < 1:
        raise MixloraError("--batch-size must be >= 1")
    kind = router or ("gate" if gate_dir else "arrow")
    rows = None
    if jsonl:
        if not Path(jsonl).is_file():
            raise MixloraError(f"prompt file not found: {jsonl}")
        rows = read_table(Path(jsonl))
        bad = [
            i
            for i, r in enumerate(rows, 1)
            if not isinstance(r.get("prompt"), str) or not r["prompt"]
        ]
        if not rows or bad:
            raise MixloraError(
                f"{jsonl}: line {bad[0] if bad else 1} has no non-empty 'prompt' string"
            )
    texts([prompt] if jsonl is None else rows, jsonl or "--prompt")
    s = load_setup(model_dir, adapters)
    r = make_router(kind, s, gate_dir=gate_dir)
    cfg = getattr(r, "config", None)
    mode = mode or (cfg.mode if cfg else ROUTERS[kind].mode)
    top_k = top_k if top_k is not None else (cfg.top_k if cfg else 2)
    threshold = threshold if threshold is not None else (cfg.threshold if cfg else 0.5)
    mx.random.seed(seed)
    kw = dict(
        mode=mode,
        top_k=top_k,
        threshold=threshold,
        max_tokens=max_tokens,
        sampler=make_sampler(temp),
    )

    def describe(d) -> dict:
        chosen = [s.names[i] for i in d.indices] or ["base"]
        return {
            "adapter": chosen[0] if len(chosen) == 1 else chosen,
            "mix": {s.names[i]: round(w, 4) for i, w in zip(d.indices, d.weights, strict=True)},
            "router_weights": {n: round(p, 4) for n, p in zip(s.names, d.probs, strict=True)},
        }

    if prompt is not None:
        res = generate_routed(s.model, s.tokenizer, s.adapters, r, prompt, **kw)
        info = describe(res.decision)
        weights = ", ".join(f"{n}={p:.3f}" for n, p in info["router_weights"].items())
        click.echo(f"adapter: {info['adapter']}  ({kind} weights: {weights})")
        click.echo(res.text)
        return
    prompts = [x["prompt"] for x in rows]
    results = generate_many(
        s.model, s.tokenizer, s.adapters, r, prompts, batch_size=batch_size, **kw
    )
    lines = [
        json.dumps({**row, **describe(g.decision), "generation": g.text})
        for row, g in zip(rows, results, strict=True)
    ]
    if out:
        with atomic_file(out) as tmp:
            tmp.write_text("\n".join(lines) + "\n")
        click.echo(f"wrote {len(lines)} generations to {out}")
    else:
        click.echo("\n".join(lines))
