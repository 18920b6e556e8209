"""Estimators of θ from images of one sample (paper Eqs. 13–15).

* θ̂_Df = mean over the ν images of CNN^Df (Eq. 13);
* θ̂_ρ = mean of ρ̂(I), where ρ̂(I) = round(CNN^ρ_reg(I)) if CNN^ρ_class(I) > 0.5 (the aggregate
  looks homogeneous) and CNN^ρ_reg(I) otherwise (Eq. 14);
* θ̂0, θ̂1 = the multi-image networks' outputs on groups of ν images, rounded to integers
  (Eq. 15). With more than ν images, the outputs of ⌊M/ν⌋ disjoint groups are averaged before
  rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from agglib.nets import build_network
from agglib.preprocess import Preprocess

__all__ = ["TrainedNetwork", "load_estimator", "ParameterEstimator", "NETWORK_NAMES", "export_estimators",
           "SampleReading", "INTERVAL_KINDS",
           "shipped_models_dir", "SampleEstimator", "combine_per_image", "combine_groups", "load_default_estimator",
           "KNOWN_ACQUISITION", "known_acquisition_columns", "missing_known_acquisition"]

NETWORK_NAMES = ("df", "rho_reg", "rho_class", "theta0", "theta1")


@dataclass
class TrainedNetwork:
    """A trained network with its preprocessing and metadata (from a checkpoint)."""

    model: torch.nn.Module
    metadata: dict
    preprocess: Preprocess

    @property
    def target(self) -> str:
        return self.metadata["target"]

    @property
    def nu(self) -> int:
        return int(self.metadata["nu"])

    @property
    def pixel_size_nm(self) -> float:
        return float(self.metadata["pixel_size_nm"])

    @property
    def image_size_px(self) -> int:
        return int(self.metadata["image_size_px"])

    def _check_images(self, images: np.ndarray) -> np.ndarray:
        from agglib.core.validation import check_image_stack

        return check_image_stack(images, self.image_size_px, self.pixel_size_nm, f"the {self.target} network")

    def _inputs(self, images: np.ndarray) -> torch.Tensor:
        """Images [counts] (M, H, W) checked and preprocessed as the network reads them (M, 1, H, W)."""
        return self.preprocess(torch.from_numpy(self._check_images(images)))[:, None]

    @torch.no_grad()
    def predict(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Network outputs for images [counts], (M, H, W) → (M,) for single-image networks and
        (⌊M/ν⌋,) — one per consecutive group of ν images — for multi-image networks."""
        x = self._inputs(images)
        device = next(self.model.parameters()).device
        if self.nu > 1:
            groups = x.shape[0] // self.nu
            if groups == 0:
                raise ValueError(f"{x.shape[0]} images given; the {self.target} network needs at least "
                                 f"nu={self.nu} images of one sample")
            x = x[: groups * self.nu].reshape(groups, self.nu, *x.shape[1:])
        out = [self.model(x[i:i + batch_size].to(device)).cpu() for i in range(0, x.shape[0], batch_size)]
        return torch.cat(out).numpy()

    @torch.no_grad()
    def features(self, images: np.ndarray) -> torch.Tensor:
        """The feature extractor's output (M, F) for each image [counts] (of a multi-image network:
        before its head reads groups of ν)."""
        return self.model.features(self._inputs(images).to(next(self.model.parameters()).device)).cpu()

    @torch.no_grad()
    def group_outputs(self, features: torch.Tensor, order: np.ndarray) -> float:
        """Mean output of a multi-image network over the consecutive groups of ν images of
        ``order`` (indices into the rows of ``features``, :meth:`features`)."""
        groups = order.size // self.nu
        z = features[torch.from_numpy(order[: groups * self.nu])].reshape(groups, -1)
        device = next(self.model.parameters()).device
        return float(self.model.activation(self.model.head(z.to(device))).mean())


def load_estimator(path, device: str | torch.device = "cpu") -> TrainedNetwork:
    """A network from a checkpoint written by :func:`agglib.paper_training.train_network` (needs nothing else)."""
    from agglib.checkpoint import load_checkpoint

    state = load_checkpoint(path, kind="paper_network", map_location=device)
    meta = state["metadata"]
    model = build_network(meta["arch"], meta["input_size"], nu=meta["nu"], activation=meta["activation"],
                          outputs=int(meta.get("outputs", 1)))
    model.load_state_dict(state["model"])
    model.to(device).eval()
    return TrainedNetwork(model, meta, Preprocess(**meta["preprocess"]))


#: What :attr:`SampleReading.intervals` are: the posterior's central credible intervals, or the
#: percentiles of θ̂ over resamples of the images.
INTERVAL_KINDS = {"posterior": "posterior credible intervals",
                  "image bootstrap": "bootstrap intervals over the images: how much θ̂ moves with another set of "
                                     "images of the sample, not the networks' error"}


