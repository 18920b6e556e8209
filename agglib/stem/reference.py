"""HAADF intensity-vs-thickness reference tables (paper §2.1.3).

A :class:`HaadfTable` maps, for every crystal phase and orientation, a specimen thickness
[nm] to the HAADF signal (fraction of the incident probe reaching the 55–250 mrad detector).
The table shipped in ``agglib/data/haadf_reference.json`` was computed with abTEM by
:func:`build_reference_table`; reading it needs only numpy.

Generating is resumable curve by curve: every finished curve is written to
``<table>.parts/<phase>__<orientation>.json`` at once (atomically), a restarted run skips
finished curves, and the table is assembled when all are there.

Beyond the table's largest thickness the signal is extrapolated linearly from the slope of
the last 10 nm, and a warning says so once per table.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor, as_completed
import datetime as _dt
import hashlib
import json
import os
from pathlib import Path
import platform
import warnings

import numpy as np

from agglib.core.files import atomic_write_text

__all__ = ["HaadfTable", "default_table_path", "load_reference_table", "build_reference_table",
           "add_phase", "ExtrapolationWarning"]

MATERIALS = ("WO3", "TiO2")          # index = particle label of agglib.Aggregate


class ExtrapolationWarning(UserWarning):
    """A thickness beyond the reference table's range was extrapolated."""


def default_table_path() -> Path:
    """The shipped table: package data ``agglib/data/haadf_reference.json`` (or $AGGLIB_HAADF_TABLE)."""
    from agglib.core.locations import shipped_data_path

    env = os.environ.get("AGGLIB_HAADF_TABLE")
    if env:
        return Path(env)
    return shipped_data_path("haadf_reference.json")


