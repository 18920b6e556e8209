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

The classifier sees homogeneous aggregates (ρ(A) = 0 or 1, ~10 % of images) oversampled to
balanced classes. Training images are augmented (rotations, reflections, shifts); validation
on E is not. Each epoch writes ``last.pt`` and, when the validation loss improved, ``best.pt``
(atomically, with everything :func:`agglib.estimate.load_estimator` needs). Calling
:func:`train_network` again with the same directory resumes from ``last.pt``.

Multi-GPU: launch the same script with ``torchrun --nproc_per_node=K``; each rank trains on a
shard of the data (DistributedSampler) and DistributedDataParallel averages gradients (NCCL on
GPUs, gloo on CPUs). Only rank 0 writes checkpoints and shows progress.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
import io
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler
from torch.utils.data.distributed import DistributedSampler
from tqdm.auto import tqdm

import agglib
from agglib.core.distributed import DistEnv, cleanup_distributed, init_distributed, pick_device
from agglib.core.files import atomic_write_bytes
from agglib.core.validation import check_range
from agglib.dataset.pytorch import ConfigurationBatchDataset, StemImageDataset
from agglib.dataset.store import DatasetStore
from agglib.nets import ARCHITECTURES, build_network, count_parameters
from agglib.preprocess import Augment, Preprocess

__all__ = ["TARGETS", "TargetSpec", "TrainConfig", "train_network", "train_for_profile", "train_estimator",
           "CHECKPOINT_FORMAT"]

