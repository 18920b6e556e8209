"""Is a measured image's intensity scale one the estimator knows? A check against its training images.

The estimators read the absolute HAADF signal (it carries the particles' thickness), so an image
whose intensity scale is off — counts given as the wrong units, a wrong dose, a detector offset
left in, a gain — yields confident nonsense. :func:`check_intensity` compares a sample's images,
as fractions of the incident beam, with samples simulated exactly as the estimator's training
images were (its STEM settings, and its randomised acquisition if it was trained with one; θ
from its prior, :data:`REFERENCE_IMAGES` images per configuration):

* ``background``, the median of an image (its vacuum level: an aggregate covers a fifth of the
  field of view at most), must lie within the training images' range plus a tolerance of 0.2 %
  of the beam (the paper's settings: exactly 0);
* ``signal``, the 99.5th percentile (the thickest particles): the median over the sample's
  images must lie within the range of the same median over simulated samples of as many images
  (up to :data:`REFERENCE_IMAGES`), widened by :data:`SIGNAL_MARGIN`, and below 1 (more than the
  incident beam is impossible);
* ``brightness``, the signal above the vacuum level per nm of particle scale (``(signal −
  background) / scale_nm``, :func:`agglib.fit.image_checks.particle_scale_nm`: the thickest
  pixels' intensity per particle size) [fraction of the beam / nm]: the median over the sample's
  images must not lie below the :data:`BRIGHTNESS_PERCENTILE` th percentile of the same median
  over simulated samples. Dimmer than that per nm of particle, a sample was recorded with less
  signal than any training acquisition gives — a gain, dose or detector setting off by a factor
  — even where its overall ``signal`` looks like that of a sample richer in the lighter TiO2
  (measured: of samples recorded at 0.2 × the beam's intensity with an offset, the ``signal``
  rule let 58 % through, whose θ_ρ the posterior then missed; with this rule 3 %). It refuses
  about 1 % of samples recorded as the training images.

A sample outside is refused with the numbers and what to do; one in the outer 2.5 % on either side
of the simulated samples' ``signal`` gets a warning. What the check cannot see: an intensity scale
error small enough to stay within the training acquisitions' brightness that makes one material
look like the other — notebook 10's robustness table and notebook 6's calibration under fixed
acquisitions measure how often that slips through.
"""

from __future__ import annotations

from functools import lru_cache
import json
from pathlib import Path
import warnings

import numpy as np

from agglib.core.locations import shipped_data_path
from agglib.core.wording import counted
from agglib.stem.acquisition import intensity_statistics

__all__ = ["intensity_reference", "reference_key", "simulate_reference", "reference_file_name", "check_intensity",
           "sample_statistics", "samples_accepted", "simulated_samples_accepted", "BACKGROUND_TOLERANCE",
           "SIGNAL_MARGIN", "BRIGHTNESS_PERCENTILE", "REFERENCE_IMAGES"]

#: Vacuum level accepted beyond the training images' [fraction of the beam].
BACKGROUND_TOLERANCE = 0.002
#: Factor beyond the simulated samples' range of ``signal`` at which a sample is refused.
SIGNAL_MARGIN = 1.25
#: Percentile of simulated samples' brightness per nm of particle below which a sample is refused.
BRIGHTNESS_PERCENTILE = 1.0
#: Images per simulated configuration of the reference (the largest sample size compared as such).
REFERENCE_IMAGES = 8


# References shipped with the package (those of the shipped estimators' settings, written by
# ``python benchmarks/intensity_references.py``): the first ``fit`` with a shipped estimator then
# simulates nothing. (Not in the API page: its value is a path on the machine that built the book.)
SHIPPED_REFERENCES = shipped_data_path("intensity")


def reference_file_name(key: str) -> str:
    """The file name of the reference of ``key`` (in the user cache and among the shipped ones)."""
    import hashlib

    return f"intensity-{hashlib.sha256(key.encode()).hexdigest()[:20]}.npz"


def _load_reference(path: Path) -> dict | None:
    try:
        with np.load(path) as found:
            return {k: found[k] for k in ("background", "signal", "scale_nm")}
    except (OSError, ValueError, KeyError):
        return None                                 # damaged: simulated again


