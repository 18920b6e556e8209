"""Evaluating the new method (encoder + set-level posterior) — and scoring any θ̂ the same way.

* :func:`theta_scores` — the one place where θ̂ is scored against θ: MAE of θ̂_Df and θ̂_ρ,
  exact / within ±1 / MAE of θ̂0 and θ̂1 (used for both methods and the trivial predictor).
* :func:`posterior_on_store` — posteriors of groups of M images of one configuration.
* :func:`error_by_set_size` — scores against the number of images M (replaces the paper's Fig. 9).
* :func:`ceiling` — the same set-level posterior fed the *true* per-image descriptors instead of
  the encoder's: what the images could give with a perfect encoder.
* :func:`fresh_configurations` — configurations drawn anew from the grid with aggregates and
  images made in memory (never stored, never seen in training).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from agglib.dataset.store import DatasetStore
from agglib.evaluate.estimators import batch_groups, disjoint_groups, mae

__all__ = ["theta_scores", "trivial_theta_scores", "posterior_on_store", "error_by_set_size",
           "ceiling", "true_summaries", "fresh_configurations", "CeilingShadows"]

def theta_scores(estimate, truth) -> dict:
    """Scores of θ̂ (n, 4) against θ (n, 4): MAE of θ_Df, θ_ρ; exact, within ±1 and MAE of θ0, θ1."""
    est, truth = np.atleast_2d(np.asarray(estimate, float)), np.atleast_2d(np.asarray(truth, float))
    out = {"θ̂_Df MAE": mae(est[:, 0], truth[:, 0]), "θ̂_ρ MAE": mae(est[:, 1], truth[:, 1])}
    for k, name in ((2, "θ̂0"), (3, "θ̂1")):
        d = np.abs(np.rint(est[:, k]) - truth[:, k])
        out.update({f"{name} exact": float(np.mean(d == 0)), f"{name} within ±1": float(np.mean(d <= 1)),
                    f"{name} MAE": float(np.mean(d))})
    return out


def trivial_theta_scores(train_theta: np.ndarray, truth) -> dict:
    """Scores of the trivial predictor: the mean of the training θ (θ0, θ1 rounded) for every sample."""
    const = np.asarray(train_theta, float).mean(axis=0)
    const[2:] = np.rint(const[2:])
    truth = np.atleast_2d(np.asarray(truth, float))
    return theta_scores(np.repeat(const[None], len(truth), axis=0), truth)


def posterior_on_store(estimator, summaries: np.ndarray, store: DatasetStore, m: int, split: str = "E",
                       seed: int = 0, repeats: int = 1, rows: np.ndarray | None = None):
    """Posteriors of disjoint groups of ``m`` images of one configuration of ``store``.

    Parameters
    ----------
    estimator : SampleEstimator
    summaries : ndarray (n, K)
        Per-image summaries of the store's images (rows aligned with ``rows``, default all samples).
    m : int
        Images per group (ν).
    rows : ndarray, optional
        Store indices of the rows of ``summaries`` (when only some images were encoded).

    Returns
    -------
    (PosteriorEstimate, ndarray (groups, 4))
        The posteriors and the true θ of each group.
    """
    groups = batch_groups(store, m, split, seed=seed, repeats=repeats)
    theta = store.theta[[g[0] for g in groups]]
    if rows is not None:
        lookup = np.full(len(store), -1, dtype=np.int64)
        lookup[np.asarray(rows)] = np.arange(len(rows))
        groups = [lookup[g] for g in groups]
        if any((g < 0).any() for g in groups):
            raise ValueError("summaries do not cover every image of the groups")
    return estimator.from_summaries(summaries, groups), theta


def error_by_set_size(estimator, summaries, theta, config_id, sizes, seed: int = 0, repeats: int = 3) -> pd.DataFrame:
    """:func:`theta_scores` of θ̂ from M images for each M in ``sizes`` (disjoint groups per configuration).

    ``summaries`` (n, K), ``theta`` (n, 4) and ``config_id`` (n,) describe images of several
    configurations; configurations with fewer than M images are skipped for that M. The groups of
    each M are drawn from ``default_rng([seed, M])``: the same whatever other sizes are scored (the
    book's notebook 5 and ``benchmarks/estimator_scores.py`` score the same groups).
    """
    rows = []
    for m in sizes:
        groups = disjoint_groups(np.arange(len(config_id)), config_id, m, np.random.default_rng([seed, int(m)]),
                                 repeats)
        if not groups:
            continue
        post = estimator.from_summaries(summaries, groups)
        truth = theta[[g[0] for g in groups]]
        rows.append({"M": int(m), "groups": len(groups), **theta_scores(post.point().to_numpy(), truth),
                     "mean posterior SD θ_Df": float(post.sd("df").mean()),
                     "mean posterior SD θ_ρ": float(post.sd("rho").mean())})
    return pd.DataFrame(rows)


#: Posteriors in the ceiling's ensemble (:func:`ceiling`).
CEILING_MEMBERS = 2


def ceiling(profile, continuous: DatasetStore, estimator, seed: int = 0, show_progress_bars: bool | None = False,
            cache_dir=None):
    """A set-level posterior trained and applied on the *true* per-image descriptors.

    Same architecture and settings as ``estimator``'s posterior, but an ensemble of
    :data:`CEILING_MEMBERS` (the ceiling's point estimates are what the book compares; each member
    costs as much training as one of the estimator's) and not widened (the estimator's widening,
    :mod:`agglib.sets_training.recalibration`, moves its θ0, θ1 medians slightly: at M = 12 its exact hits
    change by under 2 points), trained on the standardised true labels of
    the continuous dataset's T (what a perfect encoder would output). Returns a
    :class:`agglib.estimate.SampleEstimator` whose :meth:`from_summaries` takes
    :func:`true_summaries` of any store. With ``cache_dir`` the trained posterior is kept in
    ``cache_dir/ceiling.pt`` (keyed by the estimator's posterior, the store and the seed) and
    loaded instead of trained again (notebooks 5 and 8 use the same ceiling).
    """
    from agglib.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, weights_digest
    from agglib.estimate import SampleEstimator
    from agglib.posterior import PosteriorEnsemble
    from agglib.sets_training._contracts import PosteriorConfig
    from agglib.sets_training.posterior import train_posterior_ensemble

    t_idx = continuous.continuous_roles()["posterior"]
    summaries = true_summaries(continuous, estimator)
    config = PosteriorConfig(**{**estimator.metadata["train_config"], "members": CEILING_MEMBERS})
    key = {"posterior_sha256": weights_digest(estimator.posterior.state_dict()),
           "dataset_sha256": continuous.identity_sha256(), "seed": int(seed), "in_dim": int(summaries.shape[1]),
           "members": CEILING_MEMBERS}
    path = Path(cache_dir) / "ceiling.pt" if cache_dir is not None else None
    if path is not None and path.is_file():
        try:
            state = load_checkpoint(path, kind="ceiling")
            if state["metadata"] == key:
                model = PosteriorEnsemble.of_shape(summaries.shape[1], estimator.grid, config.hidden,
                                                   config.components, config.members)
                model.load_state_dict(state["model"])
                return SampleEstimator(None, model.eval(), estimator.grid, {"kind": "ceiling"})
        except (CheckpointError, RuntimeError):
            pass                                   # another ceiling: trained again below
    model, _ = train_posterior_ensemble(summaries[t_idx], continuous.theta[t_idx], continuous.config_id[t_idx],
                                        estimator.grid, config, show_progress_bars=show_progress_bars)
    if path is not None:
        save_checkpoint(path, "ceiling", key, model.state_dict())
    return SampleEstimator(None, model, estimator.grid, {"kind": "ceiling"})


class CeilingShadows:
    """The ceiling posterior (:func:`ceiling`) as an estimator for :func:`shadow_comparison`: it
    reads the true per-image descriptors of store rows instead of images (Table 5's ceiling:
    shadows from what a perfect encoder would allow). Pass ``read=ceiling_shadows.read``."""

    def __init__(self, ceiling_estimator, store: DatasetStore, sample_estimator):
        self.ceiling = ceiling_estimator
        self.summaries = true_summaries(store, sample_estimator)

    def read(self, rows) -> np.ndarray:
        """The true per-image summaries of store ``rows``."""
        return self.summaries[np.asarray(rows)]

    def shadow_parameters(self, summaries, count: int, seed=None, draws: str = "point"):
        post = self.ceiling.from_summaries(summaries, [np.arange(len(summaries))])
        return post.point().iloc[0].to_dict(), post.model_params(count, seed=seed, draws=draws)


def true_summaries(store: DatasetStore, estimator) -> np.ndarray:
    """The true per-image labels of a store in the encoder heads' units (see :func:`ceiling`)."""
    from agglib.encoder import standardised_labels

    return standardised_labels(store.theta, store.descriptors, estimator.encoder.metadata["label_scaling"])


def fresh_configurations(profile, n_configs: int, images_per_config: int, seed: int, *, prior: str = "grid",
                         acquisition=None, workers: int | None = None,
                         show_progress_bars: bool | None = None) -> dict:
    """Configurations drawn anew, with aggregates and images made in memory (never stored, never
    seen in training).

    Parameters
    ----------
    profile : Profile
        Its grid, prior and STEM settings (image size [px], pixel size [nm]).
    n_configs, images_per_config : int
        Configurations (samples) and the images M of each.
    seed : int
        Seeds θ, the aggregates and the images; the same seed with another ``acquisition`` gives
        the same aggregates recorded differently (a paired design).
    prior : {"grid", "continuous"}
        ``"grid"``: θ_ρ, θ0, θ1 uniform on the profile's grid values and θ_Df on its values (the
        paper's design, for errors comparable with its E); ``"continuous"``: θ_Df and θ_ρ
        uniform on :func:`agglib.dataset.plan.prior_ranges`, θ0 and θ1 uniform on their values —
        the prior the posterior was trained under, so calibration checks apply.
    acquisition : None, dict or AcquisitionRanges
        ``None``: the simulator's own settings; a dict (keys of
        :data:`agglib.stem.acquisition.ACQUISITION_KEYS`): that acquisition for every image;
        :class:`agglib.stem.acquisition.AcquisitionRanges`: one acquisition drawn per
        configuration and shared by its images (a sample recorded in one microscope session).

    Returns
    -------
    dict
        ``images`` (n, H, W) [counts], ``theta`` (n, 4), ``config_id`` (n,), ``descriptors``
        (DataFrame) and ``acquisitions`` (list of one dict per configuration, or None).
    """
    from agglib.core.parallel import ordered_map
    from agglib.dataset.build import stem_settings_for
    from agglib.dataset.plan import prior_ranges
    from agglib.descriptors import DESCRIPTOR_NAMES
    from agglib.stem.acquisition import AcquisitionRanges, draw_acquisition

    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 99]))
    if prior == "grid":
        configs = np.stack([rng.choice(profile.df_values, n_configs), rng.choice(profile.rho_values, n_configs),
                            rng.choice(profile.theta0_values, n_configs), rng.choice(profile.theta1_values, n_configs)],
                           axis=1).astype(np.float64)
    elif prior == "continuous":
        box = prior_ranges(profile)
        configs = np.stack([rng.uniform(*box["df"], n_configs), rng.uniform(*box["rho"], n_configs),
                            rng.choice(profile.theta0_values, n_configs), rng.choice(profile.theta1_values, n_configs)],
                           axis=1).astype(np.float64)
    else:
        raise ValueError(f"prior={prior!r}; accepted: 'grid', 'continuous'")
    if isinstance(acquisition, AcquisitionRanges):
        acq_rng = np.random.default_rng(np.random.SeedSequence([int(seed), 101]))
        acquisitions = [draw_acquisition(acq_rng, acquisition) for _ in range(n_configs)]
    elif acquisition is None or isinstance(acquisition, dict):
        acquisitions = None if not acquisition else [dict(acquisition)] * n_configs
    else:
        raise TypeError(f"acquisition={acquisition!r}; accepted: None, a dict, AcquisitionRanges")
    config_id = np.repeat(np.arange(n_configs), images_per_config)
    seeds = [int(s.generate_state(1, dtype=np.uint64)[0])
             for s in np.random.SeedSequence([int(seed), 100]).spawn(config_id.size)]
    settings = stem_settings_for(profile)
    items = [(configs[c], s, settings, None if acquisitions is None else acquisitions[c], profile.particles)
             for c, s in zip(config_id, seeds)]
    results = ordered_map(_fresh_sample, items, workers=workers, desc="fresh configurations",
                           show_progress_bars=show_progress_bars)
    images = np.stack([r[0] for r in results])
    descriptors = pd.DataFrame(np.stack([r[1] for r in results]), columns=list(DESCRIPTOR_NAMES))
    return {"images": images, "theta": configs[config_id], "config_id": config_id, "descriptors": descriptors,
            "acquisitions": acquisitions}


def _fresh_sample(item):
    import warnings

    from agglib.dataset.build import generate_sample
    from agglib.stem import ExtrapolationWarning

    theta, seed, settings, acquisition, particles = item
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExtrapolationWarning)
        _, image, desc, _ = generate_sample(theta, seed, settings, acquisition=acquisition, particles=particles)
    return image.astype(np.float32), desc
