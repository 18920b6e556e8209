"""What a sample's images tell about their acquisition (agglib.evaluate.identifiability)."""

from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import agglib
from agglib.estimate import SampleEstimator, shipped_models_dir
from agglib.evaluate.identifiability import (acquisition_identifiability, bins_of, cross_validated_r2,
                                             error_by_acquisition, pooled_summaries, ridge_leave_one_out)
from agglib.evaluate.sets import fresh_configurations
from agglib.stem.acquisition import ACQUISITION_KEYS, AcquisitionRanges


def test_r2_is_near_one_for_a_target_the_features_determine_and_near_zero_for_noise():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 5))
    determined = 2.0 * x[:, 0] - x[:, 1] ** 2 + 0.05 * rng.normal(size=400)
    assert cross_validated_r2(x, determined) > 0.98
    noise = rng.normal(size=400)                      # the negative control: nothing to read
    assert abs(cross_validated_r2(x, noise)) < 0.1
    half = x[:, 0] + rng.normal(size=400)             # half of the variance explained
    assert 0.35 < cross_validated_r2(x, half) < 0.65


def test_r2_of_noise_stays_near_zero_with_many_features_and_few_rows():
    # a fit that saw its held-out rows would read noise here (50 columns for 48 training rows)
    rng = np.random.default_rng(1)
    assert cross_validated_r2(rng.normal(size=(60, 25)), rng.normal(size=60)) < 0.05


def test_closed_form_leave_one_out_equals_refits():
    rng = np.random.default_rng(2)
    a, y = rng.normal(size=(30, 4)), rng.normal(size=30)
    penalties = (0.0, 0.5, 20.0)
    loo, coefficients = ridge_leave_one_out(a, y, penalties)
    for penalty, got, coef in zip(penalties, loo, coefficients):
        errors = []
        for i in range(30):
            keep = np.arange(30) != i
            _, (fit,) = ridge_leave_one_out(a[keep], y[keep], (penalty,))
            errors.append(y[i] - fit[0] - a[i] @ fit[1:])
        assert got == pytest.approx(np.sum(np.square(errors)), rel=1e-9)
    # with no penalty the fit on all rows is least squares with an intercept
    expected = np.linalg.lstsq(np.column_stack([np.ones(30), a]), y, rcond=None)[0]
    np.testing.assert_allclose(coefficients[0], expected, atol=1e-10)


def test_bins_hold_each_value_once_with_edges_as_documented():
    values = np.array([0.0, 0.3, 0.31, 1.0, 1.0, 1.2, 1.3, 1.3, 1.6, 1.7])
    got = {label: rows.tolist() for label, rows in bins_of(values, (0.0, 0.3, 1.0, 1.0, 1.3, 1.3, 1.6))}
    # 0 joins the first bin; 1.0 falls in (0.3, 1] before the zero-width bin [1, 1], which stays empty;
    # 1.3 in (1, 1.3] before [1.3, 1.3]; 1.7 is outside every bin
    assert got == {"0–0.3": [0, 1], "0.3–1": [2, 3, 4], "1–1.3": [5, 6, 7], "1.3–1.6": [8]}
    assert {label: rows.tolist() for label, rows in bins_of([1.0, 1.0, 1.1], (1.0, 1.0, 1.6))} == \
        {"1": [0, 1], "1–1.6": [2]}
    with pytest.raises(ValueError, match=r"edges=\[1.0, 0.5\]"):
        bins_of(values, (1.0, 0.5))


@settings(max_examples=25, deadline=None)
@given(scale=st.floats(0.01, 100.0), shift=st.floats(-100.0, 100.0), seed=st.integers(0, 1000))
def test_r2_does_not_depend_on_the_units_of_the_features(scale, shift, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(120, 3))
    y = x[:, 0] + 0.5 * rng.normal(size=120)
    assert cross_validated_r2(x * scale + shift, y, seed=seed) == pytest.approx(cross_validated_r2(x, y, seed=seed),
                                                                                 abs=1e-6)


def test_r2_names_bad_shapes_and_folds():
    with pytest.raises(ValueError, match=r"features \(10, 2\) and target \(9,\)"):
        cross_validated_r2(np.zeros((10, 2)), np.zeros(9))
    with pytest.raises(ValueError, match="folds=1"):
        cross_validated_r2(np.zeros((10, 2)), np.zeros(10), folds=1)


