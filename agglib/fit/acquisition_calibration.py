"""Intervals calibrated for the acquisition a microscopist states.

A shipped estimator's intervals hold the truth as often as they claim *on average* over the
acquisitions of its training ranges (notebook 6). Its images hardly show several of the settings
that make a sample easy or hard to read — the extra blur, the resampling, the dose (notebook 6's
identifiability run) — so at one acquisition the same intervals can be too wide (a sharp image at
the estimator's own pixel size is easier than the average) or too narrow. Where a user can say how
the images were recorded, :func:`calibrate_for_acquisition` simulates fresh samples recorded that
way (θ from the estimator's continuous prior; aggregates and images made in memory, never stored),
fits the posterior's width law on them (:func:`agglib.sets_training.recalibration.fit_widening`, the
rule the estimator was recalibrated by in training) and returns an :class:`AcquisitionCalibration`:
saved as JSON, used by ``agglib fit --calibration``. A setting the user does not state is drawn,
per sample, from the estimator's training range, as in training.

Notebook 6 checks the rule on configurations that no calibration saw: under every fixed acquisition
of the robustness table, the shipped default with a calibration made for that acquisition against
the same estimator without one.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from agglib.posterior import Widening
from agglib.stem.acquisition import ACQUISITION_UNITS

__all__ = ["AcquisitionCalibration", "calibrate_for_acquisition", "stated_acquisition_ranges",
           "check_stated_acquisition", "estimator_profile", "STATED_LIMITS", "CLI_OPTIONS", "CALIBRATION_KIND"]

#: The ``kind`` of an acquisition calibration's JSON file (what ``load`` and ``save`` recognise).
CALIBRATION_KIND = "agglib acquisition calibration"

#: Setting → (lowest, highest, unit, what it is): the values a user may state (physically possible
#: ones; the estimator's training ranges are narrower, and ``fit``'s intensity check refuses samples
#: far from them). Units: :data:`agglib.stem.acquisition.ACQUISITION_UNITS`.
STATED_LIMITS = {key: (low, high, ACQUISITION_UNITS[key], what) for key, (low, high, what) in {
    "intensity_scale": (0.05, 20.0, "factor on the HAADF signal of both materials"),
    "wo3_contrast": (0.2, 5.0, "extra factor on WO3's signal"),
    "dose_e_per_A2": (1.0, 1e5, "electron dose"),
    "offset_fraction": (-0.05, 0.05, "vacuum level left after normalisation"),
    "extra_blur_nm": (0.0, 10.0, "σ of an extra Gaussian blur"),
    "pixel_zoom": (0.5, 8.0, "the estimator's pixel size ÷ the recorded one: fit resamples images by it"),
}.items()}


#: The ``agglib calibrate`` option of each stated setting (the pixel zoom is stated as ``--pixel-size``
#: [nm]).
CLI_OPTIONS = {"intensity_scale": "--intensity-scale", "wo3_contrast": "--wo3-contrast", "dose_e_per_A2": "--dose",
               "offset_fraction": "--offset", "extra_blur_nm": "--extra-blur", "pixel_zoom": "--pixel-size"}


def check_stated_acquisition(stated: dict, names: dict | None = None) -> dict:
    """``stated`` checked against :data:`STATED_LIMITS`.

    Parameters
    ----------
    stated : dict
        Setting (a key of :data:`agglib.stem.acquisition.ACQUISITION_KEYS`) → its value, in the
        units of :data:`STATED_LIMITS`.
    names : dict, optional
        Setting → the name the user gave it by (a command-line option such as ``--dose``), used
        in the errors in place of the setting's.

    Returns
    -------
    dict
        Setting → its value as a float.

    Raises
    ------
    ValueError
        For an unknown setting, or a value that is not a real number within :data:`STATED_LIMITS`
        (named, with the accepted range, its unit and what the setting is).
    """
    import numbers

    from agglib.core.validation import check_range
    from agglib.stem.acquisition import ACQUISITION_KEYS

    bad = sorted(set(stated) - set(ACQUISITION_KEYS))
    if bad:
        raise ValueError(f"unknown acquisition settings {bad}; accepted: {', '.join(ACQUISITION_KEYS)}")
    values = {}
    for key, value in stated.items():
        low, high, unit, what = STATED_LIMITS[key]
        number = float(value) if isinstance(value, numbers.Real) and not isinstance(value, bool) else value
        try:
            values[key] = float(check_range((names or {}).get(key, key), number, low=low, high=high, unit=unit))
        except ValueError as err:
            raise ValueError(f"{err} ({what})") from None
    return values


def stated_acquisition_ranges(estimator, stated: dict):
    """How samples recorded with ``stated`` are drawn.

    Parameters
    ----------
    estimator : agglib.estimate.SampleEstimator
    stated : dict
        Setting (a key of :data:`agglib.stem.acquisition.ACQUISITION_KEYS`) → its value, within
        :data:`STATED_LIMITS`.

    Returns
    -------
    AcquisitionRanges
        The stated settings fixed (a range of one value; a stated pixel zoom is every image's),
        the others over ``estimator``'s training ranges (the simulator's own values for an
        estimator trained on the paper's acquisition).

    Raises
    ------
    ValueError
        For an unknown setting or a value that is not a number within :data:`STATED_LIMITS`
        (named, with the range).
    """
    from agglib.stem.acquisition import AcquisitionRanges, simulator_acquisition

    values = check_stated_acquisition(stated)
    trained = estimator.training_metadata.get("acquisition_ranges")
    if trained:
        base = AcquisitionRanges.from_dict(trained)
    else:
        base = AcquisitionRanges(**{key: (v, v) for key, v in simulator_acquisition(estimator.stem_settings).items()},
                                 at_pixel_size=1.0)
    ranges = replace(base, **{key: (v, v) for key, v in values.items()})
    if "pixel_zoom" in values:            # a stated zoom is the zoom of every image
        ranges = replace(ranges, at_pixel_size=1.0 if values["pixel_zoom"] == 1.0 else 0.0)
    return ranges


def estimator_profile(estimator):
    """A profile whose fresh configurations are made as ``estimator``'s training images: its θ
    grid and prior, image size [px], pixel size [nm], dose [e/Å²] and particles.

    Raises
    ------
    ValueError
        Where its STEM settings cannot be rebuilt from its metadata.
    """
    from dataclasses import fields as dc_fields

    import agglib
    from agglib.dataset.build import stem_settings_for

    known = {f.name for f in dc_fields(agglib.Profile)}
    recorded = {k: v for k, v in estimator.training_metadata.get("profile_fields", {}).items()
                if k in known and k not in ("acquisition", "particles", "dose_e_per_A2")}
    profile = agglib.load_profile("quick", **recorded, dose_e_per_A2=float(estimator.stem_settings.dose_e_per_A2),
                                  particles=estimator.particles)
    if stem_settings_for(profile).to_dict() != estimator.stem_settings.to_dict():
        raise ValueError("this estimator's STEM settings cannot be rebuilt from its metadata "
                         f"({estimator.stem_settings.to_dict()}); it cannot be calibrated for an acquisition")
    return profile


def _posterior_digest(estimator) -> str:
    from agglib.checkpoint import weights_digest

    return weights_digest(estimator.posterior.state_dict())


@dataclass(frozen=True)
class AcquisitionCalibration:
    """The width laws of an estimator's posterior for samples recorded with a stated acquisition.

    Attributes
    ----------
    stated : dict
        The acquisition the user stated (keys of
        :data:`agglib.stem.acquisition.ACQUISITION_KEYS`: intensity scale, WO3/TiO2 contrast,
        dose [e/Å²], vacuum offset [fraction of the beam], extra blur σ [nm], pixel zoom).
    ranges : dict
        The acquisition the calibration samples were drawn from
        (:meth:`agglib.stem.acquisition.AcquisitionRanges.to_dict`): ``stated`` fixed, the rest
        over the estimator's training ranges.
    widening : Widening
        The law (:class:`agglib.posterior.Widening`) that replaces the estimator's own for these
        samples with the acquisition unknown to the posterior.
    widening_known_acquisition : Widening or None
        The law for these samples with their intensity scale and WO3/TiO2 contrast told to the
        posterior (``agglib fit --intensity-scale … --wo3-contrast …``, the stated values); None
        where they were not both stated within the estimator's training ranges, or the estimator
        does not read them.
    fit_table : list of dict
        :func:`agglib.sets_training.recalibration.fit_widening`'s rows (per M and ``acquisition
        given``: factors, and coverage before and after on the calibration samples themselves).
    configs : int
        Calibration samples simulated.
    refused : float
        Share of them ``fit``'s intensity check refuses (left out of the fit, as ``fit`` leaves
        such samples out).
    images : int
        Images per sample: the largest M the laws were fitted at (held constant beyond).
    seed : int
        Seed of the calibration samples.
    posterior_sha256 : str
        The posterior's weights (:func:`agglib.checkpoint.weights_digest`): a calibration belongs
        to one trained estimator.
    """

    stated: dict
    ranges: dict
    widening: Widening
    widening_known_acquisition: Widening | None = None
    fit_table: list = field(default_factory=list)
    configs: int = 0
    refused: float = 0.0
    images: int = 0
    seed: int = 0
    posterior_sha256: str = ""

    def stated_in_words(self, estimator_pixel_size_nm: float) -> str:
        """The stated acquisition as ``agglib calibrate``'s options give it, e.g. ``--intensity-scale
        0.72, --extra-blur 0 nm, --pixel-size 2.9 nm`` (the pixel size [nm] from the stated zoom and
        the estimator's pixel size [nm])."""
        parts = []
        for key, value in self.stated.items():
            if key == "pixel_zoom":
                parts.append(f"--pixel-size {estimator_pixel_size_nm / value:.4g} nm")
            else:
                unit = ACQUISITION_UNITS[key]
                parts.append(f"{CLI_OPTIONS[key]} {value:g}{' ' + unit if unit else ''}")
        return ", ".join(parts) or "nothing stated"

    def to_dict(self) -> dict:
        """The calibration as JSON-ready data (with ``kind`` :data:`CALIBRATION_KIND`)."""
        import agglib

        return {"kind": CALIBRATION_KIND, "agglib": agglib.__version__, "stated": dict(self.stated),
                "ranges": dict(self.ranges), "widening": self.widening.to_dict(),
                "widening_known_acquisition": None if self.widening_known_acquisition is None
                else self.widening_known_acquisition.to_dict(), "fit_table": list(self.fit_table),
                "configs": int(self.configs), "refused": float(self.refused), "images": int(self.images),
                "seed": int(self.seed), "posterior_sha256": self.posterior_sha256}

    @classmethod
    def from_dict(cls, d: dict, source: str = "the calibration") -> "AcquisitionCalibration":
        """The calibration of :meth:`to_dict`; ``source`` names it in errors (ValueError)."""
        from agglib.estimate import KNOWN_ACQUISITION
        from agglib.stem.acquisition import ACQUISITION_KEYS

        if not isinstance(d, dict) or d.get("kind") != CALIBRATION_KIND:
            raise ValueError(f"{source} is not an acquisition calibration written by agglib calibrate (its \"kind\" "
                             f"is not {CALIBRATION_KIND!r})")
        try:
            known = d["widening_known_acquisition"]                     # null where there is none
            stated = {str(k): float(v) for k, v in dict(d["stated"]).items()}
            bad = sorted(set(stated) - set(ACQUISITION_KEYS))
            if bad or (known is not None and any(k not in stated for k in KNOWN_ACQUISITION)):
                raise ValueError(f"stated {sorted(stated)}")
            return cls(stated, dict(d["ranges"]), Widening.from_dict(d["widening"]),
                       None if known is None else Widening.from_dict(known), list(d["fit_table"]),
                       int(d["configs"]), float(d["refused"]), int(d["images"]), int(d["seed"]),
                       str(d["posterior_sha256"]))
        except (KeyError, TypeError, ValueError) as err:
            what = f"field {err.args[0]!r} missing" if isinstance(err, KeyError) else f"garbled: {err}"
            raise ValueError(f"{source}: not a whole acquisition calibration ({what}); make it again with agglib "
                             "calibrate") from None

    def save(self, path, overwrite: bool = False) -> Path:
        """Write the calibration as JSON to ``path`` (:meth:`check_writable`); returns the path."""
        from agglib.core.files import atomic_write_text

        path = self.check_writable(path, overwrite)
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1, ensure_ascii=False))
        return path

    @classmethod
    def check_writable(cls, path, overwrite: bool = False) -> Path:
        """``path`` if a calibration may be written there: a new file, or — with ``overwrite=True``
        only — one that is itself an acquisition calibration (agglib never replaces a file it did
        not write).

        Raises
        ------
        FileExistsError
            Otherwise, naming the file.
        """
        path = Path(path)
        if path.exists():
            try:
                cls.from_dict(json.loads(path.read_text(encoding="utf-8")), str(path))
            except (ValueError, UnicodeDecodeError, IsADirectoryError):
                raise FileExistsError(f"{path} exists and was not written by agglib calibrate: not replaced (choose "
                                      "another output file)") from None
            if not overwrite:
                raise FileExistsError(f"{path} exists; pass overwrite=True (--overwrite) to replace it")
        return path

    @classmethod
    def load(cls, path) -> "AcquisitionCalibration":
        """The calibration saved at ``path`` (:meth:`save`).

        Raises
        ------
        FileNotFoundError, ValueError
            Naming the file: missing, not JSON, not a calibration, or a field garbled.
        """
        path = Path(path)
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no such calibration file (agglib calibrate --out writes one)") from None
        except (ValueError, UnicodeDecodeError, IsADirectoryError) as err:
            raise ValueError(f"{path} is not a JSON acquisition calibration ({err})") from None
        return cls.from_dict(d, str(path))

    def mismatch_warnings(self, pixel_sizes_nm, estimator_pixel_size_nm: float, dose_e_per_A2: float | None,
                          n_images: int) -> list:
        """What ``fit`` warns of where a sample was not recorded as this calibration states.

        Parameters
        ----------
        pixel_sizes_nm : sequence of float
            The images' pixel sizes [nm]: each × the stated pixel zoom should be the estimator's.
        estimator_pixel_size_nm : float
            The estimator's pixel size [nm].
        dose_e_per_A2 : float or None
            The dose the images were read at [e/Å²] (None: images in fractions of the beam).
        n_images : int
            The sample's images M: above :attr:`images` the laws are held at their largest M.

        Returns
        -------
        list of str
        """
        out = []
        zoom = self.stated.get("pixel_zoom")
        if zoom is not None:
            sizes = np.asarray(pixel_sizes_nm, dtype=np.float64)
            off = sizes[np.abs(estimator_pixel_size_nm / sizes / zoom - 1.0) > 0.01]
            if off.size:
                out.append(f"{off.size} of {sizes.size} images have a pixel size ({off[0]:g} nm, …) other than the "
                           f"calibration's {estimator_pixel_size_nm / zoom:g} nm: their intervals are calibrated for "
                           "another resampling")
        dose = self.stated.get("dose_e_per_A2")
        if dose is not None and dose_e_per_A2 is not None and not math.isclose(dose, dose_e_per_A2, rel_tol=0.01):
            out.append(f"the images were read at {dose_e_per_A2:g} e/Å² but the calibration states {dose:g} e/Å²: "
                       "their intervals are calibrated for another dose")
        if n_images > self.images:
            out.append(f"the calibration was fitted on samples of up to {self.images} images; for these {n_images} "
                       f"its law at {self.images} is used (agglib calibrate --images {min(n_images, 24)} fits it "
                       "further)")
        return out

    def applied_to(self, estimator):
        """A copy of ``estimator`` whose posterior is widened by this calibration's laws, and which
        accepts a known acquisition only as stated (and only where a law was fitted for it).

        Raises
        ------
        ValueError
            For the paper method's networks, or an estimator whose posterior weights are not
            those the calibration was made for.
        """
        from agglib.estimate import SampleEstimator

        if not isinstance(estimator, SampleEstimator):
            raise ValueError("an acquisition calibration applies to the new method's estimators (encoder.pt + "
                             "posterior.pt); the paper method's networks give bootstrap intervals")
        if _posterior_digest(estimator) != self.posterior_sha256:
            raise ValueError(f"this calibration was made for another estimator than the one used (profile "
                             f"{estimator.metadata.get('profile', '?')}: its posterior weights differ); calibrate that "
                             "one (agglib calibrate --models <its folder>), or fit with the estimator the calibration "
                             "was made for (--models)")
        laws = {"widening": self.widening.to_dict()}
        if self.widening_known_acquisition is not None:
            laws["widening_known_acquisition"] = self.widening_known_acquisition.to_dict()
        about = {"stated": dict(self.stated), "configs": self.configs, "images": self.images, "seed": self.seed,
                 "known_law": self.widening_known_acquisition is not None}
        return SampleEstimator(estimator.encoder, estimator.posterior, estimator.grid,
                               {**estimator.metadata, **laws, "acquisition_calibration": about})


