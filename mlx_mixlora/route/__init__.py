"""Route prompts to adapters: a learned top-1 gate, training-free routers, fast execution.

Routers (all give ``probs(model, token_lists, labels=None) -> [N, n_adapters]``):
``GateRouter`` (learned MLP on pooled layer-L features, seed 003), ``CentroidRouter``,
``ArrowRouter`` (Ostapenko et al. 2024, prompt-level aggregation), ``OracleRouter``
(true task), ``UniformRouter`` (uniform merge). ``decide(probs, mode)`` gives a
``Decision`` per prompt for modes top1 / topk / threshold (falls back to the base) / all.

Python API (what the demo report uses)::

    import mlx_mixlora
    from mlx_mixlora.model import load, base_identity
    from mlx_mixlora import route as R

    model, tok = load(model_dir)
    adapters = R.load_adapters(dirs, base=base_identity(model_dir))
    gate = R.build_gate(model, tok, adapters)            # tasks from each adapter's config
    R.save_gate("gate/", gate.gate, gate.config)
    gate = R.load_gate_router("gate/", adapters)         # refuses another adapter set
    centroid = R.build_centroid(model, tok, adapters, layer=gate.layer)
    arrow = R.ArrowRouter(adapters)

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

Features: the hidden state after L decoder layers (L=0: token embeddings) pooled
over the prompt (``mean`` by default, or ``last`` token); by default L is the
lowest adapted layer, capped at n_layers/2. Gates and centroids train on the
tasks' ``varied`` prompts (template plus train phrasings, `tasks.phrasing`), so
they route how people ask, not one template: `benchmarks/routing_features.py`
measures every layer and pooling on held-out phrasings and the natural-request
set and picked these defaults. `mixlora gate train --data my.jsonl` trains on a
user's own ``{"prompt", "adapter"}`` rows instead (`user_data`). The
single-prompt path reuses the routing pass's KV cache for layers < L when every
chosen adapter sits at layers >= L (see `embed.RoutedPrefill`). Arrow: see
`routers`/`arrow`.
"""

from ..adapter_format import Adapter, adapter_index, load_adapters
from .arrow import arrow_prototypes, top_right_singular
from .build import build_centroid, build_gate, training_features
from .embed import (
    POOLS,
    RoutedPrefill,
    mean_pool,
    pool_states,
    prompt_features,
    run_lower,
    run_upper,
)
from .evaluate import (
    STYLE_NAMES,
    accuracy_summary,
    adapter_tasks,
    confusion,
    evaluate_routing,
    labelled_prompts,
    natural_prompts,
    plot_confusion,
    plot_weights,
    routing_prompt_sets,
)
from .fused import RoutedGeneration, decision_updates, fused, generate_many, generate_routed
from .gate import GateConfig, GateMLP, check_gate_adapters, load_gate, save_gate, train_gate
from .mixed import (
    MixedLoRALinear,
    attach_mixed,
    detach_mixed,
    mixed_forward,
    mixed_generate,
    set_routes,
)
from .routers import (
    ArrowRouter,
    CentroidRouter,
    Decision,
    GateRouter,
    OracleRouter,
    UniformRouter,
    decide,
    encode_prompts,
    feature_layer,
    feature_pool,
    route_prompts,
)
from .score import score_routed
from .session import Setup, load_setup, make_router
from .switch import AdapterSwitcher, stream_fuse


def load_gate_router(gate_dir, adapters: list[Adapter]) -> GateRouter:
    """Load a saved gate and check it was trained for exactly these adapters."""
    gate, config = load_gate(gate_dir)
    check_gate_adapters(config, adapters, source=str(gate_dir))
    return GateRouter(gate, config)


__all__ = [
    "STYLE_NAMES",
    "accuracy_summary",
    "routing_prompt_sets",
    "Adapter",
    "AdapterSwitcher",
    "stream_fuse",
    "ArrowRouter",
    "CentroidRouter",
    "Decision",
    "GateConfig",
    "GateMLP",
    "GateRouter",
    "MixedLoRALinear",
    "OracleRouter",
    "RoutedGeneration",
    "RoutedPrefill",
    "UniformRouter",
    "adapter_index",
    "adapter_tasks",
    "arrow_prototypes",
    "attach_mixed",
    "build_centroid",
    "build_gate",
    "check_gate_adapters",
    "confusion",
    "decide",
    "decision_updates",
    "detach_mixed",
    "encode_prompts",
    "evaluate_routing",
    "feature_layer",
    "feature_pool",
    "fused",
    "generate_many",
    "generate_routed",
    "labelled_prompts",
    "natural_prompts",
    "load_adapters",
    "load_gate",
    "load_gate_router",
    "mean_pool",
    "pool_states",
    "POOLS",
    "mixed_forward",
    "mixed_generate",
    "plot_confusion",
    "plot_weights",
    "prompt_features",
    "route_prompts",
    "score_routed",
    "Setup",
    "load_setup",
    "make_router",
    "run_lower",
    "run_upper",
    "save_gate",
    "set_routes",
    "top_right_singular",
    "train_gate",
    "training_features",
]
