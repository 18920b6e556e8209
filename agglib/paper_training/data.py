"""What training reads: each target's labels, T∖V, V and E as datasets, and their batches on the device.

V, the validation split that picks the best epoch, is a share of T's configurations
(:func:`validation_split`); the network trains on the rest, T∖V. E is only scored.

A split that fits on the device (:func:`resident_budget`) is held there as integer counts and each
batch is indexed, preprocessed and augmented there (for small batches as one CUDA graph); a split
that does not fit is streamed by DataLoader workers through the same batch operations. Either way
the batches, and so the trained weights, are the same.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from agglib.core.distributed import host_to_device, resident_budget
from agglib.core.validation import check_range
from agglib.dataset.pytorch import ConfigurationBatchDataset, ResidentImages, StemImageDataset
from agglib.dataset.store import DatasetStore
from agglib.preprocess import Preprocess, augment_batch, augment_plan, augment_with_plan, augmentation_params
from agglib.targets import label_values, transformed_labels
from agglib.paper_training._contracts import PRETRAIN_DESCRIPTORS, TargetSpec, TrainConfig

__all__ = ["descriptor_table", "descriptor_scaling", "sample_labels", "validation_split", "make_datasets",
           "make_eval_dataset", "resident_budget", "prepare_batch", "GRAPH_MAX_PIXELS"]


def descriptor_table(store: DatasetStore) -> np.ndarray:
    """:data:`PRETRAIN_DESCRIPTORS` of every sample, transformed, (n, 5) (not standardised)."""
    return np.stack([transformed_labels(f"descriptor:{name}", transform, store.theta, store.descriptors,
                                        absent="zero")                  # S of an absent material: 0
                     for name, transform in PRETRAIN_DESCRIPTORS.items()], axis=1)


def descriptor_scaling(store: DatasetStore, indices=None) -> dict:
    """Mean and SD of :func:`descriptor_table` over the samples ``indices`` (default: T), the
    standardisation of the labels; training passes the samples it trains on, T∖V."""
    table = descriptor_table(store)[store.indices("T") if indices is None else np.asarray(indices, dtype=np.int64)]
    sd = table.std(axis=0)
    return {"names": list(PRETRAIN_DESCRIPTORS), "transforms": list(PRETRAIN_DESCRIPTORS.values()),
            "mean": table.mean(axis=0).tolist(), "sd": np.where(sd > 0, sd, 1.0).tolist()}


def sample_labels(store: DatasetStore, spec: TargetSpec, scaling_indices=None) -> np.ndarray:
    """The label of every sample of the store for a target ((n,), or (n, k) for ``descriptors``,
    standardised over the samples ``scaling_indices``, default T: :func:`descriptor_scaling`)."""
    if spec.label == "descriptors":
        scale = descriptor_scaling(store, scaling_indices)
        return ((descriptor_table(store) - scale["mean"]) / scale["sd"]).astype(np.float32)
    return label_values(spec.label, store.theta, store.descriptors).astype(np.float32)


class _Labelled(Dataset):
    """Raw detector counts of one split's items with their labels.

    Preprocessing and augmentation are not done here but on whole batches on the training device
    (:func:`prepare_batch`); as a Dataset (DataLoader workers, for splits that do not fit on the
    device) an item is ``(counts, label, key)``.
    """

    def __init__(self, labels):
        self.labels = labels
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _key(self, key) -> int:
        """An index, or an ``(epoch, index)`` key from :class:`_EpochSampler` (in a worker process
        the epoch arrives this way)."""
        if isinstance(key, tuple):
            epoch, key = key
            if epoch != self.epoch:
                self.set_epoch(epoch)
        return int(key)

    def item_indices(self, keys) -> np.ndarray:
        """Store indices of items ``keys`` in the current epoch: (B,), or (B, ν) for groups."""
        raise NotImplementedError

    def __getitem__(self, key):
        k = self._key(key)
        idx = self.item_indices(np.array([k]))[0]
        counts = torch.from_numpy(np.stack([self.store.image(int(i)) for i in np.atleast_1d(idx)]))
        counts = counts[:, None] if idx.ndim else counts         # (ν, 1, H, W) or (1, H, W)
        return counts, torch.tensor(self.labels[int(np.atleast_1d(idx)[0])]), k


class _EpochSampler(torch.utils.data.Sampler):
    """Yields ``(epoch, index)`` keys of the current epoch's order: one DataLoader (and its
    persistent workers) serves every epoch, and the workers learn the epoch from the keys."""

    def __init__(self):
        self.keys: list = []

    def set_order(self, epoch: int, indices) -> None:
        self.keys = [(int(epoch), int(i)) for i in indices]

    def __iter__(self):
        return iter(list(self.keys))

    def __len__(self):
        return len(self.keys)


class _SingleImages(_Labelled):
    """The samples ``indices`` of a store (those with a finite label), one image per item."""

    def __init__(self, path, indices, labels):
        super().__init__(labels)
        indices = np.asarray(indices, dtype=np.int64)
        keep = np.isfinite(labels[indices]).reshape(indices.size, -1).all(axis=1)
        self.sample_indices = indices[keep]                  # store indices of the samples drawn from
        self.store = StemImageDataset(path, split=None)._data

    def __len__(self):
        return int(self.sample_indices.size)

    def item_indices(self, keys) -> np.ndarray:
        return self.sample_indices[np.asarray(keys, dtype=np.int64)]


class _ImageGroups(_Labelled):
    """Groups of ν of the samples ``indices`` of a store, each of one configuration
    (:class:`~agglib.dataset.pytorch.ConfigurationBatchDataset` restricted to ``indices``)."""

    def __init__(self, path, indices, nu, seed, labels, repeats=1, name="T"):
        super().__init__(labels)
        check_range("nu", nu, low=1, integer=True)
        self.groups = ConfigurationBatchDataset(path, split=None, nu=1, seed=seed, repeats=repeats)
        self.groups.nu = int(nu)
        self.groups.sample_indices = np.asarray(indices, dtype=np.int64)
        self.groups.set_epoch(0)
        if len(self.groups) == 0:
            most = int(np.bincount(self.groups._data.config_id[self.groups.sample_indices]).max(initial=0))
            raise ValueError(f"nu={nu} is out of range: no configuration has {nu} samples in {name} "
                             f"(at most {most}); accepted range [1, {most}]")
        self.sample_indices = self.groups.sample_indices
        self.store = self.groups._data

    def set_epoch(self, epoch):
        if int(epoch) != self.epoch:          # the groups start at epoch 0
            self.groups.set_epoch(epoch)
        super().set_epoch(epoch)

    def __len__(self):
        return len(self.groups)

    def item_indices(self, keys) -> np.ndarray:
        return self.groups.groups[np.asarray(keys, dtype=np.int64)]


#: Stream of :func:`numpy.random.default_rng` that draws V (apart from the other draws of a seed).
_V_STREAM = 0x56


def validation_split(store: DatasetStore, config: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """Store indices of T∖V (what the network trains on) and of V (what picks its best epoch).

    V is ``config.val_share`` of T's parameter configurations — rounded to a whole number, at
    least one and at least one left — with all their T samples, drawn by
    ``np.random.default_rng([dataset seed, config.seed, 0x56])``: the same V for every target of
    a run (θ0's and θ1's pretrained f never saw V either), disjoint from T∖V image by image and,
    since whole configurations are held out, for the groups of ν images of θ0 and θ1 too (a share
    of each configuration's samples would leave too few for a group of ν on one side: the quick
    profile has 18 T samples per configuration and ν = 12). E is disjoint from both.
    """
    t = store.indices("T")
    ids = store.config_id[t]
    configs = np.unique(ids)
    if configs.size < 2:
        raise ValueError(f"T has {configs.size} parameter configuration(s); a validation split V of whole "
                         "configurations needs at least 2")
    n_val = min(max(int(np.floor(config.val_share * configs.size + 0.5)), 1), configs.size - 1)
    rng = np.random.default_rng([int(store.identity.get("seed") or 0), int(config.seed), _V_STREAM])
    held = np.isin(ids, rng.choice(configs, n_val, replace=False))
    return t[~held], t[held]


def make_datasets(store_path, config: TrainConfig):
    """The store, and T∖V (training) and V (validation, :func:`validation_split`) of ``config``'s target."""
    store = DatasetStore(store_path)
    train_idx, val_idx = validation_split(store, config)
    labels = sample_labels(store, config.spec, scaling_indices=train_idx)
    if config.spec.multi_image:
        train = _ImageGroups(store_path, train_idx, config.nu, config.seed, labels, repeats=config.repeats,
                             name="T∖V")
        val = _ImageGroups(store_path, val_idx, config.nu, 10_000 + config.seed, labels, name="V")
    else:
        train = _SingleImages(store_path, train_idx, labels)
        val = _SingleImages(store_path, val_idx, labels)
    return store, train, val


