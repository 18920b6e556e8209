"""How estimators fare when a microscope records images differently from the training images.

:func:`robustness_table` draws fresh configurations (θ from the estimators' continuous prior),
makes their aggregates once and records them under each perturbation of :data:`PERTURBATIONS`
(one acquisition setting changed, :func:`agglib.stem.acquisition.acquire_image`) — a paired
design: every row sees the same aggregates. For each estimator and perturbation it reports how
many samples :func:`agglib.fit.intensity.check_intensity` refuses, and on the samples it accepts
the errors of θ̂ and the 95 % coverage of the posterior intervals.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from agglib.evaluate.sets import theta_scores

__all__ = ["PERTURBATIONS", "robustness_table", "perturbed_images"]

#: Name → acquisition changed from the paper's settings (the keys of
#: :data:`agglib.stem.acquisition.ACQUISITION_KEYS`; an empty dict: the paper's settings).
#: "counts ×10", "×0.1" and the offsets are the calibration errors a user makes (issue 14);
#: "measured detector and contrast" is what notebook 2 finds against published measurements.
PERTURBATIONS = {
    "paper settings": {},
    "intensity ×0.5": {"intensity_scale": 0.5},
    "intensity ×0.72 (measured detector)": {"intensity_scale": 0.72},
    "intensity ×1.5": {"intensity_scale": 1.5},
    "WO3/TiO2 contrast ×0.69 (measured)": {"wo3_contrast": 0.69},
    "measured detector and contrast": {"intensity_scale": 0.72, "wo3_contrast": 0.69},
    "dose 40 e/Å²": {"dose_e_per_A2": 40.0},
    "dose 600 e/Å²": {"dose_e_per_A2": 600.0},
    "vacuum offset +0.3 % of the beam": {"offset_fraction": 0.003},
    "extra blur σ = 1 nm": {"extra_blur_nm": 1.0},
    "pixel 2.9 nm, resampled": {"pixel_zoom": 3.4 / 2.9},
    "pixel 1.7 nm, binned 2 × 2": {"pixel_zoom": 2.0},
    "counts ×10 (wrong units)": {"intensity_scale": 10.0},
    "counts ×0.1 (wrong dose)": {"intensity_scale": 0.1},
    "offset +1000 counts at 2.9 nm": {"offset_fraction": 1000.0 / (149.0 * 29.0 ** 2)},
    "uint16 counts, gain 0.2, +500 at 2.9 nm": {"intensity_scale": 0.2, "offset_fraction": 500.0 / (149.0 * 29.0 ** 2)},
}


def _aggregates(prior: dict, n_configs: int, images_per_config: int, seed: int):
    import agglib

    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 7]))
    theta = np.stack([rng.uniform(*prior["df"], n_configs), rng.uniform(*prior["rho"], n_configs),
                      rng.choice(prior["theta0"], n_configs), rng.choice(prior["theta1"], n_configs)], axis=1)
    config_id = np.repeat(np.arange(n_configs), images_per_config)
    params = [agglib.ModelParams(*map(float, theta[c])) for c in config_id]
    aggs = agglib.generate_aggregates(params, seed=np.random.SeedSequence([int(seed), 8]), workers=1,
                                      show_progress_bars=False)
    return aggs, theta, config_id


def perturbed_images(aggregates, settings, acquisition: dict, seed: int) -> np.ndarray:
    """Images of ``aggregates`` recorded with ``acquisition`` [counts at the dose of ``settings``]."""
    from agglib.stem import ExtrapolationWarning
    from agglib.stem.acquisition import acquire_image

    seeds = np.random.SeedSequence([int(seed), 9]).spawn(len(aggregates))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExtrapolationWarning)
        return np.stack([acquire_image(a, settings, acquisition or None, seed=s) for a, s in zip(aggregates, seeds)])


def robustness_table(estimators: dict, n_configs: int, images_per_config: int, seed: int = 0,
                     perturbations: dict | None = None, show_progress_bars: bool | None = None) -> pd.DataFrame:
    """Errors of each estimator under each perturbation, on fresh configurations.

    Parameters
    ----------
    estimators : dict
        Name → :class:`agglib.estimate.SampleEstimator`; all for the same image size and pixel
        size (their θ prior, from the first, is where configurations are drawn).
    n_configs, images_per_config : int
        Fresh configurations and the images of each (M).
    seed : int
    perturbations : dict, optional
        Name → acquisition changes (default :data:`PERTURBATIONS`).

    Returns
    -------
    DataFrame
        One row per (perturbation, estimator): ``refused`` (share of samples the intensity check
        refuses), θ̂ scores on the accepted ones (:func:`agglib.evaluate.sets.theta_scores`),
        ``Df in 90 %``, ``ρ in 90 %``, ``Df in 95 %`` and ``ρ in 95 %`` (central interval coverage); a last row scores the trivial
        predictor (the prior's centre, whatever the images) on the same configurations.
    """
    from tqdm.auto import tqdm

    import agglib
    from agglib.fit.intensity import intensity_reference, sample_statistics, samples_accepted

    perturbations = PERTURBATIONS if perturbations is None else perturbations
    first = next(iter(estimators.values()))
    settings = first.stem_settings
    prior = first.grid.support()
    aggs, theta, config_id = _aggregates(prior, n_configs, images_per_config, seed)
    references = {name: intensity_reference(est) for name, est in estimators.items()}
    groups = [np.flatnonzero(config_id == c) for c in range(n_configs)]
    show = agglib.config.get("progress_bars") if show_progress_bars is None else show_progress_bars
    rows = []
    for name, change in tqdm(perturbations.items(), desc="perturbations", disable=not show):
        images = perturbed_images(aggs, settings, change, seed)
        stats = sample_statistics(images / settings.electrons_per_pixel, settings.pixel_size_nm)
        for est_name, est in estimators.items():
            accepted = samples_accepted(stats, groups, references[est_name])
            row = {"perturbation": name, "estimator": est_name, "refused": float(1.0 - accepted.mean())}
            if accepted.any():
                post = est.from_summaries(est.summaries(images), [g for g, ok in zip(groups, accepted) if ok])
                truth = theta[accepted]
                row.update(theta_scores(post.point()[["df", "rho", "theta0", "theta1"]].to_numpy(), truth))
                for level in (0.9, 0.95):
                    for k, (key, label) in enumerate((("df", "Df"), ("rho", "ρ"))):
                        lo, hi = post.interval(key, level).T
                        row[f"{label} in {level * 100:g} %"] = float(np.mean((lo <= truth[:, k]) & (truth[:, k] <= hi)))
            rows.append(row)
    const = np.array([np.mean(prior["df"]), np.mean(prior["rho"]), np.median(prior["theta0"]),
                      np.median(prior["theta1"])])
    rows.append({"perturbation": "any (images unused)", "estimator": "trivial: the prior's centre", "refused": 0.0,
                 **theta_scores(np.repeat(const[None], n_configs, axis=0), theta)})
    return pd.DataFrame(rows)
