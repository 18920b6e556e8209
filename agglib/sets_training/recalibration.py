"""Recalibrating a trained set posterior on held-out simulations: how much wider must it be?

A neural posterior trained on a finite number of configurations tends to claim more than its
images say (Hermans et al. 2022, "A trust crisis in simulation-based inference?"): on the quick
profile the shipped ensembles' categorical over (θ0, θ1) was too sharp — the temperature that
minimises the held-out negative log-likelihood was 1.5 at M = 1 and 1.2 at M = 12 — and their
joint 90 % regions held the truth in 83–91 % of fresh samples (sets-quick-robust 83–88 %, sets-quick
86–91 %). :func:`fit_widening` fits, on
configurations no gradient step saw (the continuous dataset's E: θ drawn from the prior,
recorded as the training images were, including one acquisition per configuration where the
profile randomises it), the width factor of the Gaussians over u = logit(θ_Df), logit(θ_ρ) and
the categorical's temperature that minimise the negative log posterior density of the truth
(temperature scaling, Guo et al. 2017), at each sample size M, and a straight line of each log
factor against log M through them (:class:`agglib.posterior.Widening`). The estimator applies it to
every posterior it returns.

Calibration is then *checked* on fresh simulations that neither training nor this fit touched
(:mod:`agglib.evaluate.calibration`, notebook 6). Every random draw comes from the seed: the fit is
a function of the estimator's weights, the summaries and the seed.

The fit only ever widens (factors below 1 are taken as 1, and the law never goes below 1): a
posterior that is too wide on the held-out configurations is left as it is — conservative, as Hermans et al. (2022) recommend, since a
narrowing fitted on a finite set (and extrapolated in M) risks the over-confidence it corrects.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from agglib.posterior import Widening, component_log_terms

__all__ = ["fit_widening", "WIDENING_SIZES", "SETS_PER_CONFIG"]

#: Sample sizes M the widening is fitted at (those a configuration of E has images for).
WIDENING_SIZES = (1, 2, 3, 4, 6, 8, 12, 16, 24)
#: Random sets of M images drawn per held-out configuration and M.
SETS_PER_CONFIG = 3
_LOG_BOUNDS = (-0.7, 1.2)            # factors searched: 0.5 … 3.3; below 1 taken as 1 (widening only)


def fit_widening(estimator, summaries: np.ndarray, theta: np.ndarray, config_id: np.ndarray, seed: int = 0, *,
                 sizes=WIDENING_SIZES, sets_per_config: int = SETS_PER_CONFIG) -> tuple[Widening, pd.DataFrame]:
    """Fit the widening of ``estimator``'s posterior on held-out configurations.

    Parameters
    ----------
    estimator : agglib.estimate.SampleEstimator
    summaries : ndarray (N, K)
        The encoder's head outputs of the held-out images.
    theta : ndarray (N, 4)
        Their configurations' θ.
    config_id : ndarray (N,)
        Their configuration (images of one configuration form the sets).
    seed : int
        Seed of the random sets.
    sizes : sequence of int
        M at which the factors are fitted (those above the images a configuration has are skipped).

    Returns
    -------
    (Widening, DataFrame)
        The law, and one row per M: the fitted ``width`` and ``temperature``, the law's values and
        the mean negative log density of the truth before and after (continuous part, less the
        constant log 2π, and discrete part).
    """
    from scipy.optimize import minimize_scalar

    rng = np.random.default_rng([int(seed), 31])
    ids, first, counts = np.unique(config_id, return_index=True, return_counts=True)
    rows_of = [np.flatnonzero(config_id == c) for c in ids]
    usable = [int(m) for m in sizes if m <= counts.min()]
    if not usable:
        raise ValueError(f"the held-out configurations have {counts.min()} images each; sizes {list(sizes)} need more")
    fitted = []
    for m in usable:
        groups = [rng.choice(r, m, replace=False) for r in rows_of for _ in range(sets_per_config)]
        truth = np.repeat(theta[first], sets_per_config, axis=0)
        post = estimator.from_summaries(summaries, groups, recalibrated=False)
        terms = _true_pair_terms(post, truth)
        width = float(np.exp(minimize_scalar(lambda lw: _continuous_nll(terms, lw), bounds=_LOG_BOUNDS,
                                             method="bounded", options={"xatol": 1e-4}).x))
        temperature = float(np.exp(minimize_scalar(lambda lt: _discrete_nll(terms, lt), bounds=_LOG_BOUNDS,
                                                   method="bounded", options={"xatol": 1e-4}).x))
        fitted.append({"M": m, "sets": len(groups), "width": width, "temperature": temperature,
                       "continuous NLL before": _continuous_nll(terms, 0.0), "discrete NLL before": _discrete_nll(terms, 0.0),
                       "_terms": terms})
    log_m = np.log([f["M"] for f in fitted])
    law = Widening(tuple(_line(log_m, np.log([max(f["width"], 1.0) for f in fitted]))),      # widening only
                   tuple(_line(log_m, np.log([max(f["temperature"], 1.0) for f in fitted]))), max_images=2 * usable[-1])
    for f, w, t in zip(fitted, *law.factors([f["M"] for f in fitted])):
        terms = f.pop("_terms")
        f.update({"law width": float(w), "law temperature": float(t),
                  "continuous NLL after": _continuous_nll(terms, float(np.log(w))),
                  "discrete NLL after": _discrete_nll(terms, float(np.log(t)))})
    return law, pd.DataFrame(fitted).set_index("M")


def _line(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(intercept, slope) of the least-squares line (the mean, flat, for one point)."""
    if x.size < 2:
        return float(y.mean()), 0.0
    slope, intercept = np.polyfit(x, y, 1)
    return float(intercept), float(slope)


def _true_pair_terms(post, truth: np.ndarray) -> dict:
    """The posterior's pieces at the true (θ0, θ1) pair: log P(pair) under all pairs, and the
    mixture over u at the true u."""
    p = post.params
    rows = np.arange(len(truth))
    pair = post.grid.discrete_index(truth)
    return {"log_p": np.log(np.maximum(p["discrete"], 1e-300)), "pair": pair,
            "u": post.grid.to_unbounded(truth), **{k: p[k][rows, pair] for k in ("log_w", "mean", "log_scale", "offdiag")}}


def _continuous_nll(t: dict, log_width: float) -> float:
    """Mean −log p(u | pair) with the Gaussians exp(log_width) × wider, less the constant log 2π."""
    from scipy.special import logsumexp

    terms = component_log_terms(t["log_w"], t["mean"], t["log_scale"] + log_width, t["offdiag"] * np.exp(log_width),
                                t["u"])
    return float(-np.mean(logsumexp(terms, axis=1)))


def _discrete_nll(t: dict, log_temperature: float) -> float:
    """Mean −log P(true pair) at temperature exp(log_temperature)."""
    from scipy.special import logsumexp

    z = t["log_p"] / np.exp(log_temperature)
    return float(-np.mean(z[np.arange(z.shape[0]), t["pair"]] - logsumexp(z, axis=1)))
