"""Crystal orientations of the HAADF reference table (paper §2.1.3).

The crystal is tilted in nine equal steps from a [100] towards a [010] viewing direction
(rotation about the normal of the a–b plane), plus one random tilt. A random direction that
happens to lie close to a low-index zone axis or lattice plane would channel and is redrawn:
we require ≥ 3° from every zone axis [uvw] with ``|u|, |v|, |w| ≤ 3`` and ≥ 2° from every
lattice plane (hkl) with ``|h|, |k|, |l| ≤ 2``.
"""

from __future__ import annotations

from dataclasses import dataclass
import itertools

import numpy as np

__all__ = ["Orientation", "table_orientations", "rotation_to_z", "channelling_margins"]

N_TILT_STEPS = 9
# A tilt step within this angle of a zone axis [uvw] (|u|,|v|,|w| ≤ 3) is treated as on-axis:
# its signal depends on the probe position, so the table samples more positions there. The
# angle is the probe's semi-convergence, 21.1 mrad = 1.2°: a zone axis inside the probe cone
# channels part of the beam.
ZONE_AXIS_TOLERANCE_DEG = 1.2


@dataclass(frozen=True)
class Orientation:
    """A viewing direction, as a unit vector in the crystal's Cartesian frame [Å basis]."""

    name: str
    direction: tuple
    zone_axis: bool


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=float)
    return v / np.linalg.norm(v)


def rotation_to_z(direction) -> np.ndarray:
    """Rotation matrix R with R @ direction = +z (Rodrigues' formula)."""
    d = _unit(direction)
    z = np.array([0.0, 0.0, 1.0])
    v = np.cross(d, z)
    s, c = np.linalg.norm(v), float(d @ z)
    if s < 1e-12:
        return np.eye(3) if c > 0 else np.diag([1.0, -1.0, -1.0])
    k = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]]) / s
    angle = np.arctan2(s, c)
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)


def channelling_margins(cell: np.ndarray, direction) -> tuple[float, float]:
    """Smallest angles [degree] from ``direction`` to a low-index zone axis and lattice plane.

    Parameters
    ----------
    cell : (3, 3) array
        Lattice vectors as rows [Å].
    direction : (3,) array
        Viewing direction in the same Cartesian frame.
    """
    d = _unit(direction)
    cell = np.asarray(cell, dtype=float)
    reciprocal = np.linalg.inv(cell).T
    zone, plane = 180.0, 90.0
    for uvw in itertools.product(range(-3, 4), repeat=3):
        if any(uvw):
            axis = _unit(np.asarray(uvw) @ cell)
            zone = min(zone, np.degrees(np.arccos(min(1.0, abs(axis @ d)))))
    for hkl in itertools.product(range(-2, 3), repeat=3):
        if any(hkl):
            normal = _unit(np.asarray(hkl) @ reciprocal)
            plane = min(plane, np.degrees(np.arcsin(min(1.0, abs(normal @ d)))))
    return float(zone), float(plane)


def table_orientations(cell: np.ndarray, seed: int = 0) -> list[Orientation]:
    """The ten orientations of the table for a crystal with lattice vectors ``cell`` (rows, Å).

    ``tilt-0`` is [100], ``tilt-8`` is [010], ``tilt-1`` … ``tilt-7`` are equal steps between
    them (a step within 1.2° of a low-index zone axis, e.g. rutile [110], is flagged
    ``zone_axis``); ``random`` is a direction drawn with ``seed`` and redrawn while it is within 3° of a
    low-index zone axis or 2° of a low-index plane.
    """
    cell = np.asarray(cell, dtype=float)
    a, b = _unit(cell[0]), _unit(cell[1])
    normal = _unit(np.cross(a, b))
    total = np.arccos(np.clip(a @ b, -1.0, 1.0))
    out = []
    for k in range(N_TILT_STEPS):
        phi = total * k / (N_TILT_STEPS - 1)
        # Rotate a about the a×b normal by phi (stays in the a–b plane, reaches b at the end).
        d = a * np.cos(phi) + np.cross(normal, a) * np.sin(phi)
        zone, _ = channelling_margins(cell, d)
        out.append(Orientation(f"tilt-{k}", tuple(_unit(d)), zone_axis=zone < ZONE_AXIS_TOLERANCE_DEG))
    rng = np.random.default_rng(seed)
    while True:
        d = _unit(rng.normal(size=3))
        zone, plane = channelling_margins(cell, d)
        if zone >= 3.0 and plane >= 2.0:
            break
    out.append(Orientation("random", tuple(d), zone_axis=False))
    return out
