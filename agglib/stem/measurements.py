"""The renderer's HAADF signal against published measurements of TiO2 and WO3 particles.

:func:`load_haadf_measurements` reads the per-particle measurements of Gerken et al., Part. Part.
Syst. Charact. 40, 2300048 (2023) (shipped as ``agglib/data/haadf_measurements.json``; see
``tests/data/make_haadf_measurements.py`` for the source): 104 primary particles from 7
detector-normalised HAADF images, each with its material, radius [nm] and the median near its
centre of R = −ln(1 − I)/t [1/µm]. At the centre of a sphere t is the diameter, so the measured
intensity there is I = 1 − exp(−R · 2r / 1000).

:func:`compare_with_measurements` sets the shipped table's signal at the same thickness (the mean
over its phases and orientations) beside each measurement. A detector model closes part of the
gap: the table assumes an ideal annular detector (sensitivity 1 from the inner to the outer
angle), theirs has the measured sensitivity curve (~0.75 on its plateau);
:func:`detector_efficiency` averages that curve over the table's angular range, weighted by the
angular distribution of high-angle scattering (∝ θ^−exponent per unit angle).
:func:`contrast_interval` says how well 104 particles pin the WO3/TiO2 contrast down (a
bootstrap over the particles). The range of contrasts the robust estimators train on
(:class:`agglib.stem.acquisition.AcquisitionRanges`, 0.65–1.1 × the table's) holds the estimate
(0.69), near its lower end, but not the lower part of that interval (notebook 2).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

__all__ = ["load_haadf_measurements", "detector_efficiency", "compare_with_measurements", "measurement_summary",
           "contrast_interval"]


def load_haadf_measurements(path=None) -> tuple[pd.DataFrame, dict]:
    """The particles (material, ``radius_nm``, ``diameter_nm``, ``log_density_per_um``, ``measured``:
    the HAADF fraction at the centre) and the record's ``detector`` and ``source``."""
    from agglib.core.locations import shipped_data_path

    path = path or shipped_data_path("haadf_measurements.json")
    record = json.loads(open(path, encoding="utf-8").read())
    if record.get("format") != "agglib-haadf-measurements/1":
        raise ValueError(f"{path} is not an agglib HAADF measurement record")
    df = pd.DataFrame(record["particles"])
    df["diameter_nm"] = 2.0 * df["radius_nm"]
    df["measured"] = 1.0 - np.exp(-df["log_density_per_um"] * df["diameter_nm"] / 1000.0)
    return df, {"detector": record["detector"], "source": record["source"]}


def detector_efficiency(detector: dict, inner_mrad: float, outer_mrad: float, exponent: float = 3.0) -> float:
    """Mean sensitivity of ``detector`` (``angle_mrad``, ``sensitivity``) over [inner, outer] [mrad],
    weighted by θ^−``exponent`` (high-angle scattering per unit angle: ∝ θ^−4 per solid angle)."""
    theta = np.linspace(float(inner_mrad), float(outer_mrad), 2001)
    s = np.interp(theta, detector["angle_mrad"], detector["sensitivity"], left=0.0, right=0.0)
    w = theta ** -float(exponent)
    return float(np.sum(s * w) / np.sum(w))


def compare_with_measurements(table=None, efficiency: float = 1.0, measurements=None) -> pd.DataFrame:
    """Per particle: the measured centre intensity and the table's at the same thickness (× the
    detector ``efficiency``) [fraction of the beam], and their ratio measured / simulated."""
    from agglib.stem.reference import load_reference_table

    table = table or load_reference_table()
    df = (measurements if measurements is not None else load_haadf_measurements()[0]).copy()
    sim = np.empty(len(df))
    for material in ("WO3", "TiO2"):
        rows = (df["material"] == material).to_numpy()
        curve = table.curve_stack(material).mean(axis=0)
        sim[rows] = np.interp(df.loc[rows, "diameter_nm"], table.thickness_nm, curve)
    df["simulated"] = sim * float(efficiency)
    df["ratio"] = df["measured"] / df["simulated"]
    return df