@dataclass
class SampleReading:
    """What an estimator reads from the images of one sample — the one result ``fit``, the CLI and
    the book handle, whichever method made it (:meth:`SampleEstimator.read_sample`,
    :meth:`ParameterEstimator.read_sample`).

    Attributes
    ----------
    estimate : dict
        θ̂ (``df``, ``rho``, ``theta0``, ``theta1``; the paper method adds its raw outputs).
    intervals : dict
        95 % interval ``(low, high)`` of each parameter, of the kind ``interval_kind``.
    interval_kind : str
        A key of :data:`INTERVAL_KINDS`.
    bootstrap : DataFrame
        θ̂ of each resample of the images (how much θ̂ moves with another set of images).
    per_image : dict
        Per-image readings (``df``, ``rho``, ``homogeneous``), arrays of length M.
    warnings : list of str
        The method's own warnings (estimates at the edge of its training range).
    posterior : PosteriorEstimate or None
        The joint posterior (the new method).
    out_of_model : dict or None
        The out-of-model check (:meth:`SampleEstimator.out_of_model`), where the method has one.
    settings : dict
        The method's own settings worth recording with the result (the paper method: ``nu``).
    """

    estimate: dict
    intervals: dict
    interval_kind: str
    bootstrap: "pd.DataFrame"
    per_image: dict
    warnings: list
    posterior: object = None
    out_of_model: dict | None = None
    settings: dict = field(default_factory=dict)


class _TrainedOnImages:
    """What the estimators share about their training images (from ``training_metadata``) and the
    protocol ``fit`` and the CLI call: :attr:`method`, :attr:`min_images`, :attr:`profile_name`,
    ``read_sample(images, resamples)`` → :class:`SampleReading`."""

    #: The method's name (``"sets"``: encoder + posterior; ``"paper"``: the paper's five networks).
    method: str = ""

    @property
    def min_images(self) -> int:
        """Images of one sample the method needs at least."""
        return 1

    @property
    def profile_name(self) -> str | None:
        """The profile the estimator was trained for."""
        return self.training_metadata.get("profile")

    @property
    def stem_settings(self):
        """The STEM settings of the training images (:class:`agglib.stem.StemSettings`)."""
        from agglib.stem import StemSettings

        return StemSettings(**self.training_metadata["stem_settings"])

    @property
    def dose_e_per_A2(self) -> float:
        """Electron dose of the training images [e/Å²]."""
        return float(self.training_metadata["stem_settings"]["dose_e_per_A2"])

    @property
    def field_of_view_nm(self) -> float:
        """Side of the training images [nm]; ``fit`` crops measured images to it."""
        s = self.training_metadata["stem_settings"]
        return float(s["image_size_px"] * s["pixel_size_nm"])

    @property
    def particles(self):
        """The model's particles the estimator was trained on (:class:`agglib.model.ParticleModel`;
        the paper's for stores that name none)."""
        from agglib.model.particles import ParticleModel

        return ParticleModel.from_dict(self.training_metadata.get("profile_fields", {}).get("particles"))


