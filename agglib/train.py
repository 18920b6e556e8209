"""Training the estimator networks (paper §2.3): Adam, MSE (BCE for the classifier), best checkpoint.

Targets (what each network learns, from which labels):

========== ======================= ============ =============== ==================
target     label                   images/step  output          loss
========== ======================= ============ =============== ==================
df         D_f(A) of the aggregate 16 images    1.4·σ + 1.3     MSE
rho_reg    ρ(A) of the aggregate   16 images    σ               MSE
rho_class  ρ(A) ∈ {0, 1}           16 images    σ               BCE (on logits)
theta0     θ0 of the batch         8 groups × ν ReLU            MSE
theta1     θ1 of the batch         8 groups × ν ReLU            MSE, inverse-intensity input
========== ======================= ============ =============== ==================

``descriptors`` and ``descriptors_inverse`` are auxiliary single-image networks (not part of
the estimator) predicting :data:`PRETRAIN_DESCRIPTORS` of the aggregate; they pretrain the
feature extractors of θ0 and θ1 when a profile asks for it (``pretrain_epochs``).

The classifier sees homogeneous aggregates (ρ(A) = 0 or 1, ~10 % of images) oversampled to
balanced classes. Training images are augmented (rotations, reflections, shifts); validation
on E is not (a fixed subset of E per epoch with ``val_images``, all of E after the last epoch).
Each epoch writes ``last.pt`` and, when the validation loss improved, ``best.pt`` (atomically,
with everything :func:`agglib.estimate.load_estimator` needs); with ``checkpoint_every_steps``
``last.pt`` is also written within an epoch. Calling :func:`train_network` again with the same
directory resumes from ``last.pt`` — mid-epoch too, to the same weights: the order of the
samples (:func:`epoch_order`) and each sample's augmentation are functions of (seed, epoch,
sample), not of a generator's history.

Multi-GPU: launch the same script with ``torchrun --nproc_per_node=K``; each rank trains on its
round-robin share of the epoch's order (the classifier's oversampling included) and
DistributedDataParallel averages gradients (NCCL on GPUs, gloo on CPUs). Only rank 0 writes
checkpoints and shows progress; rank 0 decides for all when a time budget ends training.

Data path: a split that fits on the device (40 % of free GPU memory, or ``preload_mb`` in RAM) is
read once, as integer counts, into device memory; each step indexes a batch there, preprocesses
it (:class:`~agglib.preprocess.Preprocess`) and augments it (:func:`~agglib.preprocess.augment_batch`)
as batched tensor operations on the device. A split that does not fit is read by DataLoader
workers into pinned memory and copied without blocking; the same batch operations follow, so
both paths train the same weights. The loss is read back from the device once per epoch (and
every 25 steps for the progress bar, when shown).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

import agglib
from agglib.checkpoint import PAPER_CHECKPOINT_FORMAT as CHECKPOINT_FORMAT
from agglib.checkpoint import save_paper_checkpoint as save_checkpoint
from agglib.core.distributed import DistEnv, cleanup_distributed, host_to_device, init_distributed, pick_device
from agglib.core.files import atomic_write_text
from agglib.core.validation import check_range
from agglib.dataset.pytorch import ConfigurationBatchDataset, ResidentImages, StemImageDataset
from agglib.dataset.store import DatasetStore
from agglib.nets import ARCHITECTURES, build_network, count_parameters
from agglib.preprocess import Preprocess, augment_batch, augment_plan, augment_with_plan, augmentation_params

__all__ = ["TARGETS", "TargetSpec", "TrainConfig", "train_network", "train_for_profile", "train_estimator",
           "CHECKPOINT_FORMAT"]




@dataclass(frozen=True)
class TargetSpec:
    label: str              # "descriptor:<name>", "homogeneous" or "theta:<index>"
    multi_image: bool
    activation: str
    loss: str               # "mse" or "bce"
    images_per_step: int    # single images, or groups of ν for multi-image targets
    inverse: bool = False
    oversample: bool = False


TARGETS = {
    "df": TargetSpec("descriptor:df", False, "scaled_sigmoid", "mse", 16),
    "rho_reg": TargetSpec("descriptor:rho", False, "sigmoid", "mse", 16),
    "rho_class": TargetSpec("homogeneous", False, "sigmoid", "bce", 16, oversample=True),
    "theta0": TargetSpec("theta:2", True, "relu", "mse", 8),
    "theta1": TargetSpec("theta:3", True, "relu", "mse", 8, inverse=True),
    "descriptors": TargetSpec("descriptors", False, "identity", "mse", 16),
    "descriptors_inverse": TargetSpec("descriptors", False, "identity", "mse", 16, inverse=True),
}

#: Per-aggregate descriptors the ``descriptors`` networks learn from single images (standardised
#: on T), with the transform applied first. Their f initialises θ0's (``descriptors``) and θ1's
#: (``descriptors_inverse``, inverse-intensity input) f: cluster sizes and the mixing ratio are
#: what θ0 and θ1 act on (paper §2.2.2, Fig. 5), and 18 images per configuration are too few for
#: the multi-image networks to find such features from scratch on the quick profile's budget.
PRETRAIN_DESCRIPTORS = {"rho": "identity", "s_wo3": "log1p", "s_tio2": "log1p", "df": "identity",
                        "n_particles": "log"}

#: Which pretraining network initialises each multi-image target's f.
PRETRAINED_FROM = {"theta0": "descriptors", "theta1": "descriptors_inverse"}


SCHEDULES = ("constant", "onecycle")


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run.

    Parameters
    ----------
    target : str
        One of :data:`TARGETS`.
    arch : str
        Feature extractor, ``"compact"`` or ``"paper"``.
    epochs : int
        Passes over T (or ``steps_per_epoch`` steps each, if given).
    lr : float
        Adam learning rate (paper: 1e-4); the peak rate for ``schedule="onecycle"``.
    schedule : str
        ``"constant"`` (the paper) or ``"onecycle"``: warm-up over the first 15 % of the steps to
        ``lr``, then cosine annealing to ``lr``/10⁴ (Smith's one-cycle policy). On the short CPU
        budgets of the quick profile, one-cycle at 2e-3 converges where a constant 1e-4 does not.
    nu : int
        Images per group for the multi-image targets (paper: 12).
    batch : int, optional
        Images (groups) per step; default the paper's, 16 (8).
    steps_per_epoch : int, optional
        Cap on optimizer steps per epoch (to fit a time budget).
    repeats : int
        Multi-image targets: independent regroupings of each configuration's images per epoch
        (more distinct groups of ν from few images per configuration).
    val_images : int, optional
        Validate on this many samples (groups) of E, drawn once with ``seed`` (default: all).
    init_features : str, optional
        A checkpoint (``best.pt`` of another network with the same architecture and input size)
        whose feature extractor f initialises this network's f; g starts fresh.
    max_shift_px : int
        Largest augmentation shift [px].
    seed : int
        Seeds initialisation, sampling and augmentation.
    device : str
        ``"auto"`` (CUDA if present, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``…
    num_workers : int or None
        DataLoader worker processes reading a split that does not fit on the device (a split
        that fits, :func:`resident_budget`, is read once and needs none); ``None``: chosen from
        the machine (0 on a CPU; on a GPU one per core up to 8).
    bf16 : bool
        bfloat16 autocast for the forward pass (faster on GPUs and AVX-512 CPUs; check accuracy).
    bn_batches : int
        Before each validation, set the BatchNorm running statistics to their averages over this
        many batches of T (:func:`recalibrate_batchnorm`; 0: keep the running averages of
        training, as the paper). The history then also records ``val_mae_running_bn``, the
        validation error with the running averages, measured first.
    """

    target: str
    arch: str = "compact"
    epochs: int = 10
    lr: float = 1e-4
    schedule: str = "constant"
    nu: int = 12
    batch: int | None = None
    steps_per_epoch: int | None = None
    repeats: int = 1
    val_images: int | None = None
    init_features: str | None = None
    max_shift_px: int = 4
    seed: int = 0
    device: str = "auto"
    num_workers: int | None = None
    bf16: bool = False
    bn_batches: int = 0

    def __post_init__(self):
        if self.target not in TARGETS:
            raise ValueError(f"target={self.target!r}; accepted: {sorted(TARGETS)}")
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"arch={self.arch!r}; accepted: {sorted(ARCHITECTURES)}")
        check_range("epochs", self.epochs, low=1, integer=True)
        check_range("lr", self.lr, low=0.0, high=1.0, low_inclusive=False)
        check_range("nu", self.nu, low=1, integer=True)
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule={self.schedule!r}; accepted: {list(SCHEDULES)}")
        check_range("repeats", self.repeats, low=1, integer=True)
        if self.val_images is not None:
            check_range("val_images", self.val_images, low=1, integer=True)
        if self.num_workers is not None:
            check_range("num_workers", self.num_workers, low=0, integer=True)
        if self.batch is not None:
            check_range("batch", self.batch, low=1, integer=True)
        if self.steps_per_epoch is not None:
            check_range("steps_per_epoch", self.steps_per_epoch, low=1, integer=True)
        check_range("bn_batches", self.bn_batches, low=0, integer=True)

    @property
    def spec(self) -> TargetSpec:
        return TARGETS[self.target]

    @property
    def images_per_step(self) -> int:
        return self.batch or self.spec.images_per_step

    @property
    def group_size(self) -> int:
        return self.nu if self.spec.multi_image else 1


