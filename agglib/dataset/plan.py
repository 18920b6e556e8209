"""The sampling plan of a dataset: which θ each sample gets, its split and its seed (paper §2.3).

Everything here is a deterministic function of (profile, seed), computed before any sample is
drawn, so a build can be split into shards, run on any number of workers, killed and resumed,
and still produce the same samples.
"""

from __future__ import annotations

from dataclasses import dataclass
import itertools

import numpy as np

from agglib.profiles import Profile

__all__ = ["DatasetPlan", "make_plan", "TRAIN", "EVAL", "SPLIT_NAMES", "DESIGNS", "prior_ranges"]

TRAIN, EVAL = 0, 1
#: The dataset designs. ``grid`` — the paper's design (§2.3); ``continuous`` — θ_Df and θ_ρ
#: uniform over the grid's range, θ0 and θ1 uniform on their values, every configuration drawn
#: anew (the new method's training and calibration data; E's configurations differ from T's).
DESIGNS = ("grid", "continuous")
SPLIT_NAMES = {TRAIN: "T", EVAL: "E"}


@dataclass(frozen=True)
class DatasetPlan:
    """Per-sample assignments of a dataset.

    Attributes
    ----------
    configs : (C, 4) float64
        The parameter configurations θ = (θ_Df, θ_ρ, θ0, θ1).
    config_id : (n,) int32
        Configuration of each sample; samples are ordered configuration by configuration.
    split : (n,) uint8
        0 = training set T, 1 = evaluation set E.
    sample_seed : (n,) uint64
        Seed of each sample's aggregate and image (from ``SeedSequence(seed).spawn``).
    """

    configs: np.ndarray
    config_id: np.ndarray
    split: np.ndarray
    sample_seed: np.ndarray

    @property
    def n_samples(self) -> int:
        return int(self.config_id.size)

    @property
    def theta(self) -> np.ndarray:
        """(n, 4) θ of every sample."""
        return self.configs[self.config_id]


def prior_ranges(profile: Profile) -> dict:
    """The continuous prior's support of θ_Df and θ_ρ.

    θ_Df from the smallest to the largest grid value (the paper's range, Table 2: [1.5, 2.5];
    beyond 2.5 the aggregation often cannot meet the target dimension). θ_ρ over all of [0, 1],
    so that the grid's end values (0.1, 0.9) are not on the edge of the prior, where a posterior
    mean is pulled inwards.
    """
    return {"df": (float(min(profile.df_values)), float(max(profile.df_values))), "rho": (0.0, 1.0)}


def _continuous_plan(profile: Profile, seed: int) -> DatasetPlan:
    root = np.random.SeedSequence([int(seed), 1])
    plan_seq, sample_seq = root.spawn(2)
    rng = np.random.default_rng(plan_seq)
    ranges = prior_ranges(profile)
    n_t = profile.posterior_configs_T + profile.encoder_configs_T
    n_e = profile.posterior_configs_E
    c = n_t + n_e
    configs = np.stack([rng.uniform(*ranges["df"], c), rng.uniform(*ranges["rho"], c),
                        rng.choice(np.asarray(profile.theta0_values), c),
                        rng.choice(np.asarray(profile.theta1_values), c)], axis=1)
    per = np.where(np.arange(c) < n_t, profile.posterior_images_T, profile.posterior_images_E)
    config_id = np.repeat(np.arange(c, dtype=np.int32), per)
    split = np.where(config_id < n_t, TRAIN, EVAL).astype(np.uint8)
    sample_seed = np.array([s.generate_state(1, dtype=np.uint64)[0]
                            for s in sample_seq.spawn(config_id.size)], dtype=np.uint64)
    return DatasetPlan(configs, config_id, split, sample_seed)


def make_plan(profile: Profile, seed: int, design: str = "grid") -> DatasetPlan:
    """The plan for ``profile`` and ``seed``.

    For each triple (θ_ρ, θ0, θ1) of the grid, ``df_per_triple`` distinct θ_Df are drawn from
    ``df_values``; each configuration gets ``samples_per_config`` samples, ``eval_per_config`` of
    them chosen at random for E. With the paper profile: 648 configurations, 32,400 samples,
    19,440 in T and 12,960 in E, every configuration 30 times in T and 20 times in E.

    ``design="continuous"``: ``posterior_configs_T`` + ``encoder_configs_T`` configurations with
    ``posterior_images_T`` samples each form T (in this order: the first ones train the posterior,
    the others add to the encoder's training images), ``posterior_configs_E`` others with
    ``posterior_images_E`` each form E; θ_Df and θ_ρ uniform on :func:`prior_ranges`, θ0 and θ1
    uniform on their values.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed={seed!r} must be an integer ≥ 0 (a dataset is always seeded)")
    if design not in DESIGNS:
        raise ValueError(f"design={design!r}; accepted: {list(DESIGNS)}")
    if design == "continuous":
        return _continuous_plan(profile, seed)
    root = np.random.SeedSequence(int(seed))
    plan_seq, sample_seq = root.spawn(2)
    rng = np.random.default_rng(plan_seq)
    df_values = np.array(profile.df_values)
    configs = []
    for rho, t0, t1 in itertools.product(profile.rho_values, profile.theta0_values, profile.theta1_values):
        for df in np.sort(rng.choice(df_values, size=profile.df_per_triple, replace=False)):
            configs.append((float(df), float(rho), float(t0), float(t1)))
    configs = np.array(configs, dtype=np.float64)
    per = profile.samples_per_config
    config_id = np.repeat(np.arange(len(configs), dtype=np.int32), per)
    split = np.zeros(config_id.size, dtype=np.uint8)
    for c in range(len(configs)):
        chosen = rng.choice(per, size=profile.eval_per_config, replace=False)
        split[c * per + chosen] = EVAL
    sample_seed = np.array([s.generate_state(1, dtype=np.uint64)[0]
                            for s in sample_seq.spawn(config_id.size)], dtype=np.uint64)
    return DatasetPlan(configs, config_id, split, sample_seed)
