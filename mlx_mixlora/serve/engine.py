"""The scheduler: one thread owns the model and runs a continuous, mixed-adapter decode batch.

Requests wait in a bounded queue. Each turn of the loop

1. drops rows whose client went away (their KV rows are filtered out),
2. admits waiting requests up to `max_batch` rows: `auto` ones are routed with
   the gate, then all new prompts are prefilled together (left-padded, mlx-lm's
   `BatchKVCache`) and their caches appended to the running batch's,
3. runs one decode step for every row, each row with its own adapter
   (`route.mixed`: per-row adapter indices, -1 for the base), samples each row
   with its own parameters, and removes the rows that finished.

A finished row leaves at once and a new one joins at the next turn, so short
answers never wait for long ones.

The decode is pipelined as mlx-lm's generators are: step k+1 is built from
step k's still-lazy tokens and started (`mx.async_eval`) before step k's tokens
are read to Python, so detokenizing, stop strings and sending the text overlap
the next forward pass. A row that finishes at step k (EOS, a stop string) has
its step-k+1 token computed once in vain; it is dropped before anything else is
done with it, so the tokens are those of the unpipelined loop (`pipeline=False`). Everything MLX runs on this one thread; the
HTTP side talks to it through `submit`, the job's `cancel`, and the events the
job's `emit` callback receives (route, text, done, error).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.cache import BatchKVCache

from ..errors import MixloraError
from ..modules import n_layers
from ..route.decision import decide
from ..route.embed import run_lower, run_upper
from ..route.mixed import attach_mixed, set_routes
from .protocol import ApiError
from .rowsplit import attach_row_split, default_max_rows
from .sampling import RowSampler, sample_tokens
from .text import TextStream

AUTO = -2  # Job.adapter before the gate has routed it


@dataclass
class Job:
    """One request's generation: prompt tokens, adapter (-1 base, AUTO), limits, sink."""

    tokens: list[int]
    adapter: int
    max_tokens: int
    sampler: RowSampler
    emit: Callable[[dict], None]
    stops: list[str] = field(default_factory=list)
    cancelled: bool = False
    route_info: dict | None = None  # what the response reports about the routing

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class _Row:
    job: Job
    stream: TextStream
    next_token: int = 0
    n: int = 0
    done: bool = False