@lru_cache(maxsize=8)
def _reference(key: str) -> dict:
    """The simulated reference for ``key``: cached in memory and in the user data folder, or
    shipped with the package."""
    from agglib.core.files import atomic_open
    from agglib.core.locations import user_data_dir

    path = user_data_dir() / "cache" / reference_file_name(key)
    for candidate in (SHIPPED_REFERENCES / reference_file_name(key), path):     # shipped ones first: never stale
        if candidate.is_file() and (found := _load_reference(candidate)) is not None:
            return found
    stats = simulate_reference(key)
    with atomic_open(path) as fh:
        np.savez(fh, **stats)
    return stats


def simulate_reference(key: str) -> dict:
    """Simulate the reference of ``key`` (:func:`reference_key`), without any cache."""
    import agglib
    from agglib.stem import ExtrapolationWarning, StemSettings
    from agglib.stem.acquisition import AcquisitionRanges, acquire_image, draw_acquisition

    spec = json.loads(key)
    settings = StemSettings(**spec["stem_settings"])
    ranges = AcquisitionRanges.from_dict(spec["acquisition"]) if spec["acquisition"] else None
    rng = np.random.default_rng(spec["seed"])
    prior = spec["prior"]
    configs = [agglib.ModelParams(rng.uniform(*prior["df"]), rng.uniform(*prior["rho"]),
                                  int(rng.choice(prior["theta0"])), int(rng.choice(prior["theta1"])))
               for _ in range(spec["count"])]
    params = [p for p in configs for _ in range(REFERENCE_IMAGES)]
    from agglib.model.particles import ParticleModel

    aggs = agglib.generate_aggregates(params, seed=rng.integers(2**63), workers=1, show_progress_bars=False,
                                      particles=ParticleModel.from_dict(spec.get("particles")))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExtrapolationWarning)      # rare > 60 nm chords, as in the datasets
        images = np.stack([acquire_image(a, settings, draw_acquisition(rng, ranges) if ranges else None, seed=rng)
                           for a in aggs])
    stats = sample_statistics(images / settings.electrons_per_pixel, settings.pixel_size_nm)
    return {k: v.reshape(spec["count"], REFERENCE_IMAGES) for k, v in stats.items()}


def sample_statistics(fractions: np.ndarray, pixel_size_nm: float) -> dict:
    """Per image (M,): ``background`` and ``signal`` [fraction of the beam]
    (:func:`agglib.stem.acquisition.intensity_statistics`) and ``scale_nm``
    (:func:`agglib.fit.image_checks.particle_scale_nm`) [nm] of images as the estimator sees them
    (fractions of the beam, (M, H, W), at its pixel size [nm])."""
    from agglib.fit.image_checks import particle_scale_nm

    fractions = np.asarray(fractions, dtype=np.float64).reshape(-1, *np.shape(fractions)[-2:])
    return {**intensity_statistics(fractions),
            "scale_nm": np.array([particle_scale_nm(im, pixel_size_nm) for im in fractions])}


