"""How the intensities of a measured HAADF-STEM image come about, and their units.

Two conventions for the intensity of a measured image (:data:`INTENSITY_UNITS`):

``"counts"``
    detector counts [electrons] at a known dose: a pixel holds Poisson(p · D · a) electrons for a
    fraction p of the incident beam on the detector, dose D [e/Å²] and pixel area a [Å²] — what
    the renderer writes;
``"fraction"``
    detector-normalised intensity, the fraction of the incident beam on the annular detector
    (vacuum 0, the unscattered beam 1): the convention of quantitative HAADF (LeBeau & Stemmer,
    Ultramicroscopy 108 (2008) 1653), which removes the detector's gain and offset.

The estimators read images as counts at their training dose; :func:`beam_fraction` and the
pixel area bring any image there. The renderer's table can be off against a real microscope
(detector sensitivity, the WO3/TiO2 contrast ratio — notebook 2 compares it with published
measurements), and a measured image has its own dose, vacuum level, blur and pixel size.
:func:`acquire_image` draws these from :class:`AcquisitionRanges`, so estimators trained on such
images are robust to them (notebook 10 measures how much).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
import math

import numpy as np

from agglib.core.seeding import as_generator

__all__ = ["INTENSITY_UNITS", "beam_fraction", "area_rebin", "resample_mean", "AcquisitionRanges",
           "ACQUISITION_KEYS", "ACQUISITION_UNITS", "LOG_UNIFORM_KEYS", "draw_acquisition", "simulator_acquisition",
           "acquire_image", "intensity_statistics", "ACQUISITION_STATISTICS", "STATISTICS_VERSION",
           "acquisition_statistics"]

INTENSITY_UNITS = ("counts", "fraction")


def beam_fraction(data: np.ndarray, units: str, pixel_size_nm: float, dose_e_per_A2: float | None) -> np.ndarray:
    """``data`` as the fraction of the incident beam (see the module docstring for ``units``).

    Parameters
    ----------
    data : ndarray
        Image in ``units``.
    units : {"counts", "fraction"}
    pixel_size_nm : float
        Pixel size [nm] (for counts: the pixel area).
    dose_e_per_A2 : float or None
        Electron dose [e/Å²]; needed for counts.
    """
    if units == "fraction":
        return np.asarray(data, dtype=np.float64)
    if units == "counts":
        if dose_e_per_A2 is None:
            raise ValueError("images in counts need their dose [e/Å²]")
        return np.asarray(data, dtype=np.float64) / (float(dose_e_per_A2) * (float(pixel_size_nm) * 10.0) ** 2)
    raise ValueError(f"units={units!r}; accepted: {', '.join(INTENSITY_UNITS)}")


def _overlap_matrix(n_in: int, zoom: float) -> np.ndarray:
    """(n_out, n_in) weights: the share of each output pixel covered by each input pixel."""
    n_out = int(np.floor(n_in * zoom + 1e-9))
    edges_out = np.arange(n_out + 1) / zoom                 # output pixel edges in input pixels
    lo = np.maximum(edges_out[:-1, None], np.arange(n_in)[None, :])
    hi = np.minimum(edges_out[1:, None], np.arange(1, n_in + 1)[None, :])
    return np.clip(hi - lo, 0.0, None) * zoom


def area_rebin(data: np.ndarray, zoom: float) -> np.ndarray:
    """Shrink an image by ``zoom`` < 1 with each new pixel the mean over its area.

    This is how the renderer forms a pixel (the mean of sub-samples over its area). A
    non-integer ratio mixes neighbouring pixels (a slight blur); estimators trained with
    :class:`AcquisitionRanges` see the same resampling in training.
    """
    wy, wx = _overlap_matrix(data.shape[0], zoom), _overlap_matrix(data.shape[1], zoom)
    return wy @ np.asarray(data, dtype=np.float64) @ wx.T


def resample_mean(data: np.ndarray, zoom: float) -> np.ndarray:
    """Resample by ``zoom`` (new pixel size = old / zoom) keeping intensities per pixel as means:
    area means when shrinking, bilinear when enlarging."""
    from scipy import ndimage

    if zoom < 1.0:
        return area_rebin(data, zoom)
    if zoom > 1.0:
        return ndimage.zoom(np.asarray(data, dtype=np.float64), zoom, order=1)
    return np.array(data, dtype=np.float64)


@dataclass(frozen=True)
class AcquisitionRanges:
    """Ranges of a randomised acquisition (values drawn per image in grid datasets, per sample —
    shared by its images — in continuous ones).

    Attributes
    ----------
    intensity_scale : (float, float)
        Log-uniform factor on the HAADF signal of both materials (detector sensitivity, the
        table's absolute level: published measurements read 0.55–0.75 × the table, notebook 2).
    wo3_contrast : (float, float)
        Uniform extra factor on WO3's signal (the WO3/TiO2 contrast ratio: measured ~3.9
        against the table's ~5.2 at 12 nm, a factor 0.75).
    dose_e_per_A2 : (float, float)
        Log-uniform electron dose [e/Å²] (the shot noise of the image).
    offset_fraction : (float, float)
        Uniform vacuum level left after normalisation [fraction of the beam].
    extra_blur_nm : (float, float)
        Uniform σ of an extra Gaussian blur [nm] (probe tails, source size, drift).
    pixel_zoom : (float, float)
        Uniform factor z: the image is recorded at pixel size / z and area-rebinned to the pixel
        size, as :func:`agglib.fit.characterise` resamples measured images.
    at_pixel_size : float
        Share of images recorded at the pixel size itself (z = 1, no resampling: images taken
        at the estimator's pixel size are common, and z drawn from a range is never exactly 1).
    """

    intensity_scale: tuple = (0.45, 1.6)
    wo3_contrast: tuple = (0.65, 1.1)
    dose_e_per_A2: tuple = (40.0, 600.0)
    offset_fraction: tuple = (-0.002, 0.004)
    extra_blur_nm: tuple = (0.0, 1.5)
    pixel_zoom: tuple = (1.0, 1.6)
    at_pixel_size: float = 0.25

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "AcquisitionRanges":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


#: The values of one acquisition, in this order in a store's ``acquisition`` array.
ACQUISITION_KEYS = ("intensity_scale", "wo3_contrast", "dose_e_per_A2", "offset_fraction", "extra_blur_nm",
                    "pixel_zoom")
#: Units of the acquisition settings ("": a factor).
ACQUISITION_UNITS = {"intensity_scale": "", "wo3_contrast": "", "dose_e_per_A2": "e/Å²",
                     "offset_fraction": "of the beam", "extra_blur_nm": "nm", "pixel_zoom": ""}
#: The settings of :class:`AcquisitionRanges` drawn log-uniformly (the others uniformly).
LOG_UNIFORM_KEYS = ("intensity_scale", "dose_e_per_A2")


def draw_acquisition(rng, ranges: AcquisitionRanges | None = None) -> dict:
    """One acquisition drawn from ``ranges`` (default :class:`AcquisitionRanges`)."""
    rng = as_generator(rng)
    ranges = ranges or AcquisitionRanges()
    out = {}
    for key in ACQUISITION_KEYS:
        lo, hi = getattr(ranges, key)
        out[key] = float(math.exp(rng.uniform(math.log(lo), math.log(hi)))) if key in LOG_UNIFORM_KEYS \
            else float(rng.uniform(lo, hi))
    if rng.random() < ranges.at_pixel_size:
        out["pixel_zoom"] = 1.0
    return out


def simulator_acquisition(settings) -> dict:
    """The acquisition the simulator records with.

    Parameters
    ----------
    settings : agglib.stem.StemSettings
        Its dose [e/Å²].

    Returns
    -------
    dict
        One value per :data:`ACQUISITION_KEYS`: the table's signals (intensity scale and WO3/TiO2
        contrast 1), the dose of ``settings`` [e/Å²], no vacuum offset [fraction of the beam], no
        extra blur [nm], images at the pixel size of ``settings`` (zoom 1). :func:`acquire_image`
        fills the settings an acquisition leaves out with these.
    """
    return dict(zip(ACQUISITION_KEYS, (1.0, 1.0, float(settings.dose_e_per_A2), 0.0, 0.0, 1.0)))


def acquire_image(aggregate, settings, acquisition: dict | None = None, seed=None) -> np.ndarray:
    """A HAADF-STEM image of ``aggregate`` as a microscope with ``acquisition`` records it,
    in counts at the dose of ``settings`` (as the estimators read images) [counts].

    The noise-free per-material signals are scaled (``intensity_scale``, WO3 × ``wo3_contrast``),
    blurred (``extra_blur_nm``), recorded at pixel size / ``pixel_zoom`` with scan and shot noise
    at ``dose_e_per_A2``, offset by ``offset_fraction`` and area-rebinned to the pixel size of
    ``settings``. ``acquisition=None`` is :func:`render_stem` with ``settings``.
    """
    from scipy import ndimage

    from agglib.stem.kernels import noisy_counts
    from agglib.stem.render import render_stem

    rng = as_generator(seed)
    if acquisition is None:
        return render_stem(aggregate, seed=rng, settings=settings)
    a = {**simulator_acquisition(settings), **acquisition}
    zoom = float(a["pixel_zoom"])
    fine_px = settings.pixel_size_nm / zoom
    n_fine = settings.image_size_px if zoom == 1.0 else int(math.ceil(settings.image_size_px * zoom)) + 1
    fine = settings.replace(image_size_px=n_fine, pixel_size_nm=fine_px, dose_e_per_A2=float(a["dose_e_per_A2"]),
                            noise=False)
    res = render_stem(aggregate, seed=rng, settings=fine, return_maps=True)
    electrons = fine.electrons_per_pixel
    signal = a["intensity_scale"] * (a["wo3_contrast"] * res.material_maps["WO3"] + res.material_maps["TiO2"])
    signal = signal.astype(np.float64) / electrons
    if a["extra_blur_nm"] > 0:
        signal = ndimage.gaussian_filter(signal, a["extra_blur_nm"] / fine_px)
    counts = np.zeros((n_fine, n_fine), dtype=np.float32)
    if settings.noise:
        shifts = rng.normal(0.0, settings.scan_noise_nm / fine_px, n_fine) if settings.scan_noise_nm > 0 \
            else np.zeros(n_fine)
        noisy_counts(np.ascontiguousarray(signal), electrons, shifts, int(rng.integers(0, 2**31 - 1)), counts)
    else:
        counts[...] = signal * electrons
    fraction = resample_mean(counts / electrons + a["offset_fraction"], 1.0 / zoom)
    size = settings.image_size_px
    y0, x0 = (fraction.shape[0] - size) // 2, (fraction.shape[1] - size) // 2
    return (fraction[y0:y0 + size, x0:x0 + size] * settings.electrons_per_pixel).astype(np.float32)


def intensity_statistics(fraction_images) -> dict:
    """Per image: ``background``, the median (the vacuum level: aggregates cover a fifth of an
    image at most), and ``signal``, the 99.5th percentile (the thickest particles) [fraction of
    the beam]."""
    x = np.asarray(fraction_images, dtype=np.float64).reshape(-1, *np.shape(fraction_images)[-2:])
    return {"background": np.median(x, axis=(1, 2)), "signal": np.percentile(x, 99.5, axis=(1, 2))}


#: Version of :func:`acquisition_statistics` (caches of its values are recomputed when it changes).
STATISTICS_VERSION = 2
#: The columns of :func:`acquisition_statistics`.
ACQUISITION_STATISTICS = ("log q90", "log q95", "log q98", "log q99", "log q99.5", "log q99.9", "log noise",
                          "log edge", "background ‰")
_QUANTILES = (0.90, 0.95, 0.98, 0.99, 0.995, 0.999)
_FLOOR = 1e-5                # [fraction of the beam]: quantiles below it are read as vacuum


def acquisition_statistics(fraction_images) -> np.ndarray:
    """What an image says about how it was recorded: nine numbers per image (n, 9), the columns
    of :data:`ACQUISITION_STATISTICS`, from images as fractions of the beam (n, H, W).

    * ``log q90`` … ``log q99.9``: log of the 90th … 99.9th percentiles of the signal above the
      vacuum level b (the median: aggregates cover a fifth of an image at most), floored at 10⁻⁵
      — the intensity scale and the WO3/TiO2 contrast, with the thickness and ρ of the aggregate;
    * ``log noise``: log of the median absolute second difference along the scan line of the pixels
      above a quarter of the 99.5th percentile, ÷ √(their median signal) — shot noise against
      signal: the dose;
    * ``log edge``: log of the median absolute first difference across scan lines of the same pixels ÷
      their median signal — the sharpness: blur and resampling;
    * ``background ‰``: b in thousandths of the beam — the vacuum offset.

    The set posterior pools them over a sample's images with the encoder's outputs
    (:meth:`agglib.estimate.SampleEstimator.summaries`), so it can read the acquisition a
    sample's images share from the images themselves.
    """
    p = np.asarray(fraction_images, dtype=np.float64).reshape(-1, *np.shape(fraction_images)[-2:])
    n = p.shape[0]
    flat = p.reshape(n, -1)
    background = np.median(flat, axis=1)
    above = p - background[:, None, None]
    q = np.quantile(above.reshape(n, -1), _QUANTILES, axis=1).T                       # (n, 6)
    bright = above > 0.25 * q[:, 4][:, None, None]
    noise, edge = np.full(n, 1e-7 / np.sqrt(_FLOOR)), np.full(n, 1e-7 / _FLOOR)
    for k in range(n):
        r, c = np.nonzero(bright[k, :, 1:-1])    # bright pixels off the first and last columns (c + 1)
        if r.size < 5:                           # (nearly) empty image: no particles to read
            continue
        level = max(float(np.median(above[k][bright[k]])), _FLOOR)
        x = p[k]
        line = np.abs(x[r, c + 1] - 0.5 * (x[r, c] + x[r, c + 2]))                 # along the scan line
        noise[k] = max(float(np.median(line)), 1e-7) / np.sqrt(level)
        off_last = r < x.shape[0] - 1              # bright pixels off the last row: a difference to the next
        if off_last.any():
            across = np.abs(x[r[off_last] + 1, c[off_last] + 1] - x[r[off_last], c[off_last] + 1])
            edge[k] = max(float(np.median(across)), 1e-7) / level
    return np.concatenate([np.log(np.maximum(q, _FLOOR)), np.log(noise)[:, None], np.log(edge)[:, None],
                           1000.0 * background[:, None]], axis=1).astype(np.float32)
