"""`agglib sweep`: a notebook over a parameter grid, one folder per run, one collected table."""

import pytest

from agglib.cli import main
from agglib.sweep import sweep_grid

pytestmark = pytest.mark.slow


def test_sweep_grid_is_every_combination_in_order():
    assert sweep_grid({"a": [1, 2], "b": ["x", "y", "z"]}) == [
        {"a": 1, "b": "x"}, {"a": 1, "b": "y"}, {"a": 1, "b": "z"},
        {"a": 2, "b": "x"}, {"a": 2, "b": "y"}, {"a": 2, "b": "z"}]


def test_sweep_runs_a_notebook_over_two_parameters_and_resumes(tmp_path, monkeypatch, capsys):
    import pandas as pd

    monkeypatch.setenv("AGGLIB_DATA_DIR", str(tmp_path / "data"))
    out = tmp_path / "sweep"
    args = ["sweep", "10", "-p", "dose_e_per_A2", "40", "600", "-p", "measured_pixel_nm", "2.9",
            "-f", "robustness=false", "-f", "overrides={fit_shadows: 4}", "--profile", "tiny", "--out", str(out),
            "--workers", "2"]
    assert main(args) == 0
    table = pd.read_csv(out / "sweep.csv")
    assert len(table) == 2 and set(table["dose_e_per_A2"]) == {40, 600} and set(table["measured_pixel_nm"]) == {2.9}
    assert {"θ̂_df error", "intervals holding the truth (of 4)"} <= set(table.columns)
    assert (table["θ̂_df error"] < 0.5).all()
    folders = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert folders[0] == "dose_e_per_A2=40,measured_pixel_nm=2.9" and len(folders) == 2
    stamp = (out / folders[0] / "results.json").stat().st_mtime_ns
    assert main(args) == 0                                              # finished runs are not run again
    assert (out / folders[0] / "results.json").stat().st_mtime_ns == stamp
    assert "2 runs in" in capsys.readouterr().out
