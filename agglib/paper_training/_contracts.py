"""What one training run is: the targets the paper's networks learn and the settings of a run.

Their recipe is :mod:`agglib.paper_training.loop` (run by :mod:`agglib.engine`); the data it reads, :mod:`agglib.paper_training.data`.
"""

from __future__ import annotations

from dataclasses import dataclass

from agglib.core.validation import check_range
from agglib.nets import ARCHITECTURES

__all__ = ["TargetSpec", "TARGETS", "PRETRAIN_DESCRIPTORS", "PRETRAINED_FROM", "SCHEDULES", "TrainConfig"]


@dataclass(frozen=True)
class TargetSpec:
    label: str              # a label source of agglib.targets ("descriptor:<name>" …)
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
#: on the samples they train on, T∖V), with the transform applied first. Their f initialises
#: θ0's (``descriptors``) and θ1's (``descriptors_inverse``, inverse-intensity input) f: cluster
#: sizes and the mixing ratio are what θ0 and θ1 act on (paper §2.2.2, Fig. 5), and 18 images per
#: configuration are too few for the multi-image networks to find such features from scratch on
#: the quick profile's budget.
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
    val_share : float
        Share of T's parameter configurations held out, with all their T samples, as the
        validation split V [fraction of configurations, 0 < val_share < 1; default 1/6]. The
        network trains on T∖V only; after each epoch it is validated on V, and ``best.pt`` is
        the epoch with the lowest loss on V. E is never used for selection: it is only scored
        (best and last weights) after the last epoch. V is rounded to a whole number of
        configurations (at least one, and at least one left for training) and drawn from the
        dataset's and this run's ``seed``, so all networks of one run share it; whole
        configurations keep V and T∖V apart for the groups of ν images of θ0 and θ1 too.
    val_images : int, optional
        Validate on this many samples (groups) of V, drawn once with ``seed`` (default: all).
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
        many batches of T∖V (:func:`agglib.engine.recalibrate_batchnorm`; 0: keep the running averages of
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
    val_share: float = 1 / 6
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
        check_range("val_share", self.val_share, low=0.0, high=1.0, low_inclusive=False, high_inclusive=False)
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
