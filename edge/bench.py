"""Latency and throughput of a `Runner` per batch size (`riad-edge bench`).

Each batch size gets a few warm-up calls, then `iters` timed calls of the
whole `runner(images)` (for a bare U-Net that includes masking, assembly and
the numpy scoring); preprocessing is not timed.

Example:

>>> for row in benchmark(Runner.open("riad_fp32.tflite"), (1, 4), iters=20):  # doctest: +SKIP
...     print(row["batch"], row["p50_ms"], row["images_per_s"])
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
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
        seconds = np.array(timed_calls(lambda images=images: runner(images), warmup, iters))
        yield {
            "batch": int(batch),
            "iters": int(iters),
            "p50_ms": round(float(np.percentile(seconds, 50)) * 1e3, 3),
            "p99_ms": round(float(np.percentile(seconds, 99)) * 1e3, 3),
            "images_per_s": round(batch * iters / float(seconds.sum()), 2),
            "backend": runner.session.backend,
            "delegate": runner.session.delegate,
        }


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (or the given text); empty where there is none.

    Example:

    >>> sorted(cpu_flags("flags : fpu avx2 amx_bf16"))
    ['amx_bf16', 'avx2', 'fpu']
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return set()
    return {
        flag for line in cpuinfo.splitlines() if line.startswith("flags") for flag in line.partition(":")[2].split()
    }


def cpu_facts() -> dict:
    """What a benchmark records about the CPU: model, cores, usable cores, load average, bfloat16 flags."""
    model = platform.processor() or platform.machine()
    try:
        names = [line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")]
        model = names[0].partition(":")[2].strip() if names else model
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None
    bf16 = sorted(cpu_flags() & {"amx_bf16", "avx512_bf16"})
    return {"cpu": model, "cores": os.cpu_count(), "usable_cores": usable, "load_average": load, "bf16": bf16}
