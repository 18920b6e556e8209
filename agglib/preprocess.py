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

from agglib.core.distributed import host_to_device
from agglib.core.validation import check_range

__all__ = ["scale_and_quantize", "inverse_intensity", "Preprocess", "Augment", "augment_batch",
           "augmentation_params", "AUGMENT_COLUMNS", "N_LEVELS", "INVERSE_THRESHOLD"]

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
    lo, hi = torch.aminmax(x.flatten(-2), dim=-1)
    lo, hi = lo[..., None, None], hi[..., None, None]
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


#: Columns of an augmentation parameter array: quarter turns k, reflection (0/1), shift dy, dx [px].
AUGMENT_COLUMNS = ("quarter_turns", "reflect", "dy", "dx")

_MASK64 = np.uint64(2**64 - 1)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """The SplitMix64 finaliser: a bijective mix of 64-bit integers (vectorised)."""
    with np.errstate(over="ignore"):
        x = (x + np.uint64(0x9E3779B97F4A7C15)) & _MASK64
        x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
        x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
        return x ^ (x >> np.uint64(31))


def augmentation_params(seed: int, epoch: int, keys, max_shift_px: int, images_per_key: int = 1) -> np.ndarray:
    """The augmentation of every image of a batch, a pure function of (seed, epoch, key, image).

    Parameters
    ----------
    seed, epoch : int
        The training run's seed and the epoch.
    keys : array of int
        The batch's samples (or groups of ``images_per_key`` images) by their index in the split.
    max_shift_px : int
        Largest shift along each axis [px].
    images_per_key : int
        Images per key (ν for the multi-image targets: each image augmented on its own).

    Returns
    -------
    int64 array (len(keys) · images_per_key, 4)
        :data:`AUGMENT_COLUMNS` per image: the same whichever process, worker, rank or resumed run
        draws it, so batches augmented on a GPU equal those augmented one by one on a CPU.
    """
    check_range("max_shift_px", max_shift_px, low=0, integer=True, unit="px")
    keys = np.asarray(keys, dtype=np.int64).reshape(-1)
    image = np.arange(images_per_key, dtype=np.uint64)
    h = _splitmix64(np.full(1, np.uint64(int(seed) & (2**64 - 1))))
    h = _splitmix64(h ^ np.uint64(int(epoch) & (2**64 - 1)))
    h = _splitmix64(h ^ keys.astype(np.uint64)[:, None])
    h = _splitmix64(h ^ image[None, :]).reshape(-1)
    span = np.uint64(2 * max_shift_px + 1)
    out = np.empty((h.size, 4), dtype=np.int64)
    out[:, 0] = (h & np.uint64(3)).astype(np.int64)
    out[:, 1] = ((h >> np.uint64(2)) & np.uint64(1)).astype(np.int64)
    out[:, 2] = ((h >> np.uint64(8)) % span).astype(np.int64) - max_shift_px
    out[:, 3] = ((h >> np.uint64(32)) % span).astype(np.int64) - max_shift_px
    return out


_SOURCE_MAPS: dict = {}


def _source_maps(size: int, device) -> torch.Tensor:
    """(8, size, size) flat source pixel of every output pixel after ``rot90(·, k)`` then an optional
    reflection (index ``2k + reflect``), found by transforming an image of pixel indices."""
    key = (int(size), str(device))
    if key not in _SOURCE_MAPS:
        index = torch.arange(size * size, dtype=torch.int64).reshape(size, size)
        maps = []
        for k in range(4):
            turned = torch.rot90(index, k, dims=(-2, -1))
            maps += [turned, torch.flip(turned, dims=(-1,))]
        _SOURCE_MAPS[key] = torch.stack(maps).to(device)
    return _SOURCE_MAPS[key]


def augment_batch(images: torch.Tensor, params, fill: float | None = None) -> torch.Tensor:
    """Rotate, reflect and shift every (H, W) image of a batch by its own parameters, in one gather.

    Parameters
    ----------
    images : tensor (B, ..., H, W), H = W
        Preprocessed images, on any device; the leading dimensions hold B·m images in order.
    params : array or tensor (B·m, 4)
        :data:`AUGMENT_COLUMNS` per image (:func:`augmentation_params`).
    fill : float, optional
        Value of the shifted-in pixels; default each image's minimum (the background after
        :func:`scale_and_quantize`). Raw counts take 0 (vacuum).

    Returns
    -------
    tensor of ``images``' shape
        ``shift(flip?(rot90(image, k)), dy, dx)``; equal to :class:`Augment` image by image.
    """
    h, w = images.shape[-2:]
    if h != w:
        raise ValueError(f"augment_batch needs square images; got {h}×{w} px")
    flat = images.reshape(-1, h * w)
    p = params.cpu().numpy() if isinstance(params, torch.Tensor) else np.asarray(params)
    if p.shape != (flat.shape[0], 4):
        raise ValueError(f"params of shape {p.shape} for {flat.shape[0]} images; expected ({flat.shape[0]}, 4)")
    # the index arithmetic is done on the host and sent in one copy: a handful of kernels per
    # batch on the device instead of dozens (the launches, not the arithmetic, cost the time)
    return augment_with_plan(images, host_to_device(augment_plan(p, h), images.device), fill)


def augment_with_plan(images: torch.Tensor, plan: torch.Tensor, fill: float | None = None) -> torch.Tensor:
    """:func:`augment_batch` with its :func:`augment_plan` already on the images' device (device
    operations only: a CUDA graph can hold them)."""
    h, w = images.shape[-2:]
    flat = images.reshape(-1, h * w)
    combo, rows, cols = plan[:, 0], plan[:, 1:1 + h], plan[:, 1 + h:]
    source = _source_maps(h, images.device)[combo[:, None, None], rows.clamp(min=0)[:, :, None],
                                            cols.clamp(min=0)[:, None, :]]
    out = torch.gather(flat, 1, source.reshape(flat.shape[0], -1)).reshape(-1, h, w)
    inside = (rows >= 0)[:, :, None] & (cols >= 0)[:, None, :]
    background = flat.amin(dim=1)[:, None, None] if fill is None else float(fill)
    return torch.where(inside, out, background).reshape(images.shape)


def augment_plan(params: np.ndarray, size: int) -> np.ndarray:
    """(n, 1 + 2·size) int64 per image: the source map (2k + reflect), then the row and the column
    each output row and column reads after the shift (−1: shifted in from outside)."""
    p = np.asarray(params, dtype=np.int64)
    grid = np.arange(size, dtype=np.int64)
    rows = grid[None, :] - p[:, 2:3]                       # output row i reads row i − dy
    cols = grid[None, :] - p[:, 3:4]
    rows[(rows < 0) | (rows >= size)] = -1
    cols[(cols < 0) | (cols >= size)] = -1
    return np.concatenate([(2 * p[:, 0] + p[:, 1])[:, None], rows, cols], axis=1)


class Augment:
    """Random rotation by k·90°, reflection and an integer shift of up to ``max_shift_px`` pixels.

    Works on (..., H, W) tensors; the same transform is applied to every image of one call.
    Shifted-in pixels take the image's minimum (the background after :func:`scale_and_quantize`).
    Training draws its parameters with :func:`augmentation_params` and applies them to whole
    batches with :func:`augment_batch`; this class is the one-image form of the same transform.

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
        s = self.max_shift_px
        params = [[self._randint(4), self._randint(2), self._randint(2 * s + 1) - s, self._randint(2 * s + 1) - s]]
        return augment_batch(image.reshape(1, *image.shape[-2:]), params).reshape(image.shape)


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

