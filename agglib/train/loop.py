"""The training loop of the paper's networks: epochs, validation, checkpoints, resumption, DDP.

Model selection is honest: a validation split V — ``val_share`` (default 1/6) of T's parameter
configurations with all their T samples, drawn from the dataset's and the run's seed
(:func:`agglib.train.data.validation_split`) — is held out of T. The network trains on T∖V only;
after each epoch it is validated on V (``val_images`` of V, all of V after the last epoch; with
``bn_batches`` the BatchNorm statistics are first recomputed on T∖V), and ``best.pt`` is the epoch
with the lowest loss on V. The evaluation split E is never used for selection: after the last
epoch (or the epoch that ends a time budget) the best and the last weights are scored on all of
E, and that is recorded apart from the per-epoch history (``result["E"]``, ``E.json`` beside
``history.json``, and ``last.pt``), labelled as E. A run folder made with another ``val_share``,
or before V existed (its best epoch was chosen on E), is refused for resuming; such checkpoints
still load as estimators.

The settings of a run are :class:`agglib.train.TrainConfig`; the batches come from
:mod:`agglib.train.data`.
"""

from __future__ import annotations

from dataclasses import asdict, fields
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

import agglib
from agglib.checkpoint import PAPER_CHECKPOINT_FORMAT as CHECKPOINT_FORMAT
from agglib.checkpoint import read_torch_file
from agglib.checkpoint import save_paper_checkpoint as save_checkpoint
from agglib.core.distributed import DistEnv, cleanup_distributed, init_distributed, pick_device
from agglib.core.files import atomic_write_text
from agglib.dataset.store import DatasetStore
from agglib.nets import build_network, count_parameters
from agglib.preprocess import Preprocess
from agglib.train._contracts import PRETRAINED_FROM, TARGETS, TargetSpec, TrainConfig
from agglib.train.data import _Feed, _Labelled, descriptor_scaling, make_datasets, make_eval_dataset

__all__ = ["train_network", "train_for_profile", "train_estimator", "epoch_order", "evaluate",
           "recalibrate_batchnorm", "make_scheduler", "checkpoint_metadata", "dataset_hash",
           "default_num_workers", "init_features_from", "CHECKPOINT_FORMAT"]


def _write_history(checkpoint_dir: Path, history: list) -> None:
    """``history.json`` beside the checkpoints: one record per finished epoch (validation on V)."""
    atomic_write_text(checkpoint_dir / "history.json", json.dumps(history, indent=1))


def _write_scores_on_e(checkpoint_dir: Path, scores: dict) -> None:
    """``E.json`` beside the checkpoints: the best and the last weights scored on E (not used to choose)."""
    atomic_write_text(checkpoint_dir / "E.json", json.dumps(scores, indent=1))


def checkpoint_metadata(config: TrainConfig, store: DatasetStore, preprocess: Preprocess,
                        model: nn.Module, train_indices=None) -> dict:
    """What a checkpoint records about its run; ``train_indices``: the samples trained on (T∖V),
    over which the ``descriptors`` labels are standardised (default: T)."""
    settings = store.identity["stem_settings"]
    return {"format": CHECKPOINT_FORMAT, "agglib": agglib.__version__, "target": config.target,
            "arch": config.arch, "activation": config.spec.activation, "nu": config.group_size,
            "input_size": int(settings["image_size_px"]), "image_size_px": int(settings["image_size_px"]),
            "pixel_size_nm": float(settings["pixel_size_nm"]), "stem_settings": settings,
            "preprocess": preprocess.to_dict(), "profile": store.identity["profile_name"],
            "profile_fields": store.identity["profile"], "dataset_seed": store.identity["seed"],
            "dataset_sha256": dataset_hash(store), "train_config": asdict(config),
            "parameters": count_parameters(model), "outputs": model.head.outputs,
            "label_scaling": descriptor_scaling(store, train_indices) if config.spec.label == "descriptors"
            else None}


def dataset_hash(store: DatasetStore) -> str:
    """SHA-256 of a store's identity (:meth:`DatasetStore.identity_sha256`)."""
    return store.identity_sha256()


# ---------------------------------------------------------------------------- training

def _loss_fn(spec: TargetSpec):
    if spec.loss == "bce":
        return nn.BCEWithLogitsLoss()
    return nn.MSELoss()


