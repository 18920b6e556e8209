"""Estimate θ from measured images of one sample, with bootstrap intervals, and export shadows.

Steps of :func:`characterise`:

1. each image is put on the fraction of the incident beam (``units="counts"``: ÷ dose × pixel
   area; ``"fraction"``: as it is — see :mod:`agglib.stem.acquisition`), resampled to the
   estimator's pixel size (pixel area means, as the renderer forms pixels) and cropped to the
   estimator's field of view around the aggregate (the intensity-weighted centre of the pixels
   above the image median); an image whose field of view is smaller is refused;
2. the intensity scale is checked against the estimator's training images
   (:mod:`agglib.fit.intensity`): a sample far outside is refused, one at the edge warned about;
   the images go to the estimator as counts at its training dose;
3. the new method (default): the encoder summarises each image, the set-level posterior gives
   p(θ | images) for any number of images — θ̂ and 95 % credible intervals; the paper's method:
   per-image D̂_f, ρ̂ and the multi-image networks, θ̂ by Eqs. 13–15;
4. a bootstrap over the images (resampling them with replacement) gives a second view of the
   uncertainty (the paper method's only one);
5. digital shadows — aggregates drawn from posterior draws of θ (or bootstrap draws of θ̂) —
   give the 3D descriptors with intervals that carry the estimate's uncertainty.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

import agglib
from agglib.core.seeding import as_generator, spawn_seeds
from agglib.core.wording import counted
from agglib.core.validation import check_range
from agglib.fit.image_checks import border_warnings, scale_warnings as particle_scale_warnings
from agglib.fit.intensity import check_intensity, intensity_reference, sample_statistics
from agglib.fit.io import ImageInputError, MeasuredImage, read_image
from agglib.model.particles import ParticleModel
from agglib.stem.acquisition import INTENSITY_UNITS, beam_fraction, resample_mean
from agglib.posterior import PARAMETERS

__all__ = ["prepare_image", "characterise", "FitResult", "MIN_STABLE_IMAGES", "export_shadows",
           "draw_shadows", "shadow_summary", "SHADOW_FILES"]

#: The paper recommends batches of ν ≥ 10 images for stable estimates.
MIN_STABLE_IMAGES = 10
#: Images may be upsampled by at most this factor to reach the estimator's pixel size.
MAX_UPSAMPLING = 2.0


def prepare_image(image: MeasuredImage, pixel_size_nm: float, size_px: int) -> np.ndarray:
    """Resample to ``pixel_size_nm`` (pixel means: :func:`agglib.stem.acquisition.resample_mean`)
    and crop ``size_px`` × ``size_px`` around the aggregate; intensities keep their units per pixel
    (use fractions of the beam: counts per pixel change with the pixel area)."""
    zoom = image.pixel_size_nm / pixel_size_nm
    if zoom > MAX_UPSAMPLING:
        raise ImageInputError(
            f"{image.path}: pixel size {image.pixel_size_nm:g} nm is too coarse for an estimator made for "
            f"{pixel_size_nm:g} nm/px (accepted: up to {MAX_UPSAMPLING * pixel_size_nm:g} nm/px); record finer "
            "pixels, or train an estimator for this pixel size (agglib profiles write my.yaml --images … --radii …; "
            "agglib train-estimator --profile my.yaml)")
    resampled = resample_mean(image.data, zoom)
    if min(resampled.shape) < size_px:
        raise ImageInputError(
            f"{image.path}: field of view {image.field_of_view_nm:.3g} nm is smaller than the estimator's "
            f"{size_px * pixel_size_nm:.0f} nm ({size_px} px at {pixel_size_nm} nm/px); accepted: images "
            f"at least {size_px * pixel_size_nm:.0f} nm wide. {field_of_view_advice(image.field_of_view_nm)}")
    weights = np.clip(resampled - np.median(resampled), 0.0, None)
    if weights.sum() > 0:
        yy, xx = np.indices(resampled.shape)
        cy, cx = (weights * yy).sum() / weights.sum(), (weights * xx).sum() / weights.sum()
    else:
        cy, cx = (np.array(resampled.shape) - 1) / 2
    y0 = int(np.clip(round(cy - size_px / 2), 0, resampled.shape[0] - size_px))
    x0 = int(np.clip(round(cx - size_px / 2), 0, resampled.shape[1] - size_px))
    return resampled[y0:y0 + size_px, x0:x0 + size_px]


def field_of_view_advice(field_of_view_nm: float) -> str:
    """Which shipped estimator (or profile) fits images of ``field_of_view_nm`` [nm]."""
    from agglib.estimate import SHIPPED_MODELS, shipped_fields_of_view, shipped_models_dir

    fitting = [f"{SHIPPED_MODELS[method]} ({fov:.0f} nm; --models {shipped_models_dir(method)})"
               for method, fov in shipped_fields_of_view().items() if fov <= field_of_view_nm * (1 + 1e-6)]
    if fitting:
        return "Shipped estimators for this field of view: " + ", ".join(fitting)
    needs = ", ".join(f"{SHIPPED_MODELS[method]} at least {fov:.0f} nm" for method, fov in shipped_fields_of_view().items())
    return (f"No shipped estimator is made for it ({needs}): write a profile for your images "
            "(agglib profiles write my.yaml --images … --radii …) and train one "
            "(agglib train-estimator --profile my.yaml)")


@dataclass
class FitResult:
    """θ̂ of a sample with intervals.

    Attributes
    ----------
    estimate : dict
        θ̂ (posterior mean of θ_Df and θ_ρ, median of θ0 and θ1; paper method: Eqs. 13–15).
    intervals : dict
        95 % intervals, of the kind ``interval_kind``.
    interval_kind : str
        ``"posterior"`` (central credible intervals of the new method) or ``"image bootstrap"``
        (percentiles of θ̂ over resamples of the images: the paper method has no posterior); see
        :data:`agglib.estimate.INTERVAL_KINDS`.
    bootstrap : DataFrame
        θ̂ of resamples of the images (a second view: how much θ̂ moves with another set of images).
    posterior : PosteriorEstimate or None
        The posterior over θ (new method).
    """

    estimate: dict
    intervals: dict
    n_images: int
    bootstrap: pd.DataFrame
    per_image: pd.DataFrame
    warnings: list = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    posterior: object = None
    out_of_model: dict | None = None
    interval_kind: str = "posterior"

    def table(self) -> pd.DataFrame:
        rows = {}
        for k in PARAMETERS:
            row = {"estimate": self.estimate[k], "2.5 %": self.intervals[k][0], "97.5 %": self.intervals[k][1]}
            if self.posterior is not None:
                row["posterior SD"] = float(self.posterior.sd(k)[0])
            if len(self.bootstrap):
                row["bootstrap 2.5 %"] = float(np.percentile(self.bootstrap[k], 2.5))
                row["bootstrap 97.5 %"] = float(np.percentile(self.bootstrap[k], 97.5))
            rows[k] = row
        return pd.DataFrame(rows).T

    def to_dict(self) -> dict:
        out = {"estimate": self.estimate, "interval_95": {k: list(v) for k, v in self.intervals.items()},
               "interval_kind": self.interval_kind,
               "n_images": self.n_images, "warnings": self.warnings, "settings": self.settings,
               "per_image": self.per_image.to_dict(orient="list")}
        if self.posterior is not None:
            out["posterior"] = self.posterior.to_dict(0)
        if self.out_of_model is not None:
            out["out_of_model"] = self.out_of_model
        return out


def characterise(paths_or_images, estimator=None, pixel_size_nm: float | None = None,
                 dose_e_per_A2: float | None = None, n_bootstrap: int = 200, seed=None,
                 skip_bad: bool = False, units: str = "counts", check_intensity_scale: bool = True,
                 acquisition: dict | None = None, calibration=None) -> FitResult:
    """θ̂ with 95 % intervals from the images of one sample.

    Parameters
    ----------
    paths_or_images : sequence of path-like or MeasuredImage
        One aggregate per image.
    estimator : SampleEstimator or ParameterEstimator, optional
        Default: :func:`agglib.estimate.load_default_estimator`, the new method trained on a
        randomised acquisition (``agglib/data/models/sets-quick-robust``, 435 nm fields of view;
        any number of images; posterior intervals); for images of a smaller field of view, the
        shipped estimator made for it (``sets-bremen2023``, 80 nm), named in
        ``settings["estimator_chosen_by_field_of_view"]``. A :class:`ParameterEstimator` (the
        paper's five networks) needs at least ν images and gives bootstrap intervals.
    pixel_size_nm : float, optional
        Pixel size [nm] for files without one (or to override theirs).
    dose_e_per_A2 : float, optional
        Electron dose of images in counts [e/Å²] (default: the estimator's training dose,
        149 e/Å²); ignored for ``units="fraction"``.
    n_bootstrap : int
        Bootstrap resamples of the images.
    seed : int, optional
    skip_bad : bool
        Leave out an image that cannot be used (unreadable, too small, too coarse) with a warning
        naming it, instead of stopping at the first one.
    units : {"counts", "fraction"}
        Intensity units of the images: detector counts [electrons] at ``dose_e_per_A2``, or the
        detector-normalised fraction of the incident beam (vacuum 0, beam 1).
    check_intensity_scale : bool
        Refuse a sample whose intensity scale is far from the training images' (False: warn only).
    acquisition : dict, optional
        What the user knows of how the sample was recorded: ``intensity_scale`` (the HAADF signal ÷
        the simulator's for the same particles) and ``wo3_contrast`` (the WO3/TiO2 signal ratio ÷
        the simulator's), both — notebook 2 measures 0.72 and 0.69 against published particles.
        For estimators that read them (:attr:`agglib.estimate.SampleEstimator.reads_acquisition`:
        the shipped default); None: unknown, the posterior accounts for any value in its training
        ranges.
    calibration : AcquisitionCalibration or path-like, optional
        The estimator's intervals calibrated for how the sample was recorded
        (:func:`agglib.fit.acquisition_calibration.calibrate_for_acquisition`, ``agglib calibrate``;
        made for this estimator; with ``acquisition`` given, for the same values). None: the
        estimator's own calibration, on average over its training acquisitions. The result's
        ``settings["acquisition_calibration"]`` (``summary.json``) records the file (absolute path
        and SHA-256), the stated acquisition (as values and in the options' terms), the number and
        size of its samples, its seed and which law was used.
    """
    from agglib.estimate import SampleEstimator, load_default_estimator

    check_range("n_bootstrap", n_bootstrap, low=10, integer=True)
    if units not in INTENSITY_UNITS:
        raise ValueError(f"units={units!r}; accepted: {', '.join(INTENSITY_UNITS)} (electron counts at a dose, "
                         "or the fraction of the incident beam)")
    warnings, items, prepared, bad = [], [], [], []
    paths_or_images = list(paths_or_images)
    if not paths_or_images:
        raise ImageInputError("no images given")
    readable = []
    for p in paths_or_images:
        try:
            readable.append(p if isinstance(p, MeasuredImage) else read_image(p, pixel_size_nm))
        except ImageInputError as err:
            bad.append(str(err))
    chosen = None
    if estimator is None:                      # the shipped robust estimator whose field of view the images hold
        from agglib.estimate import FIELD_OF_VIEW_ORDER, shipped_fields_of_view, shipped_models_dir

        # the shipped estimator that can read the most images (the larger field of view on a tie)
        fovs = [it.field_of_view_nm for it in readable]
        known = shipped_fields_of_view()
        best = max((m for m in FIELD_OF_VIEW_ORDER if m in known),
                   key=lambda m: sum(f * (1 + 1e-6) >= known[m] for f in fovs))
        if best == "robust":
            estimator = load_default_estimator()
        else:
            estimator = SampleEstimator.load(shipped_models_dir(best))
            chosen = estimator.metadata.get("profile")
    if calibration is not None:             # first: the calibrated estimator accepts a known acquisition as stated
        from agglib.fit.acquisition_calibration import AcquisitionCalibration

        calibration_file = None if isinstance(calibration, AcquisitionCalibration) else str(Path(calibration).resolve())
        calibration_sha256 = None
        if calibration_file is not None:
            calibration = AcquisitionCalibration.load(calibration)
            calibration_sha256 = hashlib.sha256(Path(calibration_file).read_bytes()).hexdigest()
        estimator = calibration.applied_to(estimator)
    if acquisition is not None:
        if not isinstance(estimator, SampleEstimator):
            raise ValueError("a known acquisition is read by the new method's estimators only; the paper method "
                             f"({estimator.method}) has no input for it")
        acquisition = estimator.check_known_acquisition(acquisition)
    train_dose = estimator.dose_e_per_A2
    dose = train_dose if dose_e_per_A2 is None else float(dose_e_per_A2)
    check_range("dose_e_per_A2", dose, low=0.0, low_inclusive=False, unit="e/Å²")
    for item in readable:
        try:
            fraction = MeasuredImage(beam_fraction(item.data, units, item.pixel_size_nm, dose), item.pixel_size_nm,
                                     item.path, item.pixel_size_source)
            prepared.append(prepare_image(fraction, estimator.pixel_size_nm, estimator.image_size_px))
            items.append(item)
        except ImageInputError as err:
            bad.append(str(err) + ("" if chosen is None else
                                   f" (the shipped {chosen} estimator — {estimator.field_of_view_nm:.0f} nm field of "
                                   f"view at {estimator.pixel_size_nm:g} nm/px — was chosen because it reads the most "
                                   "of these images' fields of view; --models chooses another)"))
    if not items:
        raise ImageInputError(bad[0] if len(bad) == 1 else
                              f"none of the {len(bad)} images can be used; the first: {bad[0]}")
    if bad and not skip_bad:
        raise ImageInputError(f"{bad[0]} ({len(bad)} of {len(paths_or_images)} images cannot be used; pass "
                              "--skip-bad / skip_bad=True to leave them out)")
    warnings += [f"skipped {b}" for b in bad]
    fractions = np.stack(prepared)
    reference = intensity_reference(estimator)
    stats = sample_statistics(fractions, estimator.pixel_size_nm)
    refusals, scale_warnings = check_intensity(stats, reference, dose if units == "counts" else None,
                                               names=[it.path for it in items])
    if refusals and check_intensity_scale:
        raise ImageInputError(f"{len(items)} images ({items[0].path}, …) read as {units}"
                              + (f" at {dose:g} e/Å²" if units == "counts" else "") + ": " + " ".join(refusals)
                              + " (check_intensity_scale=False / --skip-intensity-check to estimate anyway)")
    if refusals:                            # estimated anyway (check_intensity_scale=False): said first
        warnings.append("the intensity check refused these images (below), and θ̂ and its intervals were computed "
                        "anyway: they assume the training images' intensity scale and are likely wrong")
    warnings += refusals + scale_warnings
    warnings += _resampling_warnings(items, estimator)
    if calibration is not None:
        warnings += calibration.mismatch_warnings([it.pixel_size_nm for it in items], estimator.pixel_size_nm,
                                                  dose if units == "counts" else None, len(items))
    warnings += border_warnings(fractions, [it.path for it in items], estimator.field_of_view_nm)
    warnings += particle_scale_warnings(stats["scale_nm"], reference["scale_nm"])
    images = (fractions * estimator.stem_settings.electrons_per_pixel).astype(np.float32)
    m = images.shape[0]
    if m < MIN_STABLE_IMAGES:
        warnings.append(f"only {counted(m, 'image')}: the intervals are wide (see the book's error against the "
                        f"number of images); {MIN_STABLE_IMAGES} or more are recommended")
    if m < estimator.min_images:
        raise ImageInputError(f"{m} images given; this estimator ({estimator.method} method) needs at least "
                              f"{estimator.min_images} images of one sample (the paper method's networks for θ0 and "
                              "θ1 read groups of ν images at once; the default estimator takes any number)")
    rng = as_generator(seed)
    resamples = [rng.integers(0, m, m) for _ in range(n_bootstrap)]
    settings = {"estimator_pixel_size_nm": estimator.pixel_size_nm, "estimator_image_size_px": estimator.image_size_px,
                "units": units, "dose_e_per_A2": dose if units == "counts" else None,
                "training_dose_e_per_A2": train_dose, "n_bootstrap": n_bootstrap,
                "method": estimator.method, "agglib": agglib.__version__,
                "estimator_profile": estimator.profile_name,
                "estimator_field_of_view_nm": estimator.field_of_view_nm,
                "estimator_chosen_by_field_of_view": chosen,
                "particles": None if estimator.particles.is_paper else estimator.particles.to_dict(),
                "known_acquisition": acquisition,
                "acquisition_calibration": None if calibration is None else
                {"file": calibration_file, "file_sha256": calibration_sha256, "stated": calibration.stated,
                 "stated in words": calibration.stated_in_words(estimator.pixel_size_nm), "configs": calibration.configs,
                 "images": calibration.images, "seed": calibration.seed,
                 "law": "acquisition unknown" if acquisition is None else "acquisition given"}}
    base = {"path": [it.path for it in items], "pixel_size_nm": [it.pixel_size_nm for it in items],
            "pixel_size_source": [it.pixel_size_source for it in items]}
    reading = estimator.read_sample(images, resamples, **({} if acquisition is None else {"acquisition": acquisition}))
    warnings += reading.warnings
    check = reading.out_of_model
    if check is not None and check["out_of_model"]:
        worst = int(np.argmax(check["per_image_d2"]))
        warnings.append(f"the sample does not look like the model's samples: its out-of-model score "
                        f"{check['statistic']:.3g} exceeds {check['threshold']:.3g}, which "
                        f"{check['level']:.0%} of simulated in-model samples of {m} images stay below "
                        f"(most unusual image: {items[worst].path}). Other particles (sizes, shapes), "
                        "another imaging mode (EDX, bright field) or another magnification than the "
                        "estimator's? θ̂ and its intervals assume the model; treat them with care")
    settings.update(reading.settings)
    return FitResult(reading.estimate, reading.intervals, m, reading.bootstrap, pd.DataFrame({**base, **reading.per_image}),
                     warnings, settings, reading.posterior, check, reading.interval_kind)


def _resampling_warnings(items, estimator) -> list:
    """Images resampled by a factor the estimator never saw in training (notebook 10: a non-integer
    ratio mixes neighbouring pixels, which an estimator trained without pixel-size jitter reads
    as a lower D_f)."""
    zooms = sorted({round(estimator.pixel_size_nm / it.pixel_size_nm, 3) for it in items})
    ranges = estimator.training_metadata.get("acquisition_ranges") or {}
    lo, hi = ranges.get("pixel_zoom", (1.0, 1.0))
    odd = [z for z in zooms if abs(z - round(z)) > 0.01 and not lo - 1e-6 <= z <= hi + 1e-6]
    if not odd:
        return []
    trained = (f"it was trained on ratios {lo:g}–{hi:g}" if ranges else "it was trained on its own pixel size only")
    advice = ("images at an integer multiple of the estimator's pixel size avoid it" if ranges else
              "images at an integer multiple of the estimator's pixel size, or an estimator trained with a randomised "
              "acquisition, avoid it")
    return [f"the images are resampled by a factor {', '.join(f'{z:g}' for z in odd)} to the estimator's "
            f"{estimator.pixel_size_nm:g} nm/px, a non-integer ratio ({trained}): D_f may be biased low (notebook 10 "
            f"shows how much); {advice}"]


def draw_shadows(result: FitResult, count: int, seed=None, workers: int | None = None):
    """Digital shadows: ``count`` aggregates whose θ carry the estimate's uncertainty — each drawn
    from the posterior (new method) or spread over bootstrap draws of θ̂ (paper method).
    Returns (aggregates, the θ of each aggregate)."""
    from agglib.model.params import params_from_estimate

    check_range("count", count, low=1, integer=True)
    rng = as_generator(seed)
    if result.posterior is not None:
        params = result.posterior.model_params(count, seed=rng.integers(2**63))
    else:
        n_draws = int(min(20, count, len(result.bootstrap)))
        rows = result.bootstrap.iloc[rng.choice(len(result.bootstrap), n_draws, replace=False)]
        distinct = [params_from_estimate(r) for r in rows.to_dict(orient="records")]
        per_draw = [count // n_draws + (k < count % n_draws) for k in range(n_draws)]
        params = [p for p, c in zip(distinct, per_draw) for _ in range(c)]
    seeds = spawn_seeds(rng.integers(2**63), 1)[0]
    particles = ParticleModel.from_dict(result.settings.get("particles"))
    aggs = agglib.generate_aggregates(params, seed=seeds, workers=workers, show_progress_bars=False,
                                      particles=particles)
    return aggs, params


def shadow_summary(aggregates) -> pd.DataFrame:
    """Mean and 95 % range of each descriptor over the shadows."""
    from agglib.descriptors import describe_many

    d = pd.DataFrame(describe_many(aggregates))
    cols = ["s_tio2", "s_wo3", "z_hetero", "z_total", "df", "rho", "rg", "n_particles"]
    return pd.DataFrame({"mean": d[cols].mean(), "2.5 %": d[cols].quantile(0.025),
                         "97.5 %": d[cols].quantile(0.975)})


def _ply(aggregates) -> str:
    lines = []
    for k, a in enumerate(aggregates):
        for (x, y, z), r, lab in zip(a.positions, a.radii, a.labels):
            colour = (31, 119, 180) if lab == 0 else (255, 127, 14)
            lines.append(f"{x:.4f} {y + 0.0:.4f} {z:.4f} {r:.4f} {k} {colour[0]} {colour[1]} {colour[2]}")
    header = ["ply", "format ascii 1.0", "comment agglib digital shadows: one vertex per particle; "
              "radius [nm], aggregate index; WO3 blue, TiO2 orange", f"element vertex {len(lines)}",
              "property float x", "property float y", "property float z", "property float radius",
              "property int aggregate", "property uchar red", "property uchar green", "property uchar blue",
              "end_header"]
    return "\n".join(header + lines) + "\n"


#: The files :func:`export_shadows` writes.
SHADOW_FILES = ("summary.json", "particles.csv", "particles.parquet", "shadows.ply")


def export_shadows(result: FitResult, aggregates, out_dir, overwrite: bool = False, inputs=()) -> Path:
    """Write summary.json, particles.csv, particles.parquet and shadows.ply into ``out_dir``.

    ``out_dir`` must be new, empty or a folder agglib made (it holds
    :data:`agglib.core.files.OUTPUT_MARKER`); it may not be, contain or lie inside an input (the
    images of ``result`` and ``inputs``). ``overwrite`` replaces only the files agglib wrote there;
    nothing else in the folder is touched. Each file is written atomically and ``summary.json``
    last: an interrupted export leaves no half-written file.
    """
    from agglib.core.files import atomic_open, atomic_write_text, claim_output_dir
    from agglib.model.aggregate import MATERIAL_NAMES

    out_dir = claim_output_dir(out_dir, SHADOW_FILES, inputs=[*result.per_image["path"], *inputs],
                               overwrite=overwrite, command="agglib fit")
    rows = [{"aggregate": k, "x_nm": x, "y_nm": y, "z_nm": z, "r_nm": r, "material": MATERIAL_NAMES[int(l)]}
            for k, a in enumerate(aggregates) for (x, y, z), r, l in zip(a.positions, a.radii, a.labels)]
    particles = pd.DataFrame(rows)
    with atomic_open(out_dir / "particles.csv", "w") as fh:
        particles.to_csv(fh, index=False)
    with atomic_open(out_dir / "particles.parquet") as fh:
        particles.to_parquet(fh, index=False)
    atomic_write_text(out_dir / "shadows.ply", _ply(aggregates))
    summary = {**result.to_dict(), "shadows": {"count": len(aggregates),
                                               "descriptors": shadow_summary(aggregates).to_dict(orient="index")}}
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=1, default=float))
    return out_dir
