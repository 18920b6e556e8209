"""Building a dataset with Dask distributed: shards, resumable, deterministic (paper §2.3).

``build_dataset(path, profile, seed)`` creates the store and its plan (θ, split and seed of
every sample), then hands shards of consecutive samples to Dask workers. A shard writes its
images, descriptors and particles, then marks itself done; the build ends by consolidating the
particles into flat arrays. Killing the build at any moment (``kill -9`` included) loses at
most the shards in flight: running the same command again recomputes exactly those, with the
same seeds, so the result equals an uninterrupted build.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np

import agglib
from agglib.core.files import atomic_write_text
from agglib.dataset.plan import make_plan
from agglib.dataset.store import FORMAT, DatasetStore, check_identity, image_compressor
from agglib.descriptors import DESCRIPTOR_NAMES
from agglib.profiles import Profile, load_profile
from agglib.stem.acquisition import ACQUISITION_KEYS

__all__ = ["build_dataset", "sample_identity", "generate_sample"]

log = logging.getLogger(__name__)


def stem_settings_for(profile: Profile):
    """The STEM settings of a profile's images (paper defaults, the profile's size and pixel)."""
    from agglib.stem import StemSettings

    return StemSettings(image_size_px=profile.image_size_px, pixel_size_nm=profile.pixel_size_nm,
                        dose_e_per_A2=profile.dose_e_per_A2)


def sample_identity(profile: Profile, seed: int, design: str = "grid") -> dict:
    """What defines a dataset's content; stored in ``attrs['identity']``."""
    from agglib.stem import load_reference_table

    identity = {"format": FORMAT, "agglib": agglib.__version__, "profile_name": profile.name,
                "profile": profile.dataset_fields(design), "seed": int(seed),
            "stem_settings": stem_settings_for(profile).to_dict(),
                "haadf_table_sha256": load_reference_table().sha256()}
    if design != "grid":                      # grid stores keep the identity they always had
        identity["design"] = design
    if profile.acquisition == "randomised":
        from agglib.stem.acquisition import AcquisitionRanges

        identity["acquisition_ranges"] = AcquisitionRanges().to_dict()
        if design == "continuous":           # a sample's images share one microscope session
            identity["acquisition_scope"] = "configuration"
    return identity


def particles_of(identity: dict):
    """The :class:`agglib.model.ParticleModel` of a store (the paper's when its profile names none:
    :meth:`agglib.Profile.dataset_fields` leaves the paper's out, so those stores keep their identity)."""
    from agglib.model.particles import ParticleModel

    return ParticleModel.from_dict(identity.get("profile", {}).get("particles"))


def configuration_acquisition(dataset_seed: int, config_id: int, ranges) -> dict:
    """The acquisition shared by every image of configuration ``config_id`` of a store
    (``acquisition_scope = "configuration"``): a function of the dataset's seed and the
    configuration alone, so any shard draws the same one."""
    from agglib.stem.acquisition import draw_acquisition

    return draw_acquisition(np.random.default_rng([int(dataset_seed), 2, int(config_id)]), ranges)


def _acquisition_ranges(identity: dict):
    """The store's randomised acquisition ranges (``None``: the paper's fixed acquisition)."""
    from agglib.stem.acquisition import AcquisitionRanges

    ranges = identity.get("acquisition_ranges")
    return None if ranges is None else AcquisitionRanges.from_dict(ranges)