def calibrate_for_acquisition(estimator, stated: dict, *, configs: int = 400, images: int = 24, seed: int = 0,
                              workers: int | None = None, show_progress_bars: bool | None = None) -> AcquisitionCalibration:
    """Fit ``estimator``'s width laws on fresh samples recorded with the ``stated`` acquisition.

    Parameters
    ----------
    estimator : agglib.estimate.SampleEstimator
    stated : dict
        What the user knows of how the sample was recorded, one value per setting (keys of
        :data:`agglib.stem.acquisition.ACQUISITION_KEYS`, within :data:`STATED_LIMITS`):
        ``intensity_scale`` and ``wo3_contrast`` (factors on the simulator's signal),
        ``dose_e_per_A2`` [e/Å²], ``offset_fraction`` [fraction of the beam], ``extra_blur_nm``
        [nm], ``pixel_zoom`` (the estimator's pixel size ÷ the recorded one). Settings left out are
        drawn per sample from the training ranges.
    configs : int
        Calibration samples, θ from the estimator's continuous prior [≥ 20].
    images : int
        Images per sample [1–24]: the laws are fitted at M = 1 … ``images``.
    seed : int
        Seeds θ, the aggregates and the images.
    workers : int, optional
        Processes simulating the samples (None: ``agglib.config``'s).
    show_progress_bars : bool, optional
        (None: ``agglib.config``'s.)

    Returns
    -------
    AcquisitionCalibration
        With a law for the acquisition unknown to the posterior and, where the estimator reads a
        known acquisition and ``stated`` has both its intensity scale and WO3/TiO2 contrast within
        its training ranges (``fit`` refuses to tell it others; a warning says so), one for them
        told to it. Fitted on the samples ``fit``'s intensity check accepts.

    Raises
    ------
    ValueError
        For a stated value out of :data:`STATED_LIMITS`, or an acquisition whose samples the
        intensity check mostly refuses (``fit`` would refuse such images).
    """
    import warnings

    from agglib.core.validation import check_range
    from agglib.estimate import KNOWN_ACQUISITION, SampleEstimator
    from agglib.evaluate.calibration import given_acquisition
    from agglib.evaluate.sets import fresh_configurations
    from agglib.fit.intensity import simulated_samples_accepted
    from agglib.sets_training.recalibration import WIDENING_SIZES, fit_widening

    if not isinstance(estimator, SampleEstimator):
        raise ValueError("calibrate_for_acquisition needs a new-method estimator (encoder.pt + posterior.pt); the "
                         "paper method's networks give bootstrap intervals")
    check_range("configs", configs, low=20, integer=True)
    check_range("images", images, low=1, high=max(WIDENING_SIZES), integer=True)
    stated = check_stated_acquisition(stated)
    ranges = stated_acquisition_ranges(estimator, stated)
    trained = estimator.training_metadata.get("acquisition_ranges") or {}
    outside = [f"{key} {stated[key]:g} (trained on {lo:g}–{hi:g})" for key, (lo, hi) in
               ((k, trained[k]) for k in stated if k in trained) if not lo <= stated[key] <= hi]
    if outside:
        warnings.warn(f"stated outside the estimator's training ranges: {', '.join(outside)}; it never saw such "
                      "images, so its posterior extrapolates there (the calibration widens or narrows it, it does not "
                      "make it right)", stacklevel=2)
    known = estimator.reads_acquisition and all(key in stated for key in KNOWN_ACQUISITION)
    if known:                   # outside the training ranges fit refuses to tell the posterior: no law for it
        try:
            estimator.check_known_acquisition({key: stated[key] for key in KNOWN_ACQUISITION})
        except ValueError as err:
            warnings.warn(f"no law for the acquisition given to the posterior: {str(err).split(':')[0]} of the "
                          "training ranges; fit uses this calibration with the acquisition unknown", stacklevel=2)
            known = False
    fresh = fresh_configurations(estimator_profile(estimator), int(configs), int(images), int(seed), prior="continuous",
                                 acquisition=ranges, workers=workers, show_progress_bars=show_progress_bars)
    accepted, groups = simulated_samples_accepted(estimator, fresh)
    if accepted.mean() < 0.5:
        raise ValueError(f"fit's intensity check refuses {1 - accepted.mean():.0%} of samples recorded with "
                         f"{', '.join(f'{k} {v:g}' for k, v in stated.items())}: images recorded so are too far "
                         "from the estimator's training images for it (notebook 10)")
    keep = np.concatenate([groups[c] for c in np.flatnonzero(accepted)])
    summaries = estimator.summaries(fresh["images"][keep])
    theta, config_id = fresh["theta"][keep], fresh["config_id"][keep]
    sizes = [m for m in WIDENING_SIZES if m <= images]
    laws, rows = [], []
    for given in (False, True) if known else (False,):
        s = estimator.with_acquisition(summaries, {k: v[keep] for k, v in given_acquisition(fresh).items()}) \
            if given else summaries
        law, table = fit_widening(estimator, s, theta, config_id, seed=int(seed), sizes=sizes)
        laws.append(law)
        rows += [{"M": int(m), "acquisition given": given, **{k: float(v) for k, v in row.items()}}
                 for m, row in table.iterrows()]
    refused = round(float(1.0 - accepted.mean()), 6)
    return AcquisitionCalibration(stated, ranges.to_dict(), laws[0],
                                  laws[1] if known else None, rows, int(configs), refused, int(images), int(seed),
                                  _posterior_digest(estimator))
