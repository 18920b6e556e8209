"""The calibration checks (agglib.evaluate.calibration) pass a posterior that is right by
construction and fail an over-confident and a shifted one (negative controls)."""

import numpy as np
import pandas as pd
import pytest

import agglib
from agglib.evaluate.calibration import calibration_checks, negative_controls, outside_band, spread_and_error, within_accepted
from agglib.posterior import PosteriorEstimate, ThetaGrid, overconfident, shifted


def random_posteriors(n: int, seed: int, components: int = 3, log_scale=(-3.0, 0.0)) -> PosteriorEstimate:
    """n joint posteriors of the family with random parameters (varied widths — log SDs along the
    logits uniform on ``log_scale`` —, correlations, mixtures, discrete shapes)."""
    grid = ThetaGrid.from_profile(agglib.load_profile("quick"))
    rng = np.random.default_rng(seed)
    pairs = 36
    logits = rng.normal(0, 2.0, (n, pairs))
    discrete = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    log_w = rng.normal(0, 1, (n, pairs, components))
    log_w -= np.log(np.exp(log_w).sum(axis=2, keepdims=True))
    params = {"discrete": discrete, "log_w": log_w,
              "mean": rng.normal(0, 1.2, (n, pairs, components, 2)),
              "log_scale": rng.uniform(*log_scale, (n, pairs, components, 2)),
              "offdiag": rng.normal(0, 0.1, (n, pairs, components))}
    return PosteriorEstimate(params, grid, np.full(n, 12))


@pytest.fixture(scope="module")
def known():
    """Posteriors and truths drawn from them: calibrated by construction (the known-posterior case)."""
    post = random_posteriors(400, seed=1)
    truth = post.sample_all(1, seed=2)[0]
    return post, truth


def test_known_posterior_passes(known):
    post, truth = known
    row = calibration_checks(post, truth, draws=300, seed=0)
    assert all(within_accepted(row).values()), row
    assert min(row[f"{p} SBC KS p"] for p in ("df", "rho", "theta0", "theta1")) > 1e-3


def _hpd_level_by_quadrature(post, name: str, x: np.ndarray) -> np.ndarray:
    """The mass where the marginal density of ``name`` exceeds its value at ``x``, integrated along
    the logit u (where each component is a Gaussian: exact cell masses from its CDF, cells of
    0.005 over ±60, SD ≤ 8 and means near 0) — independent of the draws
    :meth:`PosteriorEstimate.hpd_level` counts."""
    from scipy.special import logsumexp, ndtr

    k = ("df", "rho").index(name)
    w, mean, sd = post._component_terms(k)
    lo, hi = post.grid.bounds(name)
    edges = np.arange(-60.0, 60.0 + 1e-9, 0.005)
    mid = (edges[:-1] + edges[1:]) / 2
    log_t, log_1mt = -np.logaddexp(0.0, -mid), -np.logaddexp(0.0, mid)
    log_d_x = np.log(post.density(name, x))
    out = np.empty(len(post))
    for a in range(len(post)):
        z = (mid[:, None] - mean[a]) / sd[a]
        log_pdf_u = logsumexp(np.log(w[a]) - 0.5 * z ** 2 - np.log(sd[a] * np.sqrt(2 * np.pi)), axis=1)
        log_density = log_pdf_u - np.log(hi - lo) - log_t - log_1mt            # density in θ [1/unit]
        cell_mass = (w[a] * np.diff(ndtr((edges[:, None] - mean[a]) / sd[a]), axis=0)).sum(axis=1)
        out[a] = cell_mass[log_density > log_d_x[a]].sum()
    return out


def test_hpd_levels_match_a_quadrature_where_components_are_wide_along_the_logit():
    """Components of SD 2–8 along the logit (trained posteriors have them at M = 1) put unbounded
    but integrable density at the box's edges. The levels counted from posterior draws equal the
    mass above the density at the value, integrated along the logit (the sum of the density
    tabulated in θ times the step, used before, gave the edge points more than all the mass:
    levels of 1), and the levels of truths drawn from the posterior are uniform."""
    from scipy.stats import kstest

    post = random_posteriors(800, seed=3, log_scale=(np.log(2.0), np.log(8.0)))
    truth = post.sample_all(1, seed=4)[0]
    few = post.select(np.arange(8))
    draws = 20_000
    for k, p in enumerate(("df", "rho")):
        counted = few.hpd_level(p, truth[:8, k], draws=few.sample_all(draws, seed=5)[..., k])
        np.testing.assert_allclose(counted, _hpd_level_by_quadrature(few, p, truth[:8, k]), atol=4 / np.sqrt(draws))
        levels = post.hpd_level(p, truth[:, k])
        assert abs(np.mean(levels <= 0.9) - 0.9) < 0.035, p            # 3 standard errors
        assert kstest(levels, "uniform").pvalue > 1e-3, p
    lo, hi = post.grid.bounds("df")
    assert np.all(few.hpd_level("df", np.r_[lo - 0.1, hi, hi + 0.1, lo].repeat(2)) == 1.0)   # outside the open box