def generate_sample(theta, sample_seed: int, settings, acquisition_ranges=None, acquisition: dict | None = None,
                    particles=None):
    """Aggregate, image [counts] and descriptors of one sample, from its seed alone.

    With ``acquisition`` (a dict of :data:`agglib.stem.acquisition.ACQUISITION_KEYS`) the image
    is recorded with it; else, with ``acquisition_ranges``
    (:class:`agglib.stem.acquisition.AcquisitionRanges`), with an acquisition drawn for this image
    from them. The acquisition used is returned as a fourth item (``None``: the simulator's own
    settings). The shot and scan noise always come from the sample's seed. ``particles``
    (:class:`agglib.model.ParticleModel`, default the paper's) are the model's particles.
    """
    from agglib.model.particles import PAPER_PARTICLES
    from agglib.stem import render_stem
    from agglib.stem.acquisition import acquire_image, draw_acquisition

    agg_seed, image_seed = np.random.SeedSequence(int(sample_seed)).spawn(2)
    agg = agglib.generate_aggregate(agglib.ModelParams(*map(float, theta)), seed=agg_seed,
                                    particles=particles or PAPER_PARTICLES)
    if acquisition is None and acquisition_ranges is None:
        image = render_stem(agg, seed=image_seed, settings=settings)
    else:
        rng = np.random.default_rng(image_seed)
        if acquisition is None:
            acquisition = draw_acquisition(rng, acquisition_ranges)
        image = acquire_image(agg, settings, acquisition, seed=rng)
    d = agglib.describe(agg)
    return agg, image, np.array([d[k] for k in DESCRIPTOR_NAMES], dtype=np.float64), acquisition


def _build_shard(path: str, shard: int, start: int, stop: int) -> int:
    """Dask task: compute samples [start, stop) and write them; returns the shard number."""
    import warnings

    import zarr

    from agglib.stem import ExtrapolationWarning, StemSettings

    root = zarr.open_group(path, mode="r+")
    identity = root.attrs["identity"]
    settings = StemSettings(**identity["stem_settings"])
    ranges = _acquisition_ranges(identity)
    shared = identity.get("acquisition_scope") == "configuration"
    particles = particles_of(identity)
    theta = root["theta"][start:stop]
    seeds = root["sample_seed"][start:stop]
    configs = root["config_id"][start:stop]
    images = np.empty((stop - start, settings.image_size_px, settings.image_size_px),
                      dtype=np.uint32 if ranges is None else np.float32)
    acquisitions = np.empty((stop - start, len(ACQUISITION_KEYS)))
    descriptors = np.empty((stop - start, len(DESCRIPTOR_NAMES)))
    positions, radii, labels, counts = [], [], [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExtrapolationWarning)   # rare > 60 nm chords; see the book
        for k in range(stop - start):
            fixed = configuration_acquisition(identity["seed"], configs[k], ranges) if shared else None
            agg, image, desc, acquisition = generate_sample(theta[k], seeds[k], settings, ranges, fixed, particles)
            images[k] = image
            if acquisition is not None:
                acquisitions[k] = [acquisition[key] for key in ACQUISITION_KEYS]
            descriptors[k] = desc
            positions.append(agg.positions)
            radii.append(agg.radii)
            labels.append(agg.labels.astype(np.uint8))
            counts.append(agg.n_particles)
    root["images"][start:stop] = images          # one chunk per image: shards never share a chunk
    if ranges is not None:
        root["acquisition"][start:stop] = acquisitions
    group = root.require_group(f"shards/{shard:06d}")
    for name, data in (("positions", np.concatenate(positions)), ("radii", np.concatenate(radii)),
                       ("labels", np.concatenate(labels)), ("counts", np.array(counts, dtype=np.int64)),
                       ("descriptors", descriptors)):
        arr = group.create_array(name, shape=data.shape, dtype=data.dtype, overwrite=True)
        arr[...] = data
    root["build/done"][shard] = 1          # written last: the shard is complete
    return shard


def _is_build_report(path: Path) -> bool | None:
    """``None``: no such file; True: a build report agglib wrote; False: another file."""
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        return data.get("written_by") == "agglib dataset build" or {"seconds", "computed_shards", "shard_size"} <= set(data)
    except (OSError, ValueError, AttributeError):
        return False


