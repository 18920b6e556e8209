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
  incident beam is impossible).

A sample outside is refused with the numbers and what to do; one in the outer 2.5 % on either side
of the simulated samples gets a warning. What the check cannot see: an intensity scale error
that makes one material look like the other (a dim WO3-rich sample at a wrong dose looks like a
TiO2-rich one) — notebook 10's robustness table measures how often that slips through.
"""

from __future__ import annotations

from functools import lru_cache
import json
import warnings

import numpy as np

from agglib.stem.acquisition import intensity_statistics

__all__ = ["intensity_reference", "check_intensity", "BACKGROUND_TOLERANCE", "SIGNAL_MARGIN", "REFERENCE_IMAGES"]

#: Vacuum level accepted beyond the training images' [fraction of the beam].
BACKGROUND_TOLERANCE = 0.002
#: Factor beyond the simulated samples' range of ``signal`` at which a sample is refused.
SIGNAL_MARGIN = 1.25
#: Images per simulated configuration of the reference (the largest sample size compared as such).
REFERENCE_IMAGES = 8


@lru_cache(maxsize=8)
def _reference(key: str) -> dict:
    """The simulated reference for ``key``, cached in memory and in the user data folder."""
    import hashlib

    from agglib.core.files import atomic_open
    from agglib.core.locations import user_data_dir

    path = user_data_dir() / "cache" / f"intensity-{hashlib.sha256(key.encode()).hexdigest()[:20]}.npz"
    if path.is_file():
        try:
            with np.load(path) as cached:
                return {k: cached[k] for k in ("background", "signal", "scale_nm")}
        except (OSError, ValueError, KeyError):
            pass                                    # damaged cache: simulate again
    stats = _simulate_reference(key)
    with atomic_open(path) as fh:
        np.savez(fh, **stats)
    return stats


def _simulate_reference(key: str) -> dict:
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
    from agglib.fit.image_checks import particle_scale_nm

    fractions = images / settings.electrons_per_pixel
    stats = {**intensity_statistics(fractions),
             "scale_nm": np.array([particle_scale_nm(im, settings.pixel_size_nm) for im in fractions])}
    return {k: v.reshape(spec["count"], REFERENCE_IMAGES) for k, v in stats.items()}


def intensity_reference(estimator, count: int = 256, seed: int = 0) -> dict:
    """``background`` and ``signal`` [fraction of the beam] and ``scale_nm`` (the particle scale of
    :func:`agglib.fit.image_checks.particle_scale_nm`) [nm], (count, :data:`REFERENCE_IMAGES`), of
    ``count`` configurations simulated as the estimator's training images (θ from its prior, its
    particles), cached per estimator settings."""
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
    key = json.dumps(spec, sort_keys=True)
    return _reference(key)


def check_intensity(fractions: np.ndarray, reference: dict) -> tuple[list, list]:
    """Compare a sample's images (fractions of the beam, (M, H, W)) with ``reference``.

    Returns ``(refusals, warnings)``: messages with the numbers and what to do. A refusal means
    the estimate would be meaningless.
    """
    stats = intensity_statistics(fractions)
    m = min(len(stats["signal"]), REFERENCE_IMAGES)
    background, signal = float(np.median(stats["background"])), float(np.median(stats["signal"]))
    b_lo, b_hi = float(reference["background"].min()), float(reference["background"].max())
    simulated = np.median(reference["signal"][:, :m], axis=1)          # samples of as many images
    s_min, s_max = float(simulated.min()), float(simulated.max())
    s_lo, s_hi = (float(np.percentile(simulated, q)) for q in (2.5, 97.5))
    refusals, warnings = [], []
    fix = ("give detector-normalised images with --units fraction (vacuum 0, incident beam 1), or counts "
           "with --units counts and their --dose [e/Å²]")
    if signal >= 1.0:
        refusals.append(f"the brightest particle pixels are {signal:.3g} × the incident beam (median over the "
                        f"images of the 99.5th percentile), but a HAADF detector sees less than the beam: these are "
                        f"not fractions of the beam; {fix}")
    elif signal > SIGNAL_MARGIN * s_max or signal < s_min / SIGNAL_MARGIN:
        refusals.append(f"the particles' signal is {signal:.3g} of the beam (median over the images of the 99.5th "
                        f"percentile); simulated samples of {m} images as the estimator was trained on span "
                        f"{s_min:.3g}–{s_max:.3g}: the intensity scale is off — a wrong dose, gain or units? {fix}")
    elif not s_lo <= signal <= s_hi:
        warnings.append(f"the particles' signal {signal:.3g} of the beam is in the outer 2.5 % of simulated samples "
                        f"({s_lo:.3g}–{s_hi:.3g} hold 95 %); check the dose and units")
    if not b_lo - BACKGROUND_TOLERANCE <= background <= b_hi + BACKGROUND_TOLERANCE:
        refusals.append(f"the vacuum level (median pixel) is {background:.3g} of the beam; the estimator's training "
                        f"images have {b_lo:.3g}–{b_hi:.3g} (accepted: ± {BACKGROUND_TOLERANCE:g} beyond): subtract "
                        f"the detector's dark level / vacuum intensity first; {fix}")
    return refusals, warnings