def _brightness(stats: dict) -> np.ndarray:
    """Signal above the vacuum level per nm of particle scale [fraction of the beam / nm] (NaN
    without a projection)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return (np.asarray(stats["signal"]) - np.asarray(stats["background"])) / np.asarray(stats["scale_nm"])


def intensity_reference(estimator, count: int = 256, seed: int = 0) -> dict:
    """``background`` and ``signal`` [fraction of the beam] and ``scale_nm`` (the particle scale of
    :func:`agglib.fit.image_checks.particle_scale_nm`) [nm], (count, :data:`REFERENCE_IMAGES`), of
    ``count`` configurations simulated as the estimator's training images (θ from its prior, its
    particles), cached per estimator settings (shipped for the shipped estimators)."""
    return _reference(reference_key(estimator, count, seed))


def reference_key(estimator, count: int = 256, seed: int = 0) -> str:
    """What a reference is a function of (JSON): the estimator's STEM settings, acquisition
    ranges, prior and particles, ``count`` and ``seed`` — not its weights."""
    from agglib.posterior import ThetaGrid

    grid = getattr(estimator, "grid", None)
    if isinstance(grid, ThetaGrid):
        prior = grid.support()
    else:
        fields = estimator.training_metadata.get("profile_fields", {})
        prior = {"df": [min(fields.get("df_values", [1.5])), max(fields.get("df_values", [2.5]))], "rho": [0.0, 1.0],
                 "theta0": [int(v) for v in fields.get("theta0_values", range(1, 7))],
                 "theta1": [int(v) for v in fields.get("theta1_values", range(1, 7))]}
    spec = {"stem_settings": estimator.training_metadata["stem_settings"],
            "acquisition": estimator.training_metadata.get("acquisition_ranges"),
            "prior": prior, "count": int(count), "seed": int(seed)}
    particles = getattr(estimator, "particles", None)
    if particles is not None and not particles.is_paper:       # the paper's keep their cache key
        spec["particles"] = particles.to_dict()
    return json.dumps(spec, sort_keys=True)


def samples_accepted(stats: dict, groups, reference: dict) -> np.ndarray:
    """For simulated samples: which of ``groups`` (index arrays into the images of ``stats``, one
    per sample) :func:`check_intensity` accepts against ``reference`` (bool, one per group)."""
    return np.array([not check_intensity({k: v[g] for k, v in stats.items()}, reference)[0] for g in groups], dtype=bool)


def simulated_samples_accepted(estimator, fresh: dict) -> tuple[np.ndarray, list]:
    """Which simulated samples ``fit``'s intensity check accepts.

    Parameters
    ----------
    estimator : agglib.estimate.SampleEstimator or agglib.estimate.ParameterEstimator
        Its STEM settings (dose, pixel size [nm]) and intensity reference
        (:func:`intensity_reference`).
    fresh : dict
        Samples simulated as ``estimator``'s training images
        (:func:`agglib.evaluate.sets.fresh_configurations`): ``images`` [counts] at the
        estimator's dose, ``config_id`` numbering the samples 0 … n − 1.

    Returns
    -------
    accepted : ndarray of bool (n,)
        Per sample: the check accepts its images.
    groups : list of ndarray
        Per sample: the indices of its images.
    """
    config_id = np.asarray(fresh["config_id"])
    n = int(config_id.max()) + 1 if config_id.size else 0
    if not np.array_equal(np.unique(config_id), np.arange(n)):
        raise ValueError("fresh['config_id'] must number the samples 0 … n − 1 (as fresh_configurations does)")
    groups = [np.flatnonzero(config_id == c) for c in range(n)]
    stats = sample_statistics(fresh["images"] / estimator.stem_settings.electrons_per_pixel, estimator.pixel_size_nm)
    return samples_accepted(stats, groups, intensity_reference(estimator)), groups


def check_intensity(stats: dict, reference: dict, dose_e_per_A2: float | None = None,
                    names=None) -> tuple[list, list]:
    """Compare a sample's images (their :func:`sample_statistics`) with ``reference``
    (:func:`intensity_reference`).

    ``dose_e_per_A2``: the dose [e/Å²] the images were read at, for images given as counts (the
    messages then name the dose the intensities imply); ``names``: the images' names (files), for
    a refusal of single images. Returns ``(refusals, warnings)``: messages with the numbers and
    what to do. A refusal means the estimate would be meaningless.

    Beyond the sample's medians, every image must be below the incident beam: one image saved in
    other units among good ones leaves the medians as they are.
    """
    m = min(len(stats["signal"]), REFERENCE_IMAGES)
    samples_of = f"{m} images" + (" (the most the reference holds)" if len(stats["signal"]) > m else "")
    background, signal = float(np.median(stats["background"])), float(np.median(stats["signal"]))
    b_lo, b_hi = float(reference["background"].min()), float(reference["background"].max())
    simulated = np.median(reference["signal"][:, :m], axis=1)          # samples of as many images
    s_min, s_max = float(simulated.min()), float(simulated.max())
    s_lo, s_hi = (float(np.percentile(simulated, q)) for q in (2.5, 97.5))
    refusals, warnings = [], []
    fix = ("give detector-normalised images with --units fraction (vacuum 0, incident beam 1), or counts "
           "with --units counts and their --dose [e/Å²]" if dose_e_per_A2 is not None else
           "images read as fractions of the beam (--units fraction) must be detector-normalised: vacuum 0, "
           "incident beam 1 — normalise them (subtract the vacuum level, divide by the beam's), or give raw "
           "counts with --units counts and their --dose [e/Å²]")
    typical = float(np.median(simulated))
    implied = ("" if dose_e_per_A2 is None else
               f" For a sample as bright as the median training sample these counts would mean a dose of the "
               f"order of {dose_e_per_A2 * signal / typical:.2g} e/Å², not {dose_e_per_A2:g}.")
    if signal >= 1.0:
        what = (f"read at {dose_e_per_A2:g} e/Å², the dose or the counts' units are off"
                if dose_e_per_A2 is not None else "these are not fractions of the beam")
        refusals.append(f"the brightest particle pixels are {signal:.3g} × the incident beam (median over the "
                        f"images of the 99.5th percentile), more than a HAADF detector can see: {what}."
                        f"{implied} Fix: {fix}")
    elif signal > SIGNAL_MARGIN * s_max or signal < s_min / SIGNAL_MARGIN:
        refusals.append(f"the particles' signal is {signal:.3g} of the beam (median over the images of the 99.5th "
                        f"percentile); simulated samples of {samples_of} as the estimator was trained on span "
                        f"{s_min:.3g}–{s_max:.3g} (accepted: {s_min / SIGNAL_MARGIN:.3g}–{s_max * SIGNAL_MARGIN:.3g}): "
                        f"the intensity scale is off — a wrong dose, gain or units?{implied} Fix: {fix}")
    elif not s_lo <= signal <= s_hi:
        warnings.append(f"the particles' signal {signal:.3g} of the beam is in the outer 2.5 % of simulated samples "
                        f"({s_lo:.3g}–{s_hi:.3g} hold 95 %); check the dose and units")
    if not b_lo - BACKGROUND_TOLERANCE <= background <= b_hi + BACKGROUND_TOLERANCE:
        trained = (f"{b_lo:.3g}–{b_hi:.3g}" if b_hi > b_lo else f"exactly {b_lo:.3g} (the simulator's vacuum)")
        refusals.append(f"the vacuum level (median pixel) is {background:.3g} of the beam; the estimator's training "
                        f"images have {trained} (accepted: ± {BACKGROUND_TOLERANCE:g} beyond): subtract "
                        f"the detector's dark level / vacuum intensity first; {fix}")
    bright = _brightness(stats)
    if np.isfinite(bright).any() and not refusals:
        value = float(np.nanmedian(bright))
        simulated_b = np.nanmedian(_brightness(reference)[:, :m], axis=1)
        floor = float(np.nanpercentile(simulated_b, BRIGHTNESS_PERCENTILE))
        if value < floor:
            refusals.append(f"the particles are dim for their size: {value:.3g} of the beam per nm of particle scale "
                            f"(median over the images of (99.5th percentile − median) / particle scale), below "
                            f"{floor:.3g}, which {100 - BRIGHTNESS_PERCENTILE:g} % of simulated samples of {samples_of} as "
                            f"the estimator was trained on exceed: the intensity scale is low — a wrong gain, dose or "
                            f"units? {fix}")
    brighter = np.flatnonzero(np.asarray(stats["signal"]) >= 1.0)
    if brighter.size and not refusals:
        named = [str(names[i]) if names is not None else f"image {i + 1}" for i in brighter[:5]]
        refusals.append(f"{', '.join(named)}{' …' if brighter.size > 5 else ''}: the brightest pixels of "
                        f"{counted(brighter.size, 'image')} are {float(stats['signal'][brighter[0]]):.3g} × the incident "
                        "beam, more than a HAADF detector can see: that image was saved in other units or at another "
                        "dose than the others; fix it, or leave it out (--skip-bad does not: remove the file)")
    return refusals, warnings