# ---------------------------------------------------------------------------- data

def descriptor_table(store: DatasetStore) -> np.ndarray:
    """:data:`PRETRAIN_DESCRIPTORS` of every sample, transformed, (n, 5) (not standardised)."""
    cols = []
    for name, transform in PRETRAIN_DESCRIPTORS.items():
        v = np.nan_to_num(store.descriptors[name].to_numpy(dtype=np.float64), nan=0.0)  # S of an absent material: 0
        cols.append({"identity": v, "log1p": np.log1p(v), "log": np.log(np.maximum(v, 1.0))}[transform])
    return np.stack(cols, axis=1)


def descriptor_scaling(store: DatasetStore) -> dict:
    """Mean and SD over T of :func:`descriptor_table` (the standardisation of the labels)."""
    table = descriptor_table(store)[store.indices("T")]
    sd = table.std(axis=0)
    return {"names": list(PRETRAIN_DESCRIPTORS), "transforms": list(PRETRAIN_DESCRIPTORS.values()),
            "mean": table.mean(axis=0).tolist(), "sd": np.where(sd > 0, sd, 1.0).tolist()}


def sample_labels(store: DatasetStore, spec: TargetSpec) -> np.ndarray:
    """The label of every sample of the store for a target ((n,), or (n, k) for ``descriptors``)."""
    kind, _, arg = spec.label.partition(":")
    if kind == "descriptors":
        scale = descriptor_scaling(store)
        return ((descriptor_table(store) - scale["mean"]) / scale["sd"]).astype(np.float32)
    if kind == "descriptor":
        return store.descriptors[arg].to_numpy(dtype=np.float32)
    if kind == "homogeneous":
        rho = store.descriptors["rho"].to_numpy()
        return ((rho == 0.0) | (rho == 1.0)).astype(np.float32)
    return store.theta[:, int(arg)].astype(np.float32)


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
    def __init__(self, path, split, labels):
        super().__init__(labels)
        images = StemImageDataset(path, split=split)
        keep = np.isfinite(labels[images.indices]).reshape(len(images.indices), -1).all(axis=1)
        self.sample_indices = images.indices[keep]           # store indices of the samples drawn from
        self.store = images._data

    def __len__(self):
        return int(self.sample_indices.size)

    def item_indices(self, keys) -> np.ndarray:
        return self.sample_indices[np.asarray(keys, dtype=np.int64)]


