"""Image preprocessing and training-time augmentation (paper §2.2.2 and §2.3.5).

* :func:`scale_and_quantize` — every image is scaled linearly to [−0.5, 0.5] (its own minimum
  and maximum) and rounded to 256 equidistant values.
* :func:`inverse_intensity` — for the θ1 network only, before scaling: pixels brighter than a
  threshold t are replaced by their multiplicative inverse, so dim TiO2 particles come out
  *brighter* than WO3 (the paper's Fig. 8).

  The paper's formula was lost in extraction; from its text ("the intensity value p > 0 of
  non-background pixels is replaced by its multiplicative inverse", threshold t = 0.001) we use
  ``p_mod = p if p ≤ t else 1/p``, with p the HAADF signal as a fraction of the incident
  electrons (counts / electrons per pixel), so t = 0.001 separates vacuum (p = 0 up to a few
  counts of shot noise) from matter (a 1 nm TiO2 edge already gives p ≈ 5·10⁻⁴–10⁻³).
* :class:`Augment` — random rotations by multiples of 90°, reflections and small integer
  displacements (zero-filled): nothing that changes particle shape or size.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from agglib.core.validation import check_range

__all__ = ["scale_and_quantize", "inverse_intensity", "Preprocess", "Augment", "N_LEVELS",
           "INVERSE_THRESHOLD"]

N_LEVELS = 256
INVERSE_THRESHOLD = 0.001


def scale_and_quantize(images: torch.Tensor) -> torch.Tensor:
    """Scale each image linearly to [−0.5, 0.5] and round to 256 equidistant values.

    Parameters
    ----------
    images : tensor (..., H, W)
        Any real-valued images; each (H, W) image is scaled by its own minimum and maximum
        (a constant image becomes all −0.5).
    """
    x = images.to(torch.float32)
    flat = x.flatten(-2)
    lo = flat.min(dim=-1).values[..., None, None]
    hi = flat.max(dim=-1).values[..., None, None]
    span = torch.where(hi > lo, hi - lo, torch.ones_like(hi))
    unit = (x - lo) / span                                 # [0, 1]
    return torch.round(unit * (N_LEVELS - 1)) / (N_LEVELS - 1) - 0.5


def inverse_intensity(fraction: torch.Tensor, threshold: float = INVERSE_THRESHOLD) -> torch.Tensor:
    """``p`` where ``p ≤ threshold``, ``1/p`` elsewhere (p: HAADF fraction, ≥ 0)."""
    check_range("threshold", threshold, low=0.0, low_inclusive=False)
    p = fraction.to(torch.float32)
    return torch.where(p > threshold, 1.0 / torch.clamp(p, min=threshold), p)


@dataclass(frozen=True)
class Preprocess:
    """The preprocessing of one network, stored in its checkpoint.

    Parameters
    ----------
    inverse : bool
        Apply :func:`inverse_intensity` first (the θ1 network).
    electrons_per_pixel : float
        Dose × pixel area [e per pixel] of the training images: converts counts to the HAADF
        fraction for the inverse transform.
    threshold : float
        The inverse transform's threshold t (fraction of the incident beam).
    """

    inverse: bool = False
    electrons_per_pixel: float = 1.0
    threshold: float = INVERSE_THRESHOLD

    def __call__(self, counts: torch.Tensor) -> torch.Tensor:
        x = counts.to(torch.float32)
        if self.inverse:
            x = inverse_intensity(x / self.electrons_per_pixel, self.threshold)
        return scale_and_quantize(x)

    def to_dict(self) -> dict:
        return asdict(self)


class Augment:
    """Random rotation by k·90°, reflection and an integer shift of up to ``max_shift_px`` pixels.

    Works on (..., H, W) tensors; the same transform is applied to every image of one call.
    Shifted-in pixels take the image's minimum (the background after :func:`scale_and_quantize`).

    Parameters
    ----------
    max_shift_px : int
        Largest displacement along each axis [px].
    generator : torch.Generator, optional
        Source of randomness (seed it for reproducible augmentation).
    """

    def __init__(self, max_shift_px: int = 4, generator: torch.Generator | None = None):
        check_range("max_shift_px", max_shift_px, low=0, integer=True, unit="px")
        self.max_shift_px = int(max_shift_px)
        self.generator = generator

    def _randint(self, high: int) -> int:
        return int(torch.randint(0, high, (1,), generator=self.generator).item())

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        x = torch.rot90(image, self._randint(4), dims=(-2, -1))
        if self._randint(2):
            x = torch.flip(x, dims=(-1,))
        if self.max_shift_px:
            dy = self._randint(2 * self.max_shift_px + 1) - self.max_shift_px
            dx = self._randint(2 * self.max_shift_px + 1) - self.max_shift_px
            x = shift_image(x, dy, dx)
        return x


def shift_image(image: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Translate by (dy, dx) pixels, filling with the image minimum (no wrap-around)."""
    if dy == 0 and dx == 0:
        return image
    h, w = image.shape[-2:]
    out = torch.full_like(image, float(image.min()))
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[..., yd, xd] = image[..., ys, xs]
    return out


def numpy_preprocess(counts: np.ndarray, preprocess: Preprocess) -> np.ndarray:
    """:class:`Preprocess` applied to a NumPy array (convenience for notebooks)."""
    return preprocess(torch.from_numpy(np.asarray(counts, dtype=np.float32))).numpy()