class HaadfTable:
    """HAADF signal vs thickness for each phase and orientation.

    Parameters
    ----------
    thickness_nm : (T,) array
        Equally spaced thicknesses starting at 0 [nm].
    curves : dict
        ``{phase: {orientation: (T,) array}}`` of HAADF fractions.
    materials : dict
        ``{phase: "TiO2" | "WO3"}``.
    provenance : dict
        How the table was made (software versions, settings, date).
    """

    def __init__(self, thickness_nm, curves: dict, materials: dict, provenance: dict | None = None):
        t = np.asarray(thickness_nm, dtype=float)
        if t.ndim != 1 or t.size < 2 or t[0] != 0.0 or not np.allclose(np.diff(t), t[1] - t[0]):
            raise ValueError("thickness_nm must be equally spaced values starting at 0 nm")
        self.thickness_nm = t
        self.step_nm = float(t[1] - t[0])
        self.curves = {p: {o: np.asarray(v, dtype=float) for o, v in c.items()} for p, c in curves.items()}
        self.materials = dict(materials)
        self.provenance = dict(provenance or {})
        for phase, by_orientation in self.curves.items():
            if phase not in self.materials or self.materials[phase] not in MATERIALS:
                raise ValueError(f"phase {phase!r} needs a material in {MATERIALS}")
            for name, values in by_orientation.items():
                if values.shape != t.shape:
                    raise ValueError(f"curve {phase}/{name} has {values.size} values, expected {t.size}")
        self._warned = False

    # ------------------------------------------------------------------ lookup
    @property
    def phases(self) -> list[str]:
        return list(self.curves)

    def phases_of(self, material: str) -> list[str]:
        """Phases of one material (``"TiO2"`` or ``"WO3"``), in table order."""
        return [p for p in self.curves if self.materials[p] == material]

    def curve_stack(self, material: str) -> np.ndarray:
        """All curves of a material as a (K, T) array, K = phases × orientations."""
        rows = [v for p in self.phases_of(material) for v in self.curves[p].values()]
        if not rows:
            raise ValueError(f"the HAADF table has no phase of material {material!r}")
        return np.stack(rows)

    def extrapolation_slopes(self, stack: np.ndarray) -> np.ndarray:
        """Per-curve slope [1/nm] used beyond the last thickness: mean slope of the last 10 nm."""
        k = max(1, int(round(10.0 / self.step_nm)))
        k = min(k, self.thickness_nm.size - 1)
        return (stack[:, -1] - stack[:, -1 - k]) / (k * self.step_nm)

    def warn_if_beyond(self, max_thickness_nm: float) -> None:
        """Warn (once per table) when a thickness beyond the table is requested."""
        if max_thickness_nm > self.thickness_nm[-1] and not self._warned:
            self._warned = True
            warnings.warn(f"thickness {max_thickness_nm:.1f} nm exceeds the HAADF table "
                          f"(0–{self.thickness_nm[-1]:g} nm); extrapolating linearly from the "
                          "last 10 nm", ExtrapolationWarning, stacklevel=3)

    def intensity(self, thickness_nm, phase: str, orientation: str) -> np.ndarray:
        """HAADF fraction at ``thickness_nm`` [nm] (linear interpolation; linear extrapolation)."""
        if phase not in self.curves:
            raise ValueError(f"phase={phase!r} is not in the table; accepted: {self.phases}")
        if orientation not in self.curves[phase]:
            raise ValueError(f"orientation={orientation!r} is not in the table; accepted: "
                             f"{list(self.curves[phase])}")
        t = np.asarray(thickness_nm, dtype=float)
        if np.any(t < 0) or not np.all(np.isfinite(t)):
            raise ValueError("thickness_nm must be finite and ≥ 0 nm")
        curve = self.curves[phase][orientation]
        self.warn_if_beyond(float(t.max(initial=0.0)))
        slope = self.extrapolation_slopes(curve[None, :])[0]
        t_max = self.thickness_nm[-1]
        return np.where(t <= t_max, np.interp(t, self.thickness_nm, curve),
                        curve[-1] + slope * (t - t_max))

    # ------------------------------------------------------------------ io
    def to_dict(self) -> dict:
        return {"format": "agglib-haadf-table/1", "thickness_nm": self.thickness_nm.tolist(),
                "materials": self.materials,
                "curves": {p: {o: [float(f"{x:.6g}") for x in v] for o, v in c.items()}
                           for p, c in self.curves.items()},
                "provenance": self.provenance}

    def save(self, path) -> Path:
        """Write the table as JSON (atomically)."""
        return atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path=None) -> "HaadfTable":
        """Read a table written by :meth:`save` (default: the shipped one)."""
        path = Path(path) if path is not None else default_table_path()
        if not path.is_file():
            raise FileNotFoundError(f"no HAADF reference table at {path}; generate one with "
                                    "`agglib haadf-table` (needs agglib[multislice])")
        d = json.loads(path.read_text())
        if d.get("format") != "agglib-haadf-table/1":
            raise ValueError(f"{path} is not an agglib HAADF table (format {d.get('format')!r})")
        table = cls(d["thickness_nm"], d["curves"], d["materials"], d.get("provenance"))
        table.provenance.setdefault("sha256", hashlib.sha256(path.read_bytes()).hexdigest())
        return table

    def sha256(self) -> str:
        """Hash of the table's content (what a dataset records as provenance)."""
        return hashlib.sha256(json.dumps(self.to_dict()["curves"], sort_keys=True).encode()).hexdigest()


_CACHE: dict = {}


def load_reference_table(path=None) -> HaadfTable:
    """The table at ``path`` (default: the shipped one), read once and cached."""
    key = str(Path(path) if path is not None else default_table_path())
    if key not in _CACHE:
        _CACHE[key] = HaadfTable.load(key)
    return _CACHE[key]


# ---------------------------------------------------------------------- generation

def _curve_file(parts: Path, phase: str, orientation: str) -> Path:
    return parts / f"{phase}__{orientation}.json"


