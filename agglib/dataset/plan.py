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

__all__ = ["DatasetPlan", "make_plan", "TRAIN", "EVAL", "SPLIT_NAMES"]

TRAIN, EVAL = 0, 1
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


def make_plan(profile: Profile, seed: int) -> DatasetPlan:
    """The plan for ``profile`` and ``seed``.

    For each triple (θ_ρ, θ0, θ1) of the grid, ``df_per_triple`` distinct θ_Df are drawn from
    ``df_values``; each configuration gets ``samples_per_config`` samples, ``eval_per_config`` of
    them chosen at random for E. With the paper profile: 648 configurations, 32,400 samples,
    19,440 in T and 12,960 in E, every configuration 30 times in T and 20 times in E.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed={seed!r} must be an integer ≥ 0 (a dataset is always seeded)")
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
