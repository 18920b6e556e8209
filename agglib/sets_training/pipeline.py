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
   head outputs and :func:`agglib.stem.acquisition.acquisition_statistics`;
4. its recalibration (:func:`agglib.sets_training.recalibration.fit_widening`) on the held-out
   configurations and the continuous dataset's E — configurations no gradient step saw.
   Calibration is checked on fresh simulations (notebook 6).

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

__all__ = ["train_sample_estimator", "encoder_config", "posterior_config", "cached_summaries", "OUT_OF_MODEL",
           "RECALIBRATION", "HELD_OUT_SHARE", "posterior_split", "recalibrate"]

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
    posterior reads them) or a :class:`~agglib.encoder.TrainedEncoder` (head outputs;
    ``statistics=True`` adds the statistics).

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
    return np.concatenate([found["summaries"], found["statistics"]], axis=1) if statistics else found["summaries"]


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
                           posterior_changes: dict | None = None, train: bool = True) -> SampleEstimator:
    """Train (or finish, or load) the new method's estimator of a profile.

    Parameters
    ----------
    profile : Profile
    grid_store, continuous_store : path-like or DatasetStore
        The profile's grid dataset (the encoder trains on its T) and continuous dataset (the
        posterior trains on its T; held-out configurations of it and its E recalibrate the posterior).
    run_dir : path-like
        Receives ``encoder/`` (training checkpoints), the cached summaries and ``sets/``.
    seed : int
    encoder_changes, posterior_changes : dict, optional
        Override :class:`EncoderConfig` / :class:`PosteriorConfig` fields.
    train : bool
        False: only load a finished estimator of exactly these settings; raise
        :class:`agglib.sets_training.NotTrainedError` rather than train (or retrain) anything.

    Returns
    -------
    SampleEstimator or None
        None on the processes other than rank 0 of a ``torchrun`` launch: the encoder trains on
        all of them (:func:`agglib.sets_training.train_encoder`), the posterior on rank 0 alone.
    """
    run_dir = Path(run_dir)
    grid_store = grid_store if isinstance(grid_store, DatasetStore) else DatasetStore(grid_store)
    continuous_store = continuous_store if isinstance(continuous_store, DatasetStore) else DatasetStore(continuous_store)
    if continuous_store.identity.get("design") != "continuous":
        raise ValueError(f"{continuous_store.path} is a {continuous_store.identity.get('design', 'grid')} dataset; "
                         "the posterior trains on a continuous one (build_dataset(..., design='continuous'))")
    enc_config = encoder_config(profile, seed, **(encoder_changes or {}))
    if train and profile.encoder_bf16 and not enc_config.bf16 and "bf16" not in (encoder_changes or {}) \
            and not (run_dir / "encoder" / "encoder.pt").is_file() and DistEnv.from_env().is_main:
        print(f"agglib: the {profile.name} profile trains the encoder under bfloat16 autocast where it is fast; this "
              f"device ({pick_device(enc_config.device)}) has no fast bf16, so it trains in float32 (its weights "
              "are not those of a bf16 run: not the shipped estimator's)", file=sys.stderr)
    post_config = posterior_config(profile, seed, **(posterior_changes or {}))
    roles = continuous_store.continuous_roles()
    extra = [(continuous_store, roles["encoder"])] if roles["encoder"].size else []
    train_encoder(grid_store.path, enc_config, run_dir / "encoder", show_progress_bars=show_progress_bars,
                  extra_training=extra, train=train)
    if not DistEnv.from_env().is_main:          # under torchrun the encoder trains on every process; rank 0 goes on
        return None
    encoder = TrainedEncoder.load(run_dir / "encoder" / "encoder.pt")
    grid = ThetaGrid.from_profile(profile)
    from agglib.estimate import INPUTS_WITH_STATISTICS, POSTERIOR_FAMILY
    from agglib.stem.acquisition import ACQUISITION_STATISTICS

    n_heads = int(encoder.model.heads.out_features)
    meta = {"kind": "set_posterior", "agglib": agglib.__version__, "in_dim": n_heads + len(ACQUISITION_STATISTICS),
            "hidden": post_config.hidden, "components": post_config.components, "members": post_config.members,
            "family": POSTERIOR_FAMILY, "inputs": INPUTS_WITH_STATISTICS, "held_out_for_recalibration": HELD_OUT_SHARE,
            "grid": grid.to_dict(), "out_of_model": OUT_OF_MODEL,
            "train_config": asdict(post_config), "continuous_dataset_sha256": continuous_store.identity_sha256(),
            "profile": profile.name, "method": "sets"}
    out = run_dir / "sets"
    if (out / "posterior.pt").is_file():
        try:
            found = SampleEstimator.load(out)
        except CheckpointError as err:            # never overwrite what cannot be read: it may not be ours
            raise CheckpointError(f"{out} holds an estimator that cannot be read ({err}); it is left as it is: "
                                  "move it away (or delete it) to train again") from None
        if found is not None and all(found.metadata.get(k) == v for k, v in meta.items() if k != "agglib") \
                and weights_digest(found.encoder.model.state_dict()) == weights_digest(encoder.model.state_dict()):
            if found.metadata.get("recalibration") == RECALIBRATION:
                return found
            # trained before this recalibration: recalibrate only (no gradient step: also with train=False)
            return recalibrate(found, continuous_store, run_dir, seed, out, show_progress_bars=show_progress_bars)
    if not train:
        from agglib.sets_training._contracts import NotTrainedError

        raise NotTrainedError(f"no set-level posterior of these settings in {out}")
    summaries = cached_summaries(encoder, continuous_store, run_dir, statistics=True,
                                 show_progress_bars=show_progress_bars)
    t_idx, _ = posterior_split(continuous_store, seed)
    model, history = train_posterior_ensemble(summaries[t_idx], continuous_store.theta[t_idx], continuous_store.config_id[t_idx],
                                     grid, post_config, show_progress_bars=show_progress_bars)
    all_t = roles["posterior"]                  # the out-of-model reference: every posterior configuration
    largest = int(np.unique(continuous_store.config_id[all_t], return_counts=True)[1].max())
    reference = SummaryReference.fit(summaries[all_t, :n_heads], continuous_store.config_id[all_t], seed=seed,
                                     max_images=min(post_config.max_images, largest), level=OUT_OF_MODEL["level"],
                                     feature_name=OUT_OF_MODEL["features"])
    estimator = SampleEstimator(encoder, model, grid, {**meta, "history": history,
                                                       "out_of_model_reference": reference.to_dict()})
    return recalibrate(estimator, continuous_store, run_dir, seed, out, show_progress_bars=show_progress_bars)


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


def recalibrate(estimator: SampleEstimator, continuous_store: DatasetStore, run_dir, seed: int, out, *,
                show_progress_bars: bool | None = None) -> SampleEstimator:
    """Fit ``estimator``'s widening on configurations of ``continuous_store`` that no gradient step
    saw (those :func:`posterior_split` holds out and E), record it (``widening``,
    ``recalibration``, ``widening_fit``: the fitted factors per M) and save the estimator to
    ``out``; returns it as loaded from there."""
    summaries = cached_summaries(estimator, continuous_store, run_dir, show_progress_bars=show_progress_bars)
    held = np.concatenate([posterior_split(continuous_store, seed)[1], continuous_store.continuous_roles()["E"]])
    law, table = fit_widening(estimator, summaries[held], continuous_store.theta[held],
                              continuous_store.config_id[held], seed=seed)
    fit = table.reset_index().round(4).to_dict(orient="records")
    done = SampleEstimator(estimator.encoder, estimator.posterior, estimator.grid,
                           {**estimator.metadata, "widening": law.to_dict(), "recalibration": RECALIBRATION,
                            "widening_fit": fit})
    done.save(out, overwrite=True)
    return SampleEstimator.load(out)
