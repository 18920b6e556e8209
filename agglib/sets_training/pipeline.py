"""The new method end to end for a profile: encoder, cached summaries, posterior.

:func:`train_sample_estimator` is what notebook 04 (and ``agglib train --method sets``) runs:

1. the image encoder on the grid dataset's T and the ``encoder`` part of the continuous dataset's
   T (:func:`agglib.sets_training.train_encoder`, resumable);
2. the per-image summaries of the other images of the continuous dataset — the encoder's head
   outputs and the images' acquisition statistics — computed once and cached in the run folder
   (``summaries-<store>.npz``, keyed by the encoder's weights and the store; ``statistics-<store>.npz``,
   keyed by the store, the encoder's beam and the statistics' version: :func:`cached_summaries`);
3. the set-level posterior on the ``posterior`` part of the continuous dataset's T
   (:func:`agglib.sets_training.train_posterior`) — configurations and images the encoder never saw —
   less a fifth of its configurations (:func:`posterior_split`), held out; it reads each image's
   head outputs and :func:`agglib.stem.acquisition.acquisition_statistics`. A profile may give
   it more configurations (``posterior_datasets``: further continuous datasets, seeds ``seed + 1``
   …) and the sample's intensity scale and WO3/TiO2 contrast as inputs where a user knows them
   (``posterior_acquisition_input``: every training configuration is read twice, with its
   recorded acquisition and with it marked unknown — one network for both uses;
   :func:`agglib.estimate.known_acquisition_columns`);
4. its recalibration (:func:`agglib.sets_training.recalibration.fit_widening`) on the held-out
   configurations and the continuous datasets' E — configurations no gradient step saw; one
   law for each use (acquisition unknown, given). Calibration is checked on fresh simulations
   (notebook 6).

:func:`train_set_posterior` does steps 2–4 on a trained encoder (``agglib train-estimator
--encoder``: a posterior retrained on a shipped estimator's encoder).

The result is written to ``<run_dir>/sets/`` (``encoder.pt``, ``posterior.pt``) and loads with
:meth:`agglib.estimate.SampleEstimator.load`.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
import sys

import numpy as np

import agglib
from agglib.checkpoint import CheckpointError, weights_digest
from agglib.core.distributed import DistEnv, pick_device
from agglib.core.files import atomic_open
from agglib.dataset.store import DatasetStore
from agglib.encoder import TrainedEncoder
from agglib.estimate import SampleEstimator
from agglib.misspecification import SummaryReference
from agglib.posterior import ThetaGrid
from agglib.sets_training._contracts import EncoderConfig, PosteriorConfig
from agglib.sets_training.encoder import train_encoder
from agglib.sets_training.posterior import train_posterior_ensemble
from agglib.sets_training.recalibration import SETS_PER_CONFIG, WIDENING_SIZES, WIDTH_OBJECTIVE, fit_widening

__all__ = ["train_sample_estimator", "train_set_posterior", "continuous_stores", "encoder_config", "posterior_config",
           "cached_summaries", "OUT_OF_MODEL", "RECALIBRATION", "HELD_OUT_SHARE", "posterior_split", "recalibrate"]

#: The out-of-model check fitted with every posterior (:class:`agglib.misspecification.SummaryReference`
#: on the encoder's head outputs of the posterior's training images: in-model samples of the
#: estimator's own prior and acquisition). ``level``: the share of in-model samples it lets pass.
OUT_OF_MODEL = {"features": "encoder head outputs", "level": 0.99}
#: Share of the posterior's training configurations held out for its recalibration (:func:`posterior_split`).
HELD_OUT_SHARE = 0.2
#: How every posterior is recalibrated (:func:`agglib.sets_training.recalibration.fit_widening`).
RECALIBRATION = {"on": f"{HELD_OUT_SHARE:.0%} of the continuous dataset's posterior configurations, held out, and its E",
                 "objective": {"width": WIDTH_OBJECTIVE, "temperature": "negative log probability of the true (θ0, θ1)"},
                 "sizes": list(WIDENING_SIZES), "sets_per_config": SETS_PER_CONFIG,
                 "factors": "per parameter, widening or narrowing; widths fitted on the tempered posterior"}



def encoder_config(profile, seed: int = 0, **changes) -> EncoderConfig:
    """The encoder settings of a profile. Its ``encoder_bf16`` asks for bfloat16 autocast where it
    is fast (:func:`agglib.core.distributed.fast_bfloat16` of the device): on a CPU without fast
    bf16 the encoder trains in float32 (``changes`` may set ``bf16`` either way)."""
    from agglib.core.distributed import fast_bfloat16

    if "bf16" not in changes:
        changes["bf16"] = bool(profile.encoder_bf16) and fast_bfloat16(changes.get("device", "auto"))
    return EncoderConfig(**{"epochs": profile.encoder_epochs, "lr": profile.encoder_lr, "seed": seed, **changes})


def posterior_config(profile, seed: int = 0, **changes) -> PosteriorConfig:
    """The set-posterior settings of a profile (set sizes up to 24 images)."""
    return PosteriorConfig(**{"steps": profile.posterior_steps, "seed": seed, "hidden": 64, **changes})


def cached_summaries(source, store: DatasetStore, cache_dir, *, statistics: bool | None = None,
                     show_progress_bars: bool | None = None) -> np.ndarray:
    """The per-image summaries (n, K) of the images of ``store``, computed once and cached: what
    :meth:`agglib.estimate.SampleEstimator.summaries` gives for them.

    ``source`` is a :class:`~agglib.estimate.SampleEstimator` (its encoder's head outputs, and the
    images' :meth:`~agglib.encoder.TrainedEncoder.acquisition_statistics` after them if its
    posterior reads them, and the known-acquisition columns marked unknown if it reads those:
    :meth:`~agglib.estimate.SampleEstimator.with_acquisition` sets them) or a
    :class:`~agglib.encoder.TrainedEncoder` (head outputs; ``statistics=True`` adds the statistics).

    Rows the encoder trained on (the ``encoder`` role of a continuous dataset) are not encoded
    and hold NaN. Two cache files in ``cache_dir``: ``summaries-<store>.npz`` (keyed by the
    encoder's weights digest and the store's identity) and ``statistics-<store>.npz`` (keyed by the
    store's identity, the encoder's beam and the statistics' version); what does not match is
    recomputed (in one pass over the images), never mixed.
    """
    from agglib.stem.acquisition import STATISTICS_VERSION

    encoder: TrainedEncoder = getattr(source, "encoder", source)
    if statistics is None:
        statistics = bool(getattr(source, "reads_statistics", False))
    store_id = store.identity_sha256()
    entries = {"summaries": {"encoder": weights_digest(encoder.model.state_dict()), "store": store_id}}
    if statistics:
        entries["statistics"] = {"store": store_id, "electrons_per_pixel": repr(float(encoder.electrons_per_pixel)),
                                 "statistics_version": str(STATISTICS_VERSION)}
    paths = {name: Path(cache_dir) / f"{name}-{store.path.name}.npz" for name in entries}
    found = {name: _read_cached(paths[name], name, key) for name, key in entries.items()}
    missing = [name for name, values in found.items() if values is None]
    if missing:
        show = agglib.config.get("progress_bars") if show_progress_bars is None else show_progress_bars
        for name, values in _image_summaries(encoder, store, missing, show).items():
            with atomic_open(paths[name], "wb") as fh:
                np.savez(fh, **{name: values}, **entries[name])
            found[name] = values
    out = np.concatenate([found["summaries"], found["statistics"]], axis=1) if statistics else found["summaries"]
    if getattr(source, "reads_acquisition", False):     # as SampleEstimator.summaries: the acquisition unknown
        from agglib.estimate import known_acquisition_columns

        out = np.concatenate([out, known_acquisition_columns(None, out.shape[0])], axis=1)
    return out


def _read_cached(path: Path, name: str, key: dict) -> np.ndarray | None:
    """Array ``name`` of cache file ``path`` if every entry of ``key`` matches, else None."""
    if not path.is_file():
        return None
    with np.load(path) as cached:
        if name in cached.files and all(k in cached.files and str(cached[k]) == v for k, v in key.items()):
            return cached[name]
    return None


def _image_summaries(encoder: TrainedEncoder, store: DatasetStore, names, show: bool) -> dict:
    """Head outputs (``"summaries"``) and/or ``"statistics"`` of every image of ``store`` the
    encoder did not train on (the rest NaN), in one pass over the images."""
    from agglib.stem.acquisition import ACQUISITION_STATISTICS

    rows = np.arange(len(store))
    if store.identity.get("design") == "continuous":
        rows = np.setdiff1d(rows, store.continuous_roles()["encoder"])
    widths = {"summaries": encoder.model.heads.out_features, "statistics": len(ACQUISITION_STATISTICS)}
    out = {name: np.full((len(store), widths[name]), np.nan, dtype=np.float32) for name in names}
    chunk = 2048
    for k in _progress(range(0, rows.size, chunk), show, f"summaries of {store.path.name}"):
        part = rows[k:k + chunk]
        images = store.read_images(part)
        if "summaries" in out:
            out["summaries"][part] = encoder.encode(images, show_progress_bars=False).outputs
        if "statistics" in out:
            out["statistics"][part] = encoder.acquisition_statistics(images)
    return out


def _progress(iterable, show, desc):
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, disable=not show)


def train_sample_estimator(profile, grid_store, continuous_store, run_dir, seed: int = 0, *,
                           show_progress_bars: bool | None = None, encoder_changes: dict | None = None,
                           posterior_changes: dict | None = None, train: bool = True,
                           encoder=None) -> SampleEstimator:
    """Train (or finish, or load) the new method's estimator of a profile.

    Parameters
    ----------
    profile : Profile
    grid_store : path-like or DatasetStore
        The profile's grid dataset (the encoder trains on its T).
    continuous_store : path-like or DatasetStore, or a sequence of them
        The profile's continuous dataset (the posterior trains on its T; held-out configurations
        of it and its E recalibrate the posterior) — ``profile.posterior_datasets`` of them (seeds
        ``seed``, ``seed + 1`` …), the encoder reading the first's ``encoder`` role.
    run_dir : path-like
        Receives ``encoder/`` (training checkpoints), the cached summaries and ``sets/``.
    seed : int
    encoder_changes, posterior_changes : dict, optional
        Override :class:`EncoderConfig` / :class:`PosteriorConfig` fields.
    train : bool
        False: only load a finished estimator of exactly these settings; raise
        :class:`agglib.sets_training.NotTrainedError` rather than train (or retrain) anything.
    encoder : path-like, optional
        A trained encoder (``encoder.pt`` of an estimator) to train the posterior on instead of
        training one (``grid_store`` is then not read): a posterior retrained on the encoder of a
        shipped estimator.

    Returns
    -------
    SampleEstimator or None
        None on the processes other than rank 0 of a ``torchrun`` launch: the encoder trains on
        all of them (:func:`agglib.sets_training.train_encoder`), the posterior on rank 0 alone.
    """
    run_dir = Path(run_dir)
    stores = continuous_stores(profile, continuous_store)
    if encoder is None:
        grid_store = grid_store if isinstance(grid_store, DatasetStore) else DatasetStore(grid_store)
        enc_config = encoder_config(profile, seed, **(encoder_changes or {}))
        if train and profile.encoder_bf16 and not enc_config.bf16 and "bf16" not in (encoder_changes or {}) \
                and not (run_dir / "encoder" / "encoder.pt").is_file() and DistEnv.from_env().is_main:
            print(f"agglib: the {profile.name} profile trains the encoder under bfloat16 autocast where it is fast; "
                  f"this device ({pick_device(enc_config.device)}) has no fast bf16, so it trains in float32 (its "
                  "weights are not those of a bf16 run: not the shipped estimator's)", file=sys.stderr)
        roles = stores[0].continuous_roles()
        extra = [(stores[0], roles["encoder"])] if roles["encoder"].size else []
        train_encoder(grid_store.path, enc_config, run_dir / "encoder", show_progress_bars=show_progress_bars,
                      extra_training=extra, train=train)
        if not DistEnv.from_env().is_main:      # under torchrun the encoder trains on every process; rank 0 goes on
            return None
        encoder = run_dir / "encoder" / "encoder.pt"
    if not DistEnv.from_env().is_main:          # the posterior trains on rank 0 alone
        return None
    encoder = encoder if isinstance(encoder, TrainedEncoder) else TrainedEncoder.load(encoder)
    return train_set_posterior(profile, encoder, stores, run_dir, seed, show_progress_bars=show_progress_bars,
                               posterior_changes=posterior_changes, train=train)


def continuous_stores(profile, continuous_store) -> list:
    """The continuous datasets the posterior trains on, opened: ``continuous_store`` (one, or a
    sequence of ``profile.posterior_datasets``) checked for design and number."""
    given = [continuous_store] if isinstance(continuous_store, (str, Path, DatasetStore)) else list(continuous_store)
    stores = [s if isinstance(s, DatasetStore) else DatasetStore(s) for s in given]
    for store in stores:
        if store.identity.get("design") != "continuous":
            raise ValueError(f"{store.path} is a {store.identity.get('design', 'grid')} dataset; "
                             "the posterior trains on a continuous one (build_dataset(..., design='continuous'))")
    if len(stores) != profile.posterior_datasets:
        raise ValueError(f"{len(stores)} continuous datasets given ({', '.join(str(s.path) for s in stores)}); the "
                         f"{profile.name} profile's posterior trains on posterior_datasets={profile.posterior_datasets} "
                         "(seeds seed, seed + 1, …)")
    if len({s.identity_sha256() for s in stores}) != len(stores):
        raise ValueError("the continuous datasets given are the same dataset twice: build them with different seeds")
    return stores


def _posterior_metadata(profile, encoder: TrainedEncoder, stores, post_config: PosteriorConfig, grid) -> dict:
    """What defines a trained posterior (a finished one with other values is trained again)."""
    from agglib.estimate import (INPUTS_WITH_ACQUISITION, INPUTS_WITH_STATISTICS, POSTERIOR_FAMILY,
                                 known_acquisition_columns)
    from agglib.stem.acquisition import ACQUISITION_STATISTICS

    known = bool(profile.posterior_acquisition_input)
    meta = {"kind": "set_posterior", "agglib": agglib.__version__,
            "in_dim": int(encoder.model.heads.out_features) + len(ACQUISITION_STATISTICS)
                  + (known_acquisition_columns(None, 0).shape[1] if known else 0),
            "hidden": post_config.hidden, "components": post_config.components, "members": post_config.members,
            "family": POSTERIOR_FAMILY, "inputs": INPUTS_WITH_ACQUISITION if known else INPUTS_WITH_STATISTICS,
            "held_out_for_recalibration": HELD_OUT_SHARE,
            "grid": grid.to_dict(), "out_of_model": OUT_OF_MODEL,
            "train_config": asdict(post_config), "continuous_dataset_sha256": stores[0].identity_sha256(),
            "profile": profile.name, "method": "sets"}
    if len(stores) > 1:
        meta["continuous_datasets_sha256"] = [s.identity_sha256() for s in stores]
    if known:                                   # the values a user may give: those the training samples had
        ranges = [s.identity.get("acquisition_ranges") for s in stores]
        if ranges[0] is None or any(r != ranges[0] for r in ranges):
            raise ValueError(f"a posterior that reads the known acquisition trains on randomised acquisitions of one "
                             f"set of ranges; the continuous datasets have {ranges}")
        meta["acquisition_ranges"] = ranges[0]
    return meta


def train_set_posterior(profile, encoder: TrainedEncoder, stores, run_dir, seed: int = 0, *,
                        show_progress_bars: bool | None = None, posterior_changes: dict | None = None,
                        train: bool = True) -> SampleEstimator:
    """Steps 2–4 of :func:`train_sample_estimator` on a trained ``encoder``: the cached summaries
    of the continuous datasets ``stores`` (:func:`continuous_stores`), the set posterior on their
    training configurations (each configuration twice — acquisition given, and marked unknown —
    for a profile with ``posterior_acquisition_input``), the out-of-model reference and the
    recalibration; saved to ``<run_dir>/sets/`` (or loaded from there when it holds exactly
    this estimator)."""
    run_dir = Path(run_dir)
    stores = continuous_stores(profile, stores)
    images = stores[0].stem_settings
    if (encoder.image_size_px, encoder.pixel_size_nm) != (images.image_size_px, images.pixel_size_nm):
        raise ValueError(f"the encoder reads {encoder.image_size_px}² px images at {encoder.pixel_size_nm:g} nm/px; "
                         f"{stores[0].path} holds {images.image_size_px}² px at {images.pixel_size_nm:g} nm/px: train "
                         "the posterior on datasets of the encoder's images")
    post_config = posterior_config(profile, seed, **(posterior_changes or {}))
    grid = ThetaGrid.from_profile(profile)
    meta = _posterior_metadata(profile, encoder, stores, post_config, grid)
    out = run_dir / "sets"
    if (out / "posterior.pt").is_file():
        try:
            found = SampleEstimator.load(out)
        except CheckpointError as err:            # never overwrite what cannot be read: it may not be ours
            raise CheckpointError(f"{out} holds an estimator that cannot be read ({err}); it is left as it is: "
                                  "move it away (or delete it) to train again") from None
        if found is not None and all(found.metadata.get(k) == v for k, v in meta.items() if k != "agglib") \
                and found.metadata.get("continuous_datasets_sha256") == meta.get("continuous_datasets_sha256") \
                and weights_digest(found.encoder.model.state_dict()) == weights_digest(encoder.model.state_dict()):
            if found.metadata.get("recalibration") == RECALIBRATION and \
                    (not found.reads_acquisition or "widening_known_acquisition" in found.metadata):
                return found
            # trained before this recalibration: recalibrate only (no gradient step: also with train=False)
            return recalibrate(found, stores, run_dir, seed, out, show_progress_bars=show_progress_bars)
    if not train:
        from agglib.sets_training._contracts import NotTrainedError

        raise NotTrainedError(f"no set-level posterior of these settings in {out}")
    n_heads = int(encoder.model.heads.out_features)
    read = [cached_summaries(encoder, store, run_dir, statistics=True, show_progress_bars=show_progress_bars)
            for store in stores]
    from agglib.estimate import INPUTS_WITH_ACQUISITION

    parts = [_posterior_rows(found, store, k, seed, meta["inputs"] == INPUTS_WITH_ACQUISITION)
             for k, (found, store) in enumerate(zip(read, stores))]
    summaries, theta, config_id, group = (np.concatenate([p[key] for p in parts])
                                          for key in ("summaries", "theta", "config_id", "group"))
    model, history = train_posterior_ensemble(summaries, theta, config_id, grid, post_config, groups=group,
                                              show_progress_bars=show_progress_bars)
    first = stores[0]                           # the out-of-model reference: every posterior configuration of the first
    all_t = first.continuous_roles()["posterior"]
    largest = int(np.unique(first.config_id[all_t], return_counts=True)[1].max())
    reference = SummaryReference.fit(read[0][all_t, :n_heads], first.config_id[all_t], seed=seed,
                                     max_images=min(post_config.max_images, largest), level=OUT_OF_MODEL["level"],
                                     feature_name=OUT_OF_MODEL["features"])
    estimator = SampleEstimator(encoder, model, grid, {**meta, "history": history,
                                                       "out_of_model_reference": reference.to_dict()})
    return recalibrate(estimator, stores, run_dir, seed, out, show_progress_bars=show_progress_bars)


#: Configuration ids of the k-th dataset (and of the copies with the acquisition marked unknown) are
#: offset by multiples of this, so that no two datasets' (or copies') configurations share an id.
_CONFIG_ID_OFFSET = 10 ** 7


def _dataset_ids(store: DatasetStore, rows: np.ndarray, k: int) -> np.ndarray:
    """Configuration ids of ``rows`` of the ``k``-th dataset, offset so that no two datasets (nor
    the copies of :func:`_posterior_rows`) share one."""
    ids = store.config_id[rows].astype(np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= _CONFIG_ID_OFFSET):
        raise ValueError(f"{store.path}: configuration ids {ids.min()} … {ids.max()} outside 0 … {_CONFIG_ID_OFFSET - 1}")
    return ids + 2 * k * _CONFIG_ID_OFFSET


def _posterior_rows(summaries: np.ndarray, store: DatasetStore, k: int, seed: int, reads_acquisition: bool) -> dict:
    """The training rows of dataset ``k`` (``summaries``, ``theta``, ``config_id``, ``group``) from
    its cached ``summaries``: its posterior configurations less those :func:`posterior_split` holds
    out; read with the acquisition known and again marked unknown where the posterior reads it —
    two configurations of one ``group``, held out of the gradient steps together (the same images
    and θ)."""
    rows, _ = posterior_split(store, seed)
    ids = _dataset_ids(store, rows, k)
    base = {"summaries": summaries[rows], "theta": store.theta[rows], "config_id": ids, "group": ids}
    if not reads_acquisition:
        return base
    known = _with_known(summaries, store, rows, known=True)
    unknown = _with_known(summaries, store, rows, known=False)
    return {"summaries": np.concatenate([known, unknown]), "theta": np.concatenate([base["theta"]] * 2),
            "config_id": np.concatenate([ids, ids + _CONFIG_ID_OFFSET]), "group": np.concatenate([ids, ids])}


def _with_known(summaries: np.ndarray, store: DatasetStore, rows: np.ndarray, known: bool) -> np.ndarray:
    """``summaries[rows]`` with the known-acquisition columns: the store's recorded acquisition of
    each row (``known``) or marked unknown."""
    from agglib.estimate import KNOWN_ACQUISITION, known_acquisition_columns
    from agglib.stem.acquisition import ACQUISITION_KEYS

    acquisition = None
    if known:
        recorded = store.acquisition
        if recorded is None:
            raise ValueError(f"{store.path} records no acquisitions (the paper's fixed acquisition): a posterior that "
                             "reads the known acquisition trains on a randomised one")
        if store.identity.get("acquisition_scope") != "configuration":
            raise ValueError(f"{store.path} draws an acquisition per image, not per sample: a sample's known "
                             "acquisition needs one shared by its images (build the dataset again with this agglib)")
        acquisition = {key: recorded[rows, ACQUISITION_KEYS.index(key)] for key in KNOWN_ACQUISITION}
    return np.concatenate([summaries[rows], known_acquisition_columns(acquisition, rows.size)], axis=1)


def posterior_split(continuous_store: DatasetStore, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows (train, held out) of the continuous dataset's ``posterior`` role: a share
    :data:`HELD_OUT_SHARE` of its configurations (drawn with ``seed``, at least one, never all)
    is held out of the posterior's training for its recalibration — configurations with as many
    images as the training ones (24 at the quick profile; E has 12), so the widening is fitted at
    every M the posterior is used for."""
    rows = continuous_store.continuous_roles()["posterior"]
    ids = np.unique(continuous_store.config_id[rows])
    held = np.random.default_rng([int(seed), 41]).random(ids.size) < HELD_OUT_SHARE
    if not held.any() and ids.size > 1:
        held[0] = True
    if held.all():
        held[-1] = False
    out = np.isin(continuous_store.config_id[rows], ids[held])
    return rows[~out], rows[out]


