"""Descriptors on hand-built aggregates with known answers."""

import math

import numpy as np
import pytest

import agglib
from agglib.descriptors import contact_pairs


def make(positions, radii, labels):
    return agglib.Aggregate(np.array(positions, float), np.array(radii, float), np.array(labels))


def test_dimer():
    agg = make([[0, 0, 0], [2.0, 0, 0]], [1, 1], [0, 1])
    d = agglib.describe(agg)
    assert d["n_particles"] == 2
    assert d["rho"] == 0.5
    assert d["rg"] == pytest.approx(1.0)
    assert math.isnan(d["df"])  # R_g = a: Eq. (5) undefined
    assert d["z_total"] == 1.0 and d["z_hetero"] == 1.0
    assert d["s_tio2"] == 1.0 and d["s_wo3"] == 1.0


def test_unequal_dimer_uses_r3_masses_and_mean_radius():
    agg = make([[0, 0, 0], [3.0, 0, 0]], [1, 2], [1, 1])
    d = agglib.describe(agg)
    # masses 1 and 8: centre at 8/3, Rg² = (1·(8/3)² + 8·(1/3)²)/9
    rg = math.sqrt((64 / 9 + 8 / 9) / 9)
    assert d["rg"] == pytest.approx(rg)
    assert rg < 1.5 and math.isnan(d["df"])
    assert d["rho"] == 0.0
    assert math.isnan(d["s_wo3"]) and d["s_tio2"] == 2.0
    assert d["z_hetero"] == 0.0 and d["z_total"] == 1.0


def test_chain_of_three():
    agg = make([[0, 0, 0], [2, 0, 0], [4, 0, 0]], [1, 1, 1], [1, 1, 1])
    d = agglib.describe(agg)
    assert d["z_total"] == pytest.approx(4 / 3)
    assert d["s_tio2"] == 3.0
    assert d["rg"] == pytest.approx(math.sqrt(8 / 3))
    assert d["df"] == pytest.approx(math.log(3 / 1.3) / math.log(math.sqrt(8 / 3)))


def test_mixed_triangle():
    h = math.sqrt(3)
    agg = make([[0, 0, 0], [2, 0, 0], [1, h, 0]], [1, 1, 1], [0, 0, 1])
    d = agglib.describe(agg)
    assert d["rho"] == pytest.approx(2 / 3)
    assert d["z_total"] == pytest.approx(2.0)
    assert d["z_hetero"] == pytest.approx(4 / 3)
    assert d["s_wo3"] == 2.0 and d["s_tio2"] == 1.0


def test_two_separate_tio2_clusters_bridged_by_wo3():
    # TiO2 - WO3 - TiO2 in a row: two TiO2 clusters of size 1
    agg = make([[0, 0, 0], [2, 0, 0], [4, 0, 0]], [1, 1, 1], [1, 0, 1])
    d = agglib.describe(agg)
    assert d["s_tio2"] == 1.0 and d["s_wo3"] == 1.0
    assert d["z_hetero"] == pytest.approx(4 / 3)


def test_contact_threshold_is_one_percent():
    r = np.array([1.0, 1.0])
    assert len(contact_pairs(np.array([[0, 0, 0], [2.02, 0, 0]]), r)) == 1
    assert len(contact_pairs(np.array([[0, 0, 0], [2.0201, 0, 0]]), r)) == 0


def test_empty_aggregate_rejected():
    with pytest.raises(ValueError, match="N=0"):
        agglib.describe(make(np.zeros((0, 3)), [], []))


def test_shadows_from_the_true_theta_are_reused_exactly_as_drawn():
    """Notebook 8's second comparison (the ceiling) reuses the shadows from θ of the first: the
    reused descriptors equal a fresh draw with the same seed, are a copy (changing them leaves
    the kept ones alone), and another seed draws others."""
    import pandas as pd

    from agglib.core.seeding import spawn_seeds
    from agglib.evaluate import shadows

    theta = agglib.ModelParams(1.8, 0.5, 2, 3)
    first = shadows._true_descriptors(theta, 3, spawn_seeds(5, 2)[0], 1)
    first.loc[first.index[0], "z_total"] = -1.0
    again = shadows._true_descriptors(theta, 3, spawn_seeds(5, 2)[0], 1)
    pd.testing.assert_frame_equal(again, shadows._describe(theta, 3, spawn_seeds(5, 2)[0], 1))
    assert not shadows._true_descriptors(theta, 3, spawn_seeds(6, 2)[0], 1).equals(again)
