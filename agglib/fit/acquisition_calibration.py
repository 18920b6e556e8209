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

__all__ = ["AcquisitionCalibration", "calibrate_for_acquisition", "stated_acquisition_ranges",
           "CALIBRATION_KIND"]

#: The ``kind`` of an acquisition calibration's JSON file (what ``load`` and ``save`` recognise).
CALIBRATION_KIND = "agglib acquisition calibration"

_LIMITS = {  # key: (low, high, unit, what it is)
    "intensity_scale": (0.05, 20.0, "", "factor on the HAADF signal of both materials"),
    "wo3_contrast": (0.2, 5.0, "", "extra factor on WO3's signal"),
    "dose_e_per_A2": (1.0, 1e5, "e/Å²", "electron dose"),
    "offset_fraction": (-0.05, 0.05, "of the beam", "vacuum level left after normalisation"),
    "extra_blur_nm": (0.0, 10.0, "nm", "σ of an extra Gaussian blur"),
    "pixel_zoom": (1.0, 8.0, "", "recorded pixel size ÷ the estimator's is 1 / pixel_zoom"),
}


def stated_acquisition_ranges(estimator, stated: dict):
    """The :class:`agglib.stem.acquisition.AcquisitionRanges` of samples recorded with ``stated``
    (keys of :data:`agglib.stem.acquisition.ACQUISITION_KEYS`, one value each): those values fixed,
    the other settings over ``estimator``'s training ranges (the simulator's own values for an
    estimator trained on the paper's acquisition).

    Raises
    ------
    ValueError
        For an unknown key or a value outside its physical range (named, with the range).
    """
    from agglib.core.validation import check_range
    from agglib.stem.acquisition import ACQUISITION_KEYS, AcquisitionRanges

    bad = sorted(set(stated) - set(ACQUISITION_KEYS))
    if bad:
        raise ValueError(f"unknown acquisition settings {bad}; accepted: {', '.join(ACQUISITION_KEYS)}")
    values = {}
    for key, value in stated.items():
        low, high, unit, what = _LIMITS[key]
        try:
            values[key] = float(check_range(key, float(value), low=low, high=high, unit=unit))
        except (TypeError, ValueError) as err:
            raise ValueError(f"{err} ({what})") from None
    trained = estimator.training_metadata.get("acquisition_ranges")
    if trained:
        base = AcquisitionRanges.from_dict(trained)
    else:
        dose = float(estimator.stem_settings.dose_e_per_A2)
        base = AcquisitionRanges(intensity_scale=(1.0, 1.0), wo3_contrast=(1.0, 1.0), dose_e_per_A2=(dose, dose),
                                 offset_fraction=(0.0, 0.0), extra_blur_nm=(0.0, 0.0), pixel_zoom=(1.0, 1.0),
                                 at_pixel_size=1.0)
    ranges = replace(base, **{key: (v, v) for key, v in values.items()})
    if "pixel_zoom" in values:            # a stated zoom is the zoom of every image
        ranges = replace(ranges, at_pixel_size=1.0 if values["pixel_zoom"] == 1.0 else 0.0)
    return ranges


