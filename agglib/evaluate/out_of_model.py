"""Samples for testing the out-of-model warning (:mod:`agglib.misspecification`).

A *sample* is a set of M images of one specimen: every image shows another aggregate of the same
θ, recorded with the same acquisition. Two generators, both rendered with the STEM settings an
estimator reads (``estimator.stem_settings``; images in detector counts at that dose):

* in-model samples are :func:`agglib.evaluate.fresh_configurations` (``acquisition=`` one
  acquisition per sample, as the default estimator's training images): the warning must stay
  silent on these;
* :func:`out_of_model_samples` — what the model does not make (:data:`OUT_OF_MODEL_KINDS`):

  ``"half_radius"``
      aggregates of the model with particles of half the model's radius (log-normal, mean 6 nm,
      SD 1.5 nm, :data:`HALF_RADII`), imaged with :func:`agglib.stem.render_stem`;
  ``"edx_w"``, ``"edx_ti"``
      EDX-like element maps of model aggregates (W, i.e. WO3 only, or Ti, i.e. TiO2 only): X-ray
      counts per pixel proportional to the projected thickness of that material, blurred, with
      low Poisson counts and a weak background, then put on the intensity scale of HAADF images
      (the median over the sample's images of the 99.5th percentile set to a HAADF signal level
      drawn from :attr:`EdxSettings.signal_fraction`, well inside what the intensity check of
      :mod:`agglib.fit.intensity` accepts) — a map mistaken for a HAADF image, which only its
      texture gives away.

Every random number comes from ``seed``; the result does not depend on anything else.
"""

from __future__ import annotations

from dataclasses import dataclass
import math
import warnings

import numpy as np

from agglib.core.validation import check_range
from agglib.model.particles import ParticleModel, RadiusDistribution

__all__ = ["OUT_OF_MODEL_KINDS", "HALF_RADII", "DEFAULT_PRIOR", "EdxSettings", "out_of_model_samples", "edx_map"]

#: Kinds of :func:`out_of_model_samples`.
OUT_OF_MODEL_KINDS = ("half_radius", "edx_w", "edx_ti")

#: The prior of the shipped estimators (``estimator.grid.support()``): θ_Df and θ_ρ uniform on
#: these intervals, θ0 and θ1 uniform on these values.
DEFAULT_PRIOR = {"df": [1.5, 2.5], "rho": [0.0, 1.0], "theta0": [1, 2, 3, 4, 5, 6], "theta1": [1, 2, 3, 4, 5, 6]}


#: Particles of the ``"half_radius"`` samples: radii log-normal, mean 6 nm, SD 1.5 nm for both materials
#: (the model's 12 / 3 nm), N as the model's.
HALF_RADII = ParticleModel.same_radii(RadiusDistribution(mean_nm=6.0, sd_nm=1.5))


@dataclass(frozen=True)
class EdxSettings:
    """How an EDX-like element map is made (:func:`edx_map`).

    Attributes
    ----------
    counts_per_nm : float
        Mean X-ray counts per pixel per nm of projected thickness of the mapped material
        [counts/nm] (0.25: about 6 counts at the centre of a 12 nm-radius particle — the low counts
        of a STEM-EDX map).
    background_counts : float
        Mean background counts per pixel (bremsstrahlung, spurious X-rays) [counts].
    blur_nm : float
        SD of the Gaussian blur of the map (beam spreading, drift, binning) [nm].
    signal_fraction : (float, float)
        Range of the HAADF-like signal level the map is scaled to (log-uniform, one value per
        sample) [fraction of the beam]: the median over the sample's images of the 99.5th percentile.
    """

    counts_per_nm: float = 0.25
    background_counts: float = 0.05
    blur_nm: float = 3.0
    signal_fraction: tuple = (0.04, 0.15)

    def __post_init__(self):
        check_range("counts_per_nm", self.counts_per_nm, low=0.0, high=1e6, low_inclusive=False, unit="counts/nm")
        check_range("background_counts", self.background_counts, low=0.0, high=1e6, unit="counts")
        check_range("blur_nm", self.blur_nm, low=0.0, high=1e3, unit="nm")
        lo, hi = self.signal_fraction
        check_range("signal_fraction[0]", lo, low=0.0, high=1.0, low_inclusive=False)
        check_range("signal_fraction[1]", hi, low=lo, high=1.0)


def _check_common(settings, n_samples, images_per_sample):
    from agglib.stem import StemSettings

    if not isinstance(settings, StemSettings):
        raise TypeError(f"settings must be an agglib.stem.StemSettings (e.g. estimator.stem_settings), "
                        f"got {type(settings).__name__}")
    check_range("n_samples", n_samples, low=1, high=10**6, integer=True)
    check_range("images_per_sample", images_per_sample, low=1, high=10**4, integer=True)


