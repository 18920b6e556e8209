"""Throughput measurement shared by the benchmarks."""

from __future__ import annotations

import time
from typing import Callable


def items_per_second(run: Callable[[int], object], count: int, min_seconds: float) -> float:
    """Items per second of ``run(count)``, growing ``count`` until one call lasts ``min_seconds``.

    ``run(count)`` must process ``count`` items; warm-up (compilation) is the caller's job.
    """
    while True:
        t = time.perf_counter()
        run(count)
        elapsed = time.perf_counter() - t
        if elapsed >= min_seconds:
            return count / elapsed
        count = int(count * max(2.0, 1.2 * min_seconds / max(elapsed, 1e-3)))
