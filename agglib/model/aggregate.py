"""The :class:`Aggregate` container: particles of one hetero-aggregate, with save/load."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from agglib.core.files import atomic_open

from agglib.model.params import ModelParams

#: Material labels (paper §2.1.1): 0 = WO3, 1 = TiO2.
WO3, TIO2 = 0, 1
MATERIAL_NAMES = {WO3: "WO3", TIO2: "TiO2"}


@dataclass(eq=False)
class Aggregate:
    """One hetero-aggregate: N spherical particles p_i = (x_i, r_i, l_i).

    Attributes
    ----------
    positions : ndarray, shape (N, 3), float64
        Particle centres [nm], relative to the aggregate's centre of mass
        (masses ∝ r³, Eq. 4).
    radii : ndarray, shape (N,), float64
        Particle radii [nm].
    labels : ndarray, shape (N,), int64
        Material per particle: 0 = WO3, 1 = TiO2.
    cluster_ids : ndarray, shape (N,), int64
        Index of the primary cluster each particle was grown in (0, 1, ... in
        the order the clusters were attached).
    params : ModelParams or None
        θ the aggregate was drawn from (``None`` for hand-built aggregates).
    info : dict
        Provenance: seed, restart counts, cluster-size mode.
    """

    positions: np.ndarray
    radii: np.ndarray
    labels: np.ndarray
    cluster_ids: np.ndarray = None
    params: ModelParams | None = None
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        self.positions = np.asarray(self.positions, dtype=np.float64).reshape(-1, 3)
        n = self.positions.shape[0]
        self.radii = np.asarray(self.radii, dtype=np.float64).reshape(-1)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if self.cluster_ids is None:
            self.cluster_ids = np.arange(n, dtype=np.int64)
        self.cluster_ids = np.asarray(self.cluster_ids, dtype=np.int64).reshape(-1)
        for name in ("radii", "labels", "cluster_ids"):
            if getattr(self, name).shape[0] != n:
                raise ValueError(f"{name} has {getattr(self, name).shape[0]} entries but "
                                 f"positions has {n} rows; they must match")
        if n and not np.all(np.isin(self.labels, (WO3, TIO2))):
            raise ValueError(f"labels must be 0 (WO3) or 1 (TiO2); got {np.unique(self.labels)}")

    @property
    def n_particles(self) -> int:
        """Number of particles N."""
        return int(self.positions.shape[0])

    def __len__(self) -> int:
        return self.n_particles

    def __eq__(self, other) -> bool:
        if not isinstance(other, Aggregate):
            return NotImplemented
        return (np.array_equal(self.positions, other.positions)
                and np.array_equal(self.radii, other.radii)
                and np.array_equal(self.labels, other.labels)
                and np.array_equal(self.cluster_ids, other.cluster_ids)
                and self.params == other.params)

    def __repr__(self) -> str:
        n_wo3 = int(np.sum(self.labels == WO3))
        return (f"Aggregate(N={self.n_particles}, WO3={n_wo3}, TiO2={self.n_particles - n_wo3}, "
                f"params={self.params})")

    def rotated(self, rotation: np.ndarray) -> "Aggregate":
        """A copy rotated by a 3×3 rotation matrix about the origin."""
        rotation = np.asarray(rotation, dtype=np.float64)
        return Aggregate(self.positions @ rotation.T, self.radii.copy(), self.labels.copy(),
                         self.cluster_ids.copy(), self.params, dict(self.info))

    def to_dict(self) -> dict:
        """Columns x, y, z [nm], r [nm], label, material, cluster_id."""
        return {
            "x": self.positions[:, 0], "y": self.positions[:, 1], "z": self.positions[:, 2],
            "r": self.radii, "label": self.labels,
            "material": np.array([MATERIAL_NAMES[int(v)] for v in self.labels]),
            "cluster_id": self.cluster_ids,
        }

    def save(self, path) -> Path:
        """Write a lossless ``.npz`` file (atomic: a temporary file then rename)."""
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_suffix(".npz")
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"params": None if self.params is None else self.params.to_dict(),
                "info": self.info}
        with atomic_open(path, "wb") as fh:
            np.savez(fh, positions=self.positions, radii=self.radii, labels=self.labels,
                     cluster_ids=self.cluster_ids, meta=np.array(json.dumps(meta)))
        return path

    @classmethod
    def load(cls, path) -> "Aggregate":
        """Read an aggregate written by :meth:`save` (a ``.npz`` file).

        Raises
        ------
        FileNotFoundError
            ``path`` does not exist.
        ValueError
            ``path`` is a folder, or not an aggregate file written by :meth:`save`.
        """
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file")
        if path.is_dir():
            raise ValueError(f"{path} is a folder; give the aggregate .npz files in it (e.g. {path}/*.npz)")
        try:
            with np.load(path, allow_pickle=False) as f:
                if not hasattr(f, "files") or not {"meta", "positions", "radii", "labels", "cluster_ids"} <= set(f.files):
                    raise ValueError("missing arrays")
                meta = json.loads(str(f["meta"]))
                params = None if meta["params"] is None else ModelParams.from_dict(meta["params"])
                return cls(f["positions"], f["radii"], f["labels"], f["cluster_ids"], params,
                           meta.get("info", {}))
        except (ValueError, OSError, KeyError, EOFError, json.JSONDecodeError) as err:
            why = "not a NumPy .npz archive" if "pickle" in str(err) or "zip" in str(err).lower() else str(err)
            raise ValueError(f"{path} is not an aggregate file written by agglib ({why}); give .npz files written "
                             "by `agglib generate` or Aggregate.save") from None