def _create_store(path: Path, profile: Profile, seed: int, identity: dict, shard_size: int):
    import zarr

    plan = make_plan(profile, seed, identity.get("design", "grid"))
    n, size = plan.n_samples, profile.image_size_px
    root = zarr.open_group(str(path), mode="w")
    randomised = _acquisition_ranges(identity) is not None
    root.create_array("images", shape=(n, size, size), chunks=(1, size, size),
                      dtype="float32" if randomised else "uint32", compressors=image_compressor(), fill_value=0)
    if randomised:                             # each sample's acquisition, in ACQUISITION_KEYS order
        k = len(ACQUISITION_KEYS)            # chunks = shards: a shard never writes into another's chunk
        root.create_array("acquisition", shape=(n, k), chunks=(max(1, shard_size), k), dtype="float64",
                          fill_value=0.0)
    for name, data in (("theta", plan.theta), ("config_id", plan.config_id), ("configs", plan.configs),
                       ("split", plan.split), ("sample_seed", plan.sample_seed)):
        arr = root.create_array(name, shape=data.shape, dtype=data.dtype)
        arr[...] = data
    n_shards = -(-n // shard_size)
    root.create_array("build/done", shape=(n_shards,), chunks=(1,), dtype="uint8", fill_value=0)
    root.require_group("shards")
    root.attrs.update({"identity": identity, "descriptor_names": list(DESCRIPTOR_NAMES),
                       "build": {"shard_size": shard_size}, "complete": False})
    return root


def _consolidate(root) -> None:
    """Descriptors and flat particle arrays + offsets from the shards; then mark complete and
    drop the shards (so nothing in the store depends on how the work was split)."""
    shards = sorted(root["shards"].group_keys())
    parts = {k: [] for k in ("positions", "radii", "labels", "counts", "descriptors")}
    for s in shards:
        g = root[f"shards/{s}"]
        for k in parts:
            parts[k].append(g[k][...])
    counts = np.concatenate(parts["counts"])
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    if offsets.size != root["theta"].shape[0] + 1:
        raise RuntimeError("particle shards do not cover every sample; rerun the build")
    desc = np.concatenate(parts["descriptors"])
    arr = root.create_array("descriptors", shape=desc.shape, dtype=desc.dtype, overwrite=True)
    arr[...] = desc
    particles = root.require_group("particles")
    for name, data in (("offsets", offsets), ("positions", np.concatenate(parts["positions"])),
                       ("radii", np.concatenate(parts["radii"])), ("labels", np.concatenate(parts["labels"]))):
        arr = particles.create_array(name, shape=data.shape, dtype=data.dtype, overwrite=True)
        arr[...] = data
    attrs = dict(root.attrs)
    attrs.pop("build", None)
    attrs["complete"] = True
    root.attrs.put(attrs)
    _remove_build_state(root)


def _remove_build_state(root) -> None:
    import shutil

    base = Path(str(root.store.root))
    for name in ("shards", "build"):
        if (base / name).exists():
            shutil.rmtree(base / name)


def _client(workers: int, scheduler: str | None):
    from dask.distributed import Client, LocalCluster

    if scheduler:
        return Client(scheduler), None
    try:
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                               dashboard_address=":0", silence_logs=logging.ERROR)
    except RuntimeError as err:               # e.g. "Nanny failed to start": a script without a main guard
        raise RuntimeError(f"the {workers} Dask worker processes could not start ({err}). In a script, call "
                           "build_dataset under `if __name__ == \"__main__\":` (worker processes re-import "
                           "the script), or pass workers=1 to build in this process") from None
    return Client(cluster), cluster