class _ImageGroups(_Labelled):
    def __init__(self, path, split, nu, seed, labels, repeats=1):
        super().__init__(labels)
        self.groups = ConfigurationBatchDataset(path, split=split, nu=nu, seed=seed, repeats=repeats)
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


def make_datasets(store_path, config: TrainConfig):
    """The store, and T (training) and E (validation) of ``config``'s target."""
    store = DatasetStore(store_path)
    labels = sample_labels(store, config.spec)
    if config.spec.multi_image:
        train = _ImageGroups(store_path, "T", config.nu, config.seed, labels, repeats=config.repeats)
        val = _ImageGroups(store_path, "E", config.nu, 10_000 + config.seed, labels)
    else:
        train = _SingleImages(store_path, "T", labels)
        val = _SingleImages(store_path, "E", labels)
    return store, train, val


def resident_budget(device: torch.device) -> int:
    """Bytes one split may take when held on ``device``: 40 % of the free GPU memory (T and E
    together leave a fifth of it to the network), or the ``preload_mb`` setting in RAM."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(0.4 * free)
    return int(agglib.config.get("preload_mb")) * 1024**2


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
        if self.resident is None or self.device.type != "cuda" or not self.use_graphs:
            for counts, y, k in self.batches(epoch, keys):
                yield prepare_batch(counts, k, epoch, preprocess, config, augment), y
            return
        keys = np.asarray(keys, dtype=np.int64)
        self.items.set_epoch(epoch)
        size = self.resident.image_shape[-1]
        for a in range(0, keys.size, self.batch):
            k = keys[a:a + self.batch]
            idx = self.items.item_indices(k)
            parts = [self.resident.rows(idx).reshape(-1), idx if idx.ndim == 1 else idx[:, 0]]
            if augment:
                params = augmentation_params(config.seed, epoch, k, config.max_shift_px, config.group_size)
                parts.append(augment_plan(params, size).reshape(-1))
            key = (idx.shape, augment, id(preprocess))
            if key not in self.graphs:
                try:
                    self.graphs[key] = _PreparedGraph(self, idx.shape, preprocess, augment)
                except RuntimeError as err:         # a device or driver without graph capture
                    import warnings

                    warnings.warn(f"CUDA graph capture failed ({err}); preparing batches op by op")
                    self.use_graphs = False
                    yield from self.prepared(epoch, keys[a:], preprocess, config, augment)
                    return
            yield self.graphs[key](np.concatenate(parts))

    def batches(self, epoch: int, keys):
        """Consecutive batches of the items ``keys`` of ``epoch`` (the last one may be shorter)."""
        keys = np.asarray(keys, dtype=np.int64)
        self.items.set_epoch(epoch)
        if self.resident is not None:
            for a in range(0, keys.size, self.batch):
                k = keys[a:a + self.batch]
                idx = self.items.item_indices(k)
                first = idx if idx.ndim == 1 else idx[:, 0]
                rows = host_to_device(np.concatenate([self.resident.rows(idx).reshape(-1), first]), self.device)
                n = idx.size
                counts = self.resident.counts_at(rows[:n].reshape(idx.shape))
                yield counts.unsqueeze(-3), self.labels[rows[n:]], k          # one copy to the device per batch
            return
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

    def __init__(self, feed: "_Feed", shape: tuple, preprocess: Preprocess, augment: bool, fill=None):
        self.n = int(np.prod(shape))
        self.b = int(shape[0])
        size = feed.resident.image_shape[-1]
        self.length = self.n + self.b + (self.n * (1 + 2 * size) if augment else 0)
        self.buffer = torch.zeros(self.length, dtype=torch.int64, device=feed.device)

        def body():
            rows = self.buffer[:self.n].view(shape)
            x = preprocess(feed.resident.counts_at(rows).unsqueeze(-3))
            if augment:
                x = augment_with_plan(x, self.buffer[self.n + self.b:].view(self.n, 1 + 2 * size), fill)
            return x, feed.labels[self.buffer[self.n:self.n + self.b]]

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


# ---------------------------------------------------------------------------- checkpoints

def _write_history(checkpoint_dir: Path, history: list) -> None:
    """``history.json`` beside the checkpoints: one record per finished epoch."""
    atomic_write_text(checkpoint_dir / "history.json", json.dumps(history, indent=1))


def checkpoint_metadata(config: TrainConfig, store: DatasetStore, preprocess: Preprocess,
                        model: nn.Module) -> dict:
    settings = store.identity["stem_settings"]
    return {"format": CHECKPOINT_FORMAT, "agglib": agglib.__version__, "target": config.target,
            "arch": config.arch, "activation": config.spec.activation, "nu": config.group_size,
            "input_size": int(settings["image_size_px"]), "image_size_px": int(settings["image_size_px"]),
            "pixel_size_nm": float(settings["pixel_size_nm"]), "stem_settings": settings,
            "preprocess": preprocess.to_dict(), "profile": store.identity["profile_name"],
            "profile_fields": store.identity["profile"], "dataset_seed": store.identity["seed"],
            "dataset_sha256": dataset_hash(store), "train_config": asdict(config),
            "parameters": count_parameters(model), "outputs": model.head.outputs,
            "label_scaling": descriptor_scaling(store) if config.spec.label == "descriptors" else None}


def dataset_hash(store: DatasetStore) -> str:
    """SHA-256 of a store's identity (:meth:`DatasetStore.identity_sha256`)."""
    return store.identity_sha256()