class Engine:
    """Continuous batching over a model with mixed-adapter layers attached."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        adapters: list,
        router: Any = None,
        router_mode: str = "top1",
        threshold: float = 0.5,
        max_batch: int = 8,
        max_queue: int = 32,
        pipeline: bool = True,
        split_rows: int | None = None,
    ):
        if max_batch < 1 or max_queue < 0:
            raise MixloraError("--max-batch must be >= 1 and --max-queue >= 0")
        self.model, self.tokenizer, self.adapters = model, tokenizer, adapters
        self.names = [a.name for a in adapters]
        self.router, self.router_mode, self.threshold = router, router_mode, threshold
        self.max_batch, self.max_queue = max_batch, max_queue
        self.eos = set(getattr(tokenizer, "eos_token_ids", None) or [tokenizer.eos_token_id])
        self._pending: deque[Job] = deque()
        self._rows: list[_Row] = []
        self._cache: list[BatchKVCache] | None = None
        self._next: mx.array | None = None  # the rows' next tokens [R], lazy until read
        self._routes: tuple[int, ...] | None = None  # what set_routes last set
        self.pipeline = pipeline
        self._cv = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.served = 0
        self.steps = 0
        self.peak_rows = 0  # most rows ever decoded together (shows batching happened)
        self.cancelled = 0  # rows dropped because their client went away
        attach_mixed(model, adapters)
        self.split_rows = default_max_rows() if split_rows is None else split_rows
        attach_row_split(model, self.split_rows)
        # MLX streams belong to threads: arrays still lazy here would fail on the model thread
        mx.eval(model.parameters(), _router_arrays(router))

    # --- the HTTP side ------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="mixlora-engine", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        with self._cv:
            if self._stopping:
                raise ApiError(503, "the server is shutting down")
            if any(j.cancelled for j in self._pending):
                self._pending = deque(j for j in self._pending if not j.cancelled)
            if len(self._pending) >= self.max_queue + max(0, self.max_batch - len(self._rows)):
                raise ApiError(503, f"the queue is full ({self.max_queue} waiting); retry later")
            self._pending.append(job)
            self._cv.notify()

    def wake(self) -> None:
        with self._cv:
            self._cv.notify()

    def stop(self, timeout: float | None = None) -> None:
        """Finish what is admitted or waiting, then end the thread."""
        with self._cv:
            self._stopping = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    def stats(self) -> dict:
        with self._cv:
            return {
                "active_rows": len(self._rows),
                "queued": len(self._pending),
                "served": self.served,
                "decode_steps": self.steps,
                "peak_rows": self.peak_rows,
                "cancelled": self.cancelled,
            }

    # --- the model thread ---------------------------------------------------------
    def _run(self) -> None:
        try:
            while True:
                with self._cv:
                    while not self._pending and not self._rows and not self._stopping:
                        self._cv.wait()
                    if self._stopping and not self._pending and not self._rows:
                        return
                self.turn()
        finally:  # MLX can abort at exit when a thread's stream outlives its thread
            mx.synchronize()
            mx.clear_streams()

    def turn(self) -> None:
        """One turn of the loop: drop gone rows, admit waiting jobs, one decode step.

        Runs on the engine's thread; a test without `start()` may call it itself.
        """
        with self._cv:
            free = self.max_batch - len(self._rows)
            new = []
            while self._pending and len(new) < free:
                job = self._pending.popleft()
                if not job.cancelled:
                    new.append(job)
        try:
            self._drop_cancelled()
            if new:
                self._admit(new)
            if self._rows:
                self._step()
        except Exception as e:  # a bug or an MLX failure must not take the server down
            for job in new + [r.job for r in self._rows]:
                _send(job, {"type": "error", "message": f"generation failed: {e}"})
            self._rows, self._cache, self._next = [], None, None

    def _admit(self, jobs: list[Job]) -> None:
        """Prefill the new jobs together and append their rows; their first tokens stay lazy."""
        self._route([j for j in jobs if j.adapter == AUTO])
        for j in jobs:
            if j.route_info is None:
                j.route_info = {"adapter": "base" if j.adapter < 0 else self.names[j.adapter]}
                _send(j, {"type": "route", **j.route_info})
        t = max(len(j.tokens) for j in jobs)
        pad = [t - len(j.tokens) for j in jobs]
        batch = mx.array([[0] * p + j.tokens for p, j in zip(pad, jobs, strict=True)])
        cache = [BatchKVCache(pad) for _ in self.model.layers]
        self._set_routes([j.adapter for j in jobs])
        logits = last_logits(self.model, batch, cache)
        first = sample_tokens(logits, [j.sampler for j in jobs])
        if self._cache is None:
            self._cache, self._next = cache, first
        else:
            for c, o in zip(self._cache, cache, strict=True):
                c.extend(o)
            self._next = mx.concatenate([self._next, first])
        self._rows += [_Row(j, TextStream(self.tokenizer, j.stops)) for j in jobs]
        self.peak_rows = max(self.peak_rows, len(self._rows))
        mx.async_eval(self._next)

    def _route(self, jobs: list[Job]) -> None:
        """Pick each `auto` job's adapter with the gate (on the base: routes set to -1)."""
        for s in range(0, len(jobs), 16):  # prompt_features batches 16 prompts per pass
            chunk = jobs[s : s + 16]
            self._set_routes([-1] * len(chunk))
            probs = self.router.probs(self.model, [j.tokens for j in chunk])
            mode = "threshold" if self.router_mode == "threshold" else "top1"
            for j, d in zip(chunk, decide(probs, mode, threshold=self.threshold), strict=True):
                j.adapter = d.top1
                j.route_info = {
                    "adapter": "base" if d.top1 < 0 else self.names[d.top1],
                    "router_weights": {
                        n: round(p, 4) for n, p in zip(self.names, d.probs, strict=True)
                    },
                }
                _send(j, {"type": "route", **j.route_info})

    def _step(self) -> None:
        """Hand every row its pending token; start the next forward pass for the rows left.

        Pipelined, the next pass is started first (from the pending tokens, still
        lazy) and the pending tokens are read while it runs; not when every row is
        taking its last token (`max_tokens`): that pass would be wasted, and the
        next request's prefill would wait behind it.
        """
        started = self.pipeline and any(r.n + 1 < r.job.max_tokens for r in self._rows)
        pending = self._next
        if started:
            self._next = self._forward(pending)
        for r, tok in zip(self._rows, pending.tolist(), strict=True):
            self._advance(r, tok)
        self._drop(lambda r: r.done)
        if not started and self._rows:
            self._next = self._forward(self._next)

    def _forward(self, tokens: mx.array) -> mx.array:
        """One decode step for every row from `tokens` [R]; the sampled tokens, started."""
        self._set_routes([r.job.adapter for r in self._rows])
        logits = self.model(tokens[:, None], cache=self._cache)[:, -1, :]
        out = sample_tokens(logits, [r.job.sampler for r in self._rows])
        mx.async_eval(out)
        self.steps += 1
        return out

    def _set_routes(self, adapters: list[int]) -> None:
        key = tuple(adapters)
        if key != self._routes:
            set_routes(self.model, adapters)
            self._routes = key

    def _advance(self, r: _Row, tok: int) -> None:
        if r.job.cancelled:
            self.cancelled += 1
            r.done = True
            return
        if tok in self.eos:
            return self._finish(r, "stop")
        r.n += 1
        text = r.stream.add(tok)
        if text:
            _send(r.job, {"type": "text", "text": text})
        if r.stream.stopped:
            self._finish(r, "stop")
        elif r.n >= r.job.max_tokens:
            self._finish(r, "length")
        else:
            r.next_token = tok

    def _finish(self, r: _Row, reason: str) -> None:
        rest = r.stream.finish()
        if rest:
            _send(r.job, {"type": "text", "text": rest})
        _send(r.job, {"type": "done", "finish_reason": reason, "completion_tokens": r.n})
        r.done = True
        self.served += 1

    def _drop_cancelled(self) -> None:
        gone = sum(r.job.cancelled for r in self._rows)
        if gone:
            self.cancelled += gone
            self._drop(lambda r: r.job.cancelled)

    def _drop(self, gone: Callable[[_Row], bool]) -> None:
        keep = [i for i, r in enumerate(self._rows) if not gone(r)]
        if len(keep) == len(self._rows):
            return
        with self._cv:
            self._rows = [self._rows[i] for i in keep]
        if not keep:
            self._cache, self._next = None, None
            return
        idx = mx.array(keep)
        for c in self._cache:
            c.filter(idx)
        self._next = self._next[idx]


def last_logits(model: Any, tokens: mx.array, cache: list) -> mx.array:
    """Logits [B, V] at the last position only: the LM head over every prompt position
    would be most of a prefill's work on CPU (vocab × hidden per token)."""
    n = n_layers(model)
    h = run_lower(model, tokens, n, cache)
    return run_upper(model, h[:, -1:, :], n)[:, 0, :]


def _router_arrays(router: Any) -> list:
    module = getattr(router, "gate", None)
    return [module.parameters()] if isinstance(module, nn.Module) else []


def _send(job: Job, event: dict) -> None:
    try:
        job.emit(event)
    except RuntimeError:  # the request's event loop is gone (server shut down)
        job.cancel()
