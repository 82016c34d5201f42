"""Route prompts to adapters: a learned top-1 gate, training-free routers, fast execution.

Routers (`ROUTERS`, all give ``probs(model, token_lists, labels=None) -> [N, n_adapters]``):
``gate`` (learned MLP on pooled layer-L features, seed 003), ``centroid``,
``arrow`` (Ostapenko et al. 2024, prompt-level aggregation), ``uniform`` (uniform
merge) and ``oracle`` (true task). ``decide(probs, mode)`` gives a ``Decision``
per prompt for modes top1 / topk / threshold (falls back to the base) / all.

Python API (what the demo report uses)::

    import mlx_mixlora
    from mlx_mixlora import route as R

    s = R.load_setup(model_dir, adapter_dirs)             # model, tokenizer, adapters
    model, tok, adapters = s.model, s.tokenizer, s.adapters
    gate = R.build_gate(model, tok, adapters)            # tasks from each adapter's config
    R.save_gate("gate/", gate.gate, gate.config)
    gate = R.load_gate_router("gate/", adapters)         # refuses another adapter set
    arrow = R.make_router("arrow", s)                    # any router by its ROUTERS name
    centroid = R.build_centroid(model, tok, adapters, layer=gate.layer)

    R.route_prompts(gate, model, tok, prompts)           # -> [adapter index, ...]
    prompts, labels = R.labelled_prompts(R.adapter_tasks(adapters), "test", 100)
    R.evaluate_routing(gate, model, tok, prompts, labels) # accuracy, confusion, probs

    res = R.generate_routed(model, tok, adapters, gate, prompt)  # fuse → generate → restore
    with R.fused(model, adapters, decision): ...          # any code on the fused model
    sw = R.AdapterSwitcher(model, adapters)               # many switches: reuses buffers
    sw.apply(decision); ...; sw.restore()                 # restore is bit-exact

    R.attach_mixed(model, adapters)                       # mixed-adapter batches
    logits = R.mixed_forward(model, token_lists, indices) # row b uses adapter indices[b]
    R.mixed_generate(model, token_lists, indices, max_tokens=32)  # batched decode, per-row adapters
    R.detach_mixed(model)

    R.score_routed(model, tok, task, examples, gate, adapters, label=i)  # task metrics, routed

CLI: ``mixlora gate train``, ``mixlora generate`` (``--jsonl`` batch mode runs
mixed-adapter batches), ``mixlora route eval`` (``--score N`` adds routed task
scores and their retention vs the oracle).

Modules, lowest first: `embed` (prompt features, KV-cache reuse), `decision`
(weights → what runs, as factors), `prompts` (task-labelled prompts), `gate`,
`arrow`, `routers` (every router and the `ROUTERS` table), `accuracy`,
`switch`/`fused`/`mixed` (execution), `score` (task metrics under routing),
`session` (loading), `user_data` (a user's own routing rows).

Features: the hidden state after L decoder layers (L=0: token embeddings) pooled
over the prompt (``mean`` by default, or ``last`` token); by default L is the
lowest adapted layer, capped at n_layers/2. Gates and centroids train on the
tasks' ``varied`` prompts (template plus train phrasings, `tasks.phrasing`), so
they route how people ask, not one template: `benchmarks/routing_features.py`
measures every layer and pooling on held-out phrasings and the natural-request
set and picked these defaults. `mixlora gate train --data my.jsonl` trains on a
user's own ``{"prompt", "adapter"}`` rows instead (`user_data`). The
single-prompt path reuses the routing pass's KV cache for layers < L when every
chosen adapter sits at layers >= L (see `embed.RoutedPrefill`).
"""

from ..adapter_format import Adapter, load_adapters
from .accuracy import evaluate_routing
from .decision import Decision, decide
from .embed import RoutedPrefill, feature_layer, feature_pool, prompt_features
from .fused import fused, generate_many, generate_routed
from .gate import GateConfig, GateMLP, GateRouter, build_gate, load_gate_router, save_gate
from .mixed import attach_mixed, detach_mixed, mixed_forward, mixed_generate
from .prompts import adapter_tasks, labelled_prompts, natural_prompts
from .routers import (
    ROUTERS,
    ArrowRouter,
    CentroidRouter,
    OracleRouter,
    UniformRouter,
    build_centroid,
    make_router,
    route_prompts,
)
from .score import score_routed
from .session import load_setup
from .switch import AdapterSwitcher

__all__ = [
    # adapters and loading
    "Adapter",
    "load_adapters",
    "load_setup",
    # routers
    "ROUTERS",
    "make_router",
    "ArrowRouter",
    "CentroidRouter",
    "GateConfig",
    "GateMLP",
    "GateRouter",
    "OracleRouter",
    "UniformRouter",
    "build_centroid",
    "build_gate",
    "load_gate_router",
    "save_gate",
    # features
    "RoutedPrefill",
    "feature_layer",
    "feature_pool",
    "prompt_features",
    # decisions and accuracy
    "Decision",
    "decide",
    "route_prompts",
    "adapter_tasks",
    "labelled_prompts",
    "natural_prompts",
    "evaluate_routing",
    # execution
    "AdapterSwitcher",
    "fused",
    "generate_many",
    "generate_routed",
    "attach_mixed",
    "detach_mixed",
    "mixed_forward",
    "mixed_generate",
    "score_routed",
]
