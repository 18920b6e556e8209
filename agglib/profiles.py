"""Run-size profiles (``tiny``, ``quick``, ``paper``), defined as data in ``profiles.yaml``."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path

import yaml

from agglib import config
from agglib.core.validation import check_range
from agglib.model.particles import PAPER_PARTICLES, ParticleModel

_PROFILES_FILE = Path(__file__).with_name("profiles.yaml")


#: How a profile's images are recorded. ``"fixed"`` — every image with the paper's settings;
#: ``"randomised"`` — each image with its own acquisition drawn from
#: :class:`agglib.stem.acquisition.AcquisitionRanges` (intensity scale, WO3/TiO2 contrast, dose,
#: vacuum offset, blur, pixel size) — robust estimators.
ACQUISITIONS = ("fixed", "randomised")

@dataclass(frozen=True)
class Profile:
    """How large each computation is.

    Attributes
    ----------
    name : str
        The profile's name (a key of ``profiles.yaml``, e.g. ``quick``).
    description : str
        One line on what the profile is for.
    batch_size : int
        ν, images (aggregates) per batch of one configuration (paper: 12).
    fig4_aggregates : int
        Aggregates drawn over the grid for the Df/ρ densities (paper's Fig. 4: 19,440).
    fig5_batches : int
        Batches per θ specification for the cluster-size figure (Fig. 5).
    fov_aggregates : int
        Grid aggregates drawn to measure the share inside the STEM field of view (notebook 02).
    df_values : tuple
        The dataset's grid of θ_Df values (paper §2.3: 1.5…2.5).
    rho_values : tuple
        The dataset's grid of θ_ρ values (paper §2.3: 0.1…0.9).
    theta0_values : tuple
        The dataset's grid of θ0 values (paper §2.3: 1…6).
    theta1_values : tuple
        The dataset's grid of θ1 values (paper §2.3: 1…6).
    df_per_triple : int
        Distinct θ_Df drawn at random for each triple (θ_ρ, θ0, θ1) (paper: 2).
    samples_per_config : int
        Samples (aggregate + image) per parameter configuration (paper: 50).
    eval_per_config : int
        Of those, how many go to the evaluation set E (paper: 20; the rest form T).
    image_size_px : int
        Side of the dataset's images [px] (paper: 512).
    pixel_size_nm : float
        Pixel size of the dataset's images [nm]; image_size_px × pixel_size_nm is the field of view.
    shard_size : int
        Samples per unit of work of the dataset build (each shard is written once).
    train_arch : str
        Feature extractor of the estimators (``compact`` or ``paper``).
    epochs_single : int
        Training epochs of the single-image networks (θ_Df, ρ regression and classifier).
    epochs_multi : int
        Training epochs of the multi-image networks (θ0, θ1).
    train_schedule : str
        Learning-rate schedule, ``constant`` (the paper) or ``onecycle`` (see :class:`agglib.paper_training.TrainConfig`).
    lr_single : float
        (Peak) Adam learning rate of the single-image networks (paper: 1e-4).
    lr_multi : float
        (Peak) Adam learning rate of the multi-image networks (paper: 1e-4).
    group_repeats : int
        Regroupings of each configuration's training images per epoch (θ0, θ1).
    pretrain_epochs : int
        Epochs of the ``descriptors`` networks whose f initialises θ0's and θ1's f (0: none,
        the paper's training from scratch).
    val_images : int
        Images validated after each training epoch, to pick the best epoch (multi-image
        networks: val_images // ν groups) of the validation split V carved out of T (the best
        epoch is chosen on V; E is only scored after training); 0 validates on all of V.
    bn_batches : int
        Batches of T over which the paper networks' BatchNorm statistics are recomputed before
        each validation (:func:`agglib.engine.recalibrate_batchnorm`); 0 keeps training's running
        averages (the paper). At the paper profile (constant rate, batch 16) the running averages
        make the validation error jump between epochs; recomputed, it falls steadily.
    shadow_configs : int
        Configurations of E compared through digital shadows (paper: 50).
    shadow_aggregates : int
        Aggregates drawn from θ and from θ̂ per configuration (paper: 800).
    baseline_images : int
        Training images used to fit the baselines' power law and thresholds.
    arch_train_images : int
        Training images (the same budget for each) in the architecture comparison (Table 6).
    fit_images : int
        Simulated "measured" images of one sample in notebook 10.
    fit_shadows : int
        Digital shadows drawn from the estimate in notebook 10.
    method : str
        Default estimator: ``sets`` (one encoder, a set-level posterior over θ; see
        :mod:`agglib.posterior`) or ``paper`` (five networks, Eqs. 13–15).
    encoder_epochs : int
        Epochs of the image encoder on the grid dataset's T.
    encoder_lr : float
        Peak learning rate of the encoder (one-cycle).
    encoder_bf16 : bool
        Train the encoder under bfloat16 autocast where the device has fast bf16 (GPUs, CPUs with
        AVX-512; :func:`agglib.core.distributed.fast_bfloat16`), in float32 elsewhere.
    posterior_configs_T : int
        Configurations of the continuous dataset (θ drawn anew) for training the posterior (T).
    posterior_configs_E : int
        Configurations of the continuous dataset (θ drawn anew) for checking the posterior's
        calibration (E).
    encoder_configs_T : int
        Further configurations of the continuous dataset's T whose images the encoder trains on
        (beside the grid dataset's T); the posterior never sees them.
    posterior_images_T : int
        Samples per configuration of the continuous dataset in T.
    posterior_images_E : int
        Samples per configuration of the continuous dataset in E.
    posterior_steps : int
        Optimizer steps of the set-level posterior.
    posterior_datasets : int
        Continuous datasets the posterior trains on (seeds ``seed``, ``seed + 1`` …; the encoder
        reads only the first's, the others' encoder configurations go unused): more
        configurations than one dataset's ``posterior_configs_T``.
    posterior_acquisition_input : bool
        The posterior also reads a sample's intensity scale and WO3/TiO2 contrast where the user
        knows them (:data:`agglib.estimate.KNOWN_ACQUISITION`), trained with them given and
        marked missing (randomised acquisitions only).
    fresh_configs : int
        Configurations drawn anew from the grid (images made in memory) for the fresh-θ
        evaluation and the error against the number of images.
    fresh_images : int
        Images per fresh configuration (the largest M studied).
    robustness_configs : int
        Fresh configurations recorded under every perturbation of the robustness table
        (:func:`agglib.evaluate.robustness.robustness_table`, notebook 10).
    robustness_images : int
        Images of each of those configurations (``robustness_configs``) in the robustness table.
    calibration_configs : int
        Fresh configurations from the continuous prior for the calibration checks of notebook 6
        (:func:`agglib.evaluate.calibration.calibration_report`).
    calibration_images : int
        Images of each of those configurations (``calibration_configs``; the largest M checked)
        in the calibration checks of notebook 6.
    acquisition : str
        ``"fixed"`` (the paper's settings for every image) or ``"randomised"`` (each image with its
        own acquisition: the robust estimators' datasets; see :data:`ACQUISITIONS`).
    dose_e_per_A2 : float
        Electron dose of the simulated images [e/Å²] (the paper's 149).
    particles : ParticleModel
        The model's particles: radius law per material [nm] and the law of N (default: the
        paper's; in a profile file ``particles: {radius_wo3_nm: {mean: 12, sd: 3}, n_particles:
        {range: [20, 80]}}`` or ``{measured: […]}``; see :mod:`agglib.model.particles`).
    source : str
        The profile file it was read from (empty for the profiles shipped in ``profiles.yaml``).
    """

    name: str
    description: str
    batch_size: int
    fig4_aggregates: int
    fig5_batches: int
    fov_aggregates: int
    df_values: tuple
    rho_values: tuple
    theta0_values: tuple
    theta1_values: tuple
    df_per_triple: int
    samples_per_config: int
    eval_per_config: int
    image_size_px: int
    pixel_size_nm: float
    shard_size: int
    train_arch: str
    epochs_single: int
    epochs_multi: int
    train_schedule: str
    lr_single: float
    lr_multi: float
    group_repeats: int
    pretrain_epochs: int
    val_images: int
    shadow_configs: int
    shadow_aggregates: int
    baseline_images: int
    arch_train_images: int
    fit_images: int
    fit_shadows: int
    method: str = "sets"
    encoder_epochs: int = 20
    encoder_lr: float = 3e-3
    encoder_bf16: bool = True
    posterior_configs_T: int = 1200
    posterior_configs_E: int = 400
    encoder_configs_T: int = 0
    posterior_images_T: int = 20
    posterior_images_E: int = 12
    posterior_steps: int = 2000
    posterior_datasets: int = 1
    posterior_acquisition_input: bool = False
    fresh_configs: int = 90
    fresh_images: int = 24
    robustness_configs: int = 60
    robustness_images: int = 12
    calibration_configs: int = 300
    calibration_images: int = 24
    acquisition: str = "fixed"
    bn_batches: int = 0
    dose_e_per_A2: float = 149.0
    particles: ParticleModel = PAPER_PARTICLES
    source: str = ""

    def __post_init__(self):
        try:
            object.__setattr__(self, "particles", ParticleModel.from_dict(self.particles))
        except ValueError as err:
            raise ValueError(f"{self.name}.particles: {err}") from None
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "int":
                check_range(f"{self.name}.{f.name}", value, low=0 if f.name in ("pretrain_epochs", "val_images", "encoder_configs_T", "bn_batches") else 1,
                            integer=True)
            elif f.type == "tuple":
                if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__") or len(value) == 0:
                    raise ValueError(f"{self.name}.{f.name}={value!r} must be a non-empty list of numbers")
                object.__setattr__(self, f.name, tuple(float(v) for v in value))
        check_range(f"{self.name}.pixel_size_nm", self.pixel_size_nm, low=0.0, high=100.0,
                    low_inclusive=False, unit="nm")
        check_range(f"{self.name}.dose_e_per_A2", self.dose_e_per_A2, low=0.0, high=1e7, low_inclusive=False,
                    unit="e/Å²")
        check_range(f"{self.name}.df_per_triple", self.df_per_triple, low=1, high=len(self.df_values),
                    integer=True)
        check_range(f"{self.name}.eval_per_config", self.eval_per_config, low=1,
                    high=self.samples_per_config - 1, integer=True)
        for name in ("lr_single", "lr_multi"):
            check_range(f"{self.name}.{name}", getattr(self, name), low=0.0, high=1.0, low_inclusive=False)
        if self.acquisition not in ACQUISITIONS:
            raise ValueError(f"{self.name}.acquisition={self.acquisition!r}; accepted: {', '.join(ACQUISITIONS)}")
        if self.posterior_acquisition_input and self.acquisition != "randomised":
            raise ValueError(f"{self.name}.posterior_acquisition_input=true needs acquisition: randomised (with the "
                             f"paper's fixed acquisition there is nothing to know; acquisition={self.acquisition!r})")
        if self.method not in ("sets", "paper"):
            raise ValueError(f"{self.name}.method={self.method!r}; accepted: 'sets', 'paper'")
        check_range(f"{self.name}.encoder_lr", self.encoder_lr, low=0.0, high=1.0, low_inclusive=False)
        if self.train_schedule not in ("constant", "onecycle"):
            raise ValueError(f"{self.name}.train_schedule={self.train_schedule!r}; accepted: 'constant', 'onecycle'")
        if len(set(self.df_values)) != len(self.df_values):
            raise ValueError(f"{self.name}.df_values has repeated values: {self.df_values}")

    @property
    def n_configs(self) -> int:
        """Parameter configurations (triples × θ_Df values per triple)."""
        return (len(self.rho_values) * len(self.theta0_values) * len(self.theta1_values)
                * self.df_per_triple)

    @property
    def n_samples(self) -> int:
        """Samples of the grid dataset (configurations × samples per configuration)."""
        return self.n_configs * self.samples_per_config

    def dataset_fields(self, design: str = "grid") -> dict:
        """The fields that define a dataset (a store built with other values is refused)."""
        keys = ("df_values", "rho_values", "theta0_values", "theta1_values", "df_per_triple",
                "samples_per_config", "eval_per_config", "image_size_px", "pixel_size_nm")
        if design != "grid":
            keys = ("df_values", "rho_values", "theta0_values", "theta1_values", "posterior_configs_T",
                    "posterior_configs_E", "encoder_configs_T", "posterior_images_T", "posterior_images_E",
                    "image_size_px", "pixel_size_nm")
        if self.acquisition != "fixed":        # stores of the paper's fixed acquisition keep their identity
            keys = (*keys, "acquisition")
        if not self.particles.is_paper:        # stores of the paper's particles keep their identity
            keys = (*keys, "particles")
        if self.dose_e_per_A2 != 149.0:        # … and those of the paper's dose
            keys = (*keys, "dose_e_per_A2")
        return {k: v for k, v in self.to_dict().items() if k in keys}

    @property
    def field_of_view_nm(self) -> float:
        """Side of the images [nm] (image_size_px × pixel_size_nm)."""
        return self.image_size_px * self.pixel_size_nm

    def to_dict(self) -> dict:
        """Every field by name (tuples as lists, the particles in a profile file's form)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "particles"}
        out = {k: (list(v) if isinstance(v, tuple) else v) for k, v in out.items()}
        out["particles"] = self.particles.to_dict()
        return out

    def __repr__(self) -> str:
        """One line: the name, the images and the grid (every field: :meth:`to_dict`)."""
        grid = "×".join(str(len(v)) for v in (self.df_values, self.rho_values, self.theta0_values, self.theta1_values))
        return (f"Profile({self.name!r}: {self.image_size_px}² px images at {self.pixel_size_nm:g} nm/px "
                f"({self.image_size_px * self.pixel_size_nm:.0f} nm field of view), {self.n_configs} configurations "
                f"× {self.samples_per_config} samples from a {grid} grid of (θ_Df, θ_ρ, θ0, θ1), acquisition "
                f"{self.acquisition}, method {self.method!r}; every field: .to_dict())")


def available_profiles() -> list[str]:
    """Names of the profiles defined in ``profiles.yaml``."""
    return list(yaml.safe_load(_PROFILES_FILE.read_text()))


def is_profile_file(name) -> bool:
    """Whether ``name`` names a profile file (``.yaml``/``.yml``) rather than a shipped profile."""
    return isinstance(name, Path) or str(name).endswith((".yaml", ".yml"))


def _profile_file_fields(path: Path, table: dict) -> dict:
    """A profile file's fields: ``base`` (a shipped profile, default ``quick``) overridden by the file's."""
    if not path.is_file():
        raise FileNotFoundError(f"profile file {path} does not exist (write one with `agglib profiles write`)")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not a YAML profile file ({str(err).splitlines()[0]})") from None
    if data is None:
        raise ValueError(f"{path}: the profile file is empty (write one with `agglib profiles write`)")
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a profile file is a mapping of profile fields; got {type(data).__name__}")
    data = dict(data)
    base = data.pop("base", "quick")
    if base not in table:
        raise ValueError(f"{path}: base={base!r} is unknown; accepted: {sorted(table)}")
    return {**table[base], **data, "source": str(path)}


def load_profile(name: str | Path | None = None, **overrides) -> Profile:
    """The profile ``name`` (default ``config['profile']``) with fields overridden.

    ``name`` is a shipped profile (``tiny``, ``quick``, ``paper``; see ``profiles.yaml``) or the
    path of a profile file (``*.yaml``, e.g. written by ``agglib profiles write``): a mapping of
    profile fields over the shipped profile named by its ``base`` entry (default ``quick``); the
    profile's name is the file's stem.

    Raises
    ------
    ValueError
        For an unknown profile or field, naming the accepted ones (and the file).
    """
    name = name or config.get("profile")
    table = yaml.safe_load(_PROFILES_FILE.read_text())
    known = {f.name for f in fields(Profile)} - {"name", "source"}
    if is_profile_file(name):
        path = Path(name)
        values = _profile_file_fields(path, table)
        bad = set(values) - known - {"source"}
        if bad:
            raise ValueError(f"{path}: unknown profile fields {sorted(bad)}; accepted: {sorted(known)}")
        name = path.stem
    elif name not in table:
        raise ValueError(f"profile={name!r} is unknown; accepted: {sorted(table)} or a profile file (*.yaml)")
    else:
        values = table[name]
    bad = set(overrides) - known
    if bad:
        raise ValueError(f"unknown profile fields {sorted(bad)}; accepted: {sorted(known)}")
    try:
        return replace(Profile(name=name, **values), **overrides)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{values['source']}: {err}" if values.get("source") else str(err)) from None