def make_eval_dataset(store_path, config: TrainConfig, store: DatasetStore | None = None):
    """E of ``config``'s target (all of it; fixed groups of ν for θ0 and θ1), labelled as in
    training: only scored after the last epoch, never used to choose one."""
    store = DatasetStore(store_path) if store is None else store
    labels = sample_labels(store, config.spec, scaling_indices=validation_split(store, config)[0])
    if config.spec.multi_image:
        return _ImageGroups(store_path, store.indices("E"), config.nu, 10_000 + config.seed, labels, name="E")
    return _SingleImages(store_path, store.indices("E"), labels)


class _Feed:
    """Batches ``(counts, labels, keys)`` of one split on the training device.

    A split that fits (:func:`resident_budget`) is read once into device memory
    (:class:`~agglib.dataset.pytorch.ResidentImages`) and each batch is indexed there; otherwise
    a DataLoader with persistent workers reads it, into pinned memory with non-blocking copies.
    Either way the batches, and so the training, are the same.
    """

    def __init__(self, items: _Labelled, store_path, device, batch: int, num_workers: int,
                 show_progress: bool = False, resident: bool | None = None):
        import os

        self.items, self.device, self.batch = items, device, int(batch)
        self.labels = torch.from_numpy(np.ascontiguousarray(items.labels)).to(device)
        if resident is None:
            resident = ResidentImages.nbytes(store_path, items.sample_indices.size) <= resident_budget(device)
        self.resident = None
        self.loader = None
        self.graphs: dict = {}
        self.use_graphs = False
        if resident:
            blocks = -(-items.sample_indices.size // ResidentImages.BLOCK)
            readers = 0 if blocks < 8 else min(16, os.cpu_count() or 1, blocks)
            self.resident = ResidentImages(store_path, items.sample_indices, device, num_workers=readers,
                                           show_progress=show_progress)
            # CUDA graphs where the step is bound by kernel launches: small batches (measured on an
            # H100: compact net, 128², batch 16 and 64: loop/network 0.86–1.00 with, 0.72–0.86
            # without); op by op for large ones (paper net, 512², batch 16: 0.82–0.95 op by op, 0.72
            # in the one run with graphs)
            per_item = items.groups.nu if isinstance(items, _ImageGroups) else 1
            pixels = self.batch * per_item * int(np.prod(self.resident.image_shape))
            self.use_graphs = device.type == "cuda" and pixels <= GRAPH_MAX_PIXELS
        else:
            self.sampler = _EpochSampler()
            self.loader = DataLoader(items, batch_size=self.batch, sampler=self.sampler, num_workers=num_workers,
                                     pin_memory=device.type == "cuda", persistent_workers=num_workers > 0)

    def prepared(self, epoch: int, keys, preprocess: Preprocess, config: TrainConfig, augment: bool):
        """Batches ``(x, y)`` ready for the network (:func:`prepare_batch`). With the split held on
        a GPU each batch shape's preparation is one captured CUDA graph (:class:`_PreparedGraph`),
        whose outputs the next batch overwrites; otherwise the same operations run one by one."""
        if not self.use_graphs:
            for counts, y, k in self.batches(epoch, keys):
                yield prepare_batch(counts, k, epoch, preprocess, config, augment), y
            return
        size, done = self.resident.image_shape[-1], 0
        for k, idx, host in self._held_batches(epoch, keys):
            if augment:
                params = augmentation_params(config.seed, epoch, k, config.max_shift_px, config.group_size)
                host = np.concatenate([host, augment_plan(params, size).reshape(-1)])
            key = (idx.shape, augment, id(preprocess))
            if key not in self.graphs:
                try:
                    self.graphs[key] = _PreparedGraph(self, idx.shape, preprocess, augment)
                except RuntimeError as err:         # a device or driver without graph capture
                    import warnings

                    warnings.warn(f"CUDA graph capture failed ({err}); preparing batches op by op")
                    self.use_graphs = False
                    yield from self.prepared(epoch, np.asarray(keys)[done:], preprocess, config, augment)
                    return
            done += k.size
            yield self.graphs[key](host)

    def _held_batches(self, epoch: int, keys):
        """``(keys, store indices, host)`` of consecutive batches of a held split; ``host`` holds the
        images' rows in the held tensor, then each item's label index (its first image's sample)."""
        keys = np.asarray(keys, dtype=np.int64)
        self.items.set_epoch(epoch)
        for a in range(0, keys.size, self.batch):
            k = keys[a:a + self.batch]
            idx = self.items.item_indices(k)
            yield k, idx, np.concatenate([self.resident.rows(idx).reshape(-1), idx if idx.ndim == 1 else idx[:, 0]])

    def batches(self, epoch: int, keys):
        """Consecutive batches of the items ``keys`` of ``epoch`` (the last one may be shorter)."""
        if self.resident is not None:
            for k, idx, host in self._held_batches(epoch, keys):
                rows = host_to_device(host, self.device)                # one copy to the device per batch
                yield self.resident.counts_at(rows[:idx.size].reshape(idx.shape)).unsqueeze(-3), \
                    self.labels[rows[idx.size:]], k
            return
        self.items.set_epoch(epoch)
        self.sampler.set_order(epoch, keys)
        for counts, y, k in self.loader:
            yield counts.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True), k.numpy()


