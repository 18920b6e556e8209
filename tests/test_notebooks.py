"""Every numbered notebook runs under papermill at the tiny profile (MONAI-style smoke runs)."""

import json
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def test_notebooks_exist_and_are_stored_without_outputs():
    assert NOTEBOOKS, "no notebooks found"
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        tagged = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(tagged) == 1, f"{path.name}: needs exactly one cell tagged 'parameters'"
        assert "profile" in tagged[0].source
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, \
                    f"{path.name}: stored with outputs (strip them before committing)"
        raw = json.loads(path.read_text())
        missing = [k for k, c in enumerate(raw["cells"]) if "id" not in c]
        assert not missing, f"{path.name}: cells {missing} have no id (nbformat ≥ 4.5 requires one)"
        nbformat.validate(nbformat.from_dict(raw))        # as stored, not as nbformat.read repairs it


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_at_tiny_profile(path, executed_notebooks):
    out, error = executed_notebooks[1][path.name]
    assert error is None, f"{path.name} failed at the tiny profile: {error}"
    nb = nbformat.read(out, as_version=4)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if o.get("output_type") == "error"]
    assert not errors
    figures = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
               if "application/vnd.plotly.v1+json" in o.get("data", {})]
    assert figures, f"{path.name} produced no plotly figure"
    for fig in figures:
        assert "text/html" in fig["data"], "figure lacks the HTML the offline book needs"


def test_widget_explorers_run_headless(tmp_path):
    """`widgets = True` (the JupyterLab explorers) executes without a display and without hanging."""
    import papermill

    path = next(p for p in NOTEBOOKS if p.name.startswith("01_"))
    out = tmp_path / path.name
    papermill.execute_notebook(str(path), str(out), parameters={"profile": "tiny", "widgets": True},
                               kernel_name="python3", cwd=str(path.parent), progress_bar=False,
                               execution_timeout=60)          # a hang fails, not waits
    nb = nbformat.read(out, as_version=4)
    views = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
             if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert views, "the θ explorer displayed no widget"