@dataclass
class ParameterEstimator(_TrainedOnImages):
    """The five networks that together estimate θ = (θ_Df, θ_ρ, θ0, θ1) from images of one sample."""

    df: TrainedNetwork
    rho_reg: TrainedNetwork
    rho_class: TrainedNetwork
    theta0: TrainedNetwork
    theta1: TrainedNetwork

    method = "paper"

    @classmethod
    def load(cls, directory, device: str = "cpu", checkpoint: str = "best.pt") -> "ParameterEstimator":
        """Load ``<directory>/<name>/<checkpoint>`` for the five networks."""
        from agglib.checkpoint import CheckpointError

        directory = Path(directory)
        nets = {}
        for name in NETWORK_NAMES:
            try:
                nets[name] = load_estimator(directory / name / checkpoint, device)
            except CheckpointError as err:
                raise CheckpointError(f"the {name} network of the paper method ({len(NETWORK_NAMES)} networks "
                                      f"in {directory}): {err}") from None
        sizes = {(n.image_size_px, n.pixel_size_nm) for n in nets.values()}
        if len(sizes) != 1:
            raise ValueError(f"the networks in {directory} were trained on different images: {sizes}")
        return cls(**nets)

    @property
    def pixel_size_nm(self) -> float:
        return self.df.pixel_size_nm

    @property
    def image_size_px(self) -> int:
        return self.df.image_size_px

    @property
    def nu(self) -> int:
        return self.theta0.nu

    @property
    def min_images(self) -> int:
        """ν: the multi-image networks of θ0 and θ1 read groups of ν images."""
        return self.nu

    @property
    def training_metadata(self) -> dict:
        """How the training images were made: ``stem_settings``, ``profile_fields`` and, for a
        randomised acquisition, ``acquisition_ranges``."""
        return self.df.metadata

    def per_image(self, images: np.ndarray) -> dict:
        """Per-image D̂_f(I) and ρ̂(I) (Eq. 14's case distinction) [arrays of length M]."""
        df = self.df.predict(images)
        reg = self.rho_reg.predict(images)
        homogeneous = self.rho_class.predict(images) > 0.5
        rho = np.where(homogeneous, np.round(reg), reg)
        return {"df": df, "rho": rho, "rho_without_classifier": reg, "homogeneous": homogeneous}

    def estimate(self, images: np.ndarray) -> dict:
        """θ̂ from M ≥ ν images [counts] of aggregates of one sample."""
        images = np.asarray(images)
        per = self.per_image(images)
        return {**combine_per_image(per["df"], per["rho"], per["rho_without_classifier"]),
                **combine_groups(self.theta0.predict(images), self.theta1.predict(images)),
                "n_images": int(images.shape[0] if images.ndim == 3 else 1)}

    def read_sample(self, images: np.ndarray, resamples) -> SampleReading:
        """θ̂ of M ≥ ν images [counts] of one sample (Eqs. 13–15) with 95 % intervals from the
        percentiles of θ̂ over ``resamples`` (index arrays into the M images): the method has no
        posterior. Warns where θ̂ or its interval leaves the training range."""
        import pandas as pd

        images = np.asarray(images)
        per = self.per_image(images)
        f0, f1 = self.theta0.features(images), self.theta1.features(images)

        def one(idx):
            return {**combine_per_image(per["df"][idx], per["rho"][idx]),
                    **combine_groups(self.theta0.group_outputs(f0, idx), self.theta1.group_outputs(f1, idx))}

        estimate = one(np.arange(images.shape[0]))
        boot = pd.DataFrame([one(np.asarray(idx)) for idx in resamples])
        intervals = {k: (float(np.percentile(boot[k], 2.5)), float(np.percentile(boot[k], 97.5)))
                     for k in ("df", "rho", "theta0", "theta1", "theta0_raw", "theta1_raw")}
        fields = self.training_metadata.get("profile_fields", {})
        ranges = {"df": fields.get("df_values"), "rho": [0.0, 1.0], "theta0": fields.get("theta0_values"),
                  "theta1": fields.get("theta1_values")}
        warnings = []
        for k, values in ranges.items():
            if values:
                lo, hi = min(values), max(values)
                if not lo <= estimate[k] <= hi or intervals[k][0] < lo or intervals[k][1] > hi:
                    warnings.append(f"θ̂ {k} = {estimate[k]:.3g} [{intervals[k][0]:.3g}, {intervals[k][1]:.3g}] leaves "
                                    f"the training range [{lo:g}, {hi:g}]: the networks extrapolate there")
        return SampleReading(estimate, intervals, "image bootstrap", boot,
                             {"df": per["df"], "rho": per["rho"], "homogeneous": per["homogeneous"]}, warnings,
                             settings={"nu": self.nu})

    def shadow_parameters(self, images, count: int, seed=None, draws: str = "point"):
        """θ̂ and ``count`` copies of it as model parameters (the paper's shadows share θ̂; there is
        no posterior to draw from, ``draws`` must be ``"point"``)."""
        if draws != "point":
            raise ValueError("the paper method gives a point estimate only; use draws='point'")
        from agglib.model.params import params_from_estimate

        est = self.estimate(images)
        return est, [params_from_estimate(est)] * int(count)


#: Folders of the shipped estimators under ``agglib/data/models/`` (package data; seed 0): the quick
#: profile's three and the new method for the ``bremen2023`` profile (6 nm particles, 80 nm fields of view).
SHIPPED_MODELS = {"sets": "sets-quick", "robust": "sets-quick-robust", "paper": "compact-quick",
                  "bremen2023": "sets-bremen2023"}


def shipped_models_dir(method: str = "sets") -> Path:
    """The trained estimators shipped with agglib (quick profile, seed 0): ``"sets"``, the new
    method (encoder + posterior) trained on images recorded with the paper's settings (the
    book's comparisons with the paper); ``"robust"``, the same trained on a randomised
    acquisition (the default of ``agglib fit``: measured images differ from the simulator,
    notebooks 2 and 10); ``"paper"``, the paper's five networks (compact feature extractor);
    ``"bremen2023"``, the new method for the ``bremen2023`` profile (the measured particles of
    Gerken et al. 2023 at 80 nm fields of view, randomised acquisition; notebook 03)."""
    if method not in SHIPPED_MODELS:
        raise ValueError(f"method={method!r}; accepted: {sorted(SHIPPED_MODELS)}")
    from agglib.core.locations import shipped_data_path

    return shipped_data_path("models", SHIPPED_MODELS[method])


def load_default_estimator(device: str = "cpu") -> "SampleEstimator":
    """The estimator ``agglib fit`` uses by default: the new method trained on a randomised
    acquisition (``agglib/data/models/sets-quick-robust``, 435 nm fields of view; see
    :func:`shipped_models_dir`). ``fit`` takes another of :data:`FIELD_OF_VIEW_ORDER` for images of
    a smaller field of view (:func:`shipped_fields_of_view`)."""
    return SampleEstimator.load(shipped_models_dir("robust"), device)


#: The shipped robust estimators ``fit`` may choose by default, largest field of view first.
FIELD_OF_VIEW_ORDER = ("robust", "bremen2023")


@lru_cache(maxsize=1)
def shipped_fields_of_view() -> dict:
    """``{method: field of view [nm]}`` of the shipped new-method estimators (those with a
    ``posterior.pt``), in the order of :data:`SHIPPED_MODELS`; read once."""
    out = {}
    for method in SHIPPED_MODELS:
        if (shipped_models_dir(method) / "posterior.pt").is_file():
            out[method] = SampleEstimator.load(shipped_models_dir(method)).field_of_view_nm
    return out


