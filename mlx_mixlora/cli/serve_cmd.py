"""`mixlora serve`: an OpenAI-compatible server routing each request to its adapter."""

from __future__ import annotations

import click

from .route_options import GreedyCommand, inputs


@click.command(cls=GreedyCommand)
@inputs(gate_help="Gate directory: enables the 'auto' model.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=int, default=8080, show_default=True, help="Port (0: any free one).")
@click.option("--api-key", default=None, help="Require 'Authorization: Bearer KEY' on requests.")
@click.option("--max-batch", type=int, default=8, show_default=True, help="Rows decoded together.")
@click.option(
    "--max-queue", type=int, default=32, show_default=True, help="Waiting requests before 503."
)
@click.option(
    "--split-rows",
    type=int,
    default=None,
    help="Decode steps of at most N rows run one matrix-vector product per row "
    "[4 on the CPU, where that beats a small GEMM; 0 elsewhere]. 0: never.",
)
@click.option("--context", type=int, default=None, help="Context length [the model's].")
@click.option("--max-tokens", type=int, default=256, show_default=True, help="Default max_tokens.")
@click.option(
    "--drain-timeout",
    type=float,
    default=30.0,
    show_default=True,
    help="Seconds Ctrl-C waits for in-flight requests.",
)
def serve(
    model_dir,
    adapters,
    gate_dir,
    host,
    port,
    api_key,
    max_batch,
    max_queue,
    split_rows,
    context,
    max_tokens,
    drain_timeout,
) -> None:
    """Serve /v1/chat/completions, /v1/completions and /v1/models on HOST:PORT."""
    import mlx_mixlora  # noqa: F401

    from ..errors import MixloraError
    from ..serve.load import load_service
    from ..serve.server import bind, serve

    if not 0 <= port <= 65535:
        raise MixloraError(f"--port must be in 0..65535, got {port}")
    if split_rows is not None and split_rows < 0:
        raise MixloraError(f"--split-rows must be >= 0, got {split_rows}")
    service = load_service(
        model_dir,
        adapters,
        gate_dir,
        max_batch,
        max_queue,
        context,
        max_tokens,
        api_key,
        split_rows=split_rows,
    )
    sock = bind(host, port)
    url = f"http://{host}:{sock.getsockname()[1]}/v1"

    def ready() -> None:
        click.echo(f"serving {', '.join(service.models())} at {url}", err=True)

    serve(service, sock, drain_timeout, on_ready=ready)
