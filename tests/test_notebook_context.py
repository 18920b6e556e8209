"""One notebook set-up: a run folder per parameter set, exact commands, no silent retraining."""

import json
from pathlib import Path

import pytest

from agglib.notebook import NotebookRun, parameter_tag, setup_notebook
from agglib.sets_training import NotTrainedError

ROOT = Path(__file__).resolve().parents[1]


def test_two_override_sets_get_two_folders_and_datasets_are_shared_when_they_can(tmp_path, monkeypatch):
    monkeypatch.setenv("AGGLIB_DATA_DIR", str(tmp_path))
    plain = setup_notebook("05_posterior", "tiny", 0, {}, nu=4)
    a = setup_notebook("05_posterior", "tiny", 0, {"posterior_steps": 100, "encoder_epochs": 1})
    b = setup_notebook("05_posterior", "tiny", 0, {"encoder_epochs": 1, "posterior_steps": 100})   # same set
    c = setup_notebook("05_posterior", "tiny", 0, {"posterior_steps": 200})
    d = setup_notebook("05_posterior", "tiny", 0, {"image_size_px": 64})
    assert plain.run_dir.name == "tiny-seed0" and plain.run_dir.parent == tmp_path / "runs"
    assert a.run_dir == b.run_dir and len({plain.run_dir, a.run_dir, c.run_dir, d.run_dir}) == 4
    assert a.store_path() == c.store_path() == plain.store_path()        # training knobs share the datasets
    assert d.store_path() != plain.store_path()                          # a dataset field does not
    assert parameter_tag("quick", {}) == "quick" and parameter_tag("quick", {"x": 1}) != parameter_tag("quick", {"x": 2})
    assert plain.command == "papermill notebooks/05_posterior.ipynb out.ipynb -p profile tiny -p seed 0 -p nu 4"
    assert "-y 'overrides: {\"encoder_epochs\": 1, \"posterior_steps\": 100}'" in a.command


def test_recorded_results_carry_the_exact_command(tmp_path, monkeypatch):
    monkeypatch.setenv("AGGLIB_DATA_DIR", str(tmp_path))
    nb = setup_notebook("06_calibration", "tiny", 3, {"posterior_steps": 100})
    table = nb.record({"θ̂_Df MAE": 0.5})
    saved = json.loads((nb.run_dir / "results" / "06_calibration.json").read_text())
    assert saved["command"] == nb.command == table.attrs["command"]
    assert table.loc["θ̂_Df MAE", "paper (E, ν = 12)"] == 0.041 and "NaN" not in table.to_html()
    table = nb.record({"a quantity the paper has not": 0.5})
    assert table.loc["a quantity the paper has not"].tolist() == [0.5]     # the empty paper column is dropped
    params = json.loads((nb.run_dir / "parameters" / "06_calibration.json").read_text())
    assert params["overrides"] == {"posterior_steps": 100} and params["command"] == nb.command


def test_a_notebook_that_needs_upstream_results_refuses_instead_of_retraining(tmp_path, monkeypatch):
    import papermill

    monkeypatch.setenv("AGGLIB_DATA_DIR", str(tmp_path))
    nb = NotebookRun("06_calibration", setup_notebook("06_calibration", "tiny").profile, 0, {})
    with pytest.raises(NotTrainedError, match="notebooks 04 and 05"):
        nb.sample_estimator()
    assert not (nb.run_dir / "encoder").exists()                        # nothing was trained
    path = ROOT / "notebooks" / "06_calibration.ipynb"
    with pytest.raises(papermill.PapermillExecutionError, match="NotTrainedError"):
        papermill.execute_notebook(str(path), str(tmp_path / "06.ipynb"), parameters={"profile": "tiny"},
                                   kernel_name="python3", cwd=str(path.parent), progress_bar=False)
    assert not (nb.run_dir / "encoder").exists() and not (nb.run_dir / "sets").exists()