@pytest.mark.parametrize("control", [lambda p: overconfident(p, 3.0), lambda p: shifted(p, 1.0)],
                         ids=["overconfident", "shifted"])
def test_negative_controls_fail(known, control):
    post, truth = known
    row = calibration_checks(control(post), truth, draws=300, seed=0)
    verdict = within_accepted(row)
    assert not verdict["df central"] and not verdict["rho HPD"] and not verdict["joint HPD"], row
    assert not verdict["theta0 central"] or not verdict["theta0 HPD"]


def test_negative_controls_table(known):
    post, truth = known
    table = negative_controls(post.select(np.arange(120)), truth[:120], draws=200)
    assert list(table.index) == ["as trained", "over-confident (3 × narrower)", "shifted (1 SD, θ0/θ1 + 1)"]
    assert table.loc["over-confident (3 × narrower)", "joint HPD"] < table.loc["as trained", "joint HPD"] - 0.2
    # the readings outside the band are listed by row and check (notebook 6 prints them)
    lines = outside_band(table)
    assert any(line.startswith("over-confident (3 × narrower): df central ") for line in lines), lines
    assert any(line.startswith("shifted (1 SD, θ0/θ1 + 1): joint HPD ") for line in lines), lines
    expected = sum(not ok for _, row in table.iterrows() for ok in within_accepted(row).values())
    assert len(lines) == expected
    # rows keyed by (acquisition given, acquisition, M): only the number of images reads "M = …"
    keyed = table.iloc[[1]].set_axis(pd.MultiIndex.from_tuples([(False, "paper settings", 4)]))
    assert all(line.startswith("False, paper settings, M = 4: ") for line in outside_band(keyed)), outside_band(keyed)


def test_spread_matches_error_only_where_calibrated():
    """Truths drawn from the posteriors (one Gaussian, the same for every (θ0, θ1) pair): the
    posterior means' RMSE equals the posteriors' spread (to the noise of 400 samples) and they are
    unbiased; 3 × narrower posteriors claim well under half of their error; posteriors shifted
    up by one SD along the logits (the negative control) have a bias of the order of the spread."""
    from dataclasses import replace

    post = random_posteriors(400, seed=3, components=1)
    params = {**post.params, **{k: np.repeat(post.params[k][:, :1], 36, axis=1) for k in ("mean", "log_scale", "offdiag")}}
    post = replace(post, params=params)
    truth = post.sample_all(1, seed=4)[0]
    fair, narrow = spread_and_error(post, truth), spread_and_error(overconfident(post, 3.0), truth)
    moved = spread_and_error(shifted(post, 1.0), truth)
    for p in ("df", "rho"):
        assert 0.85 < fair[f"{p} RMSE"] / fair[f"{p} spread"] < 1.15, fair
        assert abs(fair[f"{p} bias"]) < 0.15 * fair[f"{p} spread"], fair
        assert narrow[f"{p} spread"] < 0.5 * narrow[f"{p} RMSE"], narrow
        assert moved[f"{p} bias"] > 0.5 * fair[f"{p} spread"], moved


def test_marginals_agree_with_draws(known):
    """The exact marginal CDF, mean and HPD levels agree with joint draws (one posterior)."""
    post, _ = known
    one = post.select([3])
    draws = one.sample_all(20000, seed=5)[:, 0]
    for k, p in enumerate(("df", "rho")):
        x = np.quantile(draws[:, k], [0.1, 0.5, 0.9])
        assert np.allclose([one.cdf(p, v)[0] for v in x], [0.1, 0.5, 0.9], atol=0.01)
        assert abs(one.mean(p)[0] - draws[:, k].mean()) < 0.01 * (one.grid.bounds(p)[1] - one.grid.bounds(p)[0])
        assert abs(one.sd(p)[0] - draws[:, k].std()) < 0.05 * draws[:, k].std() + 1e-3
    for p, k in (("theta0", 2), ("theta1", 3)):
        freq = np.bincount(draws[:, k].astype(int) - 1, minlength=6) / len(draws)
        assert np.allclose(freq, one.probabilities(p)[0], atol=0.015)


def test_log_prob_normalised():
    """The joint density integrates to 1 over the box × the integers (one posterior, a grid sum)."""
    post = random_posteriors(1, seed=9, components=2)
    x = np.linspace(1.5, 2.5, 401)[1:-1]
    y = np.linspace(0.0, 1.0, 401)[1:-1]
    xx, yy = np.meshgrid(x, y, indexing="ij")
    total = 0.0
    for t0 in range(1, 7):
        for t1 in range(1, 7):
            th = np.stack([xx.ravel(), yy.ravel(), np.full(xx.size, t0), np.full(xx.size, t1)], axis=1)
            total += np.exp(post.log_prob(th[:, None, :])[:, 0]).sum() * (x[1] - x[0]) * (y[1] - y[0])
    assert total == pytest.approx(1.0, abs=0.02)