CHECKPOINT_FORMAT = "agglib-estimator/1"


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
}


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
        Adam learning rate (paper: 1e-4).
    nu : int
        Images per group for the multi-image targets (paper: 12).
    batch : int, optional
        Images (groups) per step; default the paper's, 16 (8).
    steps_per_epoch : int, optional
        Cap on optimizer steps per epoch (to fit a time budget).
    max_shift_px : int
        Largest augmentation shift [px].
    seed : int
        Seeds initialisation, sampling and augmentation.
    device : str
        ``"auto"`` (CUDA if present, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``…
    num_workers : int
        DataLoader worker processes.
    """

    target: str
    arch: str = "compact"
    epochs: int = 10
    lr: float = 1e-4
    nu: int = 12
    batch: int | None = None
    steps_per_epoch: int | None = None
    max_shift_px: int = 4
    seed: int = 0
    device: str = "auto"
    num_workers: int = 0

    def __post_init__(self):
        if self.target not in TARGETS:
            raise ValueError(f"target={self.target!r}; accepted: {sorted(TARGETS)}")
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"arch={self.arch!r}; accepted: {sorted(ARCHITECTURES)}")
        check_range("epochs", self.epochs, low=1, integer=True)
        check_range("lr", self.lr, low=0.0, high=1.0, low_inclusive=False)
        check_range("nu", self.nu, low=1, integer=True)
        check_range("num_workers", self.num_workers, low=0, integer=True)
        if self.batch is not None:
            check_range("batch", self.batch, low=1, integer=True)
        if self.steps_per_epoch is not None:
            check_range("steps_per_epoch", self.steps_per_epoch, low=1, integer=True)

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

def sample_labels(store: DatasetStore, spec: TargetSpec) -> np.ndarray:
    """The label of every sample of the store for a target."""
    kind, _, arg = spec.label.partition(":")
    if kind == "descriptor":
        return store.descriptors[arg].to_numpy(dtype=np.float32)
    if kind == "homogeneous":
        rho = store.descriptors["rho"].to_numpy()
        return ((rho == 0.0) | (rho == 1.0)).astype(np.float32)
    return store.theta[:, int(arg)].astype(np.float32)


class _SingleImages(Dataset):
    def __init__(self, path, split, labels, preprocess, augment):
        self.images = StemImageDataset(path, split=split)
        keep = np.isfinite(labels[self.images.indices])
        self.images.indices = self.images.indices[keep]
        self.labels = labels
        self.preprocess, self.augment = preprocess, augment

    def __len__(self):
        return len(self.images)

    def __getitem__(self, k):
        item = self.images[k]
        x = self.preprocess(item["image"])
        if self.augment is not None:
            x = self.augment(x)
        return x, torch.tensor(self.labels[item["index"]])


class _ImageGroups(Dataset):
    def __init__(self, path, split, nu, seed, labels, preprocess, augment):
        self.groups = ConfigurationBatchDataset(path, split=split, nu=nu, seed=seed)
        self.labels = labels
        self.preprocess, self.augment = preprocess, augment

    def set_epoch(self, epoch):
        self.groups.set_epoch(epoch)

    def __len__(self):
        return len(self.groups)

    def __getitem__(self, k):
        item = self.groups[k]
        x = self.preprocess(item["images"])
        if self.augment is not None:
            x = torch.stack([self.augment(im) for im in x])
        return x, torch.tensor(self.labels[int(item["indices"][0])])


def make_datasets(store_path, config: TrainConfig, preprocess: Preprocess):
    store = DatasetStore(store_path)
    labels = sample_labels(store, config.spec)
    augment = Augment(config.max_shift_px)
    if config.spec.multi_image:
        train = _ImageGroups(store_path, "T", config.nu, config.seed, labels, preprocess, augment)
        val = _ImageGroups(store_path, "E", config.nu, 10_000 + config.seed, labels, preprocess, None)
    else:
        train = _SingleImages(store_path, "T", labels, preprocess, augment)
        val = _SingleImages(store_path, "E", labels, preprocess, None)
    return store, train, val


# ---------------------------------------------------------------------------- checkpoints

def save_checkpoint(path: Path, payload: dict) -> Path:
    """``torch.save`` to a temporary file, then rename: never a half-written checkpoint."""
    buf = io.BytesIO()
    torch.save(payload, buf)
    return atomic_write_bytes(path, buf.getvalue())


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
            "parameters": count_parameters(model)}


def dataset_hash(store: DatasetStore) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(store.identity, sort_keys=True).encode()).hexdigest()


# ---------------------------------------------------------------------------- training

def _loss_fn(spec: TargetSpec):
    if spec.loss == "bce":
        return nn.BCEWithLogitsLoss()
    return nn.MSELoss()


def evaluate(model, loader, spec, device) -> dict:
    """Validation loss and mean absolute error (accuracy for the classifier) on a loader."""
    model.eval()
    loss_fn = _loss_fn(spec)
    total, n, abs_err, correct = 0.0, 0, 0.0, 0
    core = model.module if hasattr(model, "module") else model
    with torch.no_grad():
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            if spec.loss == "bce":
                logits = core.logits(x)
                pred = torch.sigmoid(logits)
                total += float(loss_fn(logits, y)) * len(y)
                correct += int(((pred > 0.5).float() == y).sum())
            else:
                pred = core(x)
                total += float(loss_fn(pred, y)) * len(y)
            abs_err += float((pred - y).abs().sum())
            n += len(y)
    out = {"val_loss": total / max(n, 1), "val_mae": abs_err / max(n, 1)}
    if spec.loss == "bce":
        out["val_accuracy"] = correct / max(n, 1)
    return out


class _BCELogitsModel(nn.Module):
    """Wraps an Estimator so that forward returns logits (what DDP and BCEWithLogits need)."""

    def __init__(self, estimator):
        super().__init__()
        self.estimator = estimator

    def forward(self, x):
        return self.estimator.logits(x)


def train_network(store_path, config: TrainConfig, checkpoint_dir, *, show_progress_bars: bool | None = None,
                  time_budget_s: float | None = None) -> dict:
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
        Stop after the epoch during which this wall time was exceeded.
    """
    env = DistEnv.from_env()
    device = pick_device(config.device)
    if env.distributed and device.type == "cuda":
        device = torch.device("cuda", env.local_rank)
    init_distributed(env, device)
    try:
        return _train(Path(store_path), config, Path(checkpoint_dir), env, device, show_progress_bars,
                      time_budget_s)
    finally:
        cleanup_distributed()


def _train(store_path, config, checkpoint_dir, env, device, show_progress_bars, time_budget_s):
    torch.manual_seed(config.seed)
    store0 = DatasetStore(store_path)
    settings = store0.identity["stem_settings"]
    electrons = settings["dose_e_per_A2"] * (settings["pixel_size_nm"] * 10.0) ** 2
    preprocess = Preprocess(inverse=config.spec.inverse, electrons_per_pixel=electrons)
    store, train_set, val_set = make_datasets(store_path, config, preprocess)
    if config.num_workers == 0:          # one bulk read instead of one read per image and epoch
        budget = int(agglib.config.get("preload_mb")) * 1024**2
        for ds in (train_set, val_set):
            inner = ds.groups if hasattr(ds, "groups") else ds.images
            inner.preload(budget // 2)
    model = build_network(config.arch, int(settings["image_size_px"]), nu=config.group_size,
                          activation=config.spec.activation).to(device)
    meta = checkpoint_metadata(config, store, preprocess, model)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    history, start_epoch, best = [], 0, math.inf
    last = checkpoint_dir / "last.pt"
    if last.is_file():
        state = torch.load(last, map_location=device, weights_only=False)
        if state["metadata"]["dataset_sha256"] != meta["dataset_sha256"] or \
                state["metadata"]["train_config"]["target"] != config.target or \
                state["metadata"]["arch"] != config.arch:
            raise ValueError(f"{last} belongs to another run (target, architecture or dataset "
                             "differ); use another checkpoint_dir")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        history, start_epoch, best = state["history"], state["epoch"] + 1, state["best_val_loss"]
        torch.set_rng_state(state["torch_rng"])
    wrapped = _BCELogitsModel(model) if config.spec.loss == "bce" else model
    if env.distributed:
        from torch.nn.parallel import DistributedDataParallel
        wrapped = DistributedDataParallel(wrapped, device_ids=[device.index] if device.type == "cuda" else None)
    loss_fn = _loss_fn(config.spec)
    show = (agglib.config.get("progress_bars") if show_progress_bars is None else show_progress_bars) \
        and env.is_main
    g = torch.Generator().manual_seed(config.seed)
    started = time.perf_counter()
    epoch_bar = tqdm(range(start_epoch, config.epochs), desc=f"{config.target} epochs", disable=not show,
                     initial=start_epoch, total=config.epochs)
    for epoch in epoch_bar:
        if hasattr(train_set, "set_epoch"):
            train_set.set_epoch(epoch)
        if env.distributed:
            sampler = DistributedSampler(train_set, num_replicas=env.world_size, rank=env.rank,
                                         shuffle=True, seed=config.seed)
            sampler.set_epoch(epoch)
        elif config.spec.oversample:
            labels = train_set.labels[train_set.images.indices]
            pos = max(float(labels.sum()), 1.0)
            neg = max(float(len(labels) - labels.sum()), 1.0)
            weights = np.where(labels > 0.5, 0.5 / pos, 0.5 / neg)
            sampler = WeightedRandomSampler(torch.as_tensor(weights, dtype=torch.double), len(labels),
                                            replacement=True, generator=g)
        else:
            sampler = torch.utils.data.RandomSampler(train_set, generator=g)
        loader = DataLoader(train_set, batch_size=config.images_per_step, sampler=sampler,
                            num_workers=config.num_workers, drop_last=len(train_set) > config.images_per_step,
                            persistent_workers=False)
        wrapped.train()
        n_steps = len(loader) if config.steps_per_epoch is None else min(len(loader), config.steps_per_epoch)
        t0, seen, running = time.perf_counter(), 0, 0.0
        step_bar = tqdm(total=n_steps, desc=f"epoch {epoch + 1}", leave=False, disable=not show)
        for step, (x, y) in enumerate(loader):
            if step >= n_steps:
                break
            x, y = x.to(device), y.to(device)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(wrapped(x), y)
            loss.backward()
            optimizer.step()
            running += float(loss.detach()) * len(y)
            seen += len(y)
            step_bar.update()
            step_bar.set_postfix(loss=f"{float(loss.detach()):.4g}")
        step_bar.close()
        train_seconds = time.perf_counter() - t0
        record = {"epoch": epoch, "train_loss": running / max(seen, 1),
                  "images_per_s": seen * config.group_size / max(train_seconds, 1e-9),
                  "train_seconds": train_seconds}
        if env.is_main:
            val_loader = DataLoader(val_set, batch_size=config.images_per_step * 2, shuffle=False,
                                    num_workers=config.num_workers)
            record.update(evaluate(model, val_loader, config.spec, device))
            history.append(record)
            improved = record["val_loss"] < best
            best = min(best, record["val_loss"])
            payload = {"metadata": meta, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                       "epoch": epoch, "history": history, "best_val_loss": best,
                       "torch_rng": torch.get_rng_state()}
            if improved:
                save_checkpoint(checkpoint_dir / "best.pt", {**payload, "metadata": {**meta, "epoch": epoch}})
            save_checkpoint(last, payload)
            epoch_bar.set_postfix(val_loss=f"{record['val_loss']:.4g}", val_mae=f"{record['val_mae']:.3g}")
        if time_budget_s is not None and time.perf_counter() - started > time_budget_s:
            break
    epoch_bar.close()
    if env.is_main:
        from agglib.core.files import atomic_write_text
        atomic_write_text(checkpoint_dir / "history.json", json.dumps(history, indent=1))
    return {"history": history, "best_val_loss": best, "metadata": meta}



def train_for_profile(profile, target: str, store_path, run_dir, seed: int = 0,
                      show_progress_bars: bool | None = None, **changes) -> dict:
    """Train ``target`` with the profile's architecture, epochs and ν into ``run_dir/target``.

    Resumes (or returns at once) when the run directory already holds the finished epochs.
    ``changes`` override :class:`TrainConfig` fields.
    """
    multi = TARGETS[target].multi_image
    nu = min(profile.batch_size, profile.eval_per_config,
             profile.samples_per_config - profile.eval_per_config)
    config = TrainConfig(target=target, arch=profile.train_arch,
                         epochs=profile.epochs_multi if multi else profile.epochs_single,
                         nu=nu, seed=seed, **changes)
    return train_network(store_path, config, Path(run_dir) / target, show_progress_bars=show_progress_bars)


def train_estimator(profile, store_path, run_dir, seed: int = 0, show_progress_bars: bool | None = None):
    """Train (or finish training) the five networks of a profile; the :class:`ParameterEstimator`."""
    from agglib.estimate import NETWORK_NAMES, ParameterEstimator

    for target in NETWORK_NAMES:
        train_for_profile(profile, target, store_path, run_dir, seed=seed, show_progress_bars=show_progress_bars)
    return ParameterEstimator.load(run_dir)
