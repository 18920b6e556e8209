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

from agglib.core.distributed import host_to_device
from agglib.dataset.store import DatasetStore

__all__ = ["StemImageDataset", "ConfigurationBatchDataset", "ResidentImages", "encode_counts", "decode_counts"]


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

    Notes
    -----
    Each item is a dict of ``image`` (1, H, W), ``theta`` (4,), ``descriptors`` (D,) and ``index``.
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

    Notes
    -----
    Each item is a dict of ``images`` (ν, 1, H, W), ``theta`` (4,), ``config_id`` and ``indices`` (ν,).
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


class _ImageBlocks(Dataset):
    """Blocks of a store's images, encoded compactly (a DataLoader decodes them in parallel)."""

    def __init__(self, path, indices, block: int):
        self.path, self.indices, self.block = Path(path), np.asarray(indices, dtype=np.int64), int(block)
        self._store = None

    def __len__(self) -> int:
        return -(-self.indices.size // self.block)

    def __getitem__(self, b: int) -> torch.Tensor:
        if self._store is None:
            self._store = DatasetStore(self.path)
        part = self.indices[b * self.block:(b + 1) * self.block]
        return torch.from_numpy(encode_counts(self._store.read_images(part, dtype=self._store.images.dtype)))


def encode_counts(images: np.ndarray) -> np.ndarray:
    """Detector counts in the narrowest exact form: uint16 bits (as int16, which every device
    indexes) when all counts are below 2¹⁶, else int32; float images (randomised acquisitions)
    stay float32. :func:`decode_counts` inverts it."""
    if images.dtype.kind == "f":
        return np.ascontiguousarray(images, dtype=np.float32)
    if images.size == 0 or int(images.max()) < 2**16:
        return images.astype(np.uint16).view(np.int16)
    if int(images.max()) >= 2**31:
        raise ValueError(f"detector counts up to {int(images.max())} do not fit the training encoding (< 2³¹)")
    return images.astype(np.int32)


def decode_counts(encoded: torch.Tensor) -> torch.Tensor:
    """float32 counts from :func:`encode_counts`' form (on any device)."""
    if encoded.dtype == torch.int16:
        return (encoded.to(torch.int32) & 0xFFFF).to(torch.float32)
    return encoded.to(torch.float32)


class ResidentImages:
    """Images of a store held in one tensor on a device (GPU memory, or RAM), read once.

    Counts are kept in :func:`encode_counts`' form (2 bytes per pixel when every count is below
    2¹⁶, else 4), so the paper profile's 32,400 images of 512² (34 GB) fit on one 80 GB GPU;
    batches are indexed and converted to float32 on the device, with no copies from the host.

    Parameters
    ----------
    path : path-like
        A finished dataset store.
    indices : array of int
        The store samples to hold.
    device : torch.device or str
    num_workers : int
        Processes decoding blocks of the store in parallel (0: this process).
    show_progress : bool
        A progress bar over the blocks read.
    """

    BLOCK = 128

    def __init__(self, path, indices, device="cpu", num_workers: int = 0, show_progress: bool = False):
        from tqdm.auto import tqdm

        self.indices = np.unique(np.asarray(indices, dtype=np.int64))
        self.device = torch.device(device)
        store = DatasetStore(path)
        self.image_shape = tuple(int(n) for n in store.images.shape[1:])
        self.row = np.full(len(store), -1, dtype=np.int64)
        self.row[self.indices] = np.arange(self.indices.size)
        loader = torch.utils.data.DataLoader(_ImageBlocks(path, self.indices, self.BLOCK), batch_size=None,
                                             num_workers=num_workers, pin_memory=self.device.type == "cuda")
        parts, self.images = [], None
        for part in tqdm(loader, desc=f"reading {self.indices.size} images onto {self.device}", disable=not show_progress,
                         unit="block"):
            parts.append(part.to(self.device, non_blocking=True))
        dtypes = {p.dtype for p in parts}
        if len(dtypes) > 1:                          # some blocks needed int32: widen all
            parts = [p.to(torch.int32) & 0xFFFF if p.dtype == torch.int16 else p for p in parts]
        self.images = torch.cat(parts) if parts else torch.empty((0, *self.image_shape), dtype=torch.int16,
                                                                   device=self.device)

    @staticmethod
    def nbytes(path, n: int) -> int:
        """Bytes that ``n`` images of the store take at most when held (4 per pixel)."""
        store = DatasetStore(path)
        return int(n) * int(np.prod(store.images.shape[1:])) * 4

    def rows(self, store_indices) -> np.ndarray:
        """Rows of :attr:`images` holding ``store_indices`` (any shape)."""
        idx = np.asarray(store_indices, dtype=np.int64)
        rows = self.row[idx]
        if np.any(rows < 0):
            raise IndexError(f"samples {idx[rows < 0][:5].tolist()} are not held by this ResidentImages")
        return rows

    def counts_at(self, rows: torch.Tensor) -> torch.Tensor:
        """float32 counts of the rows ``rows`` (a tensor of any shape S on the device): ``(*S, H, W)``."""
        return decode_counts(self.images[rows])

    def counts(self, store_indices) -> torch.Tensor:
        """float32 counts of ``store_indices`` (any shape S), a tensor ``(*S, H, W)`` on the device."""
        return self.counts_at(host_to_device(self.rows(store_indices), self.device))
