"""Box counting, the power-law correction and the threshold mixing ratio (paper §4)."""

import numpy as np
import pytest

from agglib.baselines import (apply_power_law, box_counting_dimension, fit_power_law, fit_thresholds,
                              mean_projected_area_nm2, threshold_mixing_ratio)
from agglib.evaluate import mae, r2


def sierpinski_carpet(level: int) -> np.ndarray:
    carpet = np.ones((1, 1), dtype=bool)
    for _ in range(level):
        hole = np.zeros_like(carpet)
        carpet = np.block([[carpet, carpet, carpet], [carpet, hole, carpet], [carpet, carpet, carpet]])
    return carpet


def test_filled_square_has_dimension_two():
    assert box_counting_dimension(np.ones((256, 256), bool)) == pytest.approx(2.0, abs=1e-9)


def test_line_has_dimension_one():
    mask = np.zeros((256, 256), bool)
    mask[100, :] = True
    assert box_counting_dimension(mask) == pytest.approx(1.0, abs=0.02)
    diagonal = np.eye(256, dtype=bool)
    assert box_counting_dimension(diagonal) == pytest.approx(1.0, abs=0.05)


def test_sierpinski_carpet_has_log8_over_log3():
    carpet = sierpinski_carpet(5)                       # 243 × 243
    d = box_counting_dimension(carpet, sizes=[1, 3, 9, 27, 81])
    assert d == pytest.approx(np.log(8) / np.log(3), abs=1e-9)


def test_empty_mask_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        box_counting_dimension(np.zeros((8, 8), bool))


def test_power_law_fit_recovers_its_parameters():
    x = np.linspace(1.2, 1.9, 30)
    a, b = fit_power_law(x, 0.74 * x ** 2.19)
    assert a == pytest.approx(0.74, rel=1e-4) and b == pytest.approx(2.19, rel=1e-4)
    np.testing.assert_allclose(apply_power_law(x, a, b), 0.74 * x ** 2.19, rtol=1e-6)


def disc_image(centres, radius, values, size=200):
    yy, xx = np.mgrid[:size, :size]
    img = np.zeros((size, size))
    for (cy, cx), v in zip(centres, values):
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2] = v
    return img


def test_threshold_method_is_exact_without_overlaps():
    """Equal discs, TiO2 at signal 0.01, WO3 at 0.05, none overlapping: ρ̂ is exactly 3/7."""
    centres = [(30, 30), (30, 90), (30, 150), (100, 30), (100, 90), (100, 150), (170, 90)]
    values = [0.05, 0.05, 0.05, 0.01, 0.01, 0.01, 0.01]
    img = disc_image(centres, 20, values)
    assert threshold_mixing_ratio(img, 0.005, 0.03, pixel_size_nm=1.0) == pytest.approx(3 / 7, abs=1e-12)
    other = disc_image(centres, 20, [0.05, 0.05, 0.05, 0.05, 0.01, 0.01, 0.01])     # 4 WO3
    best = fit_thresholds([img, other], [3 / 7, 4 / 7], 1.0)
    assert best["mae"] == pytest.approx(0.0, abs=1e-12)
    assert 0.0 < best["t_low"] < 0.01 <= best["t_high"] < 0.05


def test_mean_projected_area_of_the_radius_law():
    rng = np.random.default_rng(0)
    from agglib.model.particles import RadiusDistribution
    law = RadiusDistribution()
    r = np.exp(rng.normal(law.mu_ln, law.sigma_ln, 400_000))
    assert mean_projected_area_nm2() == pytest.approx(np.pi * np.mean(r ** 2), rel=0.01)


def test_mae_and_r2_against_hand_computed_values():
    truth = np.array([1.0, 2.0, 3.0, 4.0])
    pred = np.array([1.5, 2.0, 2.0, 4.5])
    assert mae(truth, pred) == pytest.approx((0.5 + 0 + 1 + 0.5) / 4)
    # SS_res = 0.25 + 0 + 1 + 0.25 = 1.5; SS_tot = 5  →  R² = 1 − 1.5/5 = 0.7
    assert r2(truth, pred) == pytest.approx(0.7)
    assert r2(truth, truth) == 1.0