def _estimator_profile(estimator):
    """A profile whose fresh configurations are what ``estimator`` was trained on: its θ grid and
    prior, image size, pixel size, dose and particles."""
    from dataclasses import fields as dc_fields

    import agglib
    from agglib.dataset.build import stem_settings_for

    known = {f.name for f in dc_fields(agglib.Profile)}
    recorded = {k: v for k, v in estimator.training_metadata.get("profile_fields", {}).items()
                if k in known and k != "acquisition"}
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
    """The width law of an estimator's posterior for samples recorded with a stated acquisition.

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
        where they were not both stated or the estimator does not read them.
    fit_table : list of dict
        :func:`agglib.sets_training.recalibration.fit_widening`'s rows (per M and ``acquisition
        given``: factors, coverage before and after).
    configs, images, seed : int
        Calibration samples, images per sample, and their seed.
    posterior_sha256 : str
        The posterior's weights (:func:`agglib.checkpoint.weights_digest`): a calibration belongs
        to one trained estimator.
    """

    stated: dict
    ranges: dict
    widening: object
    widening_known_acquisition: object = None
    fit_table: list = field(default_factory=list)
    configs: int = 0
    images: int = 0
    seed: int = 0
    posterior_sha256: str = ""

    def to_dict(self) -> dict:
        import agglib

        return {"kind": CALIBRATION_KIND, "agglib": agglib.__version__, "stated": dict(self.stated),
                "ranges": dict(self.ranges), "widening": self.widening.to_dict(),
                "widening_known_acquisition": None if self.widening_known_acquisition is None
                else self.widening_known_acquisition.to_dict(), "fit_table": list(self.fit_table), "configs": int(self.configs),
                "images": int(self.images), "seed": int(self.seed), "posterior_sha256": self.posterior_sha256}

    @classmethod
    def from_dict(cls, d: dict, source: str = "the calibration") -> "AcquisitionCalibration":
        from agglib.posterior import Widening

        if not isinstance(d, dict) or d.get("kind") != CALIBRATION_KIND:
            raise ValueError(f"{source} is not an acquisition calibration (kind {CALIBRATION_KIND!r}; made by "
                             "agglib calibrate)")
        known = d.get("widening_known_acquisition")
        return cls(dict(d["stated"]), dict(d["ranges"]), Widening.from_dict(d["widening"]),
                   None if known is None else Widening.from_dict(known), list(d.get("fit_table", [])), int(d["configs"]), int(d["images"]), int(d["seed"]),
                   str(d["posterior_sha256"]))

    def save(self, path, overwrite: bool = False) -> Path:
        """Write the calibration as JSON to ``path``; an existing file is replaced only with
        ``overwrite=True`` and only where it is itself an acquisition calibration."""
        from agglib.core.files import atomic_write_text

        path = Path(path)
        if path.exists():
            if not overwrite:
                raise FileExistsError(f"{path} exists; pass overwrite=True (--overwrite) to replace it")
            try:
                self.from_dict(json.loads(path.read_text(encoding="utf-8")), str(path))
            except (ValueError, KeyError, TypeError, UnicodeDecodeError):
                raise FileExistsError(f"{path} exists and was not written by agglib calibrate: not replaced") from None
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1, ensure_ascii=False))
        return path

    @classmethod
    def load(cls, path) -> "AcquisitionCalibration":
        """The calibration saved at ``path`` (:meth:`save`)."""
        path = Path(path)
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no such calibration file (agglib calibrate --out writes one)") from None
        except (ValueError, UnicodeDecodeError) as err:
            raise ValueError(f"{path} is not a JSON acquisition calibration ({err})") from None
        try:
            return cls.from_dict(d, str(path))
        except (KeyError, TypeError) as err:
            raise ValueError(f"{path} lacks a field of an acquisition calibration ({err})") from None

    def check_acquisition(self, acquisition) -> None:
        """Raise unless this calibration has a law for ``acquisition`` (what ``fit`` tells the
        posterior: None, unknown, or the known intensity scale and WO3/TiO2 contrast — then the
        stated ones)."""
        from agglib.estimate import KNOWN_ACQUISITION

        if acquisition is None:
            return
        if self.widening_known_acquisition is None:
            raise ValueError("this calibration was made without the intensity scale and WO3/TiO2 contrast told to the "
                             "posterior (state both when calibrating); fit without --intensity-scale/--wo3-contrast")
        expected = {key: float(self.stated[key]) for key in KNOWN_ACQUISITION}
        if any(acquisition.get(k) is None or not math.isclose(float(acquisition[k]), v, rel_tol=1e-6)
               for k, v in expected.items()):
            raise ValueError(f"this calibration was made for intensity_scale {expected['intensity_scale']:g} and "
                             f"wo3_contrast {expected['wo3_contrast']:g}; the fit was told {dict(acquisition)}: give "
                             "the stated values, or none (the acquisition unknown to the posterior)")

    def applied_to(self, estimator):
        """A copy of ``estimator`` whose posterior is widened by this calibration's laws."""
        from agglib.estimate import SampleEstimator

        if not isinstance(estimator, SampleEstimator):
            raise TypeError("an acquisition calibration applies to a SampleEstimator (the new method)")
        if _posterior_digest(estimator) != self.posterior_sha256:
            raise ValueError("this calibration was made for another estimator (its posterior weights differ); "
                             "calibrate the estimator you fit with")
        laws = {"widening": self.widening.to_dict()}
        if self.widening_known_acquisition is not None:
            laws["widening_known_acquisition"] = self.widening_known_acquisition.to_dict()
        about = {k: v for k, v in self.to_dict().items() if k not in ("fit_table", "widening", "widening_known_acquisition")}
        return SampleEstimator(estimator.encoder, estimator.posterior, estimator.grid,
                               {**estimator.metadata, **laws, "acquisition_calibration": about})