def evaluate(model, batches, spec, preprocess: Preprocess) -> dict:
    """Loss and mean absolute error (accuracy for the classifier) over ``batches`` of
    ``(counts, labels, keys)`` (:meth:`_Feed.batches`); one read-back from the device at the end."""
    model.eval()
    loss_fn = _loss_fn(spec)
    core = model.module if hasattr(model, "module") else model
    total = abs_err = correct = None
    n = 0
    with torch.no_grad():
        for counts, y, _ in batches:
            x = preprocess(counts)
            if spec.loss == "bce":
                logits = core.logits(x).float()
                pred = torch.sigmoid(logits)
                loss = loss_fn(logits, y)
                right = ((pred > 0.5).float() == y).sum()
                correct = right if correct is None else correct + right
            else:
                pred = core(x).float()
                loss = loss_fn(pred, y)
            err = (pred - y).abs().reshape(len(y), -1).mean(dim=1).sum()
            total = loss * len(y) if total is None else total + loss * len(y)
            abs_err = err if abs_err is None else abs_err + err
            n += len(y)
    n = max(n, 1)
    out = {"val_loss": float(total) / n if total is not None else math.nan,
           "val_mae": float(abs_err) / n if abs_err is not None else math.nan}
    if spec.loss == "bce":
        out["val_accuracy"] = float(correct) / n if correct is not None else math.nan
    return out


def recalibrate_batchnorm(model: nn.Module, batches) -> int:
    """Replace the BatchNorm running statistics by their averages over ``batches`` of inputs.

    Training updates the running mean and variance with momentum 0.1, so at batch 16 they follow
    the last few dozen batches; a network whose weights still move (the paper's, at a constant
    rate) then meets statistics in eval mode that no longer match its weights, and its validation
    error jumps from epoch to epoch while the training loss falls. Averaging the statistics over
    many batches with the final weights (Wu & Johnson 2021, "Rethinking 'batch' in BatchNorm",
    precise BN) removes that mismatch. Returns the number of BatchNorm layers recalibrated.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None                        # a cumulative average over the batches
    was_training = model.training
    model.train()
    with torch.no_grad():
        for x in batches:
            model(x)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.train(was_training)
    return len(norms)


#: TrainConfig fields whose absence from a saved run means another behaviour than their default:
#: a run from before V existed validated on E and chose its best epoch there.
_BEFORE_FIELD = {"val_share": None}


def _resume_mismatch(saved: dict, meta: dict) -> list[str]:
    """What differs between a checkpoint's run and this one (the number of epochs may grow)."""
    differ = [k for k in ("dataset_sha256", "arch", "parameters") if saved.get(k) != meta.get(k)]
    # fields added since it was saved: their default, or what a run without them did
    defaults = {**{f.name: f.default for f in fields(TrainConfig)}, **_BEFORE_FIELD}
    old = {**defaults, **{k: v for k, v in saved["train_config"].items() if k != "epochs"}}
    new = {**defaults, **{k: v for k, v in meta["train_config"].items() if k != "epochs"}}
    old.pop("epochs"), new.pop("epochs")
    differ += [f"train_config.{k}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)
               and k not in ("device", "num_workers", "bf16")]
    return differ


def make_scheduler(optimizer, config: TrainConfig, steps_per_epoch: int, done_steps: int = 0):
    """The learning-rate schedule of ``config`` (None for a constant rate), stepped once per step.

    The one-cycle rate is a function of the step count alone: a resumed run fast-forwards it over
    the ``done_steps`` already taken (over the new total, if the number of epochs changed).
    """
    if config.schedule == "constant":
        return None
    import warnings

    for group in optimizer.param_groups:       # a resumed optimizer carries the old schedule's state
        group["lr"] = config.lr
        group.pop("initial_lr", None)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, epochs=config.epochs,
                                                    steps_per_epoch=steps_per_epoch, pct_start=0.15)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # "scheduler.step() before optimizer.step()"
        for _ in range(min(done_steps, config.epochs * steps_per_epoch - 1)):
            scheduler.step()
    return scheduler