def _compute_curve(spec, atoms_dict, orientation, settings_dict, path: str) -> str:
    """Worker: compute one curve and write it to ``path``."""
    import abtem
    from ase import Atoms

    from agglib.stem.multislice import MultisliceSettings, simulate_curve

    abtem.config.set({"fftw.planning_effort": "FFTW_ESTIMATE", "fftw.threads": 1})
    atoms = Atoms(**atoms_dict)
    settings = MultisliceSettings(**{**settings_dict, "detector_mrad": tuple(settings_dict["detector_mrad"])})
    result = simulate_curve(atoms, orientation, spec["sigmas"], settings)
    record = {"phase": spec["name"], "material": spec["material"], "orientation": orientation.name,
              "direction": list(orientation.direction), "zone_axis": orientation.zone_axis,
              "thickness_nm": result["thickness_nm"].tolist(),
              "intensity": result["intensity"].tolist(), "stderr": result["stderr"].tolist(),
              "atoms_in_block": result["atoms_in_block"], "seconds": result["seconds"]}
    atomic_write_text(Path(path), json.dumps(record))
    return path


def _phase_inputs(phase) -> tuple[dict, object]:
    """(spec dict, ase.Atoms) for a phase name, PhaseSpec, (name, material, Atoms) or CIF."""
    from agglib.stem.crystals import PHASES, PhaseSpec, build_crystal

    if isinstance(phase, str):
        spec = PHASES.get(phase)
        if spec is None:
            raise ValueError(f"phase={phase!r} is unknown; accepted: {sorted(PHASES)} "
                             "(or pass a PhaseSpec / (name, material, atoms, sigmas))")
        phase = spec
    if isinstance(phase, PhaseSpec):
        return ({"name": phase.name, "material": phase.material, "sigmas": phase.sigmas,
                 "source": phase.source}, build_crystal(phase))
    name, material, atoms, sigmas = phase
    if material not in MATERIALS:
        raise ValueError(f"material={material!r}; accepted: {MATERIALS}")
    if isinstance(atoms, (str, Path)):
        from ase.io import read
        atoms = read(str(atoms))
    return {"name": name, "material": material, "sigmas": dict(sigmas), "source": "user"}, atoms