def calibrate_for_acquisition(estimator, stated: dict, *, configs: int = 200, images: int = 24, seed: int = 0,
                              workers: int | None = None, show_progress_bars: bool | None = None) -> AcquisitionCalibration:
    """Fit ``estimator``'s width laws on fresh samples recorded with the ``stated`` acquisition.

    Parameters
    ----------
    estimator : agglib.estimate.SampleEstimator
    stated : dict
        What the user knows of how the sample was recorded, one value per setting (keys of
        :data:`agglib.stem.acquisition.ACQUISITION_KEYS`): ``intensity_scale`` and ``wo3_contrast``
        (factors on the simulator's signal), ``dose_e_per_A2`` [e/Å²], ``offset_fraction`` [fraction
        of the beam], ``extra_blur_nm`` [nm], ``pixel_zoom`` (the estimator's pixel size ÷ the
        recorded one, ≥ 1). Settings left out are drawn per sample from the training ranges.
    configs : int
        Calibration samples (θ from the continuous prior) [≥ 20], ``images`` each [1–24].
    seed : int
        Seeds θ, the aggregates and the images.

    Returns
    -------
    AcquisitionCalibration
        With a law for the acquisition unknown to the posterior and, where the estimator reads a
        known acquisition and ``stated`` has both its intensity scale and WO3/TiO2 contrast
        (within the training ranges), one for them told to it.
    """
    from agglib.core.validation import check_range
    from agglib.estimate import KNOWN_ACQUISITION, SampleEstimator
    from agglib.evaluate.calibration import given_acquisition
    from agglib.evaluate.sets import fresh_configurations
    from agglib.sets_training.recalibration import WIDENING_SIZES, fit_widening

    if not isinstance(estimator, SampleEstimator):
        raise TypeError("calibrate_for_acquisition needs a SampleEstimator (the new method); the paper's networks "
                        "give bootstrap intervals")
    check_range("configs", configs, low=20, integer=True)
    check_range("images", images, low=1, high=max(WIDENING_SIZES), integer=True)
    ranges = stated_acquisition_ranges(estimator, stated)
    known = estimator.reads_acquisition and all(key in stated for key in KNOWN_ACQUISITION)
    if known:
        estimator.check_known_acquisition({key: stated[key] for key in KNOWN_ACQUISITION})
    fresh = fresh_configurations(_estimator_profile(estimator), int(configs), int(images), int(seed), prior="continuous",
                                 acquisition=ranges, workers=workers, show_progress_bars=show_progress_bars)
    summaries = estimator.summaries(fresh["images"])
    sizes = [m for m in WIDENING_SIZES if m <= images]
    laws, rows = [], []
    for given in (False, True) if known else (False,):
        s = estimator.with_acquisition(summaries, given_acquisition(fresh)) if given else summaries
        law, table = fit_widening(estimator, s, fresh["theta"], fresh["config_id"], seed=int(seed), sizes=sizes)
        laws.append(law)
        rows += [{"M": int(m), "acquisition given": given, **{k: float(v) for k, v in row.items()}}
                 for m, row in table.iterrows()]
    return AcquisitionCalibration({k: float(v) for k, v in stated.items()}, ranges.to_dict(), laws[0],
                                  laws[1] if known else None, rows, int(configs), int(images), int(seed),
                                  _posterior_digest(estimator))
