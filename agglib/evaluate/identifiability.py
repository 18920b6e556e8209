"""What a sample's images tell about their acquisition, and what the acquisition does to θ̂.

A posterior trained with the acquisition drawn per sample from
:class:`agglib.stem.acquisition.AcquisitionRanges` is calibrated *on average* over those
acquisitions. It is calibrated under each fixed acquisition only as far as the images identify
it: where they do not, the posterior must allow for every acquisition they are compatible with,
and its width is the average over them — too wide for a sample recorded under an easy
acquisition, too narrow under a hard one (notebook 6). Two measurements say which settings are
at stake, on fresh samples with one acquisition drawn per sample (θ from the continuous prior):

* :func:`acquisition_identifiability` — how much of each acquisition setting a regression can
  read from what the posterior reads (the set means and SDs of the encoder's outputs and the
  images' :func:`agglib.stem.acquisition.acquisition_statistics`): the cross-validated R² of a
  ridge regression on those pooled summaries and their squares (:func:`cross_validated_r2`).
  R² near 1: the images fix the setting; near 0: they do not show it. It is what an additive
  quadratic reader gets, a lower bound on what a more flexible one could;
* :func:`error_by_acquisition` — the posterior's error, bias and claimed spread of θ_Df and
  θ_ρ in bins of one setting: where the error changes with a setting the spread does not follow,
  conditional calibration fails in that direction.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

#: Ridge penalties tried by :func:`cross_validated_r2`, per training row (on standardised features).
RIDGE_PENALTIES = np.logspace(-4.0, 2.0, 13)

__all__ = ["RIDGE_PENALTIES", "ridge_leave_one_out", "cross_validated_r2", "pooled_summaries", "bins_of",
           "acquisition_identifiability", "error_by_acquisition"]


def ridge_leave_one_out(a, y, penalties) -> tuple[np.ndarray, list[np.ndarray]]:
    """Leave-one-out squared errors of ridge regressions of ``y`` (n,) on ``a`` (n, p) with an
    unpenalised intercept, one per penalty, in closed form (no refits).

    Parameters
    ----------
    a : ndarray (n, p)
        Regressors (any scale; the intercept is added here).
    y : ndarray (n,)
        Target.
    penalties : sequence of float
        Ridge penalties λ ≥ 0 on the coefficients of ``a``.

    Returns
    -------
    loo : ndarray (len(penalties),)
        Σ_i (y_i − ŷ_(−i))², ŷ_(−i) the prediction of row i by the fit without it (rows whose
        leverage is 1 make it infinite).
    coefficients : list of ndarray (p + 1,)
        The fits on all rows: intercept, then the coefficients of ``a``'s columns.
    """
    a = np.asarray(a, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    a_mean, centre = a.mean(axis=0), y.mean()
    u, s, vt = np.linalg.svd(a - a_mean, full_matrices=False)
    ub = u.T @ (y - centre)
    loo, coefficients = [], []
    for penalty in penalties:
        shrink = s ** 2 / (s ** 2 + float(penalty))
        leverage = 1.0 / y.size + (u ** 2) @ shrink          # the hat matrix's diagonal, intercept included
        residual = (y - centre) - u @ (shrink * ub)
        with np.errstate(divide="ignore", invalid="ignore"):
            loo.append(float(np.sum(np.where(leverage < 1.0 - 1e-12, residual / (1.0 - leverage), np.inf) ** 2)))
        beta = vt.T @ (s / (s ** 2 + float(penalty)) * ub)
        coefficients.append(np.concatenate([[centre - a_mean @ beta], beta]))
    return np.asarray(loo), coefficients


def cross_validated_r2(features, target, folds: int = 5, seed: int = 0) -> float:
    """Cross-validated R² of a ridge regression of ``target`` on ``features``, their squares and
    an intercept (an additive quadratic model: no products of two features).

    Parameters
    ----------
    features : ndarray (n, k)
    target : ndarray (n,)
    folds : int
        Folds of the cross-validation (rows assigned at random with ``seed``), 2 … n.
    seed : int

    Returns
    -------
    float
        R² = 1 − Σ(y − ŷ)² / Σ(y − ȳ)² over the held-out predictions: 1 when the features
        determine the target, about 0 (or below) when they say nothing about it. On each training
        fold the features are standardised and the ridge penalty is chosen among
        :data:`RIDGE_PENALTIES` (× the fold's rows) by its leave-one-out error
        (:func:`ridge_leave_one_out`), so the held-out fold plays no part in the fit.
    """
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(target, dtype=np.float64).reshape(-1)
    if x.ndim != 2 or x.shape[0] != y.size:
        raise ValueError(f"features {x.shape} and target {y.shape}: one row of features per target value expected")
    if not 2 <= int(folds) <= y.size:
        raise ValueError(f"folds={folds}: between 2 and the number of rows ({y.size}) expected")
    fold = np.random.default_rng(seed).permutation(y.size) % int(folds)
    predicted = np.empty_like(y)
    for k in range(int(folds)):
        train, test = fold != k, fold == k
        mu, sd = x[train].mean(axis=0), x[train].std(axis=0)
        sd = np.where(sd > 1e-12, sd, 1.0)

        def design(rows):
            z = (x[rows] - mu) / sd
            return np.concatenate([z, z ** 2], axis=1)

        loo, coefficients = ridge_leave_one_out(design(train), y[train], RIDGE_PENALTIES * int(train.sum()))
        coef = coefficients[int(np.argmin(loo))]
        predicted[test] = coef[0] + design(test) @ coef[1:]
    total = np.sum((y - y.mean()) ** 2)
    return float(1.0 - np.sum((y - predicted) ** 2) / total) if total > 0 else float("nan")


def pooled_summaries(values: np.ndarray, groups) -> np.ndarray:
    """Mean and SD over each group's rows — the pooling of :class:`agglib.posterior.SetPosterior`
    before its networks.

    Parameters
    ----------
    values : ndarray (n, k)
        Per-image summaries.
    groups : sequence of integer arrays
        The rows of each sample.

    Returns
    -------
    ndarray (len(groups), 2k)
        The k means, then the k SDs.
    """
    values = np.asarray(values, dtype=np.float64)
    return np.stack([np.concatenate([values[g].mean(axis=0), values[g].std(axis=0)]) for g in groups])


def bins_of(values, edges) -> list[tuple[str, np.ndarray]]:
    """Rows of ``values`` per bin of ``edges``: (label, row indices) of each non-empty bin.

    ``edges`` increase; bin k holds the values in (edges[k], edges[k + 1]] (the first also its
    left edge); a bin of zero width (two equal edges) holds that value alone, and a value is in one
    bin only (the first that holds it). Labels: ``"lo–hi"``, or ``"v"`` for a zero-width bin.
    """
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    edges = np.asarray(edges, dtype=np.float64)
    if edges.ndim != 1 or edges.size < 2 or np.any(np.diff(edges) < 0):
        raise ValueError(f"edges={edges.tolist()}: at least two increasing bin edges expected")
    taken = np.zeros(values.size, dtype=bool)
    out = []
    for k, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
        if lo == hi:
            inside, label = values == lo, f"{lo:g}"
        else:
            inside, label = ((values > lo) | ((values == lo) & (k == 0))) & (values <= hi), f"{lo:g}–{hi:g}"
        chosen = np.flatnonzero(inside & ~taken)
        taken[chosen] = True
        if chosen.size:
            out.append((label, chosen))
    return out


def _groups(fresh: dict, images: int) -> list[np.ndarray]:
    config_id = np.asarray(fresh["config_id"])
    groups = [np.flatnonzero(config_id == c)[:images] for c in np.unique(config_id)]
    if any(g.size < images for g in groups):
        raise ValueError(f"images={images}: every configuration of the fresh samples needs that many images "
                         f"(the smallest has {min(g.size for g in groups)})")
    return groups


def _acquisition_table(fresh: dict) -> pd.DataFrame:
    from agglib.stem.acquisition import ACQUISITION_KEYS

    if not fresh.get("acquisitions"):
        raise ValueError("the fresh samples have no drawn acquisitions: make them with "
                         "fresh_configurations(..., acquisition=AcquisitionRanges(...))")
    ids = np.unique(np.asarray(fresh["config_id"]))
    if len(fresh["acquisitions"]) != ids.size or not np.array_equal(ids, np.arange(ids.size)):
        raise ValueError(f"{len(fresh['acquisitions'])} acquisitions for {ids.size} configurations: one per "
                         "configuration 0 … n − 1, in that order, expected")
    return pd.DataFrame([[float(a[k]) for k in ACQUISITION_KEYS] for a in fresh["acquisitions"]],
                        columns=list(ACQUISITION_KEYS))


def acquisition_identifiability(estimator, fresh: dict, images: int = 24, folds: int = 5, seed: int = 0,
                                summaries=None) -> pd.DataFrame:
    """How well ``images`` images of a sample identify each setting of its acquisition.

    Parameters
    ----------
    estimator : agglib.estimate.SampleEstimator
        One that reads acquisition statistics (the default, ``sets-quick-robust``); its training
        ranges give the ``range`` column.
    fresh : dict
        :func:`agglib.evaluate.sets.fresh_configurations` made with ``acquisition=`` an
        :class:`~agglib.stem.acquisition.AcquisitionRanges` (one acquisition per sample).
    images : int
        Images M per sample pooled (the first M of each configuration).
    folds, seed : int
        Of :func:`cross_validated_r2`.
    summaries : ndarray, optional
        ``estimator.summaries(fresh["images"])`` if already computed (its encoder outputs and
        acquisition statistics are read: :meth:`~agglib.estimate.SampleEstimator.summary_parts`).

    Returns
    -------
    DataFrame
        One row per setting of :data:`~agglib.stem.acquisition.ACQUISITION_KEYS` (intensity scale
        and dose as logarithms, their prior being log-uniform); columns ``R² (acquisition
        statistics)`` (the set means and SDs of the nine statistics alone) and ``R² (all
        summaries)`` (with the encoder's outputs), ``range`` (the training range, with its unit:
        :data:`agglib.stem.acquisition.ACQUISITION_UNITS`).
    """
    from agglib.stem.acquisition import ACQUISITION_UNITS, AcquisitionRanges, LOG_UNIFORM_KEYS

    if not estimator.reads_statistics:
        raise ValueError("the estimator reads no acquisition statistics (metadata 'inputs'); use one trained with "
                         "a randomised acquisition, e.g. the default sets-quick-robust")
    groups = _groups(fresh, images)
    acquisition = _acquisition_table(fresh)
    parts = estimator.summary_parts(estimator.summaries(fresh["images"]) if summaries is None else summaries)
    pooled_stats = pooled_summaries(parts["statistics"], groups)
    pooled_all = np.concatenate([pooled_summaries(parts["heads"], groups), pooled_stats], axis=1)
    ranges = AcquisitionRanges.from_dict(estimator.training_metadata["acquisition_ranges"])
    rows = []
    for key in acquisition.columns:
        target = acquisition[key].to_numpy()
        name = key
        if key in LOG_UNIFORM_KEYS:
            target, name = np.log(target), f"log {key}"
        span = "–".join(f"{v:g}" for v in getattr(ranges, key))
        rows.append({"setting": name, "range": f"{span} {ACQUISITION_UNITS[key]}".strip(),
                     "R² (acquisition statistics)": cross_validated_r2(pooled_stats, target, folds, seed),
                     "R² (all summaries)": cross_validated_r2(pooled_all, target, folds, seed)})
    return pd.DataFrame(rows).set_index("setting")


def error_by_acquisition(estimator, fresh: dict, key: str, edges, images: int = 24, summaries=None) -> pd.DataFrame:
    """The posterior's error against its claimed spread in bins of one acquisition setting.

    Parameters
    ----------
    estimator : agglib.estimate.SampleEstimator
        The estimator whose posteriors are scored (acquisition unknown).
    fresh : dict
        As for :func:`acquisition_identifiability`.
    key : str
        A setting of :data:`~agglib.stem.acquisition.ACQUISITION_KEYS` (e.g. ``"extra_blur_nm"``
        [nm], ``"pixel_zoom"``).
    edges : sequence of float
        Bin edges of the setting, increasing, as :func:`bins_of` reads them (e.g.
        ``(1.0, 1.0, 1.3, 1.6)`` for the pixel zoom: exactly 1, then 1–1.3, 1.3–1.6).
    images : int
        Images M per sample (the posterior of the first M of each configuration, acquisition
        unknown).
    summaries : ndarray, optional
        ``estimator.summaries(fresh["images"])`` if already computed.

    Returns
    -------
    DataFrame
        One row per bin: ``samples`` and, for θ_Df and θ_ρ, ``RMSE``, ``bias`` and ``spread`` of
        :func:`agglib.evaluate.calibration.spread_and_error` (the parameter's units).
    """
    from agglib.evaluate.calibration import spread_and_error
    from agglib.stem.acquisition import ACQUISITION_KEYS

    if key not in ACQUISITION_KEYS:
        raise ValueError(f"key={key!r}; accepted: {', '.join(ACQUISITION_KEYS)}")
    groups = _groups(fresh, images)
    value = _acquisition_table(fresh)[key].to_numpy()
    summaries = estimator.summaries(fresh["images"]) if summaries is None else summaries
    estimate = estimator.from_summaries(summaries, groups)
    theta = np.asarray(fresh["theta"])[[g[0] for g in groups]]
    rows = [{key: label, "samples": int(chosen.size), **spread_and_error(estimate.select(chosen), theta[chosen])}
            for label, chosen in bins_of(value, edges)]
    return pd.DataFrame(rows).set_index(key)
