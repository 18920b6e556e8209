"""Is a posterior calibrated? The checks of simulation-based inference, on fresh simulations.

For θ drawn from the prior the posterior was trained under and images simulated from it, a
calibrated posterior's credible regions at level L hold the truth a share L of the time. Checked
here as the field checks it (Talts et al. 2018; Hermans et al. 2022; Lemos et al. 2023), per set
size M, with the implementations of ``sbi.diagnostics`` (sbi 0.27) where it has them:

* **SBC ranks** of the truth among posterior draws, per parameter, and their Kolmogorov–Smirnov
  test of uniformity (``sbi.diagnostics.sbc``; θ0, θ1 dequantised, θ + U(−½, ½));
* **central coverage** per parameter: the share of central credible intervals at level L that
  hold the truth (from the exact marginal CDF, :func:`agglib.posterior.pit_values`);
* **HPD coverage** per parameter: the share of marginal highest-density regions at level L that
  hold the truth (:meth:`agglib.posterior.PosteriorEstimate.hpd_level`: for θ_Df and θ_ρ, the
  share of the same posterior draws as the SBC ranks' whose marginal density exceeds the truth's);
* **joint checks**: the expected coverage of the *joint* highest-density region (ranks of the
  truth's joint log density among the draws', sbi's ``run_sbc`` with the posterior's
  ``log_prob`` as reduction) and TARP (``sbi.diagnostics.tarp``: coverage of random balls
  around reference points; its ECP at L, averaged over :data:`TARP_REFERENCE_DRAWS` draws of the
  reference points, and the KS p-value of ``check_tarp`` on that average).

A check that cannot fail proves nothing: :func:`negative_controls` runs the same checks on a
deliberately over-confident and a deliberately shifted copy of the posterior
(:func:`agglib.posterior.overconfident`, :func:`agglib.posterior.shifted`), which must fail them.

The configurations are drawn anew (:func:`agglib.evaluate.sets.fresh_configurations`,
``prior="continuous"``); no training, tuning or model selection saw them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from agglib.posterior import CONTINUOUS, DISCRETE, PARAMETERS, PosteriorEstimate, overconfident, pit_values, shifted

__all__ = ["calibration_checks", "calibration_report", "calibration_under_acquisitions", "negative_controls", "ACCEPTED_COVERAGE",
           "TARP_REFERENCE_DRAWS", "spread_and_error", "given_acquisition",
           "coverage_columns", "within_accepted", "outside_band"]

#: Coverage of 90 % regions accepted as calibrated (≥ 300 posteriors: ± about 3 binomial SDs):
#: θ_Df, θ_ρ and the joint checks; θ0 and θ1 (integer credible sets cover at least their level).
ACCEPTED_COVERAGE = {"continuous": (0.85, 0.95), "discrete": (0.85, 0.97)}
#: Draws of TARP's random reference points its expected coverage is averaged over: one draw
#: moves the ECP at 90 % by about ±0.01 (SD, 300 posteriors at M = 24, measured on fresh
#: configurations of seed 5000) — noise of the check itself, not of the posterior — which the
#: average removes.
TARP_REFERENCE_DRAWS = 10


def _dequantise(theta: np.ndarray, rng) -> np.ndarray:
    out = np.array(theta, dtype=np.float64, copy=True)
    for k, p in enumerate(PARAMETERS):
        if p in DISCRETE:
            out[..., k] += rng.random(out.shape[:-1]) - 0.5
    return out


def calibration_checks(estimate: PosteriorEstimate, theta: np.ndarray, level: float = 0.9, draws: int = 500,
                       seed: int = 0) -> dict:
    """Every check of the module docstring for S posteriors and their true θ (S, 4).

    Returns a flat dict: ``<parameter> central``, ``<parameter> HPD`` (coverage at ``level``),
    ``<parameter> SBC KS p`` (uniformity of the ranks), ``joint HPD`` (expected coverage of the
    joint highest-density region at ``level``), ``TARP`` (TARP's expected coverage at ``level``),
    ``TARP KS p`` and ``posteriors`` (S).
    """
    import torch
    from sbi.diagnostics.sbc import _run_sbc, check_uniformity_frequentist
    from sbi.diagnostics.tarp import _run_tarp, check_tarp, get_tarp_references

    theta = np.atleast_2d(np.asarray(theta, dtype=np.float64))
    if theta.shape != (len(estimate), 4):
        raise ValueError(f"theta has shape {theta.shape}; expected ({len(estimate)}, 4), one θ per posterior")
    rng = np.random.default_rng([int(seed), 31])
    samples = estimate.sample_all(draws, seed=rng.integers(2**32))                    # (L, S, 4)
    out = {"posteriors": len(estimate)}
    pit = pit_values(estimate, theta, seed=int(rng.integers(2**32)))
    for k, p in enumerate(PARAMETERS):
        out[f"{p} central"] = float(np.mean(np.abs(pit[p].to_numpy() - 0.5) <= level / 2))
        out[f"{p} HPD"] = float(np.mean(estimate.hpd_level(p, theta[:, k], seed=int(rng.integers(2**32)),
                                                           draws=samples[..., k] if p in CONTINUOUS else None) <= level))
    # SBC ranks per parameter (sbi), θ0 and θ1 dequantised
    deq_samples = torch.as_tensor(_dequantise(samples, rng), dtype=torch.float32)
    deq_theta = torch.as_tensor(_dequantise(theta, rng), dtype=torch.float32)
    xs = torch.arange(len(estimate), dtype=torch.float32)[:, None]
    ranks = _run_sbc(deq_theta, xs, deq_samples, reduce_fns="marginals", show_progress_bar=False)
    for p, pval in zip(PARAMETERS, check_uniformity_frequentist(ranks, draws)):
        out[f"{p} SBC KS p"] = float(pval)
    # joint highest-density region: ranks of the truth's joint log density (sbi's expected coverage)
    log_p_samples = estimate.log_prob(samples)                                       # (L, S)
    log_p_truth = estimate.log_prob(theta[None])[0]                                  # (S,)
    table = torch.as_tensor(np.concatenate([log_p_samples, log_p_truth[None]]).T, dtype=torch.float64)

    def joint_density(thetas, x):                 # sbi passes (draws or truth, x); x holds the row
        row = int(x.item())
        return table[row, :-1] if thetas.shape[0] == draws else table[row, -1:]

    joint_ranks = _run_sbc(torch.as_tensor(theta, dtype=torch.float32), xs, torch.as_tensor(samples, dtype=torch.float32),
                           reduce_fns=[joint_density], show_progress_bar=False)
    out["joint HPD"] = float(np.mean(1.0 - joint_ranks[:, 0].numpy() / draws <= level))
    # TARP (sbi), on the dequantised draws, z-scored; its ECP averaged over reference draws
    ecps = []
    with torch.random.fork_rng():
        torch.manual_seed(int(rng.integers(2**31)))
        for _ in range(TARP_REFERENCE_DRAWS):
            references = get_tarp_references(deq_theta)
            ecp, alpha = _run_tarp(deq_samples, deq_theta, references, z_score_theta=True,
                                   num_bins=max(10, len(estimate) // 10))
            ecps.append(ecp)
    ecp = torch.stack(ecps).mean(dim=0)
    out["TARP"] = float(np.interp(level, alpha.numpy(), ecp.numpy()))
    out["TARP KS p"] = float(check_tarp(ecp, alpha)[1])
    return out


def spread_and_error(estimate: PosteriorEstimate, theta: np.ndarray) -> dict:
    """How wide the posteriors claim to be against how far their means fall from the truth, per
    continuous parameter: ``<parameter> RMSE`` (root mean square error of the posterior mean),
    ``<parameter> bias`` (its mean error) and ``<parameter> spread`` (root mean posterior
    variance), all in the parameter's units.

    For the true posterior, over θ (and acquisitions) drawn as in training, the two agree in
    expectation (E[(E[θ | x] − θ)²] = E[Var(θ | x)], the law of total variance: the spread–skill
    relation of ensemble forecasts, Fortin et al. 2014); right coverage alone does not imply it.
    Under one fixed acquisition, spread below RMSE says the posterior is narrower than its errors
    on such samples — which the coverage checks then find — and whether the error grew or the
    spread shrank; a bias says the acquisition moves the estimate one way on average (whether more
    images remove it shows across M)."""
    theta = np.atleast_2d(np.asarray(theta, dtype=np.float64))
    out = {}
    for p in CONTINUOUS:
        k = PARAMETERS.index(p)
        error = estimate.mean(p) - theta[:, k]
        out[f"{p} RMSE"] = float(np.sqrt(np.mean(error ** 2)))
        out[f"{p} bias"] = float(np.mean(error))
        out[f"{p} spread"] = float(np.sqrt(np.mean(estimate.sd(p) ** 2)))
    return out


def coverage_columns(level: float = 0.9) -> list[str]:
    """The coverage columns of :func:`calibration_checks` that :func:`within_accepted` judges."""
    return [f"{p} {kind}" for p in PARAMETERS for kind in ("central", "HPD")] + ["joint HPD", "TARP"]


def within_accepted(row: dict) -> dict:
    """Column → True where a coverage at 90 % lies in :data:`ACCEPTED_COVERAGE`."""
    out = {}
    for col in coverage_columns():
        lo, hi = ACCEPTED_COVERAGE["discrete" if col.split()[0] in DISCRETE else "continuous"]
        out[col] = bool(lo <= row[col] <= hi)
    return out


def outside_band(report: pd.DataFrame) -> list[str]:
    """Every coverage of ``report`` (rows of :func:`calibration_report` or
    :func:`calibration_under_acquisitions`) outside :data:`ACCEPTED_COVERAGE`, as
    ``"<row>: <check> <coverage>"`` lines (rows without checks, e.g. refused acquisitions, skipped)."""
    out = []
    for key, row in report.iterrows():
        if pd.isna(row.get("joint HPD", np.nan)):
            continue
        label = ", ".join(f"M = {k}" if isinstance(k, (int, np.integer)) and not isinstance(k, (bool, np.bool_))
                          else str(k)
                          for k in (key if isinstance(key, tuple) else (key,)))
        out += [f"{label}: {col} {row[col]:.3f}" for col, ok in within_accepted(row).items() if not ok]
    return out


def calibration_report(estimator, profile, n_configs: int, sizes=(1, 4, 12, 24), seed: int = 0, *,
                       acquisition=None, level: float = 0.9, draws: int = 500, fresh: dict | None = None,
                       summaries: np.ndarray | None = None, spread: bool = False, acquisition_given: bool = False,
                       show_progress_bars: bool | None = None) -> pd.DataFrame:
    """:func:`calibration_checks` of ``estimator`` at each set size M on fresh configurations.

    ``n_configs`` configurations are drawn from the continuous prior, each with ``max(sizes)``
    images recorded with ``acquisition`` (see :func:`agglib.evaluate.sets.fresh_configurations`:
    ``None``, a fixed dict, or :class:`agglib.stem.acquisition.AcquisitionRanges` for one
    acquisition per sample); the posterior of each configuration from its first M images is
    checked against its θ. Pass ``fresh`` (the dict that function returns) to reuse images, and
    ``summaries`` (``estimator.summaries(fresh["images"])``) to reuse what the posterior read from
    them. ``spread=True`` adds the columns of :func:`spread_and_error`. ``acquisition_given=True``
    tells a posterior that :attr:`~agglib.estimate.SampleEstimator.reads_acquisition` each sample's
    intensity scale and WO3/TiO2 contrast, as a user who knows them would (:func:`given_acquisition`).
    One row per M.
    """
    from agglib.evaluate.sets import fresh_configurations

    sizes = sorted(int(m) for m in sizes)
    if fresh is None:
        fresh = fresh_configurations(profile, n_configs, sizes[-1], seed, prior="continuous", acquisition=acquisition,
                                     show_progress_bars=show_progress_bars)
    if summaries is None:
        summaries = estimator.summaries(fresh["images"])
    elif len(summaries) != len(fresh["images"]):
        raise ValueError(f"summaries has {len(summaries)} rows; the fresh set has {len(fresh['images'])} images")
    if acquisition_given:
        summaries = estimator.with_acquisition(summaries, given_acquisition(fresh))
    per = np.bincount(fresh["config_id"])
    rows = []
    for m in sizes:
        if m > per.min():
            raise ValueError(f"M = {m} needs {m} images per configuration; the fresh set has {per.min()}")
        starts = np.concatenate([[0], np.cumsum(per)[:-1]])
        groups = [np.arange(s, s + m) for s in starts]
        post = estimator.from_summaries(summaries, groups)
        truth = fresh["theta"][starts]
        rows.append({"M": m, **calibration_checks(post, truth, level=level, draws=draws, seed=seed + m),
                     **(spread_and_error(post, truth) if spread else {})})
    return pd.DataFrame(rows).set_index("M")


def negative_controls(estimate: PosteriorEstimate, theta: np.ndarray, level: float = 0.9, draws: int = 500,
                      seed: int = 0) -> pd.DataFrame:
    """The checks on ``estimate`` and on two copies that must fail them: over-confident (3 ×
    narrower, :func:`agglib.posterior.overconfident`) and shifted (by one mixture SD and one
    integer, :func:`agglib.posterior.shifted`). One row each."""
    rows = {"as trained": estimate, "over-confident (3 × narrower)": overconfident(estimate, 3.0),
            "shifted (1 SD, θ0/θ1 + 1)": shifted(estimate, 1.0)}
    return pd.DataFrame({name: calibration_checks(est, theta, level, draws, seed) for name, est in rows.items()}).T


def given_acquisition(fresh: dict) -> dict:
    """What a user who knows how each sample of ``fresh`` (:func:`agglib.evaluate.sets.fresh_configurations`)
    was recorded tells the posterior: per image, the intensity scale and WO3/TiO2 contrast of its
    sample's acquisition (the simulator's, 1 and 1, where it has none) — the keys of
    :data:`agglib.estimate.KNOWN_ACQUISITION`, arrays of the images' length."""
    from agglib.estimate import KNOWN_ACQUISITION

    per_config = fresh.get("acquisitions") or [{}] * (int(np.max(fresh["config_id"])) + 1)
    return {key: np.array([float(per_config[c].get(key, 1.0)) for c in fresh["config_id"]]) for key in KNOWN_ACQUISITION}


