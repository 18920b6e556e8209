"""Ordered parallel map over processes with a progress bar.

Results are returned in input order; since every item carries its own seed,
the output does not depend on the number of workers.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Sequence

from tqdm.auto import tqdm

from agglib import config


def resolve_workers(workers: int | None) -> int:
    """Number of worker processes: the argument, else ``config['workers']``, else all cores."""
    if workers is None:
        workers = config.get("workers")
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if int(workers) < 1:
        raise ValueError(f"workers={workers!r} is out of range; accepted range [1, inf)")
    return int(workers)


def _apply_chunk(func, chunk):
    return [func(item) for item in chunk]


def ordered_map(func: Callable, items: Sequence, *, workers: int | None = None,
                desc: str | None = None, show_progress_bars: bool | None = None,
                chunk_size: int | None = None) -> list:
    """``[func(x) for x in items]``, in processes when ``workers > 1``.

    Parameters
    ----------
    func : callable
        A picklable (module-level) function of one item.
    items : sequence
        Inputs; each should carry its own seed.
    workers : int, optional
        Processes to use (default: ``config['workers']`` or all cores).
    desc : str, optional
        Progress-bar label.
    show_progress_bars : bool, optional
        Default: ``config['progress_bars']``.
    chunk_size : int, optional
        Items per task sent to a worker.
    """
    items = list(items)
    workers = min(resolve_workers(workers), max(1, len(items)))
    if show_progress_bars is None:
        show_progress_bars = config.get("progress_bars")
    bar = tqdm(total=len(items), desc=desc, disable=not show_progress_bars)
    try:
        if workers == 1:
            out = []
            for item in items:
                out.append(func(item))
                bar.update(1)
            return out
        if chunk_size is None:
            chunk_size = max(1, min(64, len(items) // (4 * workers)))
        chunks = [items[i:i + chunk_size] for i in range(0, len(items), chunk_size)]
        out = []
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(_apply_chunk, func, c) for c in chunks]
            for fut in futures:
                res = fut.result()
                out.extend(res)
                bar.update(len(res))
        return out
    finally:
        bar.close()
