"""The HTTP side: OpenAI-compatible routes on Starlette, SSE streaming, API key, errors.

Starlette + uvicorn (not the standard library's threaded server, which
mlx-lm uses) because each request is a coroutine waiting on the engine's events:
a streaming client that disconnects cancels its coroutine, whose cleanup frees
the batch row at once, and uvicorn drains in-flight requests on Ctrl-C.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .engine import AUTO, Engine, Job
from .protocol import ApiError, Params, parse_chat, parse_completion, parse_json
from .resources import memory_mb
from .sampling import RowSampler


class Service:
    """What the routes need: the engine, the names it serves and the request limits."""

    def __init__(
        self,
        engine: Engine,
        base_name: str,
        context: int,
        default_max_tokens: int = 256,
        api_key: str | None = None,
        poll_s: float = 0.5,
    ):
        self.engine, self.base_name = engine, base_name
        self.context, self.default_max_tokens = context, default_max_tokens
        self.api_key, self.poll_s = api_key, poll_s
        self.created = int(time.time())

    def models(self) -> list[str]:
        auto = ["auto"] if self.engine.router is not None else []
        return [self.base_name, *self.engine.names, *auto]

    def adapter_of(self, model: str) -> int:
        if model == self.base_name:
            return -1
        if model == "auto":
            if self.engine.router is None:
                raise ApiError(400, "'auto' needs the server started with --gate", "model")
            return AUTO
        if model in self.engine.names:
            return self.engine.names.index(model)
        raise ApiError(400, f"unknown model {model!r}; served: {', '.join(self.models())}", "model")

    def chat_tokens(self, messages: list[dict]) -> list[int]:
        tok = self.engine.tokenizer
        if not getattr(tok, "chat_template", None):
            raise ApiError(400, "this model has no chat template; use /v1/completions", "messages")
        try:
            out = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        except Exception as e:  # a template may reject a role order; that is the request's fault
            raise ApiError(
                400, f"the chat template rejected the messages: {e}", "messages"
            ) from None
        if hasattr(out, "keys"):  # transformers may return a BatchEncoding
            out = out["input_ids"]
        return [int(t) for t in out]

    def job(self, p: Params, tokens: list[int], emit, param: str) -> Job:
        if not tokens:
            raise ApiError(400, "the prompt encodes to no tokens", param)
        room = self.context - len(tokens)
        if room < 1:
            raise ApiError(
                413,
                f"the prompt has {len(tokens)} tokens; the context holds {self.context}",
                param,
            )
        max_tokens = min(p.max_tokens or self.default_max_tokens, room)
        sampler = RowSampler(p.temperature, p.top_p, p.seed)
        return Job(tokens, self.adapter_of(p.model), max_tokens, sampler, emit, p.stop)


def _error(e: ApiError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status)


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj)}\n\n"


def create_app(service: Service) -> Starlette:
    async def models(request: Request) -> Response:
        data = [
            {"id": m, "object": "model", "created": service.created, "owned_by": "mixlora"}
            for m in service.models()
        ]
        return JSONResponse({"object": "list", "data": data})

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", **service.engine.stats(), **memory_mb()})

    async def chat(request: Request) -> Response:
        req = parse_chat(parse_json(await request.body()))
        return await _generate(request, req.params, service.chat_tokens(req.messages), True)

    async def completions(request: Request) -> Response:
        req = parse_completion(parse_json(await request.body()))
        tokens = list(service.engine.tokenizer.encode(req.prompt))
        return await _generate(request, req.params, tokens, False)

    async def _generate(request: Request, p: Params, tokens: list[int], chat: bool) -> Response:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def emit(ev: dict) -> None:
            loop.call_soon_threadsafe(events.put_nowait, ev)

        job = service.job(p, tokens, emit, "messages" if chat else "prompt")
        service.engine.submit(job)
        shape = _Shape(p.model, chat)
        if p.stream:
            return StreamingResponse(
                _stream(job, events, shape, len(tokens), p.include_usage),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )
        text, route, done = [], {}, None
        try:
            while done is None:
                try:
                    ev = await asyncio.wait_for(events.get(), service.poll_s)
                except asyncio.TimeoutError:  # noqa: UP041 (not TimeoutError before 3.11)
                    if await request.is_disconnected():
                        return Response(status_code=499)
                    continue
                if ev["type"] == "text":
                    text.append(ev["text"])
                elif ev["type"] == "route":
                    route = ev
                elif ev["type"] == "error":
                    raise ApiError(500, ev["message"])
                else:
                    done = ev
        finally:
            if done is None:
                job.cancel()
                service.engine.wake()
        usage = _usage(len(tokens), done["completion_tokens"])
        return JSONResponse(shape.full("".join(text), done["finish_reason"], route, usage))

    async def _stream(job: Job, events: asyncio.Queue, shape, n_prompt: int, include_usage):
        finished = False
        try:
            route: dict = {}
            first = True
            while True:
                ev = await events.get()
                if ev["type"] == "route":
                    route = ev
                elif ev["type"] == "text":
                    yield _sse(shape.chunk(ev["text"], None, route, first))
                    first = False
                elif ev["type"] == "error":
                    finished = True
                    yield _sse(ApiError(500, ev["message"]).body())
                    break
                else:
                    finished = True
                    yield _sse(shape.chunk("", ev["finish_reason"], route, first))
                    if include_usage:
                        u = _usage(n_prompt, ev["completion_tokens"])
                        yield _sse({**shape.head("chunk"), "choices": [], "usage": u})
                    break
            yield "data: [DONE]\n\n"
        finally:
            if not finished:  # the client went away: free the row now
                job.cancel()
                service.engine.wake()

    async def on_api_error(request: Request, exc: Exception) -> Response:
        return _error(exc)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 500)
        return _error(ApiError(status, str(getattr(exc, "detail", "")) or "error"))

    async def on_crash(request: Request, exc: Exception) -> Response:
        return _error(ApiError(500, f"internal error: {type(exc).__name__}: {exc}"))

    app = Starlette(
        routes=[
            Route("/v1/models", models, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/completions", completions, methods=["POST"]),
        ],
        exception_handlers={
            ApiError: on_api_error,
            HTTPException: on_http_error,
            Exception: on_crash,
        },
    )
    if service.api_key:
        app.add_middleware(_KeyCheck, key=service.api_key)
    return app


class _KeyCheck:
    """ASGI middleware: every HTTP request needs `Authorization: Bearer <key>`."""

    def __init__(self, app, key: str):
        self.app, self.key = app, key.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            headers = dict(scope.get("headers") or [])
            given = headers.get(b"authorization", b"")
            if not hmac.compare_digest(given, b"Bearer " + self.key):
                resp = _error(ApiError(401, "missing or wrong API key (Authorization: Bearer ...)"))
                return await resp(scope, receive, send)
        return await self.app(scope, receive, send)


class _Shape:
    """OpenAI's response objects for chat or text completions."""

    def __init__(self, model: str, chat: bool):
        self.model, self.chat = model, chat
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())

    def head(self, kind: str) -> dict:
        obj = {
            ("chat", "full"): "chat.completion",
            ("chat", "chunk"): "chat.completion.chunk",
        }.get((("chat" if self.chat else "text"), kind), "text_completion")
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def full(self, text: str, finish: str, route: dict, usage: dict) -> dict:
        choice = (
            {"index": 0, "message": {"role": "assistant", "content": text}}
            if self.chat
            else {"index": 0, "text": text, "logprobs": None}
        )
        choice["finish_reason"] = finish
        return {**self.head("full"), "choices": [choice], "usage": usage, "mixlora": _info(route)}

    def chunk(self, text: str, finish: str | None, route: dict, first: bool) -> dict:
        if self.chat:
            delta = {"content": text} if text or first else {}
            if first:
                delta["role"] = "assistant"
            choice = {"index": 0, "delta": delta}
        else:
            choice = {"index": 0, "text": text, "logprobs": None}
        choice["finish_reason"] = finish
        return {**self.head("chunk"), "choices": [choice], "mixlora": _info(route)}


def _info(route: dict) -> dict:
    return {k: v for k, v in route.items() if k != "type"}


def _usage(prompt: int, completion: int) -> dict:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
