"""OpenAI request bodies in, validated generation parameters out; OpenAI-shaped errors.

Only what the engine needs is read from a body; unknown fields are ignored, as
OpenAI's own server ignores fields it does not use (clients send `user`,
`stream_options`, ...). Every problem is an `ApiError` carrying the HTTP status
and the OpenAI error object, so the app turns it into one JSON response.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

MAX_STOPS = 4  # OpenAI's limit on `stop` sequences


class ApiError(Exception):
    """A request the server refuses: status plus OpenAI's {"error": {...}} body."""

    def __init__(self, status: int, message: str, param: str | None = None, kind: str = ""):
        super().__init__(message)
        self.status = status
        self.param = param
        self.kind = kind or {
            400: "invalid_request_error",
            401: "authentication_error",
            404: "not_found_error",
            413: "invalid_request_error",
            503: "server_overloaded",
        }.get(status, "server_error")

    def body(self) -> dict:
        return {
            "error": {
                "message": str(self),
                "type": self.kind,
                "param": self.param,
                "code": self.status,
            }
        }


@dataclass
class Params:
    """One request's generation parameters (validated)."""

    model: str
    max_tokens: int | None = None  # None: up to the context limit or the server's default
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    stream: bool = False
    include_usage: bool = False


@dataclass
class ChatRequest:
    params: Params
    messages: list[dict]


@dataclass
class CompletionRequest:
    params: Params
    prompt: str


def parse_json(raw: bytes) -> dict:
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ApiError(400, f"request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    return body


def _number(body: dict, key: str, default: float, lo: float, hi: float, lo_open=False) -> float:
    v = body.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ApiError(400, f"'{key}' must be a number", key)
    if not (lo < v if lo_open else lo <= v) or v > hi:
        raise ApiError(
            400, f"'{key}' must be in {'(' if lo_open else '['}{lo}, {hi}], got {v}", key
        )
    return float(v)


def _int(body: dict, key: str, lo: int) -> int | None:
    v = body.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise ApiError(400, f"'{key}' must be an integer", key)
    if v < lo:
        raise ApiError(400, f"'{key}' must be >= {lo}, got {v}", key)
    return v


def _stops(body: dict) -> list[str]:
    v = body.get("stop")
    if v is None:
        return []
    stops = [v] if isinstance(v, str) else v
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise ApiError(400, "'stop' must be a non-empty string or a list of them", "stop")
    if len(stops) > MAX_STOPS:
        raise ApiError(400, f"'stop' takes at most {MAX_STOPS} sequences", "stop")
    return stops


def _params(body: dict, max_tokens_keys: tuple[str, ...]) -> Params:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "'model' is required: a name from /v1/models", "model")
    n = _int(body, "n", 1)
    if n not in (None, 1):
        raise ApiError(400, "'n' must be 1 (one choice per request)", "n")
    max_tokens = None
    for key in max_tokens_keys:
        max_tokens = _int(body, key, 1) if max_tokens is None else max_tokens
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "'stream' must be true or false", "stream")
    opts = body.get("stream_options") or {}
    if not isinstance(opts, dict):
        raise ApiError(400, "'stream_options' must be an object", "stream_options")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ApiError(400, "'seed' must be an integer", "seed")
    return Params(
        model=model,
        max_tokens=max_tokens,
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0, lo_open=True),
        stop=_stops(body),
        seed=seed,
        stream=stream,
        include_usage=bool(opts.get("include_usage", False)),
    )


def _content(message: dict, i: int) -> str:
    c = message.get("content")
    if c is None and message.get("role") == "assistant":
        return ""
    if isinstance(c, str):
        return c
    if isinstance(c, list):  # content parts: only text parts can be served by a text model
        texts = []
        for part in c:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise ApiError(
                    400, f"messages[{i}]: only text content parts are supported", "messages"
                )
            if not isinstance(part.get("text"), str):
                raise ApiError(400, f"messages[{i}]: a text part needs a 'text' string", "messages")
            texts.append(part["text"])
        return "".join(texts)
    raise ApiError(
        400, f"messages[{i}].content must be a string or a list of text parts", "messages"
    )


ROLES = ("system", "developer", "user", "assistant")


def parse_chat(body: dict) -> ChatRequest:
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise ApiError(400, "'messages' must be a non-empty list", "messages")
    clean = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise ApiError(400, f"messages[{i}] needs a 'role' in {', '.join(ROLES)}", "messages")
        clean.append({"role": m["role"], "content": _content(m, i)})
    return ChatRequest(_params(body, ("max_completion_tokens", "max_tokens")), clean)


def parse_completion(body: dict) -> CompletionRequest:
    p = body.get("prompt")
    if isinstance(p, list) and len(p) == 1 and isinstance(p[0], str):
        p = p[0]
    if not isinstance(p, str) or not p:
        raise ApiError(
            400, "'prompt' must be a non-empty string (one prompt per request)", "prompt"
        )
    return CompletionRequest(_params(body, ("max_tokens",)), p)
