import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
# What agglib makes during the tests (datasets, runs, caches) goes to a fresh folder, never to data/;
# the folder is removed when the test process ends.
if "AGGLIB_DATA_DIR" not in os.environ:
    import atexit
    import shutil
    import tempfile

    os.environ["AGGLIB_DATA_DIR"] = tempfile.mkdtemp(prefix="agglib-test-data-")
    atexit.register(shutil.rmtree, os.environ["AGGLIB_DATA_DIR"], ignore_errors=True)
# Under pytest-xdist (`make test` runs `pytest -n auto`) the workers share the cores: each worker's
# torch (and the notebooks and commands it starts) gets its share of them instead of all of them.
if os.environ.get("PYTEST_XDIST_WORKER"):
    _share = max(1, len(os.sched_getaffinity(0)) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, str(_share))

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


#: Test modules that share the session's executed notebooks (:func:`executed_notebooks`): one
#: pytest-xdist work unit, so the notebooks run once, on one worker.
NOTEBOOK_MODULES = ("test_book", "test_notebooks")


def _work_unit(nodeid: str) -> str:
    """The pytest-xdist work unit of a test: its module (a module's fixtures are made once, on
    one worker), the notebook modules together."""
    module = nodeid.split("::", 1)[0]
    return "notebooks" if Path(module).stem in NOTEBOOK_MODULES else module


@pytest.hookimpl(optionalhook=True)            # a hook of pytest-xdist: absent without it
def pytest_xdist_make_scheduler(config, log):
    """`make test` (``pytest -n auto --dist loadscope --no-loadscope-reorder``): whole work units
    to each worker, in the order of the collection (:func:`pytest_collection_modifyitems` puts the
    slow ones first); another ``--dist`` is left to pytest-xdist. Its own ``loadgroup`` does not
    group under pytest 9 (its worker renames ``item._nodeid``, which pytest 9 no longer reads)."""
    if config.getoption("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ModuleScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _work_unit(nodeid)

    return ModuleScheduling(config, log)


def pytest_collection_modifyitems(config, items):
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # the work units holding slow tests (minutes) first, so no worker is left with one at the end
        slow = {_work_unit(item.nodeid) for item in items if "slow" in item.keywords}
        items.sort(key=lambda item: _work_unit(item.nodeid) not in slow)
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