def build_dataset(path, profile: str | Profile | None = None, seed: int = 0, *,
                  workers: int | None = None, scheduler: str | None = None,
                  shard_size: int | None = None, show_progress_bars: bool | None = None,
                  design: str = "grid", **overrides) -> DatasetStore:
    """Build (or finish building) the dataset of ``profile`` at ``path``.

    Parameters
    ----------
    path : path-like
        Store directory (created; an unfinished store of the same profile and seed is resumed).
    profile : str or Profile
        ``"tiny"``, ``"quick"``, ``"paper"`` or a Profile; ``overrides`` change its fields.
    seed : int
        Root seed: the same seed gives a bit-identical store.
    workers : int, optional
        Dask worker processes of the local cluster (default: ``config['workers']`` or all cores);
        1 builds in this process, without a cluster (the store is the same for any number).
    scheduler : str, optional
        Address of a running Dask scheduler (``tcp://host:8786``), e.g. one started by
        dask-jobqueue on a SLURM cluster; then ``workers`` is ignored.
    shard_size : int, optional
        Samples per task (default: the profile's).
    show_progress_bars : bool, optional
    design : {"grid", "continuous"}
        The paper's grid of configurations, or θ drawn continuously (see
        :func:`agglib.dataset.plan.make_plan`; the new method trains its posterior on those).

    Returns
    -------
    DatasetStore
    """
    import zarr
    from dask.distributed import as_completed
    from tqdm.auto import tqdm

    from agglib.core.parallel import resolve_workers

    prof = profile if isinstance(profile, Profile) else load_profile(profile, **overrides)
    if isinstance(profile, Profile) and overrides:
        from dataclasses import replace
        prof = replace(profile, **overrides)
    shard_size = int(shard_size or prof.shard_size)
    path = Path(path)
    identity = sample_identity(prof, seed, design)
    start_time = time.perf_counter()
    if (path / "zarr.json").is_file():
        root = zarr.open_group(str(path), mode="r+")
        check_identity(dict(root.attrs).get("identity", {}), identity, path)
        if root.attrs.get("complete"):
            _remove_build_state(root)
            store = DatasetStore(path)
            s = store.summary()
            print(f"dataset {path.name} is already complete: {s['samples']} samples (T {s['T']}, E {s['E']}, "
                  f"{s['configurations']} configurations, {s['MB']} MB)")
            return store
        shard_size = int(root.attrs["build"]["shard_size"])    # resume with the original shards
        for partial in path.rglob("*.partial"):              # zarr's temporary files of a killed write
            partial.unlink()
    else:
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            from agglib.core.files import OutputFolderError

            raise OutputFolderError(f"{path} exists and is not a dataset store (no zarr.json); agglib creates a "
                                    "store only in a new or empty folder: choose another path")
        root = _create_store(path, prof, seed, identity, shard_size)
    n = root["theta"].shape[0]
    done = root["build/done"][...]
    todo = [s for s in range(done.size) if not done[s]]
    show = agglib.config.get("progress_bars") if show_progress_bars is None else show_progress_bars
    workers = resolve_workers(workers)
    with tqdm(total=n, initial=n - sum(min(shard_size, n - s * shard_size) for s in todo),
              desc=f"dataset {prof.name}", unit="sample", disable=not show) as bar:
        if todo and workers == 1 and not scheduler:          # in this process: no cluster to start
            for s in todo:
                _build_shard(str(path), s, s * shard_size, min(n, (s + 1) * shard_size))
                bar.update(min(shard_size, n - s * shard_size))
        elif todo:
            client, cluster = _client(workers, scheduler)
            try:
                futures = [client.submit(_build_shard, str(path), s, s * shard_size,
                                         min(n, (s + 1) * shard_size), pure=False, key=f"shard-{s}-{os.getpid()}")
                           for s in todo]
                for future in as_completed(futures):
                    s = future.result()
                    bar.update(min(shard_size, n - s * shard_size))
            finally:
                client.close()
                if cluster is not None:
                    cluster.close()
    _consolidate(zarr.open_group(str(path), mode="r+"))
    store = DatasetStore(path)
    elapsed = time.perf_counter() - start_time
    summary = store.summary()
    report = path.parent / (path.name + ".build.json")
    if _is_build_report(report) is not False:      # a file of that name agglib did not write is left alone
        atomic_write_text(report, json.dumps({"written_by": "agglib dataset build", **summary,
                                              "seconds": round(elapsed, 1), "workers": workers,
                                              "scheduler": scheduler, "shard_size": shard_size,
                                              "computed_shards": len(todo)}, indent=1))
    else:
        log.warning("%s exists and was not written by agglib: the build report is not written", report)
    print(f"dataset {prof.name}: {summary['samples']} samples (T {summary['T']}, E {summary['E']}, "
          f"{summary['configurations']} configurations) in {elapsed:.0f} s → {path.name} ({summary['MB']} MB)")
    return store
