"""Digital shadows: aggregates drawn from an estimate θ̂, compared with those from θ (paper §3.4).

The paper's protocol (Table 5, Figs. 14, 16, 17): for configurations θ drawn from E, estimate θ̂
from ν images of E; draw ``n_aggregates`` new aggregates from θ and as many from θ̂; compare the
3D descriptors S_TiO2 (mean TiO2 cluster size), Z_hetero and Z_total (coordination numbers)
per aggregate, and over the configurations the MAE and R² of their means.

With the new method (:class:`agglib.estimate.SampleEstimator`) every shadow aggregate is drawn
from its own θ sampled from the posterior, so the shadows' spread carries the estimate's
uncertainty; with the paper's method all shadows share the point estimate θ̂. Both estimators
provide ``shadow_parameters(images, count, seed)``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

import agglib
from agglib.core.seeding import spawn_seeds
from agglib.descriptors import describe_many
from agglib.evaluate.estimators import batch_groups, mae, r2
from agglib.model.params import ModelParams, params_from_estimate

__all__ = ["SHADOW_DESCRIPTORS", "shadow_params", "shadow_comparison", "shadow_table", "error_by_particle_count",
           "PAPER_SHADOW_RESULTS", "shadow_range_coverage"]

SHADOW_DESCRIPTORS = ("s_tio2", "z_hetero", "z_total")

#: Table 5 of the paper: MAE and R² of the descriptor means over 50 (θ, θ̂) pairs.
PAPER_SHADOW_RESULTS = {"s_tio2": {"MAE": 2.165, "R²": 0.84}, "z_hetero": {"MAE": 0.056, "R²": 0.85},
                        "z_total": {"MAE": 0.007, "R²": 0.87}}


def shadow_params(theta_hat: dict) -> ModelParams:
    """A valid θ for the model from an estimate dict (see :func:`agglib.model.params.valid_params`)."""
    return params_from_estimate(theta_hat)


def _describe(params, count, seed, workers):
    """Descriptors of ``count`` aggregates of θ = ``params`` (or one per θ of a list, count None)."""
    aggs = agglib.generate_aggregates(params, count, seed=seed, workers=workers, show_progress_bars=False)
    return pd.DataFrame(describe_many(aggs))


_TRUE_SHADOWS: dict = {}


def _true_descriptors(theta: ModelParams, count: int, seed: np.random.SeedSequence, workers) -> pd.DataFrame:
    """:func:`_describe` of the shadows from the true θ, kept for this process: they depend only
    on θ, the count, the seed (its state) and the generator's settings in ``agglib.config``, so a
    second comparison with the same seed (the ceiling's, notebook 8) reuses them instead of
    drawing them again."""
    settings = tuple(agglib.config.get(k) for k in ("max_draws", "max_rotations", "max_restarts"))  # the generator's
    key = (theta, int(count), repr(seed.entropy), seed.spawn_key, seed.pool_size, seed.n_children_spawned, settings)
    if key not in _TRUE_SHADOWS:
        if len(_TRUE_SHADOWS) >= 1024:
            _TRUE_SHADOWS.clear()
        _TRUE_SHADOWS[key] = _describe(theta, count, seed, workers)
    return _TRUE_SHADOWS[key].copy()


def shadow_comparison(estimator, store, n_configs: int = 50, n_aggregates: int = 800, nu: int = 12,
                      seed: int = 0, workers: int | None = None, show_progress_bars: bool | None = None,
                      draws: str = "point", read=None) -> dict:
    """Digital shadows for ``n_configs`` configurations of E.

    ``draws="point"``: every shadow from θ̂ (the paper's protocol, Table 5); ``"posterior"`` (new
    method only): each shadow from its own posterior draw of θ. ``read(rows)`` gives what
    ``estimator.shadow_parameters`` reads for those store rows (default: their images; the
    ceiling, :class:`agglib.evaluate.sets.CeilingShadows`, reads their true descriptors).

    Returns
    -------
    dict with ``pairs`` (one row per configuration: θ, θ̂ and the descriptor means from θ and θ̂)
    and ``aggregates`` (one row per drawn aggregate: configuration, source "θ" or "θ̂",
    descriptors).
    """
    from tqdm.auto import tqdm

    groups = batch_groups(store, nu, "E", seed=seed)
    rng = np.random.default_rng(seed)
    by_config = {}
    for g in groups:
        by_config.setdefault(int(store.config_id[g[0]]), g)
    chosen = rng.choice(sorted(by_config), size=min(n_configs, len(by_config)), replace=False)
    seeds = spawn_seeds(seed, 2 * len(chosen))
    pairs, rows = [], []
    show = agglib.config.get("progress_bars") if show_progress_bars is None else show_progress_bars
    for k, c in enumerate(tqdm(chosen, desc="digital shadows", disable=not show)):
        members = by_config[c]
        inputs = (read or store.read_images)(members)
        point, params = estimator.shadow_parameters(inputs, n_aggregates, seeds[2 * k + 1], draws=draws)
        theta = ModelParams(*store.configs[c])
        theta_hat = shadow_params(point)
        true_desc = _true_descriptors(theta, n_aggregates, seeds[2 * k], workers)
        shadow_desc = _describe(params, None, seeds[2 * k + 1], workers)
        row = {"config_id": int(c), "df": theta.df, "rho": theta.rho, "theta0": theta.theta0,
               "theta1": theta.theta1, "df_hat": theta_hat.df, "rho_hat": theta_hat.rho,
               "theta0_hat": theta_hat.theta0, "theta1_hat": theta_hat.theta1}
        for d in SHADOW_DESCRIPTORS:
            row[f"{d}_true"] = float(np.nanmean(true_desc[d]))
            row[f"{d}_shadow"] = float(np.nanmean(shadow_desc[d]))
        pairs.append(row)
        for source, desc in (("θ", true_desc), ("θ̂", shadow_desc)):
            part = desc[list(SHADOW_DESCRIPTORS) + ["n_particles"]].copy()
            part["config_id"] = int(c)
            part["source"] = source
            rows.append(part)
    return {"pairs": pd.DataFrame(pairs), "aggregates": pd.concat(rows, ignore_index=True)}


def shadow_table(pairs: pd.DataFrame) -> pd.DataFrame:
    """MAE and R² of the descriptor means from θ̂ against those from θ (Table 5), beside the paper's."""
    out = []
    for d in SHADOW_DESCRIPTORS:
        ok = np.isfinite(pairs[f"{d}_true"]) & np.isfinite(pairs[f"{d}_shadow"])
        out.append({"descriptor": d, "MAE": mae(pairs.loc[ok, f"{d}_true"], pairs.loc[ok, f"{d}_shadow"]),
                    "R²": r2(pairs.loc[ok, f"{d}_true"], pairs.loc[ok, f"{d}_shadow"]),
                    "paper MAE": PAPER_SHADOW_RESULTS[d]["MAE"], "paper R²": PAPER_SHADOW_RESULTS[d]["R²"],
                    "pairs": int(ok.sum())})
    return pd.DataFrame(out).set_index("descriptor")


def error_by_particle_count(aggregates: pd.DataFrame, edges=(20, 35, 50, 65, 81)) -> pd.DataFrame:
    """MAE between descriptor means from θ and θ̂, per range of the particle number N (Fig. 16).

    Within each configuration, aggregates are grouped by N into the ranges [edges[k], edges[k+1]);
    the means of the θ-group and the θ̂-group are compared, and the absolute differences are
    averaged over configurations.
    """
    rows = []
    labels = [f"{lo}–{hi - 1}" for lo, hi in zip(edges[:-1], edges[1:])]
    binned = aggregates.assign(n_range=pd.cut(aggregates["n_particles"], list(edges), right=False, labels=labels))
    means = binned.groupby(["config_id", "n_range", "source"], observed=True)[list(SHADOW_DESCRIPTORS)].mean()
    for label in labels:
        row = {"N": label}
        for d in SHADOW_DESCRIPTORS:
            try:
                sub = means.xs(label, level="n_range")[d].unstack("source").dropna()
            except KeyError:
                row[d] = np.nan
                continue
            row[d] = mae(sub["θ"], sub["θ̂"]) if len(sub) else np.nan
        rows.append(row)
    return pd.DataFrame(rows).set_index("N")


def shadow_range_coverage(aggregates: pd.DataFrame, level: float = 0.9) -> pd.DataFrame:
    """Share of the true aggregates (source "θ") whose descriptor lies inside the central ``level``
    range of the shadows (source "θ̂") of the same configuration, per descriptor (mean over
    configurations). Shadows that carry the estimate's uncertainty should come close to ``level``."""
    rows = []
    lo_q, hi_q = (1 - level) / 2, (1 + level) / 2
    for c, part in aggregates.groupby("config_id"):
        true, shadow = part[part["source"] == "θ"], part[part["source"] == "θ̂"]
        row = {"config_id": c}
        for d in SHADOW_DESCRIPTORS:
            lo, hi = np.nanquantile(shadow[d], lo_q), np.nanquantile(shadow[d], hi_q)
            values = true[d].dropna()
            row[d] = float(np.mean((values >= lo) & (values <= hi))) if len(values) else np.nan
        rows.append(row)
    return pd.DataFrame(rows).set_index("config_id")