def test_pooled_summaries_are_each_groups_mean_then_sd():
    values = np.arange(12.0).reshape(6, 2)
    out = pooled_summaries(values, [np.array([0, 1, 2]), np.array([3, 5])])
    assert out.shape == (2, 4)
    np.testing.assert_allclose(out[0], [2.0, 3.0, np.std([0.0, 2, 4]), np.std([1.0, 3, 5])])
    np.testing.assert_allclose(out[1], [8.0, 9.0, 2.0, 2.0])


@pytest.fixture(scope="module")
def robust_on_fresh():
    estimator = SampleEstimator.load(shipped_models_dir("robust"))
    fresh = fresh_configurations(agglib.load_profile("quick"), 40, 2, seed=61, prior="continuous",
                                 acquisition=AcquisitionRanges(), workers=1, show_progress_bars=False)
    return estimator, fresh


def test_identifiability_has_a_row_per_acquisition_setting_and_reads_the_offset(robust_on_fresh):
    estimator, fresh = robust_on_fresh
    table = acquisition_identifiability(estimator, fresh, images=2, folds=3)
    assert len(table) == len(ACQUISITION_KEYS)
    assert {"log intensity_scale", "log dose_e_per_A2", "extra_blur_nm"} <= set(table.index)
    assert table.loc["extra_blur_nm", "range"] == "0–1.5 nm"
    assert table.loc["log dose_e_per_A2", "range"] == "40–600 e/Å²"
    # the vacuum offset is the median of every image: read from 40 samples of 2 images almost exactly
    assert table.loc["offset_fraction", "R² (acquisition statistics)"] > 0.9


def test_summary_parts_are_the_columns_summaries_writes(robust_on_fresh):
    estimator, fresh = robust_on_fresh
    images = fresh["images"][:3]
    parts = estimator.summary_parts(estimator.summaries(images, acquisition={"intensity_scale": 0.8,
                                                                            "wo3_contrast": 0.9}))
    np.testing.assert_allclose(parts["heads"], estimator.encoder.encode(images).outputs, rtol=1e-6)
    np.testing.assert_allclose(parts["statistics"], estimator.encoder.acquisition_statistics(images), rtol=1e-6)
    np.testing.assert_allclose(parts["known"], [[np.log(0.8), 0.9, 1.0]] * 3, rtol=1e-6)
    with pytest.raises(ValueError, match=r"summaries of shape \(3, 12\)"):
        estimator.summary_parts(np.zeros((3, 12)))


def test_error_by_acquisition_bins_every_sample_once(robust_on_fresh):
    estimator, fresh = robust_on_fresh
    table = error_by_acquisition(estimator, fresh, "pixel_zoom", (1.0, 1.0, 1.3, 1.6), images=2)
    zoom = np.array([a["pixel_zoom"] for a in fresh["acquisitions"]])
    assert table["samples"].to_dict() == {"1": int(np.sum(zoom == 1.0)), "1–1.3": int(np.sum((zoom > 1) & (zoom <= 1.3))),
                                          "1.3–1.6": int(np.sum(zoom > 1.3))}
    assert table["samples"].sum() == 40
    assert {"df RMSE", "df bias", "df spread", "rho RMSE"} <= set(table.columns)
    assert (table["df spread"] > 0).all()


def test_identifiability_names_what_it_cannot_use(robust_on_fresh):
    estimator, fresh = robust_on_fresh
    with pytest.raises(ValueError, match="images=3"):
        acquisition_identifiability(estimator, fresh, images=3)
    with pytest.raises(ValueError, match="no drawn acquisitions"):
        acquisition_identifiability(estimator, {**fresh, "acquisitions": None}, images=2)
    with pytest.raises(ValueError, match="39 acquisitions for 40 configurations"):
        acquisition_identifiability(estimator, {**fresh, "acquisitions": fresh["acquisitions"][1:]}, images=2)
    with pytest.raises(ValueError, match="key='blur'"):
        error_by_acquisition(estimator, fresh, "blur", (0, 1), images=2)
    heads_only = SimpleNamespace(reads_statistics=False)      # an estimator of head outputs alone
    with pytest.raises(ValueError, match="reads no acquisition statistics"):
        acquisition_identifiability(heads_only, fresh, images=2)
