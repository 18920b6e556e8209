"""Classical baselines the CNNs are compared with (paper §4, Fig. 15).

* Box counting: the fractal dimension of an image's foreground, corrected by a power law
  D = a·D_BC^b fitted on T by least squares (the paper found a = 0.74, b = 2.19); the batch
  estimate is the mean over ν images (Eq. 22).
* Threshold mixing ratio: pixels are background, TiO2 or WO3 by two thresholds on the HAADF
  signal (chosen by brute force on T); particle numbers follow from the areas and the known
  mean projected particle area, ρ̂ = n_WO3 / (n_WO3 + n_TiO2).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import curve_fit

from agglib.core.validation import check_range

__all__ = ["threshold_rho_on_store", "box_counts", "box_counting_dimension", "foreground_mask", "fit_power_law", "apply_power_law",
           "threshold_areas", "threshold_mixing_ratio", "fit_thresholds", "mean_projected_area_nm2",
           "image_fractions", "box_counting_per_image"]


def box_counts(mask: np.ndarray, sizes) -> np.ndarray:
    """Number of boxes of side s [px] (a grid from the top-left corner) that touch the mask."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2D, got shape {mask.shape}")
    counts = []
    for s in sizes:
        s = int(s)
        h, w = -(-mask.shape[0] // s) * s, -(-mask.shape[1] // s) * s
        padded = np.zeros((h, w), dtype=bool)
        padded[:mask.shape[0], :mask.shape[1]] = mask
        counts.append(int(padded.reshape(h // s, s, w // s, s).any(axis=(1, 3)).sum()))
    return np.array(counts)


def box_counting_dimension(mask: np.ndarray, sizes=None) -> float:
    """Box-counting dimension: −slope of log N(s) against log s (least squares).

    Parameters
    ----------
    mask : (H, W) bool
        Foreground.
    sizes : sequence of int, optional
        Box sides [px]; default powers of two from 2 px to a quarter of the smaller side.
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        raise ValueError("the mask is empty: no foreground pixel to count")
    if sizes is None:
        top = max(2, min(mask.shape) // 4)
        sizes = [2 ** k for k in range(1, int(np.log2(top)) + 1)]
    sizes = np.asarray(list(sizes), dtype=float)
    if sizes.size < 2:
        raise ValueError(f"need at least two box sizes, got {sizes.tolist()}")
    counts = box_counts(mask, sizes)
    slope = np.polyfit(np.log(sizes), np.log(counts), 1)[0]
    return float(-slope)


def foreground_mask(image: np.ndarray, electrons_per_pixel: float, threshold: float = 0.001) -> np.ndarray:
    """Pixels whose HAADF signal (counts / electrons per pixel) exceeds ``threshold``."""
    check_range("electrons_per_pixel", electrons_per_pixel, low=0.0, low_inclusive=False)
    return np.asarray(image, dtype=np.float64) / electrons_per_pixel > threshold


def fit_power_law(d_bc, d_true) -> tuple[float, float]:
    """(a, b) of D = a·D_BC^b by non-linear least squares."""
    d_bc, d_true = np.asarray(d_bc, float), np.asarray(d_true, float)
    ok = np.isfinite(d_bc) & np.isfinite(d_true) & (d_bc > 0)
    (a, b), _ = curve_fit(lambda x, a, b: a * x ** b, d_bc[ok], d_true[ok], p0=(1.0, 1.0), maxfev=10000)
    return float(a), float(b)


def apply_power_law(d_bc, a: float, b: float) -> np.ndarray:
    """D = a·D_BC^b of box-counting dimensions ``d_bc``, with (a, b) from :func:`fit_power_law`."""
    return a * np.asarray(d_bc, float) ** b


def mean_projected_area_nm2(radii=None) -> float:
    """E[π r²] of the radius law [nm²] (default: agglib's log-normal, mean 12 nm, SD 3 nm)."""
    from agglib.model.particles import RadiusDistribution

    law = radii or RadiusDistribution()
    # E[r²] of a log-normal: exp(2μ + 2σ²)
    return float(np.pi * np.exp(2 * law.mu_ln + 2 * law.sigma_ln ** 2))


def threshold_areas(fraction: np.ndarray, t_low: float, t_high: float) -> tuple[int, int]:
    """(TiO2 pixels, WO3 pixels): t_low < p ≤ t_high is TiO2, p > t_high is WO3."""
    if not t_low < t_high:
        raise ValueError(f"t_low={t_low} must be below t_high={t_high}")
    p = np.asarray(fraction, float)
    return int(np.sum((p > t_low) & (p <= t_high))), int(np.sum(p > t_high))


def threshold_mixing_ratio(fraction: np.ndarray, t_low: float, t_high: float, pixel_size_nm: float,
                           mean_area_nm2: float | None = None) -> float:
    """ρ̂ from pixel areas: n = area / mean projected particle area for each material."""
    a_tio2, a_wo3 = threshold_areas(fraction, t_low, t_high)
    area = mean_area_nm2 or mean_projected_area_nm2()
    n_tio2 = a_tio2 * pixel_size_nm ** 2 / area
    n_wo3 = a_wo3 * pixel_size_nm ** 2 / area
    return float(n_wo3 / (n_wo3 + n_tio2)) if n_wo3 + n_tio2 > 0 else float("nan")


def fit_thresholds(fractions, rho_true, pixel_size_nm: float, candidates=None) -> dict:
    """Brute-force (t_low, t_high) minimising the per-aggregate MAE of ρ̂ on training images.

    Parameters
    ----------
    fractions : sequence of (H, W) arrays
        HAADF signal of each image as a fraction of the incident electrons.
    rho_true : sequence of float
        ρ(A) of each image's aggregate.
    candidates : sequence of float, optional
        Threshold values to try (default: 40 log-spaced values from 10⁻⁴ to 0.3).
    """
    cand = np.geomspace(1e-4, 0.3, 40) if candidates is None else np.sort(np.asarray(candidates, float))
    rho_true = np.asarray(rho_true, float)
    # Per image and candidate: pixels above each threshold (cumulative areas), computed once.
    above = np.array([[np.sum(np.asarray(f) > t) for t in cand] for f in fractions], dtype=float)
    best = {"mae": np.inf}
    for i in range(cand.size):
        for j in range(i + 1, cand.size):
            wo3 = above[:, j]
            tio2 = above[:, i] - above[:, j]
            total = wo3 + tio2
            rho = np.divide(wo3, total, out=np.full_like(total, np.nan), where=total > 0)
            err = np.nanmean(np.abs(rho - rho_true)) if np.isfinite(rho).any() else np.inf
            if err < best["mae"]:
                best = {"mae": float(err), "t_low": float(cand[i]), "t_high": float(cand[j])}
    return best


def image_fractions(store, indices) -> list:
    """Images of a dataset store as HAADF fractions (counts / electrons per pixel)."""
    return list(store.read_images(indices, dtype=np.float64) / store.stem_settings.electrons_per_pixel)


def box_counting_per_image(store, indices, threshold: float = 0.001) -> np.ndarray:
    """Box-counting dimension of the foreground (HAADF fraction > threshold) of each image."""
    out = []
    for f in image_fractions(store, indices):
        mask = f > threshold
        out.append(box_counting_dimension(mask) if mask.any() else np.nan)
    return np.array(out)


def threshold_rho_on_store(store, fit_indices, indices) -> np.ndarray:
    """The paper's §4 threshold estimate ρ̂(I) of the images ``indices`` of a store, with the two
    thresholds fitted on the images ``fit_indices`` (:func:`fit_thresholds`); NaN where an image
    shows no particle above the lower threshold."""
    rho = store.descriptors["rho"].to_numpy()
    thresholds = fit_thresholds(image_fractions(store, fit_indices), rho[np.asarray(fit_indices)], store.pixel_size_nm)
    return np.array([threshold_mixing_ratio(f, thresholds["t_low"], thresholds["t_high"], store.pixel_size_nm)
                     for f in image_fractions(store, indices)])