def recalibrate(estimator: SampleEstimator, continuous_store, run_dir, seed: int, out, *,
                show_progress_bars: bool | None = None) -> SampleEstimator:
    """Fit ``estimator``'s widening on configurations of the continuous dataset(s)
    ``continuous_store`` that no gradient step saw (those :func:`posterior_split` holds out and
    E), record it (``widening``, ``recalibration``, ``widening_fit``: the fitted factors per M; for
    a posterior that reads the known acquisition also ``widening_known_acquisition`` and
    ``widening_fit_known_acquisition``, fitted on the same configurations with it given) and save
    the estimator to ``out``; returns it as loaded from there."""
    stores = [continuous_store] if isinstance(continuous_store, DatasetStore) else list(continuous_store)
    parts = []
    for k, store in enumerate(stores):
        found = cached_summaries(estimator.encoder, store, run_dir, statistics=estimator.reads_statistics,
                                 show_progress_bars=show_progress_bars)
        parts.append((found, store, np.concatenate([posterior_split(store, seed)[1], store.continuous_roles()["E"]]), k))
    theta = np.concatenate([store.theta[held] for _, store, held, _ in parts])
    config_id = np.concatenate([_dataset_ids(store, held, k) for _, store, held, k in parts])
    modes = {"": False, "_known_acquisition": True} if estimator.reads_acquisition else {"": None}
    fitted = {}
    for suffix, known in modes.items():
        summaries = np.concatenate([found[held] if known is None else _with_known(found, store, held, known)
                                    for found, store, held, _ in parts])
        law, table = fit_widening(estimator, summaries, theta, config_id, seed=seed)
        fitted[f"widening{suffix}"] = law.to_dict()
        fitted[f"widening_fit{suffix}"] = table.reset_index().round(4).to_dict(orient="records")
    done = SampleEstimator(estimator.encoder, estimator.posterior, estimator.grid,
                           {**estimator.metadata, **fitted, "recalibration": RECALIBRATION})
    done.save(out, overwrite=True)
    return SampleEstimator.load(out)