def _draw_theta(rng: np.random.Generator, prior: dict, grid: dict | None = None):
    """θ_Df, θ_ρ uniform on the prior's intervals — or, with ``grid``, one of its values each —
    and θ0, θ1 uniform on the prior's values."""
    from agglib.model.params import ModelParams

    if grid is None:
        df, rho = float(rng.uniform(*prior["df"])), float(rng.uniform(*prior["rho"]))
    else:
        df, rho = float(rng.choice(grid["df"])), float(rng.choice(grid["rho"]))
    return ModelParams(df, rho, int(rng.choice(prior["theta0"])), int(rng.choice(prior["theta1"])))


def _sample_seeds(seed: int, stream: int, n_samples: int) -> list:
    return np.random.SeedSequence([int(seed), int(stream)]).spawn(int(n_samples))


def edx_map(aggregate, element: str, settings, seed=None, edx: EdxSettings | None = None) -> np.ndarray:
    """An EDX-like element map of ``aggregate`` in X-ray counts per pixel (before any rescaling).

    Parameters
    ----------
    aggregate : Aggregate
    element : {"W", "Ti"}
        Mapped element: W (the WO3 particles) or Ti (the TiO2 particles).
    settings : StemSettings
        Image size [px] and pixel size [nm] of the map.
    seed : int or Generator, optional
        Orientation and counting noise.
    edx : EdxSettings, optional

    Returns
    -------
    (H, W) float32 ndarray
        Poisson counts with mean ``counts_per_nm`` × the material's projected thickness [nm],
        blurred by ``blur_nm``, plus ``background_counts`` [counts].
    """
    from scipy import ndimage

    from agglib.stem import render_stem

    materials = {"W": "WO3", "Ti": "TiO2"}
    if element not in materials:
        raise ValueError(f"element={element!r}; accepted: {', '.join(materials)}")
    edx = edx or EdxSettings()
    rng = np.random.default_rng(seed)                  # a Generator is used as it is
    res = render_stem(aggregate, seed=rng, settings=settings.replace(noise=False, blur=False), return_maps=True)
    thickness = res.thickness_maps[materials[element]].astype(np.float64)
    if edx.blur_nm > 0:
        thickness = ndimage.gaussian_filter(thickness, edx.blur_nm / settings.pixel_size_nm)
    mean = edx.counts_per_nm * np.clip(thickness, 0.0, None) + edx.background_counts
    return rng.poisson(mean).astype(np.float32)


def out_of_model_samples(kind: str, settings, n_samples: int, images_per_sample: int, seed: int, *,
                         prior: dict | None = None, edx: EdxSettings | None = None) -> dict:
    """Samples the model does not make (see the module docstring for the kinds).

    Parameters
    ----------
    kind : {"half_radius", "edx_w", "edx_ti"}
    settings : StemSettings
        The STEM settings the estimator reads (``estimator.stem_settings``): image size [px], pixel
        size [nm] and the dose [e/Å²] that sets the counts scale.
    n_samples : int
        Number of samples.
    images_per_sample : int
        Images M per sample.
    seed : int
        Root seed.
    prior : dict, optional
        θ of each sample's aggregates (default :data:`DEFAULT_PRIOR`).
    edx : EdxSettings, optional
        For the EDX kinds.

    Returns
    -------
    dict
        ``images`` (n_samples, M, H, W) float32 [counts at the dose of ``settings``], ``theta``
        (n_samples, 4), ``kind``.
    """
    from agglib.model.generate import generate_aggregate
    from agglib.stem import ExtrapolationWarning, render_stem

    if kind not in OUT_OF_MODEL_KINDS:
        raise ValueError(f"kind={kind!r}; accepted: {', '.join(OUT_OF_MODEL_KINDS)}")
    _check_common(settings, n_samples, images_per_sample)
    prior = prior or DEFAULT_PRIOR
    edx = edx or EdxSettings()
    size = settings.image_size_px
    images = np.empty((n_samples, images_per_sample, size, size), dtype=np.float32)
    thetas = []
    stream = 20 + OUT_OF_MODEL_KINDS.index(kind)
    for k, ss in enumerate(_sample_seeds(seed, stream, n_samples)):
        rng = np.random.default_rng(ss)
        theta = _draw_theta(rng, prior)
        level = math.exp(rng.uniform(math.log(edx.signal_fraction[0]), math.log(edx.signal_fraction[1])))
        for j, image_ss in enumerate(ss.spawn(images_per_sample)):
            agg_ss, img_ss = image_ss.spawn(2)
            img_rng = np.random.default_rng(img_ss)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ExtrapolationWarning)
                if kind == "half_radius":
                    agg = generate_aggregate(theta, seed=agg_ss, particles=HALF_RADII)
                    images[k, j] = render_stem(agg, seed=img_rng, settings=settings)
                else:
                    agg = generate_aggregate(theta, seed=agg_ss)
                    images[k, j] = edx_map(agg, "W" if kind == "edx_w" else "Ti", settings, img_rng, edx)
        if kind != "half_radius":                  # one conversion factor per sample, as a user would apply
            peak = float(np.median(np.percentile(images[k], 99.5, axis=(1, 2))))
            images[k] *= level * settings.electrons_per_pixel / max(peak, 1.0)
        thetas.append([theta.df, theta.rho, theta.theta0, theta.theta1])
    return {"images": images, "theta": np.array(thetas, dtype=np.float64), "kind": kind}
