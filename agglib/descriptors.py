"""Structural descriptors of one aggregate (paper Eqs. 3–5 and 17–19)."""

from __future__ import annotations

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from agglib.model.aggregate import TIO2, WO3, Aggregate
from agglib.model.params import CONTACT_FACTOR, FRACTAL_PREFACTOR

DESCRIPTOR_NAMES = ("n_particles", "df", "rho", "rg", "s_tio2", "s_wo3", "z_hetero", "z_total")

#: Units of the descriptors, for axis titles.
DESCRIPTOR_UNITS = {"n_particles": "particles", "df": "-", "rho": "-", "rg": "nm",
                    "s_tio2": "particles", "s_wo3": "particles", "z_hetero": "contacts",
                    "z_total": "contacts"}


def contact_pairs(positions: np.ndarray, radii: np.ndarray,
                  factor: float = CONTACT_FACTOR) -> np.ndarray:
    """Pairs (i < j) in contact, ‖x_i − x_j‖ <= factor·(r_i + r_j) (paper Eq. 2).

    Returns
    -------
    ndarray, shape (K, 2), int64
    """
    positions = np.asarray(positions, dtype=np.float64)
    radii = np.asarray(radii, dtype=np.float64)
    i, j = np.triu_indices(len(radii), k=1)
    dist2 = np.sum((positions[i] - positions[j]) ** 2, axis=1)
    touch = dist2 <= (factor * (radii[i] + radii[j])) ** 2
    return np.stack([i[touch], j[touch]], axis=1).astype(np.int64)


def radius_of_gyration(positions: np.ndarray, radii: np.ndarray) -> float:
    """R_g of Eq. (4) [nm] with particle masses m_i ∝ r_i³ at the centres."""
    m = np.asarray(radii, dtype=np.float64) ** 3
    c0 = (m[:, None] * positions).sum(axis=0) / m.sum()
    return float(np.sqrt((m * np.sum((positions - c0) ** 2, axis=1)).sum() / m.sum()))


def _df_from_rg(n: int, rg: float, a: float, kf: float) -> float:
    """Eq. (5) from N, R_g and the mean radius a; NaN where R_g <= a."""
    if n < 2 or rg <= a:
        return float("nan")
    return float(np.log(n / kf) / np.log(rg / a))


def mean_cluster_size(labels: np.ndarray, pairs: np.ndarray, material: int) -> float:
    """Mean number of particles of the connected single-material clusters (Eq. 17).

    NaN when the aggregate has no particle of that material.
    """
    idx = np.flatnonzero(labels == material)
    if idx.size == 0:
        return float("nan")
    local = -np.ones(len(labels), dtype=np.int64)
    local[idx] = np.arange(idx.size)
    same = (labels[pairs[:, 0]] == material) & (labels[pairs[:, 1]] == material)
    p = local[pairs[same]]
    graph = coo_matrix((np.ones(len(p)), (p[:, 0], p[:, 1])), shape=(idx.size, idx.size))
    n_comp, _ = connected_components(graph, directed=False)
    return idx.size / n_comp


def describe(aggregate: Aggregate, kf: float = FRACTAL_PREFACTOR) -> dict:
    """Structural descriptors of an aggregate.

    Parameters
    ----------
    aggregate : Aggregate
    kf : float
        Fractal prefactor of Eq. (5) [-].

    Returns
    -------
    dict
        ``n_particles``; ``df`` (Eq. 5, k_f = 1.3, a = mean radius) [-];
        ``rho`` fraction of WO3 particles (Eq. 3) [-]; ``rg`` radius of gyration
        (Eq. 4, masses ∝ r³) [nm]; ``s_tio2``, ``s_wo3`` mean size of connected
        single-material clusters (Eq. 17) [particles], NaN when the material is
        absent; ``z_hetero`` mean number of contacts with the other material
        (Eq. 18); ``z_total`` mean number of contacts (Eq. 19). Contact means
        ‖x_i − x_j‖ <= 1.01 (r_i + r_j).
    """
    pos, rad, lab = aggregate.positions, aggregate.radii, aggregate.labels
    n = aggregate.n_particles
    if n == 0:
        raise ValueError("describe() needs an aggregate with at least one particle; got N=0")
    pairs = contact_pairs(pos, rad)
    hetero = int(np.sum(lab[pairs[:, 0]] != lab[pairs[:, 1]])) if len(pairs) else 0
    rg = radius_of_gyration(pos, rad)
    return {
        "n_particles": n,
        "df": _df_from_rg(n, rg, float(np.mean(rad)), kf),
        "rho": float(np.mean(lab == WO3)),
        "rg": rg,
        "s_tio2": mean_cluster_size(lab, pairs, TIO2),
        "s_wo3": mean_cluster_size(lab, pairs, WO3),
        "z_hetero": 2.0 * hetero / n,
        "z_total": 2.0 * len(pairs) / n,
    }


def describe_many(aggregates) -> dict[str, np.ndarray]:
    """Descriptors of several aggregates as arrays keyed by descriptor name."""
    rows = [describe(a) for a in aggregates]
    return {k: np.array([r[k] for r in rows]) for k in DESCRIPTOR_NAMES}
