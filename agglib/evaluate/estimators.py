"""Evaluating the estimators on the evaluation set E (paper §3.1–3.3, Figs. 9–13, Table 4).

Everything returns pandas DataFrames so notebooks only plot and print.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from agglib.dataset.store import DatasetStore
from agglib.estimate import TrainedNetwork
from agglib.paper_training import TARGETS, sample_labels

__all__ = ["PAPER_RESULTS", "batch_groups", "batch_estimates", "confusion_table", "mae", "r2", "trivial_mae", "default_run_dir", "recorded_run", "recorded_run_scores",
           "recorded_scores", "same_as_recorded",
           "results_table", "paper_method_estimates", "HEADLINES", "recorded_headlines", "recorded_coverage"]

#: The paper's headline numbers (§3.1–3.3), on its E with ν = 12.
PAPER_RESULTS = {
    "θ̂_Df MAE": 0.041,
    "θ̂_ρ MAE": 0.017,
    "θ̂_ρ MAE without classifier": 0.027,
    "per-image ρ̂ MAE": 0.053,
    "θ̂0 exact": 0.48,   # MAE not reported for θ̂0 and θ̂1 (Figs. 12b, 13b show the error histograms)
    "θ̂0 within ±1": 0.92,
    "θ̂1 exact": 0.32,
    "θ̂1 within ±1": 0.82,
    "S_TiO2 shadow MAE": 2.165,
    "Z_hetero shadow MAE": 0.056,
    "Z_total shadow MAE": 0.007,
    "S_TiO2 shadow R²": 0.84,
    "Z_hetero shadow R²": 0.85,
    "Z_total shadow R²": 0.87,
    "threshold ρ̂ MAE (per aggregate)": 0.078,
    "box-counting power law a": 0.74,
    "box-counting power law b": 2.19,
}


def default_run_dir(profile: str, seed: int) -> Path:
    """Where notebooks keep trained networks: ``runs/<profile>-seed<seed>/`` in the user data folder
    (:func:`agglib.core.locations.user_data_dir`: ``data/`` in a source checkout)."""
    from agglib.core.locations import user_data_dir

    return user_data_dir() / "runs" / f"{profile}-seed{int(seed)}"


def mae(a, b) -> float:
    """Mean absolute error."""
    return float(np.mean(np.abs(np.asarray(a, float) - np.asarray(b, float))))


def r2(truth, pred) -> float:
    """Coefficient of determination 1 − SS_res / SS_tot."""
    truth, pred = np.asarray(truth, float), np.asarray(pred, float)
    ss_tot = np.sum((truth - truth.mean()) ** 2)
    return float(1.0 - np.sum((truth - pred) ** 2) / ss_tot) if ss_tot > 0 else float("nan")


def disjoint_groups(rows, config_ids, nu: int, rng, repeats: int = 1) -> list:
    """Disjoint groups of ν of ``rows`` that share a configuration (``config_ids`` of each row):
    ⌊m/ν⌋ per configuration and repeat, each repeat a new shuffle drawn from ``rng``."""
    rows, config_ids = np.asarray(rows), np.asarray(config_ids)
    groups = []
    for _ in range(repeats):
        for c in np.unique(config_ids):
            members = rng.permutation(rows[config_ids == c])
            groups += [members[g * nu:(g + 1) * nu] for g in range(members.size // nu)]
    return groups


def batch_groups(store: DatasetStore, nu: int, split: str = "E", seed: int = 0, repeats: int = 1) -> list:
    """Disjoint groups of ν samples of one configuration: ⌊m/ν⌋ per configuration and repeat."""
    idx = store.indices(split)
    return disjoint_groups(idx, store.config_id[idx], nu, np.random.default_rng(seed), repeats)


def batch_estimates(per_image: pd.DataFrame | None, store: DatasetStore, nu: int, *, column: str = "prediction",
                    multi_net: TrainedNetwork | None = None, split: str = "E", seed: int = 0,
                    repeats: int = 1) -> pd.DataFrame:
    """One estimate per group of ν images of one configuration.

    With ``per_image`` (from :func:`predict_split`): the mean of ``column`` over the group
    (Eqs. 13, 14). With ``multi_net``: the network's output on the group (Eq. 15), raw and
    rounded.
    """
    rows = []
    lookup = per_image.set_index("index") if per_image is not None else None
    for k, members in enumerate(batch_groups(store, nu, split, seed, repeats)):
        theta = store.theta[members[0]]
        row = {"group": k, "config_id": int(store.config_id[members[0]]), "theta_df": theta[0],
               "theta_rho": theta[1], "theta0": theta[2], "theta1": theta[3]}
        if lookup is not None:
            row["estimate"] = float(lookup.loc[members, column].mean())
        if multi_net is not None:
            raw = float(multi_net.predict(store.read_images(members))[0])
            row["raw"] = raw
            row["estimate"] = int(np.rint(max(raw, 0.0)))
        rows.append(row)
    return pd.DataFrame(rows)


def confusion_table(truth, estimate, labels) -> pd.DataFrame:
    """Counts of (truth, estimate) pairs; rows = truth, columns = estimate."""
    truth, estimate = np.asarray(truth), np.asarray(estimate)
    table = pd.DataFrame(0, index=pd.Index(labels, name="truth"), columns=pd.Index(labels, name="estimate"))
    for t, e in zip(truth, estimate):
        if t in table.index and e in table.columns:
            table.loc[t, e] += 1
    return table


def trivial_mae(store: DatasetStore, truth_eval, target: str) -> float:
    """MAE of the trivial predictor: the mean of the training labels."""
    labels = sample_labels(store, TARGETS[target])
    train_mean = float(np.nanmean(labels[store.indices("T")]))
    return mae(np.full(len(truth_eval), train_mean), truth_eval)


def results_table(ours: dict, profile: str, command: str, run_dir=None, notebook: str | None = None,
                  trivial: dict | None = None) -> pd.DataFrame:
    """Our numbers beside the paper's (keys of :data:`PAPER_RESULTS`) and, where given, the
    trivial predictor's (``trivial``: the same quantity for a constant estimate, the mean of T).

    With ``run_dir`` and ``notebook`` the numbers are also recorded in
    ``run_dir/results/<notebook>.json``, from which the book's results page is generated. The
    profile and the reproducing command are in the table's ``attrs``.
    """
    if run_dir is not None and notebook is not None:
        import json

        from agglib.core.files import atomic_write_text

        record = {"notebook": notebook, "profile": profile, "command": command,
                  "results": {k: float(v) for k, v in ours.items()},
                  "trivial": {k: float(v) for k, v in (trivial or {}).items()}}
        atomic_write_text(Path(run_dir) / "results" / f"{notebook}.json", json.dumps(record, indent=1))
    rows = []
    for key, value in ours.items():
        rows.append({"quantity": key, "paper (E, ν = 12)": PAPER_RESULTS.get(key, np.nan), "agglib": value,
                     "trivial predictor": (trivial or {}).get(key, np.nan)})
    table = pd.DataFrame(rows).set_index("quantity").dropna(axis=1, how="all")
    table = table.astype(object).where(table.notna(), "–")       # no number (the paper has none): a dash
    table.attrs.update(profile=profile, command=command)          # once, not in every row
    return table


#: The paper's headline numbers the results page plots (errors: lower is better; hit rates: higher).
HEADLINES = {"errors": ("θ̂_Df MAE", "θ̂_ρ MAE"),
             "hit rates": ("θ̂0 exact", "θ̂0 within ±1", "θ̂1 exact", "θ̂1 within ±1")}


def recorded_headlines(results: dict, trivial: dict) -> pd.DataFrame:
    """The headline numbers of a book build by estimator, from what the notebooks recorded.

    ``results`` and ``trivial`` merge the ``results`` and ``trivial`` of every notebook's record
    (``run_dir/results/*.json``). Rows: :data:`HEADLINES`; columns: the paper, this book's
    estimators on E (ν = 12) and on fresh configurations, the default of ``fit``, the paper's
    networks as trained here, the trivial predictor — those that were recorded.
    """
    import re

    fresh = {m.group(1) for k in results if (m := re.match(r"^fresh θ \(M = (\d+)\): ", k))}
    m = max(fresh, key=int) if fresh else None
    sources = {"paper (its E, ν = 12)": lambda k: PAPER_RESULTS.get(k),
               "agglib on E (ν = 12)": lambda k: results.get(k),
               f"agglib, fresh θ (M = {m})": lambda k: results.get(f"fresh θ (M = {m}): {k}"),
               f"default of fit, fresh θ (M = {m})": lambda k: results.get(f"default of fit, fresh θ (M = {m}): {k}"),
               "paper's networks, trained here": lambda k: results.get(f"paper method: {k}"),
               "trivial predictor": lambda k: trivial.get(k)}
    rows = [k for names in HEADLINES.values() for k in names]
    table = pd.DataFrame({name: [get(k) for k in rows] for name, get in sources.items()}, index=rows, dtype=float)
    return table.dropna(axis=1, how="all")


def recorded_coverage(results: dict, label: str) -> pd.DataFrame:
    """Coverage of 90 % regions against M recorded by notebook 6 for one estimator (``label``:
    ``"paper's acquisition"`` or ``"default estimator, drawn acquisition"``): rows M, a column per
    check (as :func:`agglib.evaluate.calibration.calibration_report`)."""
    import re

    cells = {}
    for key, value in results.items():
        found = re.match(rf"^{re.escape(label)}: 90 % (.+) coverage \(M = (\d+)\)$", key)
        if found:
            cells.setdefault(int(found.group(2)), {})[found.group(1)] = value
    return pd.DataFrame.from_dict(cells, orient="index").sort_index().rename_axis("M")


def paper_method_estimates(estimator, store: DatasetStore, nu: int, split: str = "E", seed: int = 0,
                           chunk: int = 512) -> dict:
    """θ̂ of the paper's five networks for disjoint groups of ν images (the groups of
    :func:`batch_groups` with this seed — the same groups the new method is scored on).

    Returns ``{"estimate": (groups, 4), "theta": (groups, 4), "per_image": DataFrame}`` with the
    per-image D̂_f, ρ̂ (after the classifier) and ρ̂ without it for every image of the split.
    """
    from agglib.estimate import combine_groups, combine_per_image

    idx = store.indices(split)
    per = {"df": [], "rho": [], "rho_without_classifier": []}
    for k in range(0, idx.size, chunk):
        out = estimator.per_image(store.read_images(idx[k:k + chunk]))
        for key in per:
            per[key].append(np.asarray(out[key], dtype=np.float64))
    per = {k: np.concatenate(v) for k, v in per.items()}
    row = {int(i): r for r, i in enumerate(idx)}
    estimates, theta = [], []
    for members in batch_groups(store, nu, split, seed=seed):
        rows = [row[int(i)] for i in members]
        images = store.read_images(members)
        est = {**combine_per_image(per["df"][rows], per["rho"][rows]),
               **combine_groups(estimator.theta0.predict(images), estimator.theta1.predict(images))}
        estimates.append([est["df"], est["rho"], est["theta0"], est["theta1"]])
        theta.append(store.theta[members[0]])
    per_image = pd.DataFrame({"index": idx, **per, "rho_true": store.descriptors["rho"].to_numpy()[idx]})
    return {"estimate": np.array(estimates), "theta": np.array(theta), "per_image": per_image}


def recorded_run(name: str = "paper_df_h100") -> dict:
    """A training run recorded by ``benchmarks/paper_df.py`` on a GPU and shipped in
    ``agglib/data/runs/`` (its command, device, timings, history and scores on E)."""
    import json

    from agglib.core.locations import shipped_data_path

    path = shipped_data_path("runs", f"{name}.json")
    if not path.is_file():
        known = sorted(q.stem for q in shipped_data_path("runs").glob("*.json"))
        raise ValueError(f"no recorded run {name!r} in {path.parent}; recorded: {known}")
    return json.loads(path.read_text())


def recorded_scores(method: str = "sets") -> dict:
    """The scores of a shipped estimator (``"sets"`` or ``"robust"``, see
    :func:`agglib.estimate.shipped_models_dir`) on fresh configurations, as written by
    ``python benchmarks/estimator_scores.py --write`` into its folder's ``scores.json`` — the
    numbers of its README: ``errors`` (name → rows of :func:`agglib.evaluate.error_by_set_size`),
    ``coverage`` (rows of :func:`agglib.evaluate.calibration.calibration_report`), ``configs``,
    ``images``, ``command`` and ``date``."""
    import json

    from agglib.estimate import shipped_models_dir

    path = shipped_models_dir(method) / "scores.json"
    if not path.is_file():
        raise ValueError(f"no recorded scores in {path}; write them with "
                         f"python benchmarks/estimator_scores.py --models {path.parent} --write")
    return json.loads(path.read_text())


def same_as_recorded(table: pd.DataFrame, recorded: dict, errors: str = "simulator's settings",
                     decimals: int = 3) -> bool:
    """Whether the rows of ``table`` (:func:`agglib.evaluate.error_by_set_size`) equal, rounded to
    ``decimals``, the rows of the same M in ``recorded["errors"][errors]`` (:func:`recorded_scores`)."""
    shipped = pd.DataFrame(recorded["errors"][errors]).set_index("M")
    ours = table.set_index("M")
    common = [m for m in shipped.index if m in ours.index]
    if not common:
        return False
    return bool(ours.loc[common, shipped.columns].round(decimals).equals(shipped.loc[common].round(decimals)))


def recorded_run_scores(run: dict) -> pd.DataFrame:
    """θ̂_Df and per-image D̂_f(A) MAE on E of a :func:`recorded_run`: the paper's, the best and
    the last checkpoint's (columns ``best epoch (n)`` and ``last epoch (n)``, numbered from 1: the
    best chosen on ``train_config["val_images"]`` images of E, the last chosen by nothing),
    and the trivial predictor's (the mean of T)."""
    best, last = run["scores"]
    theta = f"θ̂_Df MAE (ν = {run['paper']['nu']})"
    per_image = "per-image D̂_f(A) MAE"
    return pd.DataFrame({
        "paper": {theta: run["paper"]["theta_df_mae"], per_image: np.nan},
        f"best epoch ({best['epoch'] + 1})": {theta: best["theta_df_mae"], per_image: best["per_image_df_mae"]},
        f"last epoch ({last['epoch'] + 1})": {theta: last["theta_df_mae"], per_image: last["per_image_df_mae"]},
        "trivial predictor": {theta: best["theta_df_mae_trivial"], per_image: best["per_image_df_mae_trivial"]},
    })
