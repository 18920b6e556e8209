"""One table of label sources and transforms (agglib.targets) for the paper's networks and the encoder."""

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agglib.encoder import ENCODER_TARGETS, encoder_labels, natural_labels
from agglib.targets import TRANSFORMS, label_values, to_natural, transformed_labels
from agglib.paper_training._contracts import PRETRAIN_DESCRIPTORS


def descriptors_with_an_absent_material(n: int = 6) -> tuple[np.ndarray, pd.DataFrame]:
    rng = np.random.default_rng(0)
    d = pd.DataFrame({"df": rng.uniform(1.5, 2.5, n), "rho": [0.0, 1.0, 0.3, 0.5, 0.7, 0.2],
                      "s_wo3": [np.nan, 4.0, 2.0, 1.5, 3.0, 1.0], "s_tio2": [5.0, np.nan, 2.5, 1.0, 1.0, 2.0],
                      "z_hetero": rng.uniform(0, 2, n), "z_total": rng.uniform(1, 3, n),
                      "n_particles": rng.integers(1, 200, n).astype(float), "rg": rng.uniform(5, 80, n)})
    theta = np.column_stack([rng.uniform(1.5, 2.5, n), rng.uniform(0, 1, n), rng.integers(1, 7, (n, 2))])
    return theta, d


def test_the_paper_pretraining_and_the_encoder_read_the_same_labels():
    """Where both define a label they agree; a material the aggregate lacks is 0 for the paper's
    pretraining (it regresses S = 0) and NaN for the encoder (masked)."""
    from agglib.paper_training.data import descriptor_table

    theta, d = descriptors_with_an_absent_material()

    class Store:
        descriptors = d

    Store.theta = theta
    paper = descriptor_table(Store)
    names = list(ENCODER_TARGETS)
    encoder = encoder_labels(theta, d, names)
    for k, name in enumerate(PRETRAIN_DESCRIPTORS):
        assert ENCODER_TARGETS[name].transform == PRETRAIN_DESCRIPTORS[name]
        ours = encoder[:, names.index(name)]
        defined = np.isfinite(ours)
        assert np.allclose(paper[defined, k], ours[defined], rtol=1e-6)
        assert np.all(paper[~defined, k] == 0.0)
    assert np.isnan(encoder[0, names.index("s_wo3")]) and np.isnan(encoder[1, names.index("s_tio2")])
    assert encoder[:2, names.index("homogeneous")].tolist() == [1.0, 1.0] and encoder[2, names.index("homogeneous")] == 0
    assert np.allclose(natural_labels(encoder, names)["rg"], d["rg"])


@settings(max_examples=50, deadline=None)
@given(values=st.lists(st.floats(1.0, 1e4), min_size=1, max_size=20), transform=st.sampled_from(sorted(TRANSFORMS)))
def test_transforms_invert(values, transform):
    d = pd.DataFrame({"rg": values})
    forward = transformed_labels("descriptor:rg", transform, None, d)
    assert np.allclose(to_natural(forward, transform), values, rtol=1e-9)


def test_bad_sources_and_policies_are_named():
    theta, d = descriptors_with_an_absent_material()
    assert np.array_equal(label_values("theta:2", theta, d), theta[:, 2])
    with pytest.raises(ValueError, match="label source 'size'"):
        label_values("size", theta, d)
    with pytest.raises(ValueError, match="transform 'sqrt'"):
        transformed_labels("descriptor:rg", "sqrt", theta, d)
    with pytest.raises(ValueError, match="absent='drop'"):
        transformed_labels("descriptor:rg", "log", theta, d, absent="drop")
