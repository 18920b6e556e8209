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
            "-f", "robustness=false", "-f", "real_samples=false", "-f", "overrides={fit_shadows: 4}", "--profile", "tiny", "--out", str(out),
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


def test_sweep_refuses_an_unknown_parameter_before_any_run(tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(["sweep", "10", "-p", "doze", "40", "600", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "no parameter 'doze'" in err and "dose_e_per_A2 (default 149.0)" in err
    assert not out.exists()                                             # nothing made before the refusal


def test_sweep_takes_lists_and_says_when_a_notebook_records_nothing(tmp_path, capsys):
    import nbformat
    import pandas as pd

    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "language": "python",
                                                          "display_name": "Python 3"}})
    params = nbformat.v4.new_code_cell('values = [0]  # a list (and no profile parameter: not required)')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell("assert isinstance(values, list), type(values)\nprint(sum(values))")]
    path = tmp_path / "lists.ipynb"
    nbformat.write(nb, path)
    out = tmp_path / "sweep"
    assert main(["sweep", str(path), "-p", "values", "[1, 2]", "[3]", "--out", str(out), "--workers", "1"]) == 0
    err = capsys.readouterr().err
    assert "recorded no numbers in 2 of 2 runs" in err
    table = pd.read_csv(out / "sweep.csv")
    assert list(table["values"]) == ["[1, 2]", "[3]"]
