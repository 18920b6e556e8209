"""Settings of the new method's training runs, separate from their loops (after sbi's trainers)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from agglib.core.validation import check_range

__all__ = ["EncoderConfig", "PosteriorConfig", "NotTrainedError"]


@dataclass(frozen=True)
class EncoderConfig:
    """Settings of one encoder training run (:func:`agglib.sets_training.train_encoder`).

    Parameters
    ----------
    epochs : int
        Passes over the training images T.
    batch : int
        Images per optimizer step.
    lr : float
        Peak learning rate of the one-cycle schedule (:func:`agglib.lr_schedule.one_cycle_lr`).
    weight_decay : float
        AdamW weight decay.
    max_shift_px : int
        Largest augmentation shift [px].
    val_images : int
        Images of E scored after each epoch (0: none; the final scores use all of E).
    bf16 : bool
        bfloat16 autocast for forward and backward: fast on GPUs and CPUs with AVX-512, emulated
        and slow on others (:func:`agglib.core.distributed.fast_bfloat16`).
    bn_batches : int
        Batches of training images over which the BatchNorm statistics are recomputed in
        float32 with the final weights (0: keep training's running averages).
    seed : int
        Seeds initialisation, the order of the images and the augmentation of every epoch.
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"`` …
    """

    epochs: int = 12
    batch: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    max_shift_px: int = 4
    val_images: int = 1000
    bf16: bool = False
    bn_batches: int = 100
    seed: int = 0
    device: str = "auto"

    def __post_init__(self):
        check_range("epochs", self.epochs, low=1, integer=True)
        check_range("batch", self.batch, low=1, integer=True)
        check_range("lr", self.lr, low=0.0, high=1.0, low_inclusive=False)
        check_range("weight_decay", self.weight_decay, low=0.0)
        check_range("max_shift_px", self.max_shift_px, low=0, integer=True, unit="px")
        check_range("val_images", self.val_images, low=0, integer=True)
        check_range("bn_batches", self.bn_batches, low=0, integer=True)

    def identity(self) -> dict:
        """The fields that define the run (a resumed run must match them; epochs may grow; the
        precision may change with the machine it resumes on, as for the paper's networks)."""
        return {k: v for k, v in asdict(self).items() if k not in ("device", "epochs", "bf16")}


@dataclass(frozen=True)
class PosteriorConfig:
    """Settings of one set-posterior training run (:func:`agglib.sets_training.train_posterior`).

    Parameters
    ----------
    steps : int
        Optimizer steps.
    batch : int
        Sets (random subsets of one configuration's images) per step.
    max_images : int
        Set sizes M are drawn uniformly from 1 … ``max_images`` (capped by the images a
        configuration has in T).
    lr : float
        Peak learning rate (one-cycle).
    hidden : int
        Width of the summary network and of the posterior's heads.
    components : int
        Gaussians in the mixture over (θ_Df, θ_ρ) given (θ0, θ1).
    weight_decay : float
        AdamW weight decay.
    validation_share : float
        Share of the training configurations held out of the gradient steps; the weights with
        the lowest loss on them are kept (0: the last step's).
    validate_every : int
        Steps between validations (and history records).
    set_sizes : {"log-uniform", "uniform"}
        Law of the set size M of each step (:func:`agglib.sets_training.posterior.set_size`).
    members : int
        Posteriors of the ensemble (:class:`agglib.posterior.PosteriorEnsemble`), each trained
        with its own seed.
    seed : int
    """

    steps: int = 3000
    batch: int = 128
    max_images: int = 24
    lr: float = 2e-3
    hidden: int = 128
    components: int = 8
    weight_decay: float = 1e-4
    validation_share: float = 0.1
    validate_every: int = 100
    set_sizes: str = "log-uniform"
    members: int = 5
    seed: int = 0

    def __post_init__(self):
        check_range("steps", self.steps, low=1, integer=True)
        check_range("batch", self.batch, low=1, integer=True)
        check_range("max_images", self.max_images, low=1, integer=True)
        check_range("lr", self.lr, low=0.0, high=1.0, low_inclusive=False)
        check_range("hidden", self.hidden, low=4, integer=True)
        check_range("components", self.components, low=1, integer=True)
        check_range("validation_share", self.validation_share, low=0.0, high=0.5)
        check_range("validate_every", self.validate_every, low=1, integer=True)
        check_range("members", self.members, low=1, integer=True)
        if self.set_sizes not in ("log-uniform", "uniform"):
            raise ValueError(f"set_sizes={self.set_sizes!r}; accepted: 'log-uniform', 'uniform'")


class NotTrainedError(RuntimeError):
    """A trained result that was asked for without training (``train=False``) is missing or was
    made with other settings; the message says which and how to make it."""