def _fit_accepts(estimator, known: dict) -> bool:
    """Whether ``agglib fit`` accepts every sample's given acquisition (per-image arrays of
    :func:`given_acquisition`): :meth:`~agglib.estimate.SampleEstimator.check_known_acquisition`."""
    try:
        for values in set(zip(*(known[k] for k in known))):
            estimator.check_known_acquisition(dict(zip(known, values)))
    except ValueError:
        return False
    return True


def calibration_under_acquisitions(estimator, profile, acquisitions: dict, n_configs: int, sizes=(1, 4, 12, 24),
                                   seed: int = 0, *, level: float = 0.9, draws: int = 500,
                                   acquisition_given=(False,),
                                   show_progress_bars: bool | None = None) -> pd.DataFrame:
    """:func:`calibration_report` of ``estimator`` with each sample recorded under each acquisition.

    Parameters
    ----------
    acquisitions : dict
        Name → a fixed acquisition (dict of :data:`agglib.stem.acquisition.ACQUISITION_KEYS`;
        ``{}``: the simulator's own settings) or an
        :class:`agglib.stem.acquisition.AcquisitionRanges` (one drawn per sample).
    n_configs : int
        Fresh configurations from the continuous prior, the same aggregates under every
        acquisition (a paired design), ``max(sizes)`` images each.
    acquisition_given : sequence of bool
        Check the posterior as a user who does not know the acquisition runs it (False) and/or
        as one who gives its intensity scale and WO3/TiO2 contrast (True: estimators that
        :attr:`~agglib.estimate.SampleEstimator.reads_acquisition`; rows whose values lie outside
        the estimator's training ranges, which ``fit`` refuses, are refused entirely).

    Returns
    -------
    DataFrame
        Rows (acquisition, acquisition given, M): ``refused`` (share of samples the intensity check
        of ``agglib fit`` turns away, on all their images), the checks of :func:`calibration_checks`
        and the posterior means' error against the posteriors' spread (:func:`spread_and_error`)
        on the samples it accepts (none where it refuses more than half).
    """
    from tqdm.auto import tqdm

    import agglib
    from agglib.evaluate.sets import fresh_configurations
    from agglib.fit.intensity import simulated_samples_accepted

    sizes = sorted(int(m) for m in sizes)
    show = agglib.config.get("progress_bars") if show_progress_bars is None else show_progress_bars
    given_modes = [bool(g) for g in acquisition_given]
    if not given_modes:
        raise ValueError("acquisition_given=(): give at least one of False (unknown), True (given)")
    if any(given_modes) and not estimator.reads_acquisition:
        raise ValueError("acquisition_given=True: this estimator does not read a known acquisition")
    tables = []
    for name, acquisition in tqdm(acquisitions.items(), desc="acquisitions", disable=not show):
        fresh = fresh_configurations(profile, n_configs, sizes[-1], seed, prior="continuous",
                                     acquisition=acquisition or None, show_progress_bars=False)
        accepted, groups = simulated_samples_accepted(estimator, fresh)
        refused = float(1.0 - accepted.mean())
        keep = np.concatenate([groups[c] for c in np.flatnonzero(accepted)]) if accepted.any() else np.zeros(0, int)
        kept = {"images": fresh["images"][keep], "theta": fresh["theta"][keep],
                "config_id": np.repeat(np.arange(int(accepted.sum())), sizes[-1]),
                "acquisitions": None if fresh["acquisitions"] is None else
                [fresh["acquisitions"][c] for c in np.flatnonzero(accepted)]}
        summaries = estimator.summaries(kept["images"]) if accepted.mean() >= 0.5 else None
        for given in given_modes:
            outside = given and kept["images"].shape[0] > 0 and not _fit_accepts(estimator, given_acquisition(kept))
            if summaries is None or outside:             # fit refuses given values outside the training ranges
                tables.append(pd.DataFrame([{"acquisition": name, "acquisition given": given, "M": m,
                                             "refused": 1.0 if outside else refused} for m in sizes]))
                continue
            report = calibration_report(estimator, profile, int(accepted.sum()), sizes, seed, level=level, draws=draws,
                                        fresh=kept, summaries=summaries, spread=True,
                                        acquisition_given=given).reset_index()
            tables.append(report.assign(acquisition=name, refused=refused, **{"acquisition given": given}))
    out = pd.concat(tables, ignore_index=True)
    return out.set_index(["acquisition", "acquisition given", "M"])
