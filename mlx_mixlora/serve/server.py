"""Run the app with uvicorn on a socket bound here (so port 0 gives a free port we can print)."""

from __future__ import annotations

import socket
from collections.abc import Callable

import uvicorn

from ..errors import MixloraError
from .app import Service, create_app


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise MixloraError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    sock.listen(128)
    return sock


def make_server(service: Service, drain_s: float = 30.0) -> uvicorn.Server:
    config = uvicorn.Config(
        create_app(service),
        log_level="warning",
        timeout_graceful_shutdown=drain_s,
        lifespan="off",
    )
    return uvicorn.Server(config)


def serve(
    service: Service,
    sock: socket.socket,
    drain_s: float = 30.0,
    on_ready: Callable[[], None] | None = None,
) -> None:
    """Serve until Ctrl-C / SIGTERM; in-flight requests finish (up to `drain_s`), then the engine stops."""
    server = make_server(service, drain_s)
    service.engine.start()
    if on_ready is not None:
        on_ready()
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C after its graceful shutdown
        pass
    finally:
        service.engine.stop(timeout=drain_s)
        sock.close()
