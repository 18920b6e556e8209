"""One image encoder per profile: a multi-task network reading every per-aggregate quantity.

The paper trains five separate networks on images scaled to [−0.5, 0.5] by their own minimum and
maximum. That scaling throws away the absolute intensity, which is what tells WO3 from TiO2
(an all-TiO2 and an all-WO3 aggregate of the same shape differ after it only in their noise).
The encoder here reads three channels per image (:func:`encoder_inputs`):

0. the paper's scaled and quantised image (§2.2.2);
1. the paper's inverse-intensity image, scaled (§2.3.5, the θ1 network's input);
2. the absolute HAADF signal as a fraction p of the incident beam (counts ÷ electrons per
   pixel), compressed as ``log1p(p / 0.001) / log1p(100) − 0.5`` (vacuum ≈ −0.5, a 50 nm WO3
   stack ≈ +0.3).

One compact feature extractor (:class:`agglib.nets.CompactFeatures`, three input channels) maps
an image to a 128-value embedding; linear heads predict every target of
:data:`ENCODER_TARGETS` from it, standardised over T (mean squared error; binary cross-entropy for
``homogeneous``; missing labels masked). The embedding is what the set-level posterior
(:mod:`agglib.posterior`) pools over the images of a sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from agglib.nets import CompactFeatures
from agglib.preprocess import INVERSE_THRESHOLD, inverse_intensity, scale_and_quantize
from agglib.targets import to_natural, transformed_labels

__all__ = ["EncoderTarget", "ENCODER_TARGETS", "encoder_inputs", "encoder_labels", "label_scaling",
           "augmentation_draws", "ImageEncoder", "EMBEDDING_DIM", "INPUT_CHANNELS", "Encoded", "TrainedEncoder",
           "standardised_labels", "multitask_loss", "unscale_predictions", "natural_labels", "per_image_errors"]

EMBEDDING_DIM = 128
INPUT_CHANNELS = 3
#: Fraction of the beam at which the absolute channel's log compression sets in.
ABSOLUTE_REFERENCE = 1e-3


@dataclass(frozen=True)
class EncoderTarget:
    """A per-image target: where its label comes from and how it is transformed."""

    source: str                 # a label source of agglib.targets ("descriptor:<name>" …)
    transform: str = "identity"  # "identity", "log", "log1p"
    loss: str = "mse"            # "mse" or "bce"
    unit: str = "-"


#: What the encoder learns from each image. Per-aggregate descriptors (paper Eqs. 3–5, 17–19)
#: and, as auxiliary targets, the θ of the sample the aggregate was drawn from.
ENCODER_TARGETS = {
    "df": EncoderTarget("descriptor:df"),
    "rho": EncoderTarget("descriptor:rho"),
    "homogeneous": EncoderTarget("homogeneous", loss="bce"),
    "s_wo3": EncoderTarget("descriptor:s_wo3", "log1p", unit="particles"),
    "s_tio2": EncoderTarget("descriptor:s_tio2", "log1p", unit="particles"),
    "z_hetero": EncoderTarget("descriptor:z_hetero", unit="contacts"),
    "z_total": EncoderTarget("descriptor:z_total", unit="contacts"),
    "n_particles": EncoderTarget("descriptor:n_particles", "log", unit="particles"),
    "rg": EncoderTarget("descriptor:rg", "log", unit="nm"),
    "theta_df": EncoderTarget("theta:0"),
    "theta_rho": EncoderTarget("theta:1"),
    "theta0": EncoderTarget("theta:2", unit="particles"),
    "theta1": EncoderTarget("theta:3", unit="particles"),
}



def encoder_labels(theta: np.ndarray, descriptors, names=tuple(ENCODER_TARGETS)) -> np.ndarray:
    """Transformed labels (n, len(names)) from θ (n, 4) and a descriptor DataFrame; NaN where undefined.

    ``homogeneous`` is 1 where ρ(A) ∈ {0, 1}. S of a material an aggregate lacks is NaN (masked).
    """
    return np.stack([transformed_labels(ENCODER_TARGETS[name].source, ENCODER_TARGETS[name].transform, theta,
                                        descriptors, absent="nan") for name in names], axis=1).astype(np.float32)


def label_scaling(labels: np.ndarray, names=tuple(ENCODER_TARGETS)) -> dict:
    """Mean and SD of each label column (the standardisation the heads learn in); BCE columns stay raw."""
    mean = np.nanmean(labels, axis=0)
    sd = np.nanstd(labels, axis=0)
    sd = np.where(sd > 0, sd, 1.0)
    for k, name in enumerate(names):
        if ENCODER_TARGETS[name].loss == "bce":
            mean[k], sd[k] = 0.0, 1.0
    return {"names": list(names), "mean": [float(v) for v in mean], "sd": [float(v) for v in sd]}


def natural_labels(labels: np.ndarray, names=tuple(ENCODER_TARGETS)) -> dict:
    """Transformed labels (n, K) from :func:`encoder_labels` back in natural units, per target."""
    return {name: to_natural(labels[:, k], ENCODER_TARGETS[name].transform) for k, name in enumerate(names)}


def per_image_errors(predictions: dict, labels: np.ndarray, names=tuple(ENCODER_TARGETS)) -> dict:
    """Per-target error of per-image predictions (natural units, as from :attr:`Encoded.predictions`)
    against transformed labels (n, K) from :func:`encoder_labels`: the mean absolute error, or for
    ``homogeneous`` the share of images misclassified. Undefined labels (NaN) do not count."""
    truth = natural_labels(labels, names)
    out = {}
    for name in names:
        ok = np.isfinite(truth[name])
        pred, t = np.asarray(predictions[name])[ok], truth[name][ok]
        if ENCODER_TARGETS[name].loss == "bce":
            out[name] = float(np.mean((pred > 0.5) != (t > 0.5)))
        else:
            out[name] = float(np.mean(np.abs(pred - t)))
    return out


def unscale_predictions(pred: np.ndarray, scaling: dict) -> dict:
    """Head outputs (n, K) → a dict of per-image predictions in natural units."""
    out = {}
    for k, name in enumerate(scaling["names"]):
        target = ENCODER_TARGETS[name]
        if target.loss == "bce":
            out[name] = 1.0 / (1.0 + np.exp(-pred[:, k]))
        else:
            out[name] = to_natural(pred[:, k] * scaling["sd"][k] + scaling["mean"][k], target.transform)
    return out


def encoder_inputs(counts: torch.Tensor, electrons_per_pixel: float) -> torch.Tensor:
    """The encoder's three input channels from images [counts], (B, H, W) → (B, 3, H, W).

    Parameters
    ----------
    counts : tensor (B, H, W)
        HAADF images in detector counts [electrons].
    electrons_per_pixel : float
        Dose × pixel area of the images [e per pixel] (converts counts to the fraction of the beam).
    """
    x = counts.to(torch.float32)
    p = torch.clamp(x / float(electrons_per_pixel), min=0.0)
    scaled = scale_and_quantize(x)
    inverse = scale_and_quantize(inverse_intensity(p, INVERSE_THRESHOLD))
    absolute = torch.log1p(p / ABSOLUTE_REFERENCE) / float(np.log1p(100.0)) - 0.5
    return torch.stack([scaled, inverse, absolute], dim=1)


def augmentation_draws(n: int, generator: torch.Generator, max_shift_px: int = 4) -> torch.Tensor:
    """The augmentation of ``n`` images: a rotation by k·90°, a reflection and an integer shift
    [px] each, as :data:`agglib.preprocess.AUGMENT_COLUMNS` rows (n, 4) for
    :func:`agglib.preprocess.augment_batch` (with ``fill=0``: vacuum shifted in).

    Every random number comes from ``generator``, so a batch's augmentation is a function of the
    generator's seed and the batches drawn before it (a resumed training run repeats it exactly).
    """
    rot = torch.randint(0, 4, (n,), generator=generator)
    flip = torch.randint(0, 2, (n,), generator=generator)
    shift = torch.randint(-max_shift_px, max_shift_px + 1, (n, 2), generator=generator)
    return torch.stack([rot, flip, shift[:, 0], shift[:, 1]], dim=1)


class ImageEncoder(nn.Module):
    """Image (3, H, W) → embedding (128,) → one output per target of :data:`ENCODER_TARGETS`.

    Parameters
    ----------
    input_size : int
        Image side [px].
    n_targets : int
        Number of per-image outputs.
    """

    def __init__(self, input_size: int, n_targets: int = len(ENCODER_TARGETS)):
        super().__init__()
        self.features = CompactFeatures(input_size, in_channels=INPUT_CHANNELS, feature_dim=EMBEDDING_DIM)
        self.heads = nn.Linear(EMBEDDING_DIM, n_targets)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Embeddings (B, 128) of inputs (B, 3, H, W) from :func:`encoder_inputs`."""
        return self.features(x.contiguous(memory_format=torch.channels_last))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The embedding z (B, 128) and the heads' outputs (B, K) of inputs x (B, 3, H, W) from
        :func:`encoder_inputs`."""
        z = self.embed(x)
        return z, self.heads(z)


def multitask_loss(out: torch.Tensor, labels: torch.Tensor, bce_mask: torch.Tensor,
                   valid_counts: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over targets of the masked MSE (standardised labels) or BCE (``bce_mask`` columns).

    Labels that are NaN (a descriptor undefined for that aggregate) do not count.
    ``valid_counts`` (K,): the finite labels per target in the whole global batch when this batch
    is one rank's part of it (default: this batch's), so that the ranks' losses add up to the
    global batch's.
    """
    valid = torch.isfinite(labels)
    y = torch.where(valid, labels, torch.zeros_like(labels))
    mse = (out - y) ** 2
    bce = nn.functional.binary_cross_entropy_with_logits(out, y, reduction="none")
    per = torch.where(bce_mask[None, :], bce, mse) * valid
    counts = valid.sum(dim=0) if valid_counts is None else valid_counts
    return (per.sum(dim=0) / counts.clamp(min=1)).mean()


