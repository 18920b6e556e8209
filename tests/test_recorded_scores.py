"""The shipped estimators' READMEs carry exactly the scores recorded beside them (scores.json, written by
``benchmarks/estimator_scores.py --write``), and notebook 5's comparison with them can fail."""

import json

import numpy as np
import pandas as pd
import pytest

from agglib.estimate import SampleEstimator, shipped_models_dir
from agglib.evaluate import recorded_scores, same_as_recorded


@pytest.mark.parametrize("method", ["sets", "robust"])
def test_readme_tables_are_the_recorded_scores(method):
    recorded = recorded_scores(method)
    readme = (shipped_models_dir(method) / "README.md").read_text()
    assert recorded["command"].startswith("python benchmarks/estimator_scores.py") and "--write" in recorded["command"]
    assert recorded["configs"] >= 300                   # the protocol: ≥ 300 fresh configurations
    for name, rows in recorded["errors"].items():
        table = pd.DataFrame(rows).round(3).to_markdown(index=False)
        assert f"### Errors, {name} (grid prior, seed {recorded.get('error_seed', 1000)})\n\n{table}" in readme, name
    assert "coverage" in recorded
    for key in ("coverage", "coverage_acquisition_given"):
        if key in recorded:                             # the second: estimators that read a known acquisition
            assert pd.DataFrame(recorded[key]).set_index("M").round(3).to_markdown() in readme, key
            assert {row["M"] for row in recorded[key]} == {1, 4, 12, 24}
    reads = SampleEstimator.load(shipped_models_dir(method)).reads_acquisition
    assert ("coverage_acquisition_given" in recorded) == reads             # recorded for every use of the estimator
    assert ("measured detector and contrast, given" in recorded["errors"]) == reads


def test_same_as_recorded_can_fail():
    recorded = recorded_scores("sets")
    rows = pd.DataFrame(recorded["errors"]["simulator's settings"])
    assert same_as_recorded(rows, recorded)
    assert same_as_recorded(rows[rows["M"] == 12], recorded)            # a subset of the sizes
    changed = rows.copy()
    changed.loc[changed["M"] == 12, "θ̂0 within ±1"] += 0.001          # one score, third decimal
    assert not same_as_recorded(changed, recorded)
    assert not same_as_recorded(rows.assign(M=rows["M"] + 100), recorded)   # no common M
    json.dumps(recorded)                                                # plain JSON, no NaN objects
    assert np.isfinite(rows.drop(columns="M").to_numpy(float)).all()
