"""Both cores for MLX work on the CPU backend: CPU streams with single-threaded BLAS.

On the CPU, MLX runs an op on one thread per stream, so LAPACK calls, elementwise
kernels and small GEMMs leave the second core idle, while a multi-threaded OpenBLAS
GEMM stalls whenever another process holds a core. Two streams, each with
single-threaded BLAS, keep both cores busy with both kinds of work: the trainer
splits a batch over them (`train.parallel`), merges run two modules at a time
(`map_on_streams`). On Metal/CUDA one stream saturates the device.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import mlx.core as mx

from . import blas

T = TypeVar("T")
R = TypeVar("R")


@contextlib.contextmanager
def blas_threads(n: int) -> Iterator[None]:
    """Temporarily set OpenBLAS's thread count (no-op when no OpenBLAS is loaded)."""
    old = blas.get_num_threads()
    if old is not None:
        blas.set_num_threads(n)
    try:
        yield
    finally:
        if old is not None:
            blas.set_num_threads(old)


def default_streams() -> int:
    """2 on the CPU device (the Linux wheel), 1 on Metal/CUDA where one stream saturates the GPU."""
    return 2 if mx.default_device() == mx.cpu else 1


def map_on_streams(fn: Callable[[T], R], items: Iterable[T], workers: int | None = None) -> list[R]:
    """[fn(x) for x in items], `workers` at a time, each worker a thread with its own CPU stream.

    `fn` must evaluate what it returns and must not depend on other items; arrays it
    reads from outside must already be evaluated (a lazy array's graph names the
    stream it was made on, and a worker has only its own). Results
    come back in `items`' order, as from a serial run: only the order of independent
    work changes. The first exception raised by `fn` is raised here.
    """
    items = list(items)
    n = min(workers or default_streams(), len(items))
    if n <= 1:
        return [fn(x) for x in items]
    results: list = [None] * len(items)
    errors: list[BaseException] = []
    todo = iter(range(len(items)))
    lock = threading.Lock()

    def worker() -> None:
        try:  # MLX gives each thread its own default stream
            while not errors:
                with lock:
                    i = next(todo, None)
                if i is None:
                    return
                results[i] = fn(items[i])
        except BaseException as e:  # noqa: BLE001  (re-raised in the caller's thread)
            errors.append(e)
        finally:
            mx.synchronize()
            mx.clear_streams()  # joined here, not at exit: MLX aborts on a stream outliving its thread

    with blas_threads(1):
        threads = [threading.Thread(target=worker, daemon=True) for _ in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    if errors:
        raise errors[0]
    return results
