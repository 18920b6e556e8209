"""The Zarr store of a dataset: layout, identity checks, reading.

Layout (Zarr v3, one directory)::

    images            (n, H, W) uint32   detector counts, Blosc-zstd, one chunk per image
    theta             (n, 4)    float64  θ = (θ_Df, θ_ρ, θ0, θ1) per sample
    config_id         (n,)      int32    index into ``configs``
    configs           (C, 4)    float64  the parameter configurations
    split             (n,)      uint8    0 = T (training), 1 = E (evaluation)
    sample_seed       (n,)      uint64   seed of each sample's aggregate and image
    descriptors       (n, D)    float64  agglib.describe() of each aggregate (names in attrs)
    particles/offsets (n + 1,)  int64    particles of sample i: rows offsets[i]:offsets[i+1]
    particles/positions (P, 3) float64  [nm]; particles/radii (P,) [nm]; particles/labels (P,) uint8

``attrs["identity"]`` holds what defines the data (format, agglib version, profile fields,
seed, STEM settings, HAADF table hash); a build with other values is refused rather than mixed.
``attrs["complete"]`` is set once every shard is in and the particles are consolidated.
Nothing in the store depends on the number of workers or shards.
"""

from __future__ import annotations

from dataclasses import dataclass
import json
from pathlib import Path

import numpy as np

__all__ = ["DatasetStore", "open_store", "FORMAT", "StoreMismatchError", "StoreDamagedError", "default_store_path"]

FORMAT = "agglib-dataset/1"


def default_store_path(profile_name: str, seed: int, design: str = "grid") -> Path:
    """Where notebooks keep a profile's dataset: ``datasets/<profile>-seed<seed>.zarr`` in the user
    data folder (:func:`agglib.core.locations.user_data_dir`: ``data/`` in a source checkout);
    ``…-continuous.zarr`` for the continuous design."""
    from agglib.core.locations import user_data_dir

    base = user_data_dir()
    suffix = "" if design == "grid" else f"-{design}"
    return base / "datasets" / f"{profile_name}-seed{int(seed)}{suffix}.zarr"


#: Per-process cache of one finished store's decoded images (see DatasetStore.read_images).
_DECODED_IMAGES: dict = {}


class StoreDamagedError(ValueError):
    """A dataset store whose files cannot be read, naming the file and what to do."""


def _damaged(where, err: Exception, verb: str = "read") -> StoreDamagedError:
    """The error for a store file that cannot be ``verb``, with what to do."""
    return StoreDamagedError(f"{where} cannot be {verb} ({type(err).__name__}: {str(err)[:200]}); the store is "
                             "damaged (a disk error or an interrupted copy): delete it and run the same "
                             "`agglib dataset build` command again — the same profile and seed give the same data")


class StoreMismatchError(ValueError):
    """An existing store was built with a different profile, seed or settings."""


def _zarr():
    import zarr

    return zarr


def image_compressor():
    zarr = _zarr()
    return zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle")


def describe_identity(identity: dict) -> str:
    prof = identity.get("profile", {})
    return f"profile {identity.get('profile_name')!r} ({prof.get('image_size_px')} px), seed {identity.get('seed')}"


def check_identity(existing: dict, wanted: dict, path) -> None:
    """Raise :class:`StoreMismatchError` when a store's identity differs from the wanted one."""
    if existing == wanted:
        return
    diffs = sorted(k for k in set(existing) | set(wanted) if existing.get(k) != wanted.get(k))
    raise StoreMismatchError(
        f"{path} holds a dataset built with {describe_identity(existing)}, not "
        f"{describe_identity(wanted)} (differs in: {', '.join(diffs)}); refusing to mix them — "
        "choose another path or delete the store")


