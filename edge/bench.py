"""Latency and throughput of a `Runner` per batch size (`riad-edge bench`).

Each batch size gets a few warm-up calls, then `iters` timed calls of the
whole `runner(images)` (for a bare U-Net that includes masking, assembly and
the numpy scoring); preprocessing is not timed.

Example:

>>> for row in benchmark(Runner.open("riad_fp32.tflite"), (1, 4), iters=20):  # doctest: +SKIP
...     print(row["batch"], row["p50_ms"], row["images_per_s"])
"""

from __future__ import annotations

import time
from typing import Callable, Iterator, Sequence

import numpy as np


def timed_calls(call: Callable[[], object], warmup: int, iters: int) -> list[float]:
    """Wall seconds of `iters` calls of `call` (at least one) after `warmup` untimed calls.

    Example:

    >>> len(timed_calls(lambda: sum(range(100)), warmup=1, iters=3))
    3
    """
    for _ in range(warmup):
        call()
    seconds = []
    for _ in range(max(1, iters)):
        start = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - start)
    return seconds


def benchmark(
    runner, batch_sizes: Sequence[int] = (1,), iters: int = 20, warmup: int = 3, seed: int = 0
) -> Iterator[dict]:
    """Yields one record per batch size.

    Returns (per record):
        `{"batch", "iters", "p50_ms", "p99_ms", "images_per_s", "backend", "delegate"}`;
        latencies are per call of `batch` images, throughput is images over total time.
    """
    if iters < 1:
        raise ValueError(f"iters must be at least 1, got {iters}")
    rng = np.random.default_rng(seed)
    for batch in batch_sizes:
        if batch < 1:
            raise ValueError(f"batch sizes must be positive, got {batch}")
        images = rng.random((batch, *runner.image_size, runner.channels), dtype=np.float32)
        images = runner.preprocess(list(images))
        seconds = np.array(timed_calls(lambda: runner(images), warmup, iters))
        yield {
            "batch": int(batch),
            "iters": int(iters),
            "p50_ms": round(float(np.percentile(seconds, 50)) * 1e3, 3),
            "p99_ms": round(float(np.percentile(seconds, 99)) * 1e3, 3),
            "images_per_s": round(batch * iters / float(seconds.sum()), 2),
            "backend": runner.session.backend,
            "delegate": runner.session.delegate,
        }