# ---------------------------------------------------------------------------- training

def _loss_fn(spec: TargetSpec):
    if spec.loss == "bce":
        return nn.BCEWithLogitsLoss()
    return nn.MSELoss()


def evaluate(model, batches, spec, preprocess: Preprocess) -> dict:
    """Validation loss and mean absolute error (accuracy for the classifier) over ``batches`` of
    ``(counts, labels, keys)`` (:meth:`_Feed.batches`); one read-back from the device at the end."""
    model.eval()
    loss_fn = _loss_fn(spec)
    core = model.module if hasattr(model, "module") else model
    total = abs_err = correct = None
    n = 0
    with torch.no_grad():
        for counts, y, _ in batches:
            x = preprocess(counts)
            if spec.loss == "bce":
                logits = core.logits(x).float()
                pred = torch.sigmoid(logits)
                loss = loss_fn(logits, y)
                right = ((pred > 0.5).float() == y).sum()
                correct = right if correct is None else correct + right
            else:
                pred = core(x).float()
                loss = loss_fn(pred, y)
            err = (pred - y).abs().reshape(len(y), -1).mean(dim=1).sum()
            total = loss * len(y) if total is None else total + loss * len(y)
            abs_err = err if abs_err is None else abs_err + err
            n += len(y)
    n = max(n, 1)
    out = {"val_loss": float(total) / n if total is not None else math.nan,
           "val_mae": float(abs_err) / n if abs_err is not None else math.nan}
    if spec.loss == "bce":
        out["val_accuracy"] = float(correct) / n if correct is not None else math.nan
    return out