#: Largest batch [pixels] whose preparation is captured as a CUDA graph (:class:`_PreparedGraph`).
GRAPH_MAX_PIXELS = 2**21


class _PreparedGraph:
    """One batch shape's indexing, decoding, preprocessing and augmentation, captured as a CUDA graph.

    A small network at 128² finishes a training step in a few milliseconds of kernel launches on a
    large GPU; the two dozen small operations that prepare its batch would add to each step.
    Captured once, they are one launch per step. The inputs (rows of the held images, label rows,
    augmentation plan) go to one device buffer per step; the outputs are the graph's own tensors,
    overwritten by the next replay (later on the same stream, so after the step that reads them).
    """

    def __init__(self, feed: "_Feed", shape: tuple, preprocess: Preprocess, augment: bool):
        n, b = int(np.prod(shape)), int(shape[0])
        size = feed.resident.image_shape[-1]
        self.buffer = torch.zeros(n + b + (n * (1 + 2 * size) if augment else 0), dtype=torch.int64,
                                  device=feed.device)

        def body():
            x = preprocess(feed.resident.counts_at(self.buffer[:n].view(shape)).unsqueeze(-3))
            if augment:
                x = augment_with_plan(x, self.buffer[n + b:].view(n, 1 + 2 * size))
            return x, feed.labels[self.buffer[n:n + b]]

        side = torch.cuda.Stream(feed.device)
        side.wait_stream(torch.cuda.current_stream(feed.device))
        with torch.cuda.stream(side):                    # warm-up outside the graph, as CUDA graphs need
            for _ in range(2):
                body()
        torch.cuda.current_stream(feed.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out = body()

    def __call__(self, host: np.ndarray):
        self.buffer.copy_(torch.from_numpy(host).pin_memory(), non_blocking=True)
        self.graph.replay()
        return self.out


def prepare_batch(counts: torch.Tensor, keys, epoch: int, preprocess: Preprocess, config: TrainConfig,
                  augment: bool) -> torch.Tensor:
    """Preprocess a batch of counts on its device and, for training, augment every image by
    :func:`~agglib.preprocess.augmentation_params` of (seed, epoch, item, image)."""
    x = preprocess(counts)
    if augment:
        x = augment_batch(x, augmentation_params(config.seed, epoch, keys, config.max_shift_px, config.group_size))
    return x