def export_estimators(run_dir, out_dir) -> Path:
    """Copy the five ``best.pt`` of a run to ``out_dir`` without optimizer state (small files).

    The result loads with :meth:`ParameterEstimator.load` and needs nothing else.
    """
    import json

    from agglib.checkpoint import load_checkpoint, save_checkpoint

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    summary = {}
    for name in NETWORK_NAMES:
        state = load_checkpoint(run_dir / name / "best.pt", kind="paper_network")
        metadata = dict(state["metadata"])
        init = metadata["train_config"].get("init_features")
        if init:                                 # a path on the training machine: keep only its run-relative part
            metadata["train_config"] = {**metadata["train_config"],
                                        "init_features": "/".join(Path(init).parts[-2:])}
        save_checkpoint(out_dir / name / "best.pt", "paper_network", metadata, state["model"],
                        history=state["history"])
        best = min(state["history"], key=lambda h: h["val_loss"])
        summary[name] = {"epoch": best["epoch"], "val_loss": best["val_loss"], "val_mae": best["val_mae"],
                         "arch": state["metadata"]["arch"], "parameters": state["metadata"]["parameters"]}
    meta = state["metadata"]
    summary["_dataset"] = {"profile": meta["profile"], "seed": meta["dataset_seed"],
                           "image_size_px": meta["image_size_px"], "pixel_size_nm": meta["pixel_size_nm"],
                           "dataset_sha256": meta["dataset_sha256"], "agglib": meta["agglib"]}
    from agglib.core.files import atomic_write_text
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=1))
    return out_dir


# ---------------------------------------------------------------------------- the new method

#: What the set posterior reads from each image (``metadata["inputs"]`` of a ``posterior.pt``):
#: :data:`INPUTS_HEADS` (the oldest estimators), :data:`INPUTS_WITH_STATISTICS` (with each image's
#: acquisition statistics) or :data:`INPUTS_WITH_ACQUISITION` (and the sample's
#: :data:`KNOWN_ACQUISITION` where the user knows it, marked missing where not).
INPUTS_HEADS = "encoder head outputs"
INPUTS_WITH_STATISTICS = "encoder head outputs + acquisition statistics"
INPUTS_WITH_ACQUISITION = ("encoder head outputs + acquisition statistics + the sample's intensity scale and "
                           "WO3/TiO2 contrast where known")
#: What a user may tell a posterior that reads :data:`INPUTS_WITH_ACQUISITION` about how a sample
#: was recorded (:class:`agglib.stem.acquisition.AcquisitionRanges`): the factor on the HAADF signal
#: of both materials against the simulator's table (``intensity_scale``: the detector's
#: sensitivity; notebook 2 measures 0.72 against published particles) and the extra factor on
#: WO3's (``wo3_contrast``: notebook 2 measures 0.69). Both or neither.
KNOWN_ACQUISITION = ("intensity_scale", "wo3_contrast")
_KNOWN_COLUMNS = len(KNOWN_ACQUISITION) + 1          # their values and a flag, last of a summary's columns


def missing_known_acquisition(acquisition) -> list[str]:
    """The keys of :data:`KNOWN_ACQUISITION` that ``acquisition`` (a mapping) lacks or leaves None:
    a known acquisition has both or is not given at all (the one rule ``fit``, the CLI and
    :func:`known_acquisition_columns` apply)."""
    from collections.abc import Mapping

    if not isinstance(acquisition, Mapping):
        raise ValueError(f"acquisition={acquisition!r}: a mapping {{'intensity_scale': …, 'wo3_contrast': …}} "
                         "or None (unknown) expected")
    return [key for key in KNOWN_ACQUISITION if acquisition.get(key) is None]


def _require_both(acquisition) -> None:
    """Raise unless ``acquisition`` (a mapping) gives both keys of :data:`KNOWN_ACQUISITION`."""
    missing = missing_known_acquisition(acquisition)
    if len(missing) == len(KNOWN_ACQUISITION):
        raise ValueError(f"acquisition={dict(acquisition)!r} gives neither {' nor '.join(KNOWN_ACQUISITION)}: pass "
                         "acquisition=None to leave the acquisition unknown")
    if missing:
        raise ValueError(f"the known acquisition {dict(acquisition)} lacks {', '.join(missing)}: give both "
                         f"{' and '.join(KNOWN_ACQUISITION)} (notebook 2 measures both against published particles), "
                         "or neither")


