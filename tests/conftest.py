import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
# What agglib makes during the tests (datasets, runs, caches) goes to a fresh folder, never to data/.
if "AGGLIB_DATA_DIR" not in os.environ:
    import tempfile

    os.environ["AGGLIB_DATA_DIR"] = tempfile.mkdtemp(prefix="agglib-test-data-")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.fixture(autouse=True)
def _quiet_progress_bars():
    """No progress bars in test output."""
    import agglib

    with agglib.config.set(progress_bars=False):
        yield


@pytest.fixture(scope="session")
def executed_notebooks(tmp_path_factory):
    """Every numbered notebook executed once by papermill at the tiny profile (in order, as the
    book runs them); maps name -> (output path, error or None). Shared by the notebook and book
    tests so each notebook runs once per session."""
    import papermill

    out_dir = tmp_path_factory.mktemp("executed")
    # Datasets and trained networks of this session go to a fresh folder, never to data/.
    os.environ["AGGLIB_DATA_DIR"] = str(tmp_path_factory.mktemp("agglib-data"))
    results = {}
    for path in NOTEBOOKS:
        out = out_dir / path.name
        try:
            papermill.execute_notebook(str(path), str(out), parameters={"profile": "tiny"},
                                       kernel_name="python3", cwd=str(path.parent), progress_bar=False)
            results[path.name] = (out, None)
        except Exception as err:  # reported by the test of that notebook
            results[path.name] = (out, err)
    return out_dir, results


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        has_cuda = False
    if not has_cuda:
        skip = pytest.mark.skip(reason="needs a CUDA device")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture
def edit_checkpoint():
    """``edit(path, change)``: rewrite an agglib checkpoint after ``change(state)`` edits its
    decoded dict (``metadata``, ``run_state``, ``progress`` …) in place — a run saved by an
    older agglib, or one stopped between two writes."""
    from agglib.checkpoint import load_checkpoint, save_checkpoint

    def edit(path, change):
        state = load_checkpoint(path)
        change(state)
        save_checkpoint(path, state["kind"], state["metadata"], state["model"],
                        optimizer_state=state.get("optimizer"), progress=state.get("progress"),
                        history=state["history"], run_state=json.dumps(state["run_state"]),
                        tensors=state.get("tensors"))

    return edit