def init_features_from(model, checkpoint, arch: str, input_size: int) -> None:
    """Copy the feature extractor f of ``checkpoint`` into ``model`` (same architecture and size)."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    meta = state["metadata"]
    if meta["arch"] != arch or int(meta["input_size"]) != input_size:
        raise ValueError(f"init_features={str(checkpoint)!r} holds a {meta['arch']} network for "
                         f"{meta['input_size']} px images; this run needs {arch} at {input_size} px")
    features = {k[len("features."):]: v for k, v in state["model"].items() if k.startswith("features.")}
    model.features.load_state_dict(features)


class _BCELogitsModel(nn.Module):
    """Wraps an Estimator so that forward returns logits (what DDP and BCEWithLogits need)."""

    def __init__(self, estimator):
        super().__init__()
        self.estimator = estimator

    def forward(self, x):
        return self.estimator.logits(x)


def train_network(store_path, config: TrainConfig, checkpoint_dir, *, show_progress_bars: bool | None = None,
                  time_budget_s: float | None = None, checkpoint_every_steps: int | None = None,
                  stop_after_steps: int | None = None) -> dict:
    """Train (or resume training) one network; returns the training history.

    The result: ``history`` (one record per epoch; ``val_*`` are on V), ``best_val_loss`` (on V),
    ``metadata``, and ``E``: the best and the last weights scored on all of E after the last epoch
    (``{"best": {"epoch", "E_loss", "E_mae"[, "E_accuracy"]}, "last": {...}, ...}``; None while
    the run is unfinished), reported only, never used to choose.

    Parameters
    ----------
    store_path : path-like
        A finished dataset store: T∖V for training, V (``config.val_share`` of T's
        configurations) for choosing the best epoch, E only scored at the end.
    config : TrainConfig
    checkpoint_dir : path-like
        Receives ``last.pt``, ``best.pt``, ``history.json`` and ``E.json``; resumed from if present.
    show_progress_bars : bool, optional
        Epoch and step bars with the loss (default: ``config['progress_bars']``).
    time_budget_s : float, optional
        Stop after the epoch during which this wall time was exceeded (rank 0 decides for all).
    checkpoint_every_steps : int, optional
        Also write ``last.pt`` every this many steps within an epoch: a run killed mid-epoch
        resumes from there to the weights an uninterrupted run reaches (the sample order and the
        augmentation are functions of the seed, epoch and sample).
    stop_after_steps : int, optional
        Return after this many optimizer steps of this call, as an interruption would (tests).
    """
    env = DistEnv.from_env()
    device = pick_device(config.device)
    if env.distributed and device.type == "cuda":
        device = torch.device("cuda", env.local_rank)
    init_distributed(env, device)
    try:
        return _train(Path(store_path), config, Path(checkpoint_dir), env, device, show_progress_bars,
                      time_budget_s, checkpoint_every_steps, stop_after_steps)
    finally:
        cleanup_distributed()


def epoch_order(n: int, seed: int, epoch: int, *, weights=None, rank: int = 0, world_size: int = 1) -> np.ndarray:
    """The training samples of one epoch for one rank, a pure function of (seed, epoch).

    A permutation of ``range(n)`` (or ``n`` draws with replacement by ``weights``: the classifier's
    oversampling), padded by wrapping to a multiple of ``world_size`` and split round-robin: the
    ranks together see what one process sees, and a resumed run sees what an uninterrupted one saw.
    """
    rng = np.random.default_rng([int(seed), int(epoch)])
    if weights is None:
        order = rng.permutation(n)
    else:
        p = np.asarray(weights, dtype=np.float64)
        order = rng.choice(n, size=n, replace=True, p=p / p.sum())
    per_rank = math.ceil(n / world_size)
    order = np.resize(order, per_rank * world_size)
    return order[rank::world_size]


def _all_agree(flag: bool, env, device) -> bool:
    """``flag`` of rank 0 on every rank (so that all ranks stop at the same epoch)."""
    if not env.distributed:
        return bool(flag)
    import torch.distributed as dist

    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.broadcast(t, src=0)
    return bool(t.item() > 0.5)


def default_num_workers(device: torch.device) -> int:
    """DataLoader workers for ``device`` when a split is streamed: 0 on a CPU (workers would take
    the cores the network needs), else one per core left to this rank, at most 8."""
    import os

    if device.type != "cuda":
        return 0
    per_rank = (os.cpu_count() or 2) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(0, min(8, per_rank - 1))


def _train(store_path, config, checkpoint_dir, env, device, show_progress_bars, time_budget_s,
           checkpoint_every_steps=None, stop_after_steps=None):
    from dataclasses import replace

    if config.num_workers is None:
        config = replace(config, num_workers=default_num_workers(device))
    torch.manual_seed(config.seed)
    store, train_set, val_set = make_datasets(store_path, config)
    settings = store.identity["stem_settings"]
    preprocess = Preprocess(inverse=config.spec.inverse,
                            electrons_per_pixel=store.stem_settings.electrons_per_pixel)
    outputs = 1 if train_set.labels.ndim == 1 else int(train_set.labels.shape[1])
    model = build_network(config.arch, int(settings["image_size_px"]), nu=config.group_size,
                          activation=config.spec.activation, outputs=outputs).to(device)
    meta = checkpoint_metadata(config, store, preprocess, model, train_indices=train_set.sample_indices)
    meta["validation"] = {"best_epoch_chosen_on": "V", "val_share": config.val_share,
                          "V_configurations": int(np.unique(store.config_id[val_set.sample_indices]).size),
                          "V_samples": int(val_set.sample_indices.size),
                          "trained_on_samples": int(train_set.sample_indices.size)}
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    per_rank = math.ceil(len(train_set) / env.world_size) if env.distributed else len(train_set)
    steps_per_epoch = per_rank // config.images_per_step if per_rank > config.images_per_step else 1
    if config.steps_per_epoch is not None:
        steps_per_epoch = min(steps_per_epoch, config.steps_per_epoch)
    history, start_epoch, start_step, best = [], 0, 0, math.inf
    last = checkpoint_dir / "last.pt"
    if last.is_file():
        state = read_torch_file(last, "cpu")
        differ = _resume_mismatch(state["metadata"], meta)
        if differ:
            before = "val_share" not in state["metadata"]["train_config"]
            raise ValueError(f"{last} belongs to another run ({', '.join(differ)} differ"
                             + ("; it was made before validation on V: its best epoch was chosen on E"
                                if before else "") + "); use another checkpoint_dir")
        history, best = state["history"], state["best_val_loss"]
        start_step = int(state.get("step", 0))            # > 0: saved in the middle of an epoch
        start_epoch = state["epoch"] + (0 if start_step else 1)
        if start_epoch >= config.epochs:     # finished: nothing to train (nor read, once scored on E)
            scores = state.get("E")
            if env.is_main:
                if not (checkpoint_dir / "history.json").is_file():
                    _write_history(checkpoint_dir, history)
                if scores is None and history:            # stopped between last.pt and its scores on E
                    model.load_state_dict(state["model"])
                    scores = _scores_on_e(model, checkpoint_dir, store_path, store, config, device, preprocess,
                                          int(history[-1]["epoch"]))
                    save_checkpoint(last, {**state, "E": scores})
                if scores is not None and not (checkpoint_dir / "E.json").is_file():
                    _write_scores_on_e(checkpoint_dir, scores)
            return {"history": history, "best_val_loss": best, "metadata": meta, "E": scores}
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
    else:
        if config.init_features is not None:
            init_features_from(model, config.init_features, config.arch, int(settings["image_size_px"]))
        if config.spec.loss == "mse":
            model.start_at(np.nanmean(train_set.labels[train_set.sample_indices], axis=0))
    show = (agglib.config.get("progress_bars") if show_progress_bars is None else show_progress_bars) \
        and env.is_main
    step_batch = config.images_per_step
    train_feed = _Feed(train_set, store_path, device, step_batch, config.num_workers, show_progress=show)
    val_feed = _Feed(val_set, store_path, device, step_batch * 2, config.num_workers, show_progress=show) \
        if env.is_main else None
    scheduler = make_scheduler(optimizer, config, steps_per_epoch,
                               done_steps=start_epoch * steps_per_epoch + start_step)
    val_keys = np.arange(len(val_set))
    if config.val_images is not None and config.val_images < len(val_set):
        val_subset = np.sort(np.random.default_rng(config.seed).choice(len(val_set), config.val_images, replace=False))
    else:
        val_subset = val_keys
    wrapped = _BCELogitsModel(model) if config.spec.loss == "bce" else model
    if env.distributed:
        from torch.nn.parallel import DistributedDataParallel
        wrapped = DistributedDataParallel(wrapped, device_ids=[device.index] if device.type == "cuda" else None)
    loss_fn = _loss_fn(config.spec)
    weights = None
    if config.spec.oversample:           # classes balanced on every rank (DDP included)
        labels = train_set.labels[train_set.sample_indices]
        pos = max(float(labels.sum()), 1.0)
        neg = max(float(len(labels) - labels.sum()), 1.0)
        weights = np.where(labels > 0.5, 0.5 / pos, 0.5 / neg)
    def run_state(epoch: int, step: int) -> dict:
        """What ``last.pt`` holds after ``step`` steps of ``epoch`` (0: the epoch is complete)."""
        return {"metadata": meta, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "epoch": epoch, "step": step, "history": history, "best_val_loss": best,
                "torch_rng": torch.get_rng_state()}

    started = time.perf_counter()
    steps_this_call = 0
    interrupted = False
    epoch_bar = tqdm(range(start_epoch, config.epochs), desc=f"{config.target} epochs", disable=not show,
                     initial=start_epoch, total=config.epochs)
    for epoch in epoch_bar:
        order = epoch_order(len(train_set), config.seed, epoch, weights=weights, rank=env.rank,
                            world_size=env.world_size)
        n_steps = min(max(1, len(order) // step_batch), steps_per_epoch)
        first = start_step if epoch == start_epoch else 0
        wrapped.train()
        t0, seen = time.perf_counter(), 0
        running = torch.zeros((), device=device)
        step_bar = tqdm(total=n_steps, initial=first, desc=f"epoch {epoch + 1}", leave=False, disable=not show)
        interrupted = False
        batches = train_feed.prepared(epoch, order[first * step_batch:n_steps * step_batch], preprocess, config,
                                      augment=True)
        for step, (x, y) in enumerate(batches, start=first):
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bf16):
                out = wrapped(x)
            loss = loss_fn(out.float(), y)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            running += loss.detach() * len(y)             # read back once per epoch, not per step
            seen += len(y)
            steps_this_call += 1
            step_bar.update()
            if show and step % 25 == 0:                   # the only other read-back: the bar's loss
                step_bar.set_postfix(loss=f"{float(loss.detach()):.4g}")
            done = step + 1
            if env.is_main and done < n_steps and checkpoint_every_steps and done % checkpoint_every_steps == 0:
                save_checkpoint(last, run_state(epoch, done))
            if stop_after_steps is not None and steps_this_call >= stop_after_steps and done < n_steps:
                interrupted = True                        # as a kill would: the mid-epoch last.pt stays
                break
        step_bar.close()
        if interrupted:
            break
        train_seconds = time.perf_counter() - t0 if device.type != "cuda" else _synced_seconds(t0, device)
        record = {"epoch": epoch, "train_loss": float(running) / max(seen, 1),
                  "images_per_s": seen * config.group_size / max(train_seconds, 1e-9),
                  "train_seconds": train_seconds}
        if env.is_main:
            final = epoch == config.epochs - 1
            keys = val_keys if final else val_subset              # all of V at the end
            if config.bn_batches:
                record["val_mae_running_bn"] = evaluate(model, val_feed.batches(0, keys), config.spec,
                                                        preprocess)["val_mae"]
                recalibrate_batchnorm(model, _bn_inputs(train_feed, train_set, config, epoch, preprocess))
            record.update(evaluate(model, val_feed.batches(0, keys), config.spec, preprocess))
            history.append(record)
            improved = record["val_loss"] < best
            best = min(best, record["val_loss"])
            payload = run_state(epoch, 0)
            if improved:
                save_checkpoint(checkpoint_dir / "best.pt", {**payload, "metadata": {**meta, "epoch": epoch}})
            save_checkpoint(last, payload)
            epoch_bar.set_postfix(val_loss=f"{record['val_loss']:.4g}", val_mae=f"{record['val_mae']:.3g}")
        if time_budget_s is not None and _all_agree(time.perf_counter() - started > time_budget_s, env, device):
            break
    epoch_bar.close()
    scores = None
    if env.is_main:
        _write_history(checkpoint_dir, history)
        if not interrupted:                  # the last epoch (or the one that ended the budget): report E
            del train_feed, val_feed                      # E is read after T∖V and V are released
            if device.type == "cuda":
                torch.cuda.empty_cache()
            scores = _scores_on_e(model, checkpoint_dir, store_path, store, config, device, preprocess,
                                  int(history[-1]["epoch"]))
            save_checkpoint(last, {**read_torch_file(last, "cpu"), "E": scores})
            _write_scores_on_e(checkpoint_dir, scores)
    return {"history": history, "best_val_loss": best, "metadata": meta, "E": scores}


def _scores_on_e(model, checkpoint_dir: Path, store_path, store, config: TrainConfig, device,
                 preprocess: Preprocess, last_epoch: int) -> dict:
    """The last weights (``model``'s, restored afterwards) and the best (``best.pt``, chosen on V)
    scored on all of E — a report only: nothing is chosen by it."""
    items = make_eval_dataset(store_path, config, store)
    feed = _Feed(items, store_path, device, config.images_per_step * 2, config.num_workers)
    keys = np.arange(len(items))

    def on_e(epoch: int) -> dict:
        out = evaluate(model, feed.batches(0, keys), config.spec, preprocess)
        return {"epoch": int(epoch), **{"E_" + k[len("val_"):]: v for k, v in out.items()}}

    scores = {"split": "E", "best_epoch_chosen_on": "V", "E_items": len(items),
              "E_images": int(np.asarray(items.item_indices(keys)).size), "last": on_e(last_epoch), "best": None}
    if (checkpoint_dir / "best.pt").is_file():           # absent only if no epoch had a finite loss on V
        best = read_torch_file(checkpoint_dir / "best.pt", "cpu")
        best_epoch = int(best["metadata"]["epoch"])
        if best_epoch == last_epoch:
            scores["best"] = dict(scores["last"])
        else:
            last_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
            model.load_state_dict(best["model"])
            scores["best"] = on_e(best_epoch)
            model.load_state_dict(last_weights)
    return scores


def _synced_seconds(t0: float, device) -> float:
    torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def _bn_inputs(feed: _Feed, items: _Labelled, config: TrainConfig, epoch: int, preprocess: Preprocess):
    """``config.bn_batches`` preprocessed batches of T∖V for :func:`recalibrate_batchnorm`: a
    subset drawn from (seed, epoch), augmented as in training."""
    n = min(len(items), config.bn_batches * config.images_per_step)
    keys = np.sort(np.random.default_rng([config.seed, epoch, 1]).choice(len(items), n, replace=False))
    for x, _ in feed.prepared(epoch, keys, preprocess, config, augment=True):
        yield x


def train_for_profile(profile, target: str, store_path, run_dir, seed: int = 0,
                      show_progress_bars: bool | None = None, *, time_budget_s: float | None = None,
                      checkpoint_every_steps: int | None = None, **changes) -> dict:
    """Train ``target`` with the profile's architecture, schedule, epochs and ν into ``run_dir/target``.

    Resumes (or returns at once) when the run directory already holds the finished epochs. For
    θ0 and θ1 with ``profile.pretrain_epochs > 0`` the ``descriptors`` network named in
    :data:`PRETRAINED_FROM` is trained first (or found) and initialises f. ``changes`` override
    :class:`TrainConfig` fields; ``time_budget_s`` and ``checkpoint_every_steps`` go to
    :func:`train_network`.
    """
    if target not in TARGETS:
        raise ValueError(f"target={target!r}; accepted: {sorted(TARGETS)}")
    spec = TARGETS[target]
    multi = spec.multi_image
    nu = min(profile.batch_size, profile.eval_per_config,
             profile.samples_per_config - profile.eval_per_config)
    settings = dict(target=target, arch=profile.train_arch, nu=nu, seed=seed, schedule=profile.train_schedule,
                    epochs=profile.epochs_multi if multi else profile.epochs_single,
                    lr=profile.lr_multi if multi else profile.lr_single,
                    repeats=profile.group_repeats if multi else 1)
    if profile.val_images > 0:
        settings["val_images"] = max(1, profile.val_images // nu) if multi else profile.val_images
    if profile.bn_batches > 0:
        settings["bn_batches"] = profile.bn_batches
    if spec.label == "descriptors":
        settings["epochs"] = max(1, profile.pretrain_epochs)
    if target in PRETRAINED_FROM and profile.pretrain_epochs > 0 and "init_features" not in changes:
        source = PRETRAINED_FROM[target]
        train_for_profile(profile, source, store_path, run_dir, seed=seed, show_progress_bars=show_progress_bars)
        settings["init_features"] = str(Path(run_dir) / source / "best.pt")
    config = TrainConfig(**{**settings, **changes})
    return train_network(store_path, config, Path(run_dir) / target, show_progress_bars=show_progress_bars,
                         time_budget_s=time_budget_s, checkpoint_every_steps=checkpoint_every_steps)


def train_estimator(profile, store_path, run_dir, seed: int = 0, show_progress_bars: bool | None = None):
    """Train (or finish training) the five networks of a profile; the :class:`ParameterEstimator`."""
    from agglib.estimate import NETWORK_NAMES, ParameterEstimator

    for target in NETWORK_NAMES:
        train_for_profile(profile, target, store_path, run_dir, seed=seed, show_progress_bars=show_progress_bars)
    return ParameterEstimator.load(run_dir)
