"""Random streams: one seed in, independent reproducible streams out.

Per-item streams come from :meth:`numpy.random.SeedSequence.spawn`, so item ``k``
gets the same stream whatever the number of workers or the chunking.
"""

from __future__ import annotations

import random

import numpy as np


def as_generator(seed) -> np.random.Generator:
    """A :class:`numpy.random.Generator` from ``None``, an int, a SeedSequence or a Generator."""
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(seed)


def spawn_seeds(seed, count: int) -> list[np.random.SeedSequence]:
    """``count`` independent child seed sequences of ``seed``."""
    if isinstance(seed, np.random.SeedSequence):
        ss = seed
    elif isinstance(seed, np.random.Generator):
        ss = np.random.SeedSequence(seed.integers(0, 2**63 - 1))
    else:
        ss = np.random.SeedSequence(seed)
    return ss.spawn(int(count))


def seed_all(seed: int) -> None:
    """Seed Python's, NumPy's global and (if installed) PyTorch's generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return
    torch.manual_seed(seed)
