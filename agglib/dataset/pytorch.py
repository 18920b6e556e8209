"""PyTorch datasets reading a dataset store lazily (safe with several DataLoader workers).

Each worker process opens the Zarr store on first use; only the images asked for are read
and decompressed. Images come out as float32 detector counts, shape (1, H, W); preprocessing
(scaling, augmentation) is a ``transform``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from agglib.dataset.store import DatasetStore

__all__ = ["StemImageDataset", "ConfigurationBatchDataset"]


class _LazyStore:
    """Opens the store in whichever process first reads from it."""

    def __init__(self, path):
        self.path = Path(path)
        meta = DatasetStore(self.path)                   # validates, reads small arrays once
        self.theta = meta.theta.astype(np.float32)
        self.config_id = meta.config_id
        self.split = meta.split
        self.descriptors = meta.descriptors.to_numpy(dtype=np.float32)
        self.descriptor_names = meta.descriptor_names
        self._store = meta
        self._images = None
        self._cache = None
        self._cache_pos = {}

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_store"] = None
        state["_images"] = None
        state["_cache"] = None          # worker processes read lazily instead of copying the cache
        state["_cache_pos"] = {}
        return state

    @property
    def store(self) -> DatasetStore:
        if self._store is None:
            self._store = DatasetStore(self.path)
        return self._store

    def image(self, i: int) -> np.ndarray:
        cached = self._cache_pos.get(int(i)) if self._cache is not None else None
        if cached is not None:
            return self._cache[cached]
        if self._images is None:
            self._images = self.store.images
        return np.asarray(self._images[int(i)], dtype=np.float32)

    def preload(self, indices, max_bytes: int) -> bool:
        """Read the images ``indices`` into memory in one bulk read if they fit in ``max_bytes``.

        One bulk read is far faster than many single-image reads; worthwhile when a split is read
        every epoch. Returns whether the images were loaded.
        """
        indices = np.unique(np.asarray(indices, dtype=np.int64))
        shape = self.store.images.shape
        if indices.size * shape[1] * shape[2] * 4 > max_bytes:
            return False
        self._cache = self.store.read_images(indices)
        self._cache_pos = {int(i): k for k, i in enumerate(indices)}
        return True


class StemImageDataset(Dataset):
    """Single images of one split.

    Parameters
    ----------
    path : path-like
        A finished dataset store.
    split : {"T", "E", None}
        Training set, evaluation set, or all samples.
    transform : callable, optional
        Applied to the (1, H, W) float32 image tensor [counts].

    Items are dicts: ``image`` (1, H, W), ``theta`` (4,), ``descriptors`` (D,), ``index``.
    """

    def __init__(self, path, split: str | None = "T", transform=None):
        self._data = _LazyStore(path)
        self.indices = DatasetStore(path).indices(split)
        self.transform = transform

    def __len__(self) -> int:
        return int(self.indices.size)

    def preload(self, max_bytes: int = 2 * 1024**3) -> bool:
        """Read this split's images into memory if they fit in ``max_bytes``."""
        return self._data.preload(self.indices, max_bytes)

    def __getitem__(self, k: int) -> dict:
        i = int(self.indices[k])
        image = torch.from_numpy(self._data.image(i))[None]
        if self.transform is not None:
            image = self.transform(image)
        return {"image": image, "theta": torch.tensor(self._data.theta[i]),
                "descriptors": torch.tensor(self._data.descriptors[i]), "index": i}


class ConfigurationBatchDataset(Dataset):
    """Groups of ν images that share one parameter configuration (batches B of Eq. 15).

    The samples of each configuration in the split are shuffled with ``seed`` and cut into
    ⌊m/ν⌋ groups; :meth:`set_epoch` reshuffles them (use it in training, not in evaluation).
    With ``repeats = k`` this is done k times per epoch, independently: k·⌊m/ν⌋ groups per
    configuration, which share images but not their combination (more distinct groups from few
    images per configuration; the quick profile has m = 18, ν = 12).

    Items are dicts: ``images`` (ν, 1, H, W), ``theta`` (4,), ``config_id``, ``indices`` (ν,).
    """

    def __init__(self, path, split: str | None = "E", nu: int = 12, seed: int = 0, transform=None,
                 repeats: int = 1):
        from agglib.core.validation import check_range

        check_range("nu", nu, low=1, integer=True)
        check_range("repeats", repeats, low=1, integer=True)
        self.repeats = int(repeats)
        self._data = _LazyStore(path)
        self.sample_indices = DatasetStore(path).indices(split)
        self.nu = int(nu)
        self.seed = int(seed)
        self.transform = transform
        counts = np.bincount(self._data.config_id[self.sample_indices])
        if counts.max(initial=0) < self.nu:
            raise ValueError(f"nu={nu} is out of range: no configuration has {nu} samples in split "
                             f"{split!r} (at most {counts.max(initial=0)}); accepted range [1, {counts.max(initial=0)}]")
        self.set_epoch(0)

    def preload(self, max_bytes: int = 2 * 1024**3) -> bool:
        """Read this split's images into memory if they fit in ``max_bytes``."""
        return self._data.preload(self.sample_indices, max_bytes)

    def set_epoch(self, epoch: int) -> None:
        """Regroup the samples for ``epoch`` (deterministic in seed and epoch)."""
        rng = np.random.default_rng([self.seed, int(epoch)])
        ids = self._data.config_id[self.sample_indices]
        groups = []
        for c in np.unique(ids):
            for _ in range(self.repeats):
                members = rng.permutation(self.sample_indices[ids == c])
                for g in range(members.size // self.nu):
                    groups.append(members[g * self.nu:(g + 1) * self.nu])
        self.groups = np.array(groups, dtype=np.int64).reshape(-1, self.nu)

    def __len__(self) -> int:
        return int(self.groups.shape[0])

    def __getitem__(self, k: int) -> dict:
        idx = self.groups[k]
        images = torch.stack([torch.from_numpy(self._data.image(i))[None] for i in idx])
        if self.transform is not None:
            images = torch.stack([self.transform(im) for im in images])
        return {"images": images, "theta": torch.tensor(self._data.theta[idx[0]]),
                "config_id": int(self._data.config_id[idx[0]]), "indices": torch.from_numpy(idx)}
