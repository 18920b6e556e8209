"""Does a measured image show what the estimator was trained on? Border and particle-size checks.

Two statistics of an image as the estimator sees it (resampled to its pixel size, cropped to its
field of view, as fractions of the beam), both independent of the intensity scale:

* :func:`border_share` — the share of the aggregate's signal in the outermost pixels: an
  aggregate cut by the field of view shows only part of itself, and θ̂ then describes that part;
* :func:`particle_scale_nm` — twice the area over the perimeter (counted in pixel edges) of the
  aggregate's projection [nm], which scales with the particles' radius r (a digital disc gives
  π r / 4; a chain of overlapping discs a little more). It tells particles of half or twice the model's size
  apart from the model's, whatever the gain (see :func:`agglib.fit.intensity.intensity_reference`,
  which records it for images simulated as the estimator's training images).

The aggregate's projection is the set of pixels above ``background + 0.25 × (signal − background)``
after a 3 × 3 mean (``background``: the image median; ``signal``: its 99.5th percentile).
"""

from __future__ import annotations

import numpy as np

__all__ = ["aggregate_mask", "border_share", "particle_scale_nm", "border_warnings", "scale_warnings",
           "BORDER_PX", "BORDER_WARN_SHARE", "SCALE_WARN_FACTOR"]

#: Width of the border band [px of the estimator's images].
BORDER_PX = 2
#: Share of the aggregate's signal in the border band above which ``fit`` warns.
BORDER_WARN_SHARE = 0.05
#: ``fit`` warns when the sample's particle scale lies beyond this factor outside the range of
#: simulated samples of the estimator's model.
SCALE_WARN_FACTOR = 1.25
#: Threshold of the projection between background (0) and the 99.5th percentile (1).
MASK_LEVEL = 0.25


def _smooth(image: np.ndarray) -> np.ndarray:
    padded = np.pad(np.asarray(image, dtype=np.float64), 1, mode="edge")
    h, w = image.shape
    return sum(padded[dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)) / 9.0


def aggregate_mask(image: np.ndarray) -> np.ndarray:
    """Pixels of the aggregate's projection (bool, the image's shape); see the module."""
    x = _smooth(image)
    background = float(np.median(x))
    top = float(np.percentile(x, 99.5))
    if top <= background:
        return np.zeros(x.shape, dtype=bool)
    return x > background + MASK_LEVEL * (top - background)


def border_share(image: np.ndarray, border_px: int = BORDER_PX) -> float:
    """Share of the aggregate's signal (intensity above the median, inside its projection) in the
    outermost ``border_px`` pixels [-] (0: the aggregate lies inside the field of view)."""
    x = np.asarray(image, dtype=np.float64)
    mask = aggregate_mask(x)
    signal = np.where(mask, np.clip(x - np.median(x), 0.0, None), 0.0)
    total = float(signal.sum())
    if total <= 0:
        return 0.0
    inner = signal[border_px:-border_px, border_px:-border_px].sum()
    return float((total - inner) / total)


def particle_scale_nm(image: np.ndarray, pixel_size_nm: float) -> float:
    """2 × area / perimeter of the aggregate's projection [nm] (NaN without a projection)."""
    mask = aggregate_mask(image)
    area = int(mask.sum())
    if area == 0:
        return float("nan")
    padded = np.pad(mask, 1)
    edges = sum(int(np.sum(padded[1:-1, 1:-1] & ~np.roll(padded, shift, axis)[1:-1, 1:-1]))
                for axis in (0, 1) for shift in (1, -1))
    return float(2.0 * area / edges * pixel_size_nm)


def border_warnings(images, paths, field_of_view_nm: float, share: float = BORDER_WARN_SHARE) -> list:
    """One warning naming each image whose aggregate has more than ``share`` of its signal at the
    border of the estimator's field of view [nm] (images as the estimator sees them)."""
    out = []
    for image, path in zip(images, paths):
        s = border_share(image)
        if s > share:
            out.append(f"{path}: {s:.0%} of the aggregate's signal lies at the border of the {field_of_view_nm:.0f} nm "
                       "field of view the estimator reads: the aggregate is cut, and θ̂ describes the part inside. "
                       "Images with the whole aggregate inside (a larger field of view, or an estimator trained for "
                       "one) avoid it")
    return out


def scale_warnings(scales, reference_scales: np.ndarray, factor: float = SCALE_WARN_FACTOR) -> list:
    """A warning when the sample's particle scale (median over its images of
    :func:`particle_scale_nm` [nm], ``scales``) lies beyond ``factor`` outside the range of the
    medians of simulated samples of the estimator's model (``reference_scales``: configurations ×
    images)."""
    scales = np.asarray(scales, dtype=np.float64)
    if not np.isfinite(scales).any():
        return []
    m = min(len(scales), reference_scales.shape[1])
    simulated = np.nanmedian(reference_scales[:, :m], axis=1)
    lo, hi = float(np.nanmin(simulated)), float(np.nanmax(simulated))
    value = float(np.nanmedian(scales))
    if lo / factor <= value <= hi * factor:
        return []
    kind = "smaller" if value < lo / factor else "larger"
    return [f"the particles look {kind} than the model's: the sample's particle scale (2 × area / perimeter of the "
            f"aggregates' projections) is {value:.2g} nm where simulated samples of the estimator's model give "
            f"{lo:.2g}–{hi:.2g} nm. Its radius law does not fit these particles: write a profile with your measured "
            "radii (agglib profiles write) and train an estimator for it"]