@dataclass
class DatasetStore:
    """Read access to a finished dataset store.

    Parameters
    ----------
    path : path-like
        The store directory.
    """

    path: Path

    def __post_init__(self):
        self.path = Path(self.path)
        zarr = _zarr()
        if not (self.path / "zarr.json").is_file():
            raise FileNotFoundError(f"no dataset store at {self.path}")
        try:
            self.root = zarr.open_group(str(self.path), mode="r")
            attrs = dict(self.root.attrs)
        except Exception as err:              # unparsable zarr.json, missing metadata
            raise _damaged(self.path / "zarr.json", err) from None
        if attrs.get("identity", {}).get("format") != FORMAT:
            raise ValueError(f"{self.path} is not an agglib dataset store")
        if not attrs.get("complete"):
            raise ValueError(f"the dataset at {self.path} is incomplete (a build was interrupted); "
                             "run the same `agglib dataset build` command again to finish it")
        self.identity = attrs["identity"]
        self.descriptor_names = list(attrs["descriptor_names"])
        self._cache = {}

    def _array(self, name):
        if name not in self._cache:
            try:
                self._cache[name] = self.root[name][...]
            except Exception as err:
                raise _damaged(self.path / name, err) from None
        return self._cache[name]

    def _read_image_block(self, selection):
        """Decode images (``selection``: an index array, or ``...`` for all); a damaged chunk is
        reported with its file."""
        try:
            return self.images[...] if selection is Ellipsis else self.images.get_orthogonal_selection((selection,))
        except Exception as err:
            indices = range(self.images.shape[0]) if selection is Ellipsis else selection
            bad = next((int(i) for i in indices if not self._image_readable(int(i))), None)
            where = (f"the chunk {self.path / 'images' / 'c' / str(bad) / '0' / '0'} (sample {bad})"
                     if bad is not None else f"{self.path / 'images'}")
            raise _damaged(where, err, "decoded") from None

    def _image_readable(self, i: int) -> bool:
        try:
            self.images[i]
            return True
        except Exception:
            return False

    def __len__(self) -> int:
        return int(self.root["theta"].shape[0])

    @property
    def images(self):
        """The image array [counts], read when indexed."""
        return self.root["images"]

    @property
    def theta(self) -> np.ndarray:
        return self._array("theta")

    @property
    def config_id(self) -> np.ndarray:
        return self._array("config_id")

    @property
    def configs(self) -> np.ndarray:
        return self._array("configs")

    @property
    def split(self) -> np.ndarray:
        return self._array("split")

    @property
    def sample_seed(self) -> np.ndarray:
        return self._array("sample_seed")

    @property
    def acquisition(self):
        """Each sample's acquisition (n, 6), columns
        :data:`agglib.stem.acquisition.ACQUISITION_KEYS` (intensity scale, WO3/TiO2 contrast, dose
        [e/Å²], vacuum offset [fraction of the beam], extra blur [nm], pixel zoom), or None for a
        store of the paper's fixed acquisition."""
        return self._array("acquisition") if "acquisition" in self.root else None

    @property
    def descriptors(self):
        """Descriptors as a pandas DataFrame (columns ``descriptor_names``)."""
        import pandas as pd

        return pd.DataFrame(self._array("descriptors"), columns=self.descriptor_names)

    @property
    def profile(self) -> dict:
        return dict(self.identity["profile"])

    @property
    def pixel_size_nm(self) -> float:
        return float(self.identity["stem_settings"]["pixel_size_nm"])

    @property
    def stem_settings(self):
        """The :class:`agglib.stem.StemSettings` the images were rendered with."""
        from agglib.stem.render import StemSettings

        return StemSettings(**self.identity["stem_settings"])

    def read_images(self, indices, dtype=np.float32) -> np.ndarray:
        """Images ``indices`` in one bulk read (far faster than one read per image) [counts].

        Returns an array of shape (len(indices), H, W) in the order of ``indices``. A request for
        a quarter of the store or more decodes the whole image array once per process and keeps
        it (one store at a time, if it fits in the ``preload_mb`` setting); later reads, also
        through other :class:`DatasetStore` objects of the same store, are then copies from memory.
        """
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if indices.size == 0:
            return np.empty((0, *self.images.shape[1:]), dtype=dtype)
        decoded = self._decoded_images(large=indices.size * 4 >= len(self))
        if decoded is not None:
            return decoded[indices].astype(dtype, copy=False)
        unique, inverse = np.unique(indices, return_inverse=True)
        block = np.asarray(self._read_image_block(unique), dtype=dtype)
        if unique.size == indices.size and np.array_equal(unique, indices):
            return block                     # already sorted and distinct: no reordering copy
        return block[inverse]

    def _decoded_images(self, large: bool):
        """The whole image array from the per-process cache (decoding it if ``large``), or None."""
        import agglib

        key = (str(self.path.resolve()), json.dumps(self.identity, sort_keys=True),
               (self.path / "zarr.json").stat().st_mtime_ns)
        if _DECODED_IMAGES.get("key") == key:
            return _DECODED_IMAGES["images"]
        images = self.images
        nbytes = int(np.prod(images.shape)) * images.dtype.itemsize
        if not large or nbytes > int(agglib.config.get("preload_mb")) * 1024**2:
            return None
        _DECODED_IMAGES.clear()                 # one store at a time
        _DECODED_IMAGES.update(key=key, images=self._read_image_block(Ellipsis))
        return _DECODED_IMAGES["images"]

    def indices(self, split: str | int | None = None) -> np.ndarray:
        """Sample indices of the split ``"T"``/``"train"``/0 or ``"E"``/``"eval"``/1 (all if None)."""
        from agglib.dataset.plan import EVAL, TRAIN

        if split is None:
            return np.arange(len(self))
        code = {"T": TRAIN, "train": TRAIN, 0: TRAIN, "E": EVAL, "eval": EVAL, 1: EVAL}.get(split)
        if code is None:
            raise ValueError(f"split={split!r}; accepted: 'T'/'train'/0 or 'E'/'eval'/1")
        return np.flatnonzero(self.split == code)

    def aggregate(self, i: int):
        """The 3D aggregate of sample ``i`` (an :class:`agglib.Aggregate`)."""
        from agglib.model.aggregate import Aggregate
        from agglib.model.params import ModelParams

        off = self._array("particles/offsets")
        a, b = int(off[i]), int(off[i + 1])
        p = self.root["particles"]
        return Aggregate(p["positions"][a:b], p["radii"][a:b], p["labels"][a:b].astype(np.int64),
                         params=ModelParams(*self.theta[i]), info={"sample": int(i)})

    def continuous_roles(self) -> dict:
        """Rows of a continuous dataset by role: ``posterior`` (T rows the set-level posterior
        trains on), ``encoder`` (T rows added to the encoder's training images) and ``E``.

        The first ``posterior_configs_T`` configurations of T are the posterior's, the next
        ``encoder_configs_T`` the encoder's (see :func:`agglib.dataset.plan.make_plan`)."""
        if self.identity.get("design") != "continuous":
            raise ValueError(f"{self.path} is a grid dataset; roles exist only in continuous ones")
        n_post = int(self.identity["profile"]["posterior_configs_T"])
        t_rows = self.indices("T")
        ids = self.config_id[t_rows]
        return {"posterior": t_rows[ids < n_post], "encoder": t_rows[ids >= n_post], "E": self.indices("E")}

    def identity_sha256(self) -> str:
        """SHA-256 of the store's identity (profile, seed, design, STEM settings, table hash):
        what trained networks record to name the data they learnt from."""
        import hashlib

        return hashlib.sha256(json.dumps(self.identity, sort_keys=True).encode()).hexdigest()

    def size_on_disk(self) -> int:
        """Bytes used by the store's files."""
        return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())

    def summary(self) -> dict:
        n_t = int(np.sum(self.split == 0))
        return {"path": str(self.path), "samples": len(self), "T": n_t, "E": len(self) - n_t,
                "configurations": int(self.configs.shape[0]), "image_size_px": int(self.images.shape[1]),
                "pixel_size_nm": self.pixel_size_nm, "MB": round(self.size_on_disk() / 1e6, 1)}

    def __repr__(self) -> str:
        return f"DatasetStore({json.dumps(self.summary())})"


def open_store(path) -> DatasetStore:
    """A finished dataset store, for reading."""
    return DatasetStore(path)
