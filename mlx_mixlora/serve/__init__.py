"""`mixlora serve`: an OpenAI-compatible local server over one base and many adapters.

The request's `model` picks an adapter by name, the base model's name uses no
adapter, and `auto` lets the gate choose (its decision and weights come back in
the response's `mixlora` field). Concurrent requests share one continuous decode
batch whose rows may use different adapters (`route.mixed`).

Modules: `protocol` (request validation, OpenAI errors), `sampling` (per-row
sampling), `text` (detokenizing, stop strings), `engine` (the scheduler thread),
`app` (Starlette routes, SSE), `server` (uvicorn), `load` (from directories).

    from mlx_mixlora.serve.load import load_service
    from mlx_mixlora.serve.server import bind, serve

    service = load_service("models/m", ["adapters/qa", "adapters/sum"], gate_dir="gate")
    serve(service, bind("127.0.0.1", 8080))
"""