def recalibrate_batchnorm(model: nn.Module, batches) -> int:
    """Replace the BatchNorm running statistics by their averages over ``batches`` of inputs.

    Training updates the running mean and variance with momentum 0.1, so at batch 16 they follow
    the last few dozen batches; a network whose weights still move (the paper's, at a constant
    rate) then meets statistics in eval mode that no longer match its weights, and its validation
    error jumps from epoch to epoch while the training loss falls. Averaging the statistics over
    many batches with the final weights (Wu & Johnson 2021, "Rethinking 'batch' in BatchNorm",
    precise BN) removes that mismatch. Returns the number of BatchNorm layers recalibrated.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None                        # a cumulative average over the batches
    was_training = model.training
    model.train()
    with torch.no_grad():
        for x in batches:
            model(x)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.train(was_training)
    return len(norms)


def _resume_mismatch(saved: dict, meta: dict) -> list[str]:
    """What differs between a checkpoint's run and this one (the number of epochs may grow)."""
    differ = [k for k in ("dataset_sha256", "arch", "parameters") if saved.get(k) != meta.get(k)]
    defaults = {f.name: f.default for f in fields(TrainConfig)}     # fields added since it was saved
    old = {**defaults, **{k: v for k, v in saved["train_config"].items() if k != "epochs"}}
    new = {**defaults, **{k: v for k, v in meta["train_config"].items() if k != "epochs"}}
    old.pop("epochs"), new.pop("epochs")
    differ += [f"train_config.{k}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)
               and k not in ("device", "num_workers", "bf16")]
    return differ


def make_scheduler(optimizer, config: TrainConfig, steps_per_epoch: int, done_steps: int = 0):
    """The learning-rate schedule of ``config`` (None for a constant rate), stepped once per step.

    The one-cycle rate is a function of the step count alone: a resumed run fast-forwards it over
    the ``done_steps`` already taken (over the new total, if the number of epochs changed).
    """
    if config.schedule == "constant":
        return None
    import warnings

    for group in optimizer.param_groups:       # a resumed optimizer carries the old schedule's state
        group["lr"] = config.lr
        group.pop("initial_lr", None)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, epochs=config.epochs,
                                                    steps_per_epoch=steps_per_epoch, pct_start=0.15)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # "scheduler.step() before optimizer.step()"
        for _ in range(min(done_steps, config.epochs * steps_per_epoch - 1)):
            scheduler.step()
    return scheduler