def build_reference_table(path=None, phases=None, settings=None, workers: int = 2,
                          random_tilt_seed: int = 0, show_progress_bars=None) -> HaadfTable:
    """Compute (or finish computing) a HAADF table with abTEM and write it to ``path``.

    Parameters
    ----------
    path : path-like, optional
        Output JSON. Default: the shipped table's path, only in a source checkout (an installed
        agglib never writes into its own package). Finished curves are kept in ``<path>.parts/``;
        a rerun only computes the missing ones.
    phases : list, optional
        Names from :data:`agglib.stem.crystals.PHASES` (default: all four), specs, or tuples
        ``(name, material, atoms_or_cif_path, {element: u_rms [Å]})``.
    settings : MultisliceSettings, optional
        Physics and cost settings (default: those of the shipped table).
    workers : int
        Curves computed in parallel (one process each).
    random_tilt_seed : int
        Seed of the "random" orientation.
    show_progress_bars : bool, optional
    """
    import abtem
    import ase
    from tqdm.auto import tqdm

    from agglib import config
    from agglib.stem.crystals import PHASES
    from agglib.stem.multislice import MultisliceSettings
    from agglib.stem.orientations import table_orientations

    if path is None:
        from agglib.core.locations import source_checkout

        if source_checkout() is None:
            raise ValueError("give path= for the new table: an installed agglib does not write into its package; "
                             "render with it through $AGGLIB_HAADF_TABLE or render_stem(table=)")
        path = default_table_path()
    path = Path(path)
    parts = path.parent / (path.name + ".parts")
    parts.mkdir(parents=True, exist_ok=True)
    settings = settings or MultisliceSettings()
    phases = list(PHASES) if phases is None else list(phases)
    jobs, specs = [], {}
    for phase in phases:
        spec, atoms = _phase_inputs(phase)
        specs[spec["name"]] = spec
        atoms_dict = {"numbers": atoms.numbers.tolist(), "positions": atoms.positions.tolist(),
                      "cell": atoms.cell.array.tolist(), "pbc": True}
        for orientation in table_orientations(atoms.cell.array, seed=random_tilt_seed):
            target = _curve_file(parts, spec["name"], orientation.name)
            jobs.append((spec, atoms_dict, orientation, target))
    todo = [j for j in jobs if not j[3].is_file()]
    show = config.get("progress_bars") if show_progress_bars is None else show_progress_bars
    with tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc="HAADF curves",
              disable=not show) as bar:
        if todo:
            with ProcessPoolExecutor(max_workers=max(1, min(workers, len(todo)))) as pool:
                futures = [pool.submit(_compute_curve, spec, atoms_dict, o, settings.to_dict(), str(t))
                           for spec, atoms_dict, o, t in todo]
                for future in as_completed(futures):
                    future.result()
                    bar.update()
    records = [json.loads(t.read_text()) for *_, t in jobs]
    thickness = records[0]["thickness_nm"]
    curves, materials, directions, seconds = {}, {}, {}, {}
    for r in records:
        curves.setdefault(r["phase"], {})[r["orientation"]] = r["intensity"]
        materials[r["phase"]] = r["material"]
        key = f"{r['phase']}/{r['orientation']}"
        directions[key] = {"direction_cartesian": [round(x, 6) for x in r["direction"]],
                           "zone_axis": r["zone_axis"], "seconds": round(r["seconds"], 1),
                           "relative_stderr_at_max": round(r["stderr"][-1] / max(r["intensity"][-1], 1e-12), 4)}
        seconds[key] = r["seconds"]
    provenance = {
        "generator": "agglib.stem.reference.build_reference_table",
        "abtem": abtem.__version__, "ase": ase.__version__,
        "date": _dt.date.today().isoformat(), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "settings": settings.to_dict(), "random_tilt_seed": random_tilt_seed,
        "probe": "aberration-free (Cs-corrected), focused on the entrance surface",
        "signal": "fraction of the incident probe intensity on the annular detector",
        "phases": {n: {"material": s["material"], "source": s["source"],
                       "u_rms_A": {k: round(v, 4) for k, v in s["sigmas"].items()}}
                   for n, s in specs.items()},
        "curves": directions, "total_cpu_seconds": round(sum(seconds.values()), 1),
    }
    if path.is_file():                       # keep phases of an existing table not recomputed
        old = HaadfTable.load(path)
        if np.allclose(old.thickness_nm, thickness):
            for p in old.phases:
                if p not in curves:
                    curves[p] = old.curves[p]
                    materials[p] = old.materials[p]
                    provenance["curves"].update({k: v for k, v in old.provenance.get("curves", {}).items()
                                                 if k.startswith(p + "/")})
                    provenance["phases"][p] = old.provenance.get("phases", {}).get(p, {})
    table = HaadfTable(thickness, curves, materials, provenance)
    table.save(path)
    _CACHE.pop(str(path), None)
    return table


def add_phase(name: str, material: str, atoms, u_rms_A: dict, path=None, settings=None,
              workers: int = 2, show_progress_bars=None) -> HaadfTable:
    """Add a new phase to a table in one call.

    Parameters
    ----------
    name : str
        Phase name, e.g. ``"TiO2-brookite"``.
    material : {"TiO2", "WO3"}
        Which particles may be given this phase when rendering.
    atoms : ase.Atoms or path-like
        The unit cell, or a CIF (any file ase can read).
    u_rms_A : dict
        RMS thermal displacement per element [Å].
    path, settings, workers, show_progress_bars
        As for :func:`build_reference_table`; the existing phases are kept.
    """
    return build_reference_table(path, phases=[(name, material, atoms, u_rms_A)], settings=settings,
                                 workers=workers, show_progress_bars=show_progress_bars)