def measurement_summary(comparison: pd.DataFrame) -> pd.DataFrame:
    """Per material the medians of the measured and simulated intensity per nm of thickness
    [‰ of the beam per nm] and of their ratio; and the WO3/TiO2 contrast (the ratio of the
    materials' medians; in the column "measured / simulated" its row is the ratio of the two
    contrasts, not a median of per-particle ratios as in the materials' rows)."""
    rows = {}
    for material, g in comparison.groupby("material"):
        rows[material] = {"particles": len(g), "median diameter [nm]": g["diameter_nm"].median(),
                          "measured I / t [‰/nm]": 1000 * (g["measured"] / g["diameter_nm"]).median(),
                          "simulated I / t [‰/nm]": 1000 * (g["simulated"] / g["diameter_nm"]).median(),
                          "measured / simulated": g["ratio"].median()}
    out = pd.DataFrame(rows).T
    contrast = out.loc["WO3"] / out.loc["TiO2"]
    out.loc["WO3 / TiO2"] = {"particles": np.nan, "median diameter [nm]": np.nan,
                             "measured I / t [‰/nm]": contrast["measured I / t [‰/nm]"],
                             "simulated I / t [‰/nm]": contrast["simulated I / t [‰/nm]"],
                             "measured / simulated": contrast["measured I / t [‰/nm]"] / contrast["simulated I / t [‰/nm]"]}
    return out


def contrast_interval(comparison: pd.DataFrame, level: float = 0.95, draws: int = 4000, seed: int = 0) -> dict:
    """How precisely the measurements fix the WO3/TiO2 contrast relative to the table's: the row
    WO3 / TiO2, column "measured / simulated" of :func:`measurement_summary` (the ratio of the
    materials' median I / t, measured over simulated; computed here for every resampling at once,
    the particles as measured giving the estimate), with a percentile bootstrap interval. The
    detector efficiency cancels in it.

    Parameters
    ----------
    comparison : DataFrame
        :func:`compare_with_measurements`: per particle its ``material``, ``diameter_nm`` [nm] and
        centre intensity ``measured`` and ``simulated`` [fraction of the beam].
    level : float
        Central probability of the interval, in (0, 1).
    draws : int
        Bootstrap resamplings (≥ 10): the particles of each material drawn with replacement, the
        same particles for the measured and the simulated medians. The particles are taken as
        independent; they come from 7 images that share their normalisation, so the interval is
        if anything too narrow.
    seed : int
        Seed of the resampling.

    Returns
    -------
    dict
        ``estimate``, ``low``, ``high`` (dimensionless factors on the table's contrast), ``level``,
        ``draws``.
    """
    from agglib.core.validation import check_range

    check_range("level", level, low=0.0, high=1.0, low_inclusive=False, high_inclusive=False)
    check_range("draws", draws, low=10, integer=True)
    rng = np.random.default_rng(seed)
    medians = {}
    for material in ("WO3", "TiO2"):
        g = comparison[comparison["material"] == material]
        if g.empty:
            raise ValueError(f"the comparison has no {material} particle; the contrast needs both materials")
        per_nm = np.stack([(g[col] / g["diameter_nm"]).to_numpy() for col in ("measured", "simulated")])
        n = per_nm.shape[1]                        # row 0: the particles as measured; then the resamplings
        pick = np.vstack([np.arange(n), rng.integers(0, n, size=(int(draws), n))])
        medians[material] = np.median(per_nm[:, pick], axis=2)               # (2, 1 + draws): measured, simulated
    factor = (medians["WO3"][0] / medians["TiO2"][0]) / (medians["WO3"][1] / medians["TiO2"][1])
    low, high = np.quantile(factor[1:], [(1 - level) / 2, (1 + level) / 2])
    return {"estimate": float(factor[0]), "low": float(low), "high": float(high), "level": float(level),
            "draws": int(draws)}
