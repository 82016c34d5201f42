"""Run a `Service` on a loopback ephemeral port in a background thread, for tests."""

from __future__ import annotations

import contextlib
import json
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from mlx_mixlora.serve.app import Service
from mlx_mixlora.serve.server import bind, make_server

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def chat_prompt(messages: list[dict]) -> str:
    """The template's text without its leading BOS (which `encode` adds back)."""
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"


def with_chat_template(model_dir: Path, dst: Path) -> Path:
    """A copy of the model dir whose tokenizer has `CHAT_TEMPLATE`."""
    shutil.copytree(model_dir, dst)
    cfg_path = dst / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["chat_template"] = CHAT_TEMPLATE
    cfg_path.write_text(json.dumps(cfg))
    return dst


@contextlib.contextmanager
def running(service: Service, timeout: float = 20.0, start_engine: bool = True) -> Iterator[str]:
    """Serve on 127.0.0.1:<free port>; yields the base URL (…/v1); stops and joins on exit.

    `start_engine=False` leaves the scheduler stopped (requests only queue) until
    the test calls `service.engine.start()`.
    """
    sock = bind("127.0.0.1", 0)
    server = make_server(service, drain_s=5.0)
    if start_engine:
        service.engine.start()
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    end = time.monotonic() + timeout
    while not server.started and thread.is_alive() and time.monotonic() < end:
        time.sleep(0.02)
    assert server.started, "test server did not start"
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout)
        service.engine.stop(timeout)
        sock.close()


def wait_for(predicate, timeout: float = 10.0, step: float = 0.02) -> bool:
    """Poll `predicate` until true or `timeout` seconds pass (bounded)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(step)
    return predicate()