@dataclass
class Encoded:
    """What the encoder reads from M images.

    Attributes
    ----------
    embedding : ndarray (M, 128)
        The feature vector of each image.
    outputs : ndarray (M, K)
        The heads' outputs in training units (standardised labels; a logit for ``homogeneous``):
        the per-image summaries the set-level posterior pools.
    scaling : dict
        The label standardisation (names, mean, SD).
    """

    embedding: np.ndarray
    outputs: np.ndarray
    scaling: dict

    @property
    def predictions(self) -> dict:
        """Per-image predictions in natural units (D_f, ρ, P(homogeneous), S [particles], R_g [nm] …)."""
        return unscale_predictions(self.outputs, self.scaling)


def standardised_labels(theta: np.ndarray, descriptors, scaling: dict) -> np.ndarray:
    """True per-aggregate descriptors in the heads' units (NaN → 0, the mean; ``homogeneous`` →
    logit ±4), for the information ceiling of the set-level posterior: what an encoder that read
    every descriptor exactly would output. The θ heads are set to 0 (the mean over T): the θ
    of the sample is not a property of one aggregate, and feeding it would make the ceiling trivial."""
    names = scaling["names"]
    raw = encoder_labels(theta, descriptors, names)
    out = (raw - np.asarray(scaling["mean"], np.float32)) / np.asarray(scaling["sd"], np.float32)
    for k, name in enumerate(names):
        if ENCODER_TARGETS[name].loss == "bce":
            out[:, k] = np.where(raw[:, k] > 0.5, 4.0, -4.0)
        if ENCODER_TARGETS[name].source.startswith("theta:"):
            out[:, k] = 0.0
    return np.nan_to_num(out, nan=0.0).astype(np.float32)


