"""Parameter sweeps over a notebook: papermill runs in parallel, one folder per parameter set.

``agglib sweep 10_fit_your_images -p dose_e_per_A2 40 149 600 -p measured_pixel_nm 1.7 2.9
--profile quick --out sweeps/fit`` executes the notebook once for each combination of the values
(the grid), each run in ``<out>/<name>=<value>,…/`` with its executed notebook and the numbers it
records (``results.json``: what :meth:`agglib.notebook.NotebookRun.record` writes, to the file
the sweep passes as the notebook's ``record_to`` parameter — no state shared between runs:
parallel runs of one profile write their numbers to their own folders). Finished runs
are skipped, so an interrupted sweep continues where it stopped. :func:`collect_sweep` gathers
every run's numbers into one table (``<out>/sweep.csv``).
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor, as_completed
import itertools
import json
from pathlib import Path

import pandas as pd

__all__ = ["run_sweep", "collect_sweep", "sweep_grid", "check_parameters"]


def _label(value) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value
    return "".join(ch if ch.isalnum() or ch in ".-_" else "_" for ch in text)


def sweep_grid(parameters: dict) -> list[dict]:
    """Every combination of ``{name: [values]}``, in order (the first name varies slowest)."""
    names = list(parameters)
    return [dict(zip(names, combo)) for combo in itertools.product(*(list(parameters[n]) for n in names))]


def _notebook_path(notebook: str) -> Path:
    from agglib.core.locations import source_checkout

    path = Path(notebook)
    if path.suffix == ".ipynb":
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such notebook")
        return path.resolve()
    root = source_checkout()
    if root is None:
        raise ValueError(f"notebook {notebook!r}: agglib's numbered notebooks come with a checkout of the repository "
                         "(git clone …), not with the installed package; give the path to an .ipynb file")
    candidates = sorted((root / "notebooks").glob(f"{path.stem}*.ipynb"))
    if len(candidates) != 1:
        known = ", ".join(c.stem for c in sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb")))
        raise ValueError(f"notebook {notebook!r} matches {len(candidates)} notebooks in {root / 'notebooks'}; "
                         f"give a path to an .ipynb file or one of: {known}")
    return candidates[0]


def _papermill():
    try:
        import papermill
    except ImportError:
        raise ValueError('agglib sweep executes notebooks with papermill, which is not installed: '
                         'pip install "agglib[lab]"') from None
    return papermill


def check_parameters(path: Path, names) -> dict:
    """The notebook's parameters (papermill's ``inspect_notebook``: name → default and comment);
    :class:`ValueError` naming any of ``names`` the notebook does not have."""
    known = _papermill().inspect_notebook(str(path))
    unknown = [n for n in names if n not in known]
    if unknown:
        listed = "; ".join(f"{k} (default {v['default']})" for k, v in known.items())
        raise ValueError(f"{path.name} has no parameter {', '.join(map(repr, unknown))}; its parameters: {listed}")
    return known


def _run_one(notebook: str, folder: str, parameters: dict, timeout: int | None) -> str:
    papermill = _papermill()
    folder = Path(folder)
    path = Path(notebook)
    papermill.execute_notebook(str(path), str(folder / path.name), parameters=parameters, kernel_name="python3",
                               cwd=str(path.parent), progress_bar=False, execution_timeout=timeout)
    if not (folder / "results.json").is_file():                # a notebook that records nothing
        from agglib.core.files import atomic_write_text

        atomic_write_text(folder / "results.json", json.dumps({"parameters": parameters, "results": {}}))
    return str(folder)


def run_sweep(notebook: str, parameters: dict, out_dir, *, profile: str = "tiny", fixed: dict | None = None,
              workers: int = 2, timeout: int | None = None, show_progress_bars: bool | None = None) -> pd.DataFrame:
    """Execute ``notebook`` for every combination of ``parameters`` and collect the results.

    Parameters
    ----------
    notebook : str
        A path, or the name (or number) of a notebook in the checkout's ``notebooks/``.
    parameters : dict
        ``{name: [values]}``: the papermill parameters to sweep (names the notebook's parameters
        cell defines; values of any type papermill injects: numbers, strings, lists, dicts).
    out_dir : path-like
        One sub-folder per combination, and ``sweep.csv``.
    profile : str
        The notebooks' profile, a shipped one or a profile file (passed to notebooks that have a
        ``profile`` parameter).
    fixed : dict, optional
        Further papermill parameters, the same for every run.
    workers : int
        Notebooks executed at once (each in its own kernel).
    timeout : int, optional
        Per-cell timeout [s].
    """
    from tqdm.auto import tqdm

    import agglib
    from agglib.core.files import claim_output_dir

    from agglib.profiles import is_profile_file

    if is_profile_file(profile):                 # the notebooks run in their own folder: an absolute path
        profile = str(Path(profile).resolve())
    path = _notebook_path(notebook)
    known = check_parameters(path, [*(fixed or {}), *parameters])
    grid = sweep_grid(parameters)
    out_dir = Path(out_dir)
    folders = [",".join(f"{k}={_label(v)}" for k, v in combo.items()) for combo in grid]
    claim_output_dir(out_dir, ["sweep.csv", *folders], overwrite=True, command=f"agglib sweep {path.name}")
    todo = [(f, c) for f, c in zip(folders, grid) if not (out_dir / f / "results.json").is_file()]
    show = agglib.config.get("progress_bars") if show_progress_bars is None else show_progress_bars
    with tqdm(total=len(grid), initial=len(grid) - len(todo), desc=f"sweep {path.stem}", disable=not show) as bar:
        if todo:
            with ProcessPoolExecutor(max_workers=max(1, min(workers, len(todo)))) as pool:
                futures = []
                for folder, combo in todo:
                    (out_dir / folder).mkdir(parents=True, exist_ok=True)
                    params = {**({"profile": profile} if "profile" in known else {}), **(fixed or {}), **combo}
                    if "record_to" in known:            # where the run also writes what it records
                        params["record_to"] = str((out_dir / folder / "results.json").resolve())
                    futures.append(pool.submit(_run_one, str(path), str(out_dir / folder), params, timeout))
                for future in as_completed(futures):
                    future.result()
                    bar.update()
    table = collect_sweep(out_dir, grid, folders)
    recorded = table.drop(columns=list(parameters))
    silent = len(table) if recorded.empty else int(recorded.isna().all(axis=1).sum())
    if silent:
        import warnings

        warnings.warn(f"{path.name} recorded no numbers in {silent} of {len(folders)} runs (it calls no "
                      "nb.record(...)): the table holds the parameters only", stacklevel=2)
    return table


def collect_sweep(out_dir, grid: list[dict] | None = None, folders: list[str] | None = None) -> pd.DataFrame:
    """One row per run: its swept parameters and the numbers it recorded; also ``sweep.csv``."""
    from agglib.core.files import atomic_write_text

    out_dir = Path(out_dir)
    if folders is None:
        folders = sorted(p.parent.name for p in out_dir.glob("*/results.json"))
        grid = [dict(part.split("=", 1) for part in f.split(",")) for f in folders]
    rows = []
    for folder, combo in zip(folders, grid):
        record = json.loads((out_dir / folder / "results.json").read_text())
        rows.append({**combo, **record.get("results", {})})
    table = pd.DataFrame(rows)
    atomic_write_text(out_dir / "sweep.csv", table.to_csv(index=False))
    return table
