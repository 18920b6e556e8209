"""Recalibrating a trained set posterior on held-out simulations: how much wider — or narrower — must it be?

A neural posterior trained on a finite number of configurations need not claim what its images
say (Hermans et al. 2022, "A trust crisis in simulation-based inference?"). Measured on the
quick profile: the trained ensembles' categorical over (θ0, θ1) was too sharp, most at small M
(the temperature that minimises the held-out negative log-likelihood is 1.5–1.9 at M = 1 and
falls with M), and their Gaussians' spread along logit θ_Df and logit θ_ρ was off by factors that
differ between the parameters and change with M (the fitted factors are in each shipped README
and in notebook 6). :func:`fit_widening` fits, on configurations no gradient step saw (a fifth of the
posterior's training configurations held out, with as many images as training sets have, and
the continuous dataset's E; θ drawn from the prior, recorded as the training images were,
including one acquisition per configuration where the profile randomises it), at each sample
size M:

* the categorical's **temperature**: the one that minimises the negative log probability of the
  true (θ0, θ1) (temperature scaling, Guo et al. 2017). Matching the θ0 and θ1 marginals' coverage
  instead was measured (quick profile, 300 fresh configurations, seed 5000): it fixed θ0's
  over-coverage at M = 24 but left the joint 90 % regions holding the truth in only 82–88 %;
* then, on the posterior at that temperature (it changes the weights of the (θ0, θ1) pairs in the
  marginals of θ_Df and θ_ρ), a **width factor per continuous parameter** (θ_Df, θ_ρ): the factor
  of the Gaussians' spread along that parameter's logit that makes the probability-integral
  transforms of the truth closest to uniform — the central credible intervals at levels 5 %,
  10 %, … 95 % hold the truth as often as they claim (least squares over the levels;
  recalibration by coverage, as Kuleshov et al. 2018 do for regression, within the family);

and a straight line of each log factor against log M through them, weighted by the number of
sets (:class:`agglib.posterior.Widening`). Factors below 1 narrow the posterior: the data say so at
every M it is used for (up to the largest M of the held-out configurations), so nothing is
extrapolated. The estimator applies the law to every posterior it returns.

Calibration is then *checked* on fresh simulations that neither training nor this fit touched
(:mod:`agglib.evaluate.calibration`, notebook 6). Every random draw comes from the seed: the fit is
a function of the estimator's weights, the summaries and the seed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from agglib.posterior import CONTINUOUS, Widening, widened

__all__ = ["fit_widening", "WIDENING_SIZES", "SETS_PER_CONFIG", "WIDTH_OBJECTIVE"]

#: Sample sizes M the factors are fitted at (those the held-out configurations have images for).
WIDENING_SIZES = (1, 2, 3, 4, 6, 8, 12, 16, 24)
#: Random sets of M images drawn per held-out configuration and M.
SETS_PER_CONFIG = 3
#: Central-interval levels whose coverage the width factors match.
COVERAGE_LEVELS = tuple(np.round(np.arange(0.05, 0.951, 0.05), 2))
#: What the width factors are chosen to match (recorded in each estimator's ``recalibration`` metadata).
WIDTH_OBJECTIVE = "coverage of central intervals at 5 %, 10 %, … 95 % (uniform PIT of the truth)"
_WIDTH_GRID = np.linspace(-0.7, 0.7, 141)   # log width factors tried: 0.5 … 2.0, steps of 1 %
_LOG_BOUNDS = (-0.7, 1.2)            # log temperatures searched: 0.5 … 3.3


def fit_widening(estimator, summaries: np.ndarray, theta: np.ndarray, config_id: np.ndarray, seed: int = 0, *,
                 sizes=WIDENING_SIZES, sets_per_config: int = SETS_PER_CONFIG) -> tuple[Widening, pd.DataFrame]:
    """Fit the recalibration of ``estimator``'s posterior on held-out configurations.

    Parameters
    ----------
    estimator : agglib.estimate.SampleEstimator
    summaries : ndarray (N, K)
        What the posterior reads from each held-out image (:meth:`SampleEstimator.summaries`).
    theta : ndarray (N, 4)
        Their configurations' θ.
    config_id : ndarray (N,)
        Their configuration (images of one configuration form the sets; configurations may have
        different numbers of images: at each M, those with at least M take part).
    seed : int
        Seed of the random sets.
    sizes : sequence of int
        M at which the factors are fitted (those above every configuration's images are skipped).

    Returns
    -------
    (Widening, DataFrame)
        The law, and one row per M: the number of ``sets``, the fitted ``width θ_Df``, ``width θ_ρ``
        and ``temperature``, the law's values, the 90 % central coverage of θ_Df and θ_ρ and the
        mean negative log probability of the true (θ0, θ1) before and after.
    """
    from scipy.optimize import minimize_scalar

    rng = np.random.default_rng([int(seed), 31])
    ids, first, counts = np.unique(config_id, return_index=True, return_counts=True)
    rows_of = [np.flatnonzero(config_id == c) for c in ids]
    usable = [int(m) for m in sizes if m <= counts.max()]
    if not usable:
        raise ValueError(f"the held-out configurations have at most {counts.max()} images; sizes {list(sizes)} need more")
    fitted = []
    for m in usable:
        keep = [k for k in range(ids.size) if counts[k] >= m]
        groups = [rng.choice(rows_of[k], m, replace=False) for k in keep for _ in range(sets_per_config)]
        truth = np.repeat(theta[first[keep]], sets_per_config, axis=0)
        post = estimator.from_summaries(summaries, groups, recalibrated=False)
        terms = _true_pair_terms(post, truth)
        temperature = float(np.exp(minimize_scalar(lambda lt: _discrete_nll(terms, lt), bounds=_LOG_BOUNDS,
                                                   method="bounded", options={"xatol": 1e-4}).x))
        tempered = widened(post, 1.0, temperature)        # the widths are fitted on the posterior as tempered
        widths = [float(np.exp(_coverage_width(tempered, truth, name))) for name in CONTINUOUS]
        fitted.append({"M": m, "sets": len(groups), "width θ_Df": widths[0], "width θ_ρ": widths[1],
                       "temperature": temperature,
                       **{f"θ_{lab} 90 % before": _coverage(post, truth, name, 0.0)
                          for lab, name in (("Df", "df"), ("ρ", "rho"))},
                       "(θ0, θ1) NLL before": _discrete_nll(terms, 0.0), "_post": post, "_truth": truth, "_terms": terms})
    log_m = np.log([f["M"] for f in fitted])
    weight = np.sqrt([f["sets"] for f in fitted])
    law = Widening(tuple(_line(log_m, np.log([f[f"width θ_{lab}"] for f in fitted]), weight) for lab in ("Df", "ρ")),
                   _line(log_m, np.log([f["temperature"] for f in fitted]), weight), max_images=max(usable))
    widths, temperatures = law.factors([f["M"] for f in fitted])
    for f, w, t in zip(fitted, widths, temperatures):
        post, truth, terms = f.pop("_post"), f.pop("_truth"), f.pop("_terms")
        applied = widened(post, np.broadcast_to(w, (len(post), 2)), t)     # what the estimator returns
        f.update({"law width θ_Df": float(w[0]), "law width θ_ρ": float(w[1]), "law temperature": float(t),
                  **{f"θ_{lab} 90 % after": _coverage(applied, truth, name, 0.0)
                     for lab, name in (("Df", "df"), ("ρ", "rho"))},
                  "(θ0, θ1) NLL after": _discrete_nll(terms, float(np.log(t)))})
    return law, pd.DataFrame(fitted).set_index("M")


def _pit(post, truth: np.ndarray, name: str, log_widths: np.ndarray) -> np.ndarray:
    """PIT values (S, W) of the truth under the marginal of ``name`` with the Gaussians
    exp(log_widths) (W,) × wider along it."""
    return post.cdf_widened(name, truth[:, CONTINUOUS.index(name)], np.exp(np.asarray(log_widths)))


def _coverage(post, truth, name, log_width: float, level: float = 0.9) -> float:
    """Share of central ``level`` intervals of ``name`` holding the truth."""
    return float(np.mean(np.abs(_pit(post, truth, name, np.array([log_width]))[:, 0] - 0.5) <= level / 2))


def _coverage_width(post, truth, name) -> float:
    """The log width factor of :data:`_WIDTH_GRID` whose central intervals at :data:`COVERAGE_LEVELS`
    hold the truth closest to as often as they claim (least squares), searched coarse to fine:
    every tenth point of the grid, then every point within 0.1 of the best (a quarter of the work
    of scanning all 141). The coverage error is a sum of steps; a minimum farther than 0.1 from the
    best coarse point would be missed, which a full scan would find — for the three shipped
    estimators both searches give the same law."""
    levels = np.asarray(COVERAGE_LEVELS)

    def errors(log_widths):
        out = []
        for chunk in np.array_split(log_widths, -(-len(log_widths) // 8)):     # (S, components, ≤ 8) at a time
            pit = _pit(post, truth, name, chunk)                                 # (S, W)
            cover = (np.abs(pit[:, :, None] - 0.5) <= levels / 2).mean(axis=0)   # (W, L)
            out.append(((cover - levels) ** 2).mean(axis=1))
        return np.concatenate(out)

    def nearest_one(grid, err):                    # the best; among equal errors, the factor nearest 1
        best = np.flatnonzero(err <= err.min() + 1e-15)
        return float(grid[best[np.argmin(np.abs(grid[best]))]])

    start = nearest_one(_WIDTH_GRID[::10], errors(_WIDTH_GRID[::10]))
    fine = _WIDTH_GRID[np.abs(_WIDTH_GRID - start) <= 0.1 + 1e-9]
    return nearest_one(fine, errors(fine))


def _line(x: np.ndarray, y: np.ndarray, weight: np.ndarray | None = None) -> tuple[float, float]:
    """(intercept, slope) of the (weighted) least-squares line (the mean, flat, for one point)."""
    if x.size < 2:
        return float(np.average(y, weights=weight)), 0.0
    slope, intercept = np.polyfit(x, y, 1, w=weight)
    return float(intercept), float(slope)


def _true_pair_terms(post, truth: np.ndarray) -> dict:
    """log P of every (θ0, θ1) pair and the index of the true one."""
    return {"log_p": np.log(np.maximum(post.params["discrete"], 1e-300)), "pair": post.grid.discrete_index(truth)}


def _discrete_nll(t: dict, log_temperature: float) -> float:
    """Mean −log P(true pair) at temperature exp(log_temperature)."""
    from scipy.special import logsumexp

    z = t["log_p"] / np.exp(log_temperature)
    return float(-np.mean(z[np.arange(z.shape[0]), t["pair"]] - logsumexp(z, axis=1)))