@dataclass
class TrainedEncoder:
    """A trained :class:`ImageEncoder` with what it needs to read images (from its checkpoint).

    ``metadata`` holds ``input_size`` [px], ``pixel_size_nm`` [nm/px], ``electrons_per_pixel``,
    ``stem_settings``, ``label_scaling`` (names, mean, SD over T) and the training record.
    """

    model: ImageEncoder
    metadata: dict

    @property
    def image_size_px(self) -> int:
        return int(self.metadata["input_size"])

    @property
    def pixel_size_nm(self) -> float:
        return float(self.metadata["pixel_size_nm"])

    @property
    def electrons_per_pixel(self) -> float:
        return float(self.metadata["electrons_per_pixel"])

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def check_images(self, images) -> np.ndarray:
        """Images as float32 (M, H, W) of this encoder's size, or a clear error."""
        from agglib.core.validation import check_image_stack

        return check_image_stack(images, self.image_size_px, self.pixel_size_nm, "this encoder")

    def acquisition_statistics(self, images) -> np.ndarray:
        """What images [counts] (M, H, W) say about the acquisition they share (M, 9):
        :func:`agglib.stem.acquisition.acquisition_statistics` of the images in units of this
        encoder's beam (counts ÷ ``electrons_per_pixel``). Read beside the head outputs by
        estimators whose posterior takes them (:meth:`agglib.estimate.SampleEstimator.summaries`)."""
        from agglib.stem.acquisition import acquisition_statistics

        return acquisition_statistics(np.asarray(images) / self.electrons_per_pixel)

    @torch.no_grad()
    def encode(self, images, batch_size: int = 256, show_progress_bars: bool = False) -> Encoded:
        """Embeddings, head outputs and per-image predictions of images [counts] (M, H, W)."""
        from tqdm.auto import tqdm

        images = self.check_images(images)
        self.model.eval()
        zs, outs = [torch.zeros(0, EMBEDDING_DIM)], [torch.zeros(0, self.model.heads.out_features)]
        for k in tqdm(range(0, images.shape[0], batch_size), desc="encoding images", disable=not show_progress_bars):
            x = encoder_inputs(torch.from_numpy(images[k:k + batch_size]), self.electrons_per_pixel)
            z, out = self.model(x.to(self.device))
            zs.append(z.float().cpu())
            outs.append(out.float().cpu())
        return Encoded(torch.cat(zs).numpy(), torch.cat(outs).numpy(), self.metadata["label_scaling"])

    @classmethod
    def load(cls, path, device: str | torch.device = "cpu") -> "TrainedEncoder":
        """An encoder from its checkpoint (``encoder.pt`` of :func:`agglib.sets_training.train_encoder`)."""
        from agglib.checkpoint import load_checkpoint

        state = load_checkpoint(path, kind="encoder", map_location=device)
        meta = state["metadata"]
        model = ImageEncoder(int(meta["input_size"]), len(meta["label_scaling"]["names"]))
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as err:
            from agglib.checkpoint import CheckpointError

            raise CheckpointError(f"{path} does not fit this agglib's encoder "
                                  f"({str(err).splitlines()[-1].strip()}); train it again") from None
        model.to(device).eval()
        return cls(model, meta)