def init_features_from(model, checkpoint, arch: str, input_size: int) -> None:
    """Copy the feature extractor f of ``checkpoint`` into ``model`` (same architecture and size)."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    meta = state["metadata"]
    if meta["arch"] != arch or int(meta["input_size"]) != input_size:
        raise ValueError(f"init_features={str(checkpoint)!r} holds a {meta['arch']} network for "
                         f"{meta['input_size']} px images; this run needs {arch} at {input_size} px")
    features = {k[len("features."):]: v for k, v in state["model"].items() if k.startswith("features.")}
    model.features.load_state_dict(features)


class _BCELogitsModel(nn.Module):
    """Wraps an Estimator so that forward returns logits (what DDP and BCEWithLogits need)."""

    def __init__(self, estimator):
        super().__init__()
        self.estimator = estimator

    def forward(self, x):
        return self.estimator.logits(x)


def train_network(store_path, config: TrainConfig, checkpoint_dir, *, show_progress_bars: bool | None = None,
                  time_budget_s: float | None = None, checkpoint_every_steps: int | None = None,
                  stop_after_steps: int | None = None) -> dict:
    """Train (or resume training) one network; returns the training history.

    Parameters
    ----------
    store_path : path-like
        A finished dataset store (T for training, E for validation).
    config : TrainConfig
    checkpoint_dir : path-like
        Receives ``last.pt``, ``best.pt`` and ``history.json``; resumed from if present.
    show_progress_bars : bool, optional
        Epoch and step bars with the loss (default: ``config['progress_bars']``).
    time_budget_s : float, optional
        Stop after the epoch during which this wall time was exceeded (rank 0 decides for all).
    checkpoint_every_steps : int, optional
        Also write ``last.pt`` every this many steps within an epoch: a run killed mid-epoch
        resumes from there to the weights an uninterrupted run reaches (the sample order and the
        augmentation are functions of the seed, epoch and sample).
    stop_after_steps : int, optional
        Return after this many optimizer steps of this call, as an interruption would (tests).
    """
    env = DistEnv.from_env()
    device = pick_device(config.device)
    if env.distributed and device.type == "cuda":
        device = torch.device("cuda", env.local_rank)
    init_distributed(env, device)
    try:
        return _train(Path(store_path), config, Path(checkpoint_dir), env, device, show_progress_bars,
                      time_budget_s, checkpoint_every_steps, stop_after_steps)
    finally:
        cleanup_distributed()


def epoch_order(n: int, seed: int, epoch: int, *, weights=None, rank: int = 0, world_size: int = 1) -> np.ndarray:
    """The training samples of one epoch for one rank, a pure function of (seed, epoch).

    A permutation of ``range(n)`` (or ``n`` draws with replacement by ``weights``: the classifier's
    oversampling), padded by wrapping to a multiple of ``world_size`` and split round-robin: the
    ranks together see what one process sees, and a resumed run sees what an uninterrupted one saw.
    """
    rng = np.random.default_rng([int(seed), int(epoch)])
    if weights is None:
        order = rng.permutation(n)
    else:
        p = np.asarray(weights, dtype=np.float64)
        order = rng.choice(n, size=n, replace=True, p=p / p.sum())
    per_rank = math.ceil(n / world_size)
    order = np.resize(order, per_rank * world_size)
    return order[rank::world_size]


def _all_agree(flag: bool, env, device) -> bool:
    """``flag`` of rank 0 on every rank (so that all ranks stop at the same epoch)."""
    if not env.distributed:
        return bool(flag)
    import torch.distributed as dist

    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.broadcast(t, src=0)
    return bool(t.item() > 0.5)


def default_num_workers(device: torch.device) -> int:
    """DataLoader workers for ``device`` when a split is streamed: 0 on a CPU (workers would take
    the cores the network needs), else one per core left to this rank, at most 8."""
    import os

    if device.type != "cuda":
        return 0
    per_rank = (os.cpu_count() or 2) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(0, min(8, per_rank - 1))


def _train(store_path, config, checkpoint_dir, env, device, show_progress_bars, time_budget_s,
           checkpoint_every_steps=None, stop_after_steps=None):
    from dataclasses import replace

    if config.num_workers is None:
        config = replace(config, num_workers=default_num_workers(device))
    torch.manual_seed(config.seed)
    store0 = DatasetStore(store_path)
    settings = store0.identity["stem_settings"]
    preprocess = Preprocess(inverse=config.spec.inverse,
                            electrons_per_pixel=store0.stem_settings.electrons_per_pixel)
    store, train_set, val_set = make_datasets(store_path, config)
    outputs = 1 if train_set.labels.ndim == 1 else int(train_set.labels.shape[1])
    model = build_network(config.arch, int(settings["image_size_px"]), nu=config.group_size,
                          activation=config.spec.activation, outputs=outputs).to(device)
    meta = checkpoint_metadata(config, store, preprocess, model)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    per_rank = math.ceil(len(train_set) / env.world_size) if env.distributed else len(train_set)
    steps_per_epoch = per_rank // config.images_per_step if per_rank > config.images_per_step else 1
    if config.steps_per_epoch is not None:
        steps_per_epoch = min(steps_per_epoch, config.steps_per_epoch)
    history, start_epoch, start_step, best = [], 0, 0, math.inf
    last = checkpoint_dir / "last.pt"
    if last.is_file():
        from agglib.checkpoint import read_torch_file

        state = read_torch_file(last, "cpu")
        differ = _resume_mismatch(state["metadata"], meta)
        if differ:
            raise ValueError(f"{last} belongs to another run ({', '.join(differ)} differ); "
                             "use another checkpoint_dir")
        history, best = state["history"], state["best_val_loss"]
        start_step = int(state.get("step", 0))            # > 0: saved in the middle of an epoch
        start_epoch = state["epoch"] + (0 if start_step else 1)
        if start_epoch >= config.epochs:     # finished: nothing to read or train
            if env.is_main and not (checkpoint_dir / "history.json").is_file():
                _write_history(checkpoint_dir, history)
            return {"history": history, "best_val_loss": best, "metadata": meta}
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
    else:
        if config.init_features is not None:
            init_features_from(model, config.init_features, config.arch, int(settings["image_size_px"]))
        if config.spec.loss == "mse":
            model.start_at(np.nanmean(train_set.labels[train_set.sample_indices], axis=0))
    show = (agglib.config.get("progress_bars") if show_progress_bars is None else show_progress_bars) \
        and env.is_main
    step_batch = config.images_per_step
    train_feed = _Feed(train_set, store_path, device, step_batch, config.num_workers, show_progress=show)
    val_feed = _Feed(val_set, store_path, device, step_batch * 2, config.num_workers, show_progress=show) \
        if env.is_main else None
    scheduler = make_scheduler(optimizer, config, steps_per_epoch,
                               done_steps=start_epoch * steps_per_epoch + start_step)
    val_keys = np.arange(len(val_set))
    if config.val_images is not None and config.val_images < len(val_set):
        val_subset = np.sort(np.random.default_rng(config.seed).choice(len(val_set), config.val_images, replace=False))
    else:
        val_subset = val_keys
    wrapped = _BCELogitsModel(model) if config.spec.loss == "bce" else model
    if env.distributed:
        from torch.nn.parallel import DistributedDataParallel
        wrapped = DistributedDataParallel(wrapped, device_ids=[device.index] if device.type == "cuda" else None)
    loss_fn = _loss_fn(config.spec)
    weights = None
    if config.spec.oversample:           # classes balanced on every rank (DDP included)
        labels = train_set.labels[train_set.sample_indices]
        pos = max(float(labels.sum()), 1.0)
        neg = max(float(len(labels) - labels.sum()), 1.0)
        weights = np.where(labels > 0.5, 0.5 / pos, 0.5 / neg)
    started = time.perf_counter()
    steps_this_call = 0
    epoch_bar = tqdm(range(start_epoch, config.epochs), desc=f"{config.target} epochs", disable=not show,
                     initial=start_epoch, total=config.epochs)
    for epoch in epoch_bar:
        order = epoch_order(len(train_set), config.seed, epoch, weights=weights, rank=env.rank,
                            world_size=env.world_size)
        n_steps = min(max(1, len(order) // step_batch), steps_per_epoch)
        first = start_step if epoch == start_epoch else 0
        wrapped.train()
        t0, seen = time.perf_counter(), 0
        running = torch.zeros((), device=device)
        step_bar = tqdm(total=n_steps, initial=first, desc=f"epoch {epoch + 1}", leave=False, disable=not show)
        interrupted = False
        batches = train_feed.prepared(epoch, order[first * step_batch:n_steps * step_batch], preprocess, config,
                                      augment=True)
        for step, (x, y) in enumerate(batches, start=first):
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bf16):
                out = wrapped(x)
            loss = loss_fn(out.float(), y)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            running += loss.detach() * len(y)             # read back once per epoch, not per step
            seen += len(y)
            steps_this_call += 1
            step_bar.update()
            if show and step % 25 == 0:                   # the only other read-back: the bar's loss
                step_bar.set_postfix(loss=f"{float(loss.detach()):.4g}")
            done = step + 1
            if env.is_main and done < n_steps and checkpoint_every_steps and done % checkpoint_every_steps == 0:
                save_checkpoint(last, {"metadata": meta, "model": model.state_dict(),
                                       "optimizer": optimizer.state_dict(), "epoch": epoch, "step": done,
                                       "history": history, "best_val_loss": best,
                                       "torch_rng": torch.get_rng_state()})
            if stop_after_steps is not None and steps_this_call >= stop_after_steps and done < n_steps:
                interrupted = True                        # as a kill would: the mid-epoch last.pt stays
                break
        step_bar.close()
        if interrupted:
            break
        train_seconds = time.perf_counter() - t0 if device.type != "cuda" else _synced_seconds(t0, device)
        record = {"epoch": epoch, "train_loss": float(running) / max(seen, 1),
                  "images_per_s": seen * config.group_size / max(train_seconds, 1e-9),
                  "train_seconds": train_seconds}
        if env.is_main:
            final = epoch == config.epochs - 1
            keys = val_keys if final else val_subset              # the full E at the end
            if config.bn_batches:
                record["val_mae_running_bn"] = evaluate(model, val_feed.batches(0, keys), config.spec,
                                                        preprocess)["val_mae"]
                recalibrate_batchnorm(model, _bn_inputs(train_feed, train_set, config, epoch, preprocess))
            record.update(evaluate(model, val_feed.batches(0, keys), config.spec, preprocess))
            history.append(record)
            improved = record["val_loss"] < best
            best = min(best, record["val_loss"])
            payload = {"metadata": meta, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                       "epoch": epoch, "step": 0, "history": history, "best_val_loss": best,
                       "torch_rng": torch.get_rng_state()}
            if improved:
                save_checkpoint(checkpoint_dir / "best.pt", {**payload, "metadata": {**meta, "epoch": epoch}})
            save_checkpoint(last, payload)
            epoch_bar.set_postfix(val_loss=f"{record['val_loss']:.4g}", val_mae=f"{record['val_mae']:.3g}")
        if time_budget_s is not None and _all_agree(time.perf_counter() - started > time_budget_s, env, device):
            break
    epoch_bar.close()
    if env.is_main:
        _write_history(checkpoint_dir, history)
    return {"history": history, "best_val_loss": best, "metadata": meta}


def _synced_seconds(t0: float, device) -> float:
    torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def _bn_inputs(feed: _Feed, items: _Labelled, config: TrainConfig, epoch: int, preprocess: Preprocess):
    """``config.bn_batches`` preprocessed batches of T for :func:`recalibrate_batchnorm`: a
    subset drawn from (seed, epoch), augmented as in training."""
    n = min(len(items), config.bn_batches * config.images_per_step)
    keys = np.sort(np.random.default_rng([config.seed, epoch, 1]).choice(len(items), n, replace=False))
    for x, _ in feed.prepared(epoch, keys, preprocess, config, augment=True):
        yield x


def train_for_profile(profile, target: str, store_path, run_dir, seed: int = 0,
                      show_progress_bars: bool | None = None, *, time_budget_s: float | None = None,
                      checkpoint_every_steps: int | None = None, **changes) -> dict:
    """Train ``target`` with the profile's architecture, schedule, epochs and ν into ``run_dir/target``.

    Resumes (or returns at once) when the run directory already holds the finished epochs. For
    θ0 and θ1 with ``profile.pretrain_epochs > 0`` the ``descriptors`` network named in
    :data:`PRETRAINED_FROM` is trained first (or found) and initialises f. ``changes`` override
    :class:`TrainConfig` fields; ``time_budget_s`` and ``checkpoint_every_steps`` go to
    :func:`train_network`.
    """
    if target not in TARGETS:
        raise ValueError(f"target={target!r}; accepted: {sorted(TARGETS)}")
    spec = TARGETS[target]
    multi = spec.multi_image
    nu = min(profile.batch_size, profile.eval_per_config,
             profile.samples_per_config - profile.eval_per_config)
    settings = dict(target=target, arch=profile.train_arch, nu=nu, seed=seed, schedule=profile.train_schedule,
                    epochs=profile.epochs_multi if multi else profile.epochs_single,
                    lr=profile.lr_multi if multi else profile.lr_single,
                    repeats=profile.group_repeats if multi else 1)
    if profile.val_images > 0:
        settings["val_images"] = max(1, profile.val_images // nu) if multi else profile.val_images
    if profile.bn_batches > 0:
        settings["bn_batches"] = profile.bn_batches
    if spec.label == "descriptors":
        settings["epochs"] = max(1, profile.pretrain_epochs)
    if target in PRETRAINED_FROM and profile.pretrain_epochs > 0 and "init_features" not in changes:
        source = PRETRAINED_FROM[target]
        train_for_profile(profile, source, store_path, run_dir, seed=seed, show_progress_bars=show_progress_bars)
        settings["init_features"] = str(Path(run_dir) / source / "best.pt")
    config = TrainConfig(**{**settings, **changes})
    return train_network(store_path, config, Path(run_dir) / target, show_progress_bars=show_progress_bars,
                         time_budget_s=time_budget_s, checkpoint_every_steps=checkpoint_every_steps)


def train_estimator(profile, store_path, run_dir, seed: int = 0, show_progress_bars: bool | None = None):
    """Train (or finish training) the five networks of a profile; the :class:`ParameterEstimator`."""
    from agglib.estimate import NETWORK_NAMES, ParameterEstimator

    for target in NETWORK_NAMES:
        train_for_profile(profile, target, store_path, run_dir, seed=seed, show_progress_bars=show_progress_bars)
    return ParameterEstimator.load(run_dir)