def known_acquisition_columns(acquisition, n: int) -> np.ndarray:
    """The columns (n, 3) a posterior reading :data:`INPUTS_WITH_ACQUISITION` gets beside each of
    n images' summaries: log intensity scale, WO3/TiO2 contrast factor and 1 where the sample's
    acquisition is known; (0, 0, 0) where it is not (``acquisition=None``).

    ``acquisition``: None or a mapping with both keys of :data:`KNOWN_ACQUISITION`, each a number
    or an array of n (one per image). The one place where a known acquisition becomes the
    posterior's input (training, recalibration, checks and ``fit`` all call it)."""
    out = np.zeros((int(n), _KNOWN_COLUMNS), dtype=np.float32)
    if acquisition is None:
        return out
    _require_both(acquisition)
    values = {}
    for key in KNOWN_ACQUISITION:
        try:
            values[key] = np.broadcast_to(np.asarray(acquisition[key], dtype=np.float64), (int(n),))
        except (TypeError, ValueError):
            raise ValueError(f"{key}={acquisition[key]!r}: a number (a factor on the simulator's signal) is "
                             "expected") from None
        bad = values[key][~(np.isfinite(values[key]) & (values[key] > 0))]
        if bad.size:
            raise ValueError(f"{key}={bad[0]:g}: a factor on the simulator's signal must be finite and > 0; leave "
                             "both out if you do not know them")
    out[:, 0] = np.log(values["intensity_scale"])
    out[:, 1] = values["wo3_contrast"]
    out[:, 2] = 1.0
    return out

#: The posterior family ``posterior.pt`` must hold (see :mod:`agglib.posterior`).
POSTERIOR_FAMILY = "ensemble of mixed posteriors: categorical (θ0, θ1) × Gaussian mixture (logit θ_Df, logit θ_ρ)"

def combine_groups(theta0_outputs, theta1_outputs) -> dict:
    """The paper's θ̂0, θ̂1 (Eq. 15): the multi-image networks' outputs on groups of ν images,
    averaged over the groups, then rounded to integers ≥ 0 (raw values kept)."""
    raw0, raw1 = float(np.mean(theta0_outputs)), float(np.mean(theta1_outputs))
    return {"theta0": int(np.rint(max(raw0, 0.0))), "theta1": int(np.rint(max(raw1, 0.0))),
            "theta0_raw": raw0, "theta1_raw": raw1}


def combine_per_image(df, rho, rho_reg=None) -> dict:
    """The paper's combination of per-image outputs into θ̂_Df and θ̂_ρ (Eqs. 13, 14): their means.

    ``rho`` is ρ̂(I) after the classifier's case distinction; ``rho_reg`` (optional) the regression
    alone. The one place where the paper method combines images (estimate, fit and evaluate use it).
    """
    out = {"df": float(np.mean(df)), "rho": float(np.mean(rho))}
    if rho_reg is not None:
        out["rho_without_classifier"] = float(np.mean(rho_reg))
    return out


