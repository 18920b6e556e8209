"""HAADF intensity-vs-thickness curves with the open multislice code abTEM.

This is the only module that imports abTEM and ase (the ``agglib[multislice]`` extra). It is
used to (re)generate the reference table shipped in ``data/``; rendering images never needs it.

One curve: the crystal is rotated so the viewing direction is +z, a block of
``box_A × box_A × thickness`` is cut from it, a frozen-phonon potential is built, and an
aberration-free probe (the Cs-corrected probe focused on the entrance surface) is propagated
through it at several positions; the annular detector is read every ``thickness_step_nm``.
The signal is the fraction of the incident probe intensity that reaches the detector,
averaged over positions and phonon configurations.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
import time

import numpy as np

from agglib.core.validation import check_range
from agglib.stem.orientations import Orientation, rotation_to_z

__all__ = ["MultisliceSettings", "simulate_curve", "rotated_block", "probe_positions"]

_CUT_OFFSET_A = (0.0731, 0.0417, 0.0253)


@dataclass(frozen=True)
class MultisliceSettings:
    """Physics and cost settings of one abTEM curve.

    Parameters
    ----------
    energy_kev : float
        Acceleration voltage [kV].
    semiangle_mrad : float
        Probe semi-convergence angle β [mrad].
    detector_mrad : tuple of float
        Inner and outer angle of the annular detector [mrad].
    sampling_A : float
        Real-space sampling [Å]; 0.025 Å keeps the anti-aliasing limit (262 mrad at 300 kV)
        above the detector's outer angle.
    box_A : float
        Lateral size of the crystal block [Å].
    thickness_nm : float
        Largest thickness [nm].
    thickness_step_nm : float
        Detector readout step [nm].
    slice_A : float
        Multislice slice thickness [Å].
    phonons : int
        Frozen-phonon configurations per curve.
    positions : int
        Probe positions for a generic orientation (a square grid of this many points).
    zone_axis_positions : int
        Probe positions near a zone axis, where the signal depends on the position.
    scan_square_A : float
        Side of the central square the positions cover [Å] (≥ a projected unit cell).
    seed : int
        Seed of the frozen-phonon displacements.
    """

    energy_kev: float = 300.0
    semiangle_mrad: float = 21.1
    detector_mrad: tuple = (55.0, 250.0)
    sampling_A: float = 0.025
    box_A: float = 20.0
    thickness_nm: float = 60.0
    thickness_step_nm: float = 1.0
    slice_A: float = 2.0
    phonons: int = 1
    positions: int = 9
    zone_axis_positions: int = 36
    scan_square_A: float = 4.6
    seed: int = 0

    def __post_init__(self):
        check_range("energy_kev", self.energy_kev, low=20.0, high=1000.0, unit="kV")
        check_range("semiangle_mrad", self.semiangle_mrad, low=1.0, high=60.0, unit="mrad")
        check_range("thickness_nm", self.thickness_nm, low=1.0, high=500.0, unit="nm")
        check_range("thickness_step_nm", self.thickness_step_nm, low=0.1, high=self.thickness_nm, unit="nm")
        check_range("phonons", self.phonons, low=1, high=1000, integer=True)
        check_range("positions", self.positions, low=1, high=10000, integer=True)
        check_range("zone_axis_positions", self.zone_axis_positions, low=1, high=10000, integer=True)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["detector_mrad"] = list(self.detector_mrad)
        return d


def rotated_block(atoms, direction, box_A: float, depth_A: float):
    """Atoms of the crystal rotated so ``direction`` is +z, cut to a box [Å].

    The block is not periodic at its lateral edges (a tilted crystal is not); the probe sits
    in its centre.
    """
    from ase import Atoms

    rot = rotation_to_z(direction)
    cell = atoms.cell.array
    # Box corners in the rotated frame -> crystal fractional coordinates -> cells to tile.
    corners = np.array([[x, y, z] for x in (0, box_A) for y in (0, box_A) for z in (0, depth_A)])
    corners = corners - [box_A / 2, box_A / 2, 0.0]
    frac = (corners @ rot) @ np.linalg.inv(cell)          # rot.T maps back; row-vector form
    lo = np.floor(frac.min(axis=0)).astype(int) - 1
    hi = np.ceil(frac.max(axis=0)).astype(int) + 1
    grid = np.stack(np.meshgrid(*[np.arange(l, h) for l, h in zip(lo, hi)], indexing="ij"), -1)
    shifts = grid.reshape(-1, 3) @ cell
    pos = (shifts[:, None, :] + atoms.positions[None, :, :]).reshape(-1, 3)
    numbers = np.tile(atoms.numbers, len(shifts))
    # A small offset keeps lattice planes of a zone-axis crystal off the box faces (where
    # rounding would drop or duplicate whole atomic planes).
    pos = pos @ rot.T + [box_A / 2 + _CUT_OFFSET_A[0], box_A / 2 + _CUT_OFFSET_A[1], _CUT_OFFSET_A[2]]
    keep = ((pos[:, 0] >= 0) & (pos[:, 0] < box_A) & (pos[:, 1] >= 0) & (pos[:, 1] < box_A)
            & (pos[:, 2] >= 0) & (pos[:, 2] < depth_A))
    return Atoms(numbers=numbers[keep], positions=pos[keep], cell=[box_A, box_A, depth_A], pbc=True)


def probe_positions(count: int, square_A: float, box_A: float) -> np.ndarray:
    """A square grid of ``count`` (rounded up to a square) probe positions [Å] in the box centre."""
    n = int(np.ceil(np.sqrt(count)))
    step = square_A / n
    offsets = (np.arange(n) + 0.5) * step - square_A / 2 + box_A / 2
    xx, yy = np.meshgrid(offsets, offsets, indexing="ij")
    return np.stack([xx.ravel(), yy.ravel()], axis=-1)


def simulate_curve(atoms, orientation: Orientation, sigmas: dict,
                   settings: MultisliceSettings | None = None) -> dict:
    """HAADF signal vs thickness for one crystal and orientation.

    Parameters
    ----------
    atoms : ase.Atoms
        Unit cell of the crystal.
    orientation : Orientation
        Viewing direction (crystal Cartesian frame).
    sigmas : dict
        RMS thermal displacement per element [Å].
    settings : MultisliceSettings, optional

    Returns
    -------
    dict with ``thickness_nm`` (array), ``intensity`` (array, fraction of the incident probe),
    ``stderr`` (standard error over positions × phonons), ``seconds`` (wall time).
    """
    import abtem

    s = settings or MultisliceSettings()
    start = time.perf_counter()
    depth = s.thickness_nm * 10.0
    block = rotated_block(atoms, orientation.direction, s.box_A, depth)
    slices_per_step = max(1, int(round(s.thickness_step_nm * 10.0 / s.slice_A)))
    sigma_by_symbol = {k: float(v) for k, v in sigmas.items()}
    frozen = abtem.FrozenPhonons(block, num_configs=s.phonons, sigmas=sigma_by_symbol, seed=s.seed)
    potential = abtem.Potential(frozen, sampling=s.sampling_A, slice_thickness=s.slice_A,
                                projection="infinite", parametrization="lobato",
                                exit_planes=slices_per_step)
    probe = abtem.Probe(energy=s.energy_kev * 1e3, semiangle_cutoff=s.semiangle_mrad)
    probe.grid.match(potential)
    count = s.zone_axis_positions if orientation.zone_axis else s.positions
    positions = probe_positions(count, s.scan_square_A, s.box_A)
    detector = abtem.AnnularDetector(inner=s.detector_mrad[0], outer=s.detector_mrad[1])
    measurement = probe.scan(potential, scan=abtem.CustomScan(positions), detectors=detector,
                             lazy=True)
    values = np.asarray(measurement.compute(progress_bar=False).array, dtype=float)
    # axes: ([phonons,] exit planes, positions)
    values = values.reshape(-1, values.shape[-2], values.shape[-1]) if values.ndim == 3 else \
        values.reshape(1, values.shape[-2], values.shape[-1])
    per_sample = values.transpose(1, 0, 2).reshape(values.shape[1], -1)
    thickness = np.arange(per_sample.shape[0]) * slices_per_step * s.slice_A / 10.0
    mean = per_sample.mean(axis=1)
    stderr = per_sample.std(axis=1, ddof=1) / np.sqrt(per_sample.shape[1]) if per_sample.shape[1] > 1 \
        else np.zeros_like(mean)
    return {"thickness_nm": thickness, "intensity": mean, "stderr": stderr,
            "atoms_in_block": len(block), "seconds": time.perf_counter() - start}
