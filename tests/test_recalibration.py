"""Recalibration (agglib.sets_training.recalibration): the law recovers a known over- or
under-confidence, per parameter, and the recalibrated posteriors pass the calibration checks the
raw ones fail."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import agglib
from agglib.evaluate.calibration import calibration_checks, within_accepted
from agglib.posterior import PosteriorEstimate, ThetaGrid, Widening, overconfident, widened
from agglib.sets_training.recalibration import fit_widening

GRID = ThetaGrid.from_profile(agglib.load_profile("quick"))
NOISE_U = 0.6             # per-image noise of the fake summaries along u [logit units]


class OverconfidentEstimator:
    """A problem with a known answer: each image's summary is u(θ) + N(0, NOISE_U²); a set's
    exact posterior over u is N(mean of its summaries, NOISE_U² / M) (flat prior in u), and its
    configuration's (θ0, θ1) is drawn from a known categorical ``p``. This estimator claims
    Gaussians ``width`` × too narrow and the categorical at temperature 1 / ``temperature``."""

    def __init__(self, summaries, probabilities, config_id, width: float, temperature: float, widening=None):
        self.summaries, self.p, self.config_id = summaries, probabilities, config_id
        self.width, self.temperature = width, temperature
        self.widening = widening or Widening()

    def from_summaries(self, summaries, groups, recalibrated: bool = True) -> PosteriorEstimate:
        s, pairs = len(groups), self.p.shape[1]
        centre = np.stack([summaries[g].mean(axis=0) for g in groups])
        m = np.array([len(g) for g in groups])
        sd = NOISE_U / np.sqrt(m) / self.width
        sharp = self.p[[self.config_id[g[0]] for g in groups]] ** self.temperature
        params = {"discrete": sharp / sharp.sum(axis=1, keepdims=True),
                  "log_w": np.zeros((s, pairs, 1)),
                  "mean": np.broadcast_to(centre[:, None, None, :], (s, pairs, 1, 2)).copy(),
                  "log_scale": np.broadcast_to(np.log(sd)[:, None, None, None], (s, pairs, 1, 2)).copy(),
                  "offdiag": np.zeros((s, pairs, 1))}
        estimate = PosteriorEstimate(params, GRID, m)
        return self.widening.apply(estimate) if recalibrated else estimate


def known_problem(n_configs: int, images: int, seed: int):
    """θ drawn inside the prior, summaries with known noise, the configurations' categoricals."""
    rng = np.random.default_rng(seed)
    u = rng.normal(0.0, 1.0, (n_configs, 2))
    logits = rng.normal(0.0, 1.5, (n_configs, 36))
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    pair = np.array([rng.choice(36, p=row) for row in p])
    theta = np.zeros((n_configs, 4))
    for k, name in enumerate(("df", "rho")):
        lo, hi = GRID.bounds(name)
        theta[:, k] = lo + (hi - lo) / (1.0 + np.exp(-u[:, k]))
    theta[:, 2], theta[:, 3] = GRID.integers("theta0")[pair // 6], GRID.integers("theta1")[pair % 6]
    config_id = np.repeat(np.arange(n_configs), images)
    summaries = np.repeat(u, images, axis=0) + rng.normal(0.0, NOISE_U, (n_configs * images, 2))
    return summaries, np.repeat(theta, images, axis=0), config_id, p


def test_fit_recovers_a_known_over_confidence_and_the_widened_posterior_is_calibrated():
    summaries, theta, config_id, p = known_problem(400, 12, seed=3)
    raw = OverconfidentEstimator(summaries, p, config_id, width=1.6, temperature=1.5)
    law, table = fit_widening(raw, summaries, theta, config_id, seed=0, sizes=(1, 2, 4, 8, 12))
    assert list(table.index) == [1, 2, 4, 8, 12]
    width, temperature = law.factors([1, 4, 12])
    assert width.shape == (3, 2)
    assert width == pytest.approx(1.6, rel=0.08) and temperature == pytest.approx(1.5, rel=0.08)
    for lab in ("Df", "ρ"):                    # the 90 % intervals: far too short before, about right after
        assert (table[f"θ_{lab} 90 % before"] < 0.8).all()
        assert (abs(table[f"θ_{lab} 90 % after"] - 0.9) < 0.04).all()
    assert (table["(θ0, θ1) NLL after"] < table["(θ0, θ1) NLL before"]).all()
    # fresh configurations of the same problem: raw posteriors fail the checks, widened ones pass
    f_summaries, f_theta, f_config, f_p = known_problem(400, 12, seed=4)
    starts = np.arange(400) * 12
    groups = [np.arange(s, s + 12) for s in starts]
    fresh = OverconfidentEstimator(f_summaries, f_p, f_config, width=1.6, temperature=1.5, widening=law)
    before = within_accepted(calibration_checks(fresh.from_summaries(f_summaries, groups, recalibrated=False),
                                                f_theta[starts], draws=200, seed=0))
    after = within_accepted(calibration_checks(fresh.from_summaries(f_summaries, groups), f_theta[starts],
                                               draws=200, seed=0))
    assert not before["df central"] and not before["joint HPD"], before
    assert all(after.values()), after


def test_an_under_confident_posterior_is_narrowed_and_each_parameter_gets_its_own_factor():
    """A posterior too wide on the held-out sets is narrowed to what they support; a problem whose
    θ_Df is too narrow and θ_ρ too wide gets one factor each."""
    summaries, theta, config_id, p = known_problem(800, 8, seed=6)
    law, table = fit_widening(OverconfidentEstimator(summaries, p, config_id, width=0.7, temperature=0.7), summaries,
                              theta, config_id, seed=1, sizes=(1, 2, 4, 8))
    width, temperature = law.factors([1, 2, 4, 8])
    assert width == pytest.approx(0.7, rel=0.1) and temperature == pytest.approx(0.7, rel=0.1)

    class Mixed(OverconfidentEstimator):            # θ_Df 1.5 × too narrow, θ_ρ 1.5 × too wide
        def from_summaries(self, summaries, groups, recalibrated=True):
            post = super().from_summaries(summaries, groups, recalibrated=False)
            return widened(post, np.array([[1 / 1.5, 1.5]] * len(groups)), 1.0)

    law, _ = fit_widening(Mixed(summaries, p, config_id, 1.0, 1.0), summaries, theta, config_id, seed=1,
                          sizes=(1, 4, 8))
    width, _ = law.factors([1, 4, 8])
    assert width[:, 0] == pytest.approx(1.5, rel=0.08) and width[:, 1] == pytest.approx(1 / 1.5, rel=0.08)


def test_a_calibrated_posterior_is_left_about_as_it_is():
    summaries, theta, config_id, p = known_problem(800, 8, seed=5)
    law, _ = fit_widening(OverconfidentEstimator(summaries, p, config_id, 1.0, 1.0), summaries, theta, config_id,
                          seed=1, sizes=(1, 2, 4, 8))
    width, temperature = law.factors([1, 8])
    assert np.allclose(width, 1.0, atol=0.06) and np.allclose(temperature, 1.0, atol=0.1)
    assert law.max_images == 8 and law.factors([100])[0] == pytest.approx(law.factors([8])[0])  # held beyond
    assert Widening.from_dict(law.to_dict()) == law


def test_a_law_of_the_former_format_reads_as_it_was_applied():
    """Estimators recalibrated before per-parameter factors: one width line for both parameters,
    factors below 1 taken as 1."""
    old = Widening.from_dict({"width": [-0.1, 0.05], "temperature": [0.4, -0.2], "max_images": 24})
    width, temperature = old.factors([1, 24])
    assert old.widen_only and np.allclose(width[:, 0], width[:, 1])
    assert width[0, 0] == 1.0 and width[1, 0] == pytest.approx(np.exp(-0.1 + 0.05 * np.log(24)))
    assert temperature[0] == pytest.approx(np.exp(0.4)) and temperature[1] == 1.0


@settings(max_examples=25, deadline=None)
@given(width=st.floats(0.3, 3.0), temperature=st.floats(0.3, 3.0), seed=st.integers(0, 10**6))
def test_widening_keeps_the_family_and_orders_intervals(width, temperature, seed):
    """Wider Gaussians → wider central intervals, around the same median of a symmetric
    posterior; a temperature keeps the categorical normalised and its ranking; factor 1 is the
    identity; the over-confident control is the same rule."""
    summaries, theta, config_id, p = known_problem(4, 3, seed=seed % 1000)
    est = OverconfidentEstimator(summaries, p, config_id, 1.0, 1.0)
    post = est.from_summaries(summaries, [np.arange(3), np.arange(3, 6)])
    wide = widened(post, width, temperature)
    lo, hi = post.interval("df", 0.9).T
    wlo, whi = wide.interval("df", 0.9).T
    assert np.all((whi - wlo >= hi - lo - 1e-9) if width >= 1 else (whi - wlo <= hi - lo + 1e-9))
    assert np.allclose(wide.params["discrete"].sum(axis=1), 1.0)
    assert (np.argsort(wide.params["discrete"], axis=1)[:, -1] == np.argsort(post.params["discrete"], axis=1)[:, -1]).all()
    same = widened(post, 1.0, 1.0)
    assert np.allclose(same.params["discrete"], post.params["discrete"]) and np.array_equal(same.params["mean"], post.params["mean"])
    control = overconfident(post, 1.0 / width)
    assert np.allclose(control.params["log_scale"], widened(post, width, width).params["log_scale"])
    apart = widened(post, np.array([[width, 1.0]] * 2), 1.0)     # θ_Df alone: θ_ρ's intervals unchanged
    assert np.allclose(apart.interval("rho", 0.9), post.interval("rho", 0.9))
    assert np.allclose(apart.interval("df", 0.9), widened(post, width, 1.0).interval("df", 0.9))