@dataclass
class SampleEstimator(_TrainedOnImages):
    """The new method: one image encoder and a set-level posterior over θ (any number of images).

    ``estimate(images)`` gives a :class:`agglib.posterior.PosteriorEstimate`: the joint
    posterior over θ_Df, θ_ρ, θ0, θ1, from which come point estimates (mean of θ_Df and θ_ρ, mode
    of θ0 and θ1), credible intervals, joint posterior draws and densities.
    """

    encoder: "TrainedEncoder"
    posterior: torch.nn.Module
    grid: "ThetaGrid"
    metadata: dict

    method = "sets"

    @property
    def profile_name(self) -> str | None:
        return self.metadata.get("profile")

    def __repr__(self) -> str:
        s = self.stem_settings
        acq = "randomised acquisition" if self.training_metadata.get("acquisition_ranges") else "the paper's acquisition"
        return (f"SampleEstimator(images {s.image_size_px}² px at {s.pixel_size_nm} nm/px, counts at "
                f"{s.dose_e_per_A2:g} e/Å², trained on {acq}; profile {self.metadata.get('profile', '?')}; "
                f"prior {self.grid.support()})")

    @property
    def pixel_size_nm(self) -> float:
        return self.encoder.pixel_size_nm

    @property
    def image_size_px(self) -> int:
        return self.encoder.image_size_px

    @property
    def training_metadata(self) -> dict:
        """How the training images were made: ``stem_settings``, ``profile_fields`` and, for a
        randomised acquisition, ``acquisition_ranges``."""
        return self.encoder.metadata

    @property
    def widening(self) -> "Widening":
        """How much the trained posterior is widened for a sample of M images
        (:class:`agglib.posterior.Widening`, fitted on held-out simulations by
        :func:`agglib.sets_training.recalibration.fit_widening`; the identity if it never was).
        For a posterior that reads the acquisition: where it is not known."""
        from agglib.posterior import Widening

        return Widening.from_dict(self.metadata.get("widening"))

    @property
    def widening_known_acquisition(self) -> "Widening":
        """:attr:`widening` of samples whose acquisition is given (:attr:`reads_acquisition`:
        fitted on the same held-out configurations with their acquisition given)."""
        from agglib.posterior import Widening

        return Widening.from_dict(self.metadata.get("widening_known_acquisition"))

    @property
    def reads_acquisition(self) -> bool:
        """Whether the posterior reads a sample's :data:`KNOWN_ACQUISITION` where the user knows it
        (``metadata["inputs"]`` is :data:`INPUTS_WITH_ACQUISITION`)."""
        return self.metadata.get("inputs") == INPUTS_WITH_ACQUISITION

    @property
    def known_acquisition_ranges(self) -> dict:
        """``{key: (low, high)}`` of :data:`KNOWN_ACQUISITION`: the ranges the posterior's training
        samples were drawn from (empty for a posterior that does not :attr:`reads_acquisition`)."""
        if not self.reads_acquisition:
            return {}
        ranges = self.metadata["acquisition_ranges"]
        return {key: tuple(map(float, ranges[key])) for key in KNOWN_ACQUISITION}

    def check_known_acquisition(self, acquisition: dict) -> dict:
        """``acquisition`` (both keys of :data:`KNOWN_ACQUISITION`, numbers) checked against this
        estimator: it must read them and they must lie in the ranges its training images were
        drawn from; returns them as floats."""
        from agglib.core.validation import check_range

        if not self.reads_acquisition:
            raise ValueError(f"this estimator (profile {self.metadata.get('profile', '?')}) does not read a known "
                             "acquisition (intensity scale, WO3/TiO2 contrast): use the shipped default "
                             "(--models agglib/data/models/sets-quick-robust) or one trained with "
                             "posterior_acquisition_input=true, or leave both out")
        _require_both(acquisition)
        ranges = self.known_acquisition_ranges
        out = {}
        for key in KNOWN_ACQUISITION:
            try:
                value = float(acquisition[key])
            except (TypeError, ValueError):
                raise ValueError(f"{key}={acquisition[key]!r}: a number (a factor on the simulator's signal) is "
                                 "expected") from None
            lo, hi = ranges[key]
            try:
                out[key] = float(check_range(key, value, low=lo, high=hi))
            except ValueError as err:
                raise ValueError(f"{err}: the range this estimator's training samples were drawn from (a factor on "
                                 "the simulator's signal); outside it the posterior would extrapolate. Leave both "
                                 "out (--intensity-scale and --wo3-contrast) to treat the acquisition as unknown, or "
                                 "train an estimator on wider ranges") from None
        calibrated = self.metadata.get("acquisition_calibration")       # agglib calibrate's, applied by fit
        if calibrated is not None:
            if not calibrated.get("known_law"):
                raise ValueError("this estimator's intervals are calibrated for an acquisition unknown to the posterior "
                                 "(agglib calibrate without both --intensity-scale and --wo3-contrast in the training "
                                 "ranges): leave both out, or calibrate with them")
            stated = calibrated["stated"]
            if any(not math.isclose(out[key], float(stated[key]), rel_tol=1e-6) for key in KNOWN_ACQUISITION):
                raise ValueError(f"this estimator's intervals are calibrated for intensity_scale "
                                 f"{stated['intensity_scale']:g} and wo3_contrast {stated['wo3_contrast']:g} (agglib "
                                 f"calibrate); it was told intensity_scale {out['intensity_scale']:g} and wo3_contrast "
                                 f"{out['wo3_contrast']:g}: give the stated values, or none (the acquisition unknown "
                                 "to the posterior)")
        return out

    def with_acquisition(self, summaries: np.ndarray, acquisition) -> np.ndarray:
        """``summaries`` (N, K) of :meth:`summaries` with their known-acquisition columns set to
        ``acquisition`` (:func:`known_acquisition_columns`: None, or both keys of
        :data:`KNOWN_ACQUISITION` as numbers or arrays of N); a copy."""
        if not self.reads_acquisition:
            raise ValueError("this estimator does not read a known acquisition (metadata inputs: "
                             f"{self.metadata.get('inputs', INPUTS_HEADS)!r})")
        out = np.array(summaries, dtype=np.float32, copy=True)
        out[:, -_KNOWN_COLUMNS:] = known_acquisition_columns(acquisition, out.shape[0])
        return out

    @torch.no_grad()
    def from_summaries(self, summaries: np.ndarray, groups, recalibrated: bool = True) -> "PosteriorEstimate":
        """Posteriors of several samples from per-image summaries (N, K) (:meth:`summaries`):
        ``groups`` lists the rows of each sample.
        ``recalibrated=False``: the trained posterior without its :attr:`widening` (to fit one)."""
        from agglib.posterior import PosteriorEstimate

        groups = [np.asarray(g, dtype=np.int64).reshape(-1) for g in groups]
        if any(g.size == 0 for g in groups):
            raise ValueError("every sample needs at least one image")
        m = max(g.size for g in groups)
        idx = np.zeros((len(groups), m), dtype=np.int64)
        mask = np.zeros((len(groups), m), dtype=bool)
        for k, g in enumerate(groups):
            idx[k, :g.size], mask[k, :g.size] = g, True
        z = torch.as_tensor(summaries, dtype=torch.float32)[torch.from_numpy(idx)]
        chunks = [self.posterior.parameters_of(z[k:k + 512], torch.from_numpy(mask[k:k + 512]))
                  for k in range(0, len(groups), 512)]
        params = {key: np.concatenate([c[key] for c in chunks]) for key in chunks[0]}
        estimate = PosteriorEstimate(params, self.grid, mask.sum(axis=1))
        if not recalibrated:
            return estimate
        if not self.reads_acquisition:
            return self.widening.apply(estimate)
        known = np.asarray(summaries)[idx, -1] > 0.5                 # (S, M): the known-acquisition flag
        if np.any(known[mask] != np.repeat(known[:, 0], mask.sum(axis=1))):
            raise ValueError("a sample mixes images with and without a known acquisition; its images share one")
        return self._widened(estimate, known[:, 0])

    def _widened(self, estimate, known: np.ndarray):
        """``estimate`` widened by :attr:`widening_known_acquisition` where ``known`` (S,) and by
        :attr:`widening` elsewhere."""
        from agglib.posterior import widened

        w_u, t_u = self.widening.factors(estimate.n_images)
        w_k, t_k = self.widening_known_acquisition.factors(estimate.n_images)
        return widened(estimate, np.where(known[:, None], w_k, w_u), np.where(known, t_k, t_u))

    @property
    def out_of_model_reference(self):
        """What in-model samples look like to this estimator
        (:class:`agglib.misspecification.SummaryReference`), or None for estimators trained
        before it existed."""
        from agglib.misspecification import SummaryReference

        found = self.metadata.get("out_of_model_reference")
        return None if found is None else SummaryReference.from_dict(found)

    def out_of_model(self, summaries: np.ndarray) -> dict | None:
        """Does a sample look like anything the model makes? The encoder head outputs (M, K) of its images scored
        against the in-model reference (:meth:`agglib.misspecification.SummaryReference.score`:
        ``statistic``, ``threshold``, ``out_of_model`` …); None without a reference."""
        reference = self.out_of_model_reference
        return None if reference is None else reference.score(np.asarray(summaries, dtype=np.float64))

    def per_image(self, images) -> dict:
        """Per-image predictions of the encoder's heads (D_f, ρ, S_WO3, … in natural units)."""
        return self.encoder.encode(images).predictions

    def estimate(self, images, acquisition: dict | None = None) -> "PosteriorEstimate":
        """The posterior over θ from M ≥ 1 images [counts] of one sample (at the encoder's pixel size).

        ``acquisition``: the sample's intensity scale and WO3/TiO2 contrast where known
        (:data:`KNOWN_ACQUISITION`; estimators that :attr:`reads_acquisition` only).

        Returns
        -------
        PosteriorEstimate
            ``.point()`` (θ̂: mean of θ_Df and θ_ρ, median of θ0 and θ1), ``.interval(name, level)``,
            ``.sample(count)`` (posterior draws of θ), ``.table()``.
        """
        summaries = self.summaries(images, acquisition=acquisition)
        return self.from_summaries(summaries, [np.arange(summaries.shape[0])])

    @property
    def reads_statistics(self) -> bool:
        """Whether the posterior reads :func:`agglib.stem.acquisition.acquisition_statistics` beside
        the encoder's head outputs (``metadata["inputs"]``)."""
        return self.metadata.get("inputs", INPUTS_HEADS) in (INPUTS_WITH_STATISTICS, INPUTS_WITH_ACQUISITION)

    def summaries(self, images, encoded=None, acquisition: dict | None = None) -> np.ndarray:
        """What the set posterior reads from each of M images [counts] (M, K): the encoder's head
        outputs (``encoded``, if already computed, is reused), for estimators that read them the
        images' :func:`agglib.stem.acquisition.acquisition_statistics` and, for those that
        :attr:`reads_acquisition`, the sample's known ``acquisition`` (:meth:`check_known_acquisition`;
        None: not known) as :func:`known_acquisition_columns`. The one place where an image becomes
        the posterior's input; :meth:`from_summaries` takes the rows."""
        if acquisition is not None:
            acquisition = self.check_known_acquisition(acquisition)
        images = self.encoder.check_images(images)
        encoded = self.encoder.encode(images) if encoded is None else encoded
        if not self.reads_statistics:
            return encoded.outputs
        parts = [encoded.outputs, self.encoder.acquisition_statistics(images)]
        if self.reads_acquisition:
            parts.append(known_acquisition_columns(acquisition, images.shape[0]))
        return np.concatenate(parts, axis=1).astype(np.float32)

    def summary_parts(self, summaries: np.ndarray) -> dict:
        """The columns of :meth:`summaries` (N, K) by what they hold: ``heads`` (the encoder's
        outputs), ``statistics`` (the acquisition statistics, for estimators that
        :attr:`reads_statistics`) and ``known`` (the known-acquisition columns, for those that
        :attr:`reads_acquisition`) — in the order :meth:`summaries` writes them."""
        from agglib.stem.acquisition import ACQUISITION_STATISTICS

        summaries = np.asarray(summaries)
        widths = {"statistics": len(ACQUISITION_STATISTICS) if self.reads_statistics else 0,
                  "known": _KNOWN_COLUMNS if self.reads_acquisition else 0}
        heads = summaries.shape[1] - sum(widths.values())
        if summaries.ndim != 2 or heads < 1:
            raise ValueError(f"summaries of shape {summaries.shape}: (N, K) rows of this estimator's summaries "
                             f"expected ({widths['statistics']} statistics and {widths['known']} known-acquisition "
                             "columns after the encoder's outputs)")
        out = {"heads": summaries[:, :heads]}
        start = heads
        for name, width in widths.items():
            if width:
                out[name] = summaries[:, start:start + width]
                start += width
        return out

    def read_sample(self, images, resamples, acquisition: dict | None = None) -> SampleReading:
        """The posterior of M ≥ 1 images [counts] of one sample: θ̂ (posterior mean of θ_Df, θ_ρ,
        median of θ0, θ1), 95 % central credible intervals, θ̂ of ``resamples`` (index arrays into
        the M images), the out-of-model check; warns where the posterior piles up at an edge of
        the training range. ``acquisition``: the sample's known intensity scale and WO3/TiO2
        contrast (:data:`KNOWN_ACQUISITION`; None: unknown)."""
        from agglib.posterior import PARAMETERS

        images = self.encoder.check_images(images)
        encoded = self.encoder.encode(images)
        summaries = self.summaries(images, encoded, acquisition=acquisition)
        m = summaries.shape[0]
        post = self.from_summaries(summaries, [np.arange(m)])
        intervals = {k: tuple(float(v) for v in post.interval(k, 0.95)[0]) for k in PARAMETERS}
        warnings = []
        for k in PARAMETERS:
            lo, hi = post.grid.edges(k)[[0, -1]]
            if post.cdf(k, lo + 0.02 * (hi - lo))[0] > 0.25 or post.cdf(k, hi - 0.02 * (hi - lo))[0] < 0.75:
                warnings.append(f"the posterior of {k} piles up at the edge of the training range "
                                f"[{lo:g}, {hi:g}]: the sample may lie outside what the estimator was trained on")
        pred = encoded.predictions
        return SampleReading(post.point().iloc[0].to_dict(), intervals, "posterior",
                             self.from_summaries(summaries, resamples).point(),
                             {"df": pred["df"], "rho": pred["rho"], "homogeneous": pred["homogeneous"] > 0.5}, warnings,
                             post, self.out_of_model(encoded.outputs))

    def shadow_parameters(self, images, count: int, seed=None, draws: str = "posterior",
                          acquisition: dict | None = None):
        """θ̂ (posterior mean of θ_Df, θ_ρ; median of θ0, θ1) and ``count`` model parameters for
        digital shadows: θ drawn from the posterior (``draws="posterior"``: the shadows carry the
        estimate's uncertainty) or θ̂ itself (``"point"``: the paper's protocol, Table 5).
        ``acquisition``: as for :meth:`estimate`."""
        post = self.estimate(images, acquisition)
        return post.point().iloc[0].to_dict(), post.model_params(count, seed=seed, draws=draws)

    def save(self, directory, overwrite: bool = False) -> Path:
        """Write ``encoder.pt`` and ``posterior.pt`` (loadable with ``torch.load(weights_only=True)``).

        ``directory`` must be new, empty or made by agglib; ``overwrite`` replaces the two files
        only where agglib wrote them (see :func:`agglib.core.files.claim_output_dir`).
        """
        from agglib.checkpoint import save_checkpoint, weights_digest
        from agglib.core.files import claim_output_dir

        directory = claim_output_dir(directory, ("encoder.pt", "posterior.pt"), overwrite=overwrite,
                                     command="agglib SampleEstimator.save")
        state = self.encoder.model.state_dict()
        save_checkpoint(directory / "encoder.pt", "encoder", self.encoder.metadata, state)
        meta = {**self.metadata, "encoder_sha256": weights_digest(state)}
        save_checkpoint(directory / "posterior.pt", "set_posterior", meta, self.posterior.state_dict())
        return directory

    @classmethod
    def load(cls, directory, device: str = "cpu") -> "SampleEstimator":
        """The encoder and posterior in ``directory`` (``encoder.pt``, ``posterior.pt``)."""
        from agglib.checkpoint import CheckpointError, load_checkpoint, weights_digest
        from agglib.encoder import TrainedEncoder
        from agglib.posterior import PosteriorEnsemble, ThetaGrid

        directory = Path(directory)
        encoder = TrainedEncoder.load(directory / "encoder.pt", device)
        state = load_checkpoint(directory / "posterior.pt", kind="set_posterior")
        meta = state["metadata"]
        if meta.get("encoder_sha256") != weights_digest(encoder.model.state_dict()):
            raise CheckpointError(f"{directory / 'posterior.pt'} was trained on the summaries of another encoder "
                                  f"than {directory / 'encoder.pt'}; train the posterior again")
        grid = ThetaGrid(meta["grid"])
        if meta.get("family") != POSTERIOR_FAMILY:
            raise CheckpointError(f"{directory / 'posterior.pt'} holds a posterior of another family "
                                  f"({meta.get('family', 'independent categorical marginals')}; this agglib reads "
                                  f"{POSTERIOR_FAMILY!r}); train it again with agglib train-estimator")
        model = PosteriorEnsemble.of_shape(meta["in_dim"], grid, meta["hidden"], meta["components"], meta["members"])
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as err:
            raise CheckpointError(f"{directory / 'posterior.pt'} does not fit this agglib's posterior "
                                  f"({str(err).splitlines()[-1].strip()}); train it again") from None
        return cls(encoder, model.eval(), grid, meta)
