"""The paper's networks' training recipe (:class:`PaperRecipe`) for the engine both methods share
(:mod:`agglib.engine`: epochs, steps, resumption, DDP, bf16, time budget, checkpoints).

Model selection is honest: a validation split V — ``val_share`` (default 1/6) of T's parameter
configurations with all their T samples, drawn from the dataset's and the run's seed
(:func:`agglib.paper_training.data.validation_split`) — is held out of T. The network trains on T∖V only;
after each epoch it is validated on V (``val_images`` of V, all of V after the last epoch; with
``bn_batches`` the BatchNorm statistics are first recomputed on T∖V), and ``best.pt`` is the epoch
with the lowest loss on V. The evaluation split E is never used for selection: after the last
epoch (or the epoch that ends a time budget) the best and the last weights are scored on all of
E, and that is recorded apart from the per-epoch history (``result["E"]``, ``E.json`` beside
``history.json``, and ``last.pt``), labelled as E. A run folder made with another ``val_share``,
or before V existed (its best epoch was chosen on E), is refused for resuming; such checkpoints
still load as estimators.

The settings of a run are :class:`agglib.paper_training.TrainConfig`; the batches come from
:mod:`agglib.paper_training.data`.
"""

from __future__ import annotations

from dataclasses import asdict, fields
import json
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

import agglib
from agglib.checkpoint import load_checkpoint, save_checkpoint
from agglib.core.files import atomic_write_text
from agglib.dataset.store import DatasetStore
from agglib.engine import Recipe, recalibrate_batchnorm, run_training, training_session
from agglib.lr_schedule import torch_one_cycle
from agglib.nets import build_network, count_parameters
from agglib.preprocess import Preprocess
from agglib.paper_training._contracts import PRETRAINED_FROM, TARGETS, TargetSpec, TrainConfig
from agglib.paper_training.data import _Feed, _Labelled, descriptor_scaling, make_datasets, make_eval_dataset

__all__ = ["train_network", "train_for_profile", "train_estimator", "evaluate", "checkpoint_metadata",
           "dataset_hash", "default_num_workers", "init_features_from", "PaperRecipe", "CHECKPOINT_KIND"]

#: The checkpoint kind of the paper's networks (:mod:`agglib.checkpoint`).
CHECKPOINT_KIND = "paper_network"


def _write_scores_on_e(checkpoint_dir: Path, scores: dict) -> None:
    """``E.json`` beside the checkpoints: the best and the last weights scored on E (not used to choose)."""
    atomic_write_text(checkpoint_dir / "E.json", json.dumps(scores, indent=1))


def checkpoint_metadata(config: TrainConfig, store: DatasetStore, preprocess: Preprocess,
                        model: nn.Module, train_indices=None) -> dict:
    """What a checkpoint records about its run; ``train_indices``: the samples trained on (T∖V),
    over which the ``descriptors`` labels are standardised (default: T)."""
    settings = store.identity["stem_settings"]
    return {"agglib": agglib.__version__, "target": config.target,
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


#: TrainConfig fields whose absence from a saved run means another behaviour than their default:
#: a run from before V existed validated on E and chose its best epoch there.
_BEFORE_FIELD = {"val_share": None}


def _resume_mismatch(saved: dict, meta: dict) -> list[str]:
    """What differs between a checkpoint's run and this one (the number of epochs may grow)."""
    differ = [k for k in ("dataset_sha256", "arch", "parameters") if saved.get(k) != meta.get(k)]
    # each process takes its own batches of `batch` groups: another number of processes is another
    # run (runs saved before the number was recorded are not checked: it is not known)
    there, here = saved.get("processes"), meta.get("processes", 1)
    if there is not None and there != here:
        differ.append(f"processes ({there} there, {here} here: each takes its own batches; resume it as it was "
                      "launched, " + ("in one process" if there == 1 else
                                      f"with {there} processes in all, e.g. torchrun --nproc_per_node {there} "
                                      "on one node") + ")")
    # fields added since it was saved: their default, or what a run without them did
    defaults = {**{f.name: f.default for f in fields(TrainConfig)}, **_BEFORE_FIELD}
    old = {**defaults, **{k: v for k, v in saved["train_config"].items() if k != "epochs"}}
    new = {**defaults, **{k: v for k, v in meta["train_config"].items() if k != "epochs"}}
    old.pop("epochs"), new.pop("epochs")
    differ += [f"train_config.{k} ({old.get(k)!r} there, {new.get(k)!r} here)" for k in sorted(set(old) | set(new))
               if old.get(k) != new.get(k) and k not in ("device", "num_workers", "bf16")]
    if differ and "val_share" not in saved["train_config"]:
        differ[-1] += "; it was made before validation on V: its best epoch was chosen on E"
    return differ


def init_features_from(model, checkpoint, arch: str, input_size: int) -> None:
    """Copy the feature extractor f of ``checkpoint`` into ``model`` (same architecture and size)."""
    state = load_checkpoint(checkpoint, kind=CHECKPOINT_KIND)
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
    """Train (or resume training) one network with the engine (:func:`agglib.engine.run_training`).

    The result: ``history`` (one record per epoch; ``val_*`` are on V), ``best_val_loss`` (on V),
    ``metadata``, and ``E``: the best and the last weights scored on all of E after the last epoch
    (or the epoch that ended a time budget) (``{"best": {"epoch", "E_loss", "E_mae"[, "E_accuracy"]},
    "last": {...}, ...}``; None after an interruption), reported only, never used to choose.

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
        Stop after the epoch during which this wall time [s] was exceeded (rank 0 decides for all).
    checkpoint_every_steps : int, optional
        Also write ``last.pt`` every this many steps within an epoch: a run killed mid-epoch
        resumes from there to the weights an uninterrupted run reaches (the sample order and the
        augmentation are functions of the seed, epoch and sample).
    stop_after_steps : int, optional
        Return after this many optimizer steps of this call, as an interruption would (tests).
    """
    with training_session(config.device) as (env, device):
        recipe = PaperRecipe(Path(store_path), config, Path(checkpoint_dir), env, device)
        result = run_training(recipe, checkpoint_dir, show_progress_bars=show_progress_bars,
                              time_budget_s=time_budget_s, checkpoint_every_steps=checkpoint_every_steps,
                              stop_after_steps=stop_after_steps)
        return {"history": result["history"], "best_val_loss": recipe.best, "metadata": recipe.metadata,
                "E": recipe.scores_on_e}


def default_num_workers(device: torch.device) -> int:
    """DataLoader workers for ``device`` when a split is streamed: 0 on a CPU (workers would take
    the cores the network needs), else one per core left to this rank, at most 8."""
    import os

    if device.type != "cuda":
        return 0
    per_rank = (os.cpu_count() or 2) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(0, min(8, per_rank - 1))


class PaperRecipe(Recipe):
    """One of the paper's networks for the engine: its data (T∖V, V, E of a store), Adam, the
    target's loss, the profile's schedule, validation on V with precise BatchNorm, ``best.pt``
    and the final report on E."""

    kind = CHECKPOINT_KIND
    outputs = ("best.pt", "E.json")

    def __init__(self, store_path: Path, config: TrainConfig, checkpoint_dir: Path, env, device):
        from dataclasses import replace

        if config.num_workers is None:
            config = replace(config, num_workers=default_num_workers(device))
        self.config, self.store_path, self.checkpoint_dir, self.env, self.device = \
            config, store_path, checkpoint_dir, env, device
        self.name, self.seed, self.epochs, self.bf16 = config.target, config.seed, config.epochs, config.bf16
        torch.manual_seed(config.seed)
        store, train_set, val_set = make_datasets(store_path, config)
        self.store, self.train_set, self.val_set = store, train_set, val_set
        settings = store.identity["stem_settings"]
        self.preprocess = Preprocess(inverse=config.spec.inverse,
                                     electrons_per_pixel=store.stem_settings.electrons_per_pixel)
        outputs = 1 if train_set.labels.ndim == 1 else int(train_set.labels.shape[1])
        self.model = build_network(config.arch, int(settings["image_size_px"]), nu=config.group_size,
                                   activation=config.spec.activation, outputs=outputs).to(device)
        meta = checkpoint_metadata(config, store, self.preprocess, self.model, train_indices=train_set.sample_indices)
        meta["validation"] = {"best_epoch_chosen_on": "V", "val_share": config.val_share,
                              "V_configurations": int(np.unique(store.config_id[val_set.sample_indices]).size),
                              "V_samples": int(val_set.sample_indices.size),
                              "trained_on_samples": int(train_set.sample_indices.size)}
        meta["processes"] = int(env.world_size)    # the run's batches depend on it (see _resume_mismatch)
        self.metadata = meta
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        self.n_items, self.batch, self.images_per_item = len(train_set), config.images_per_step, config.group_size
        per_rank = math.ceil(len(train_set) / env.world_size) if env.distributed else len(train_set)
        steps = per_rank // self.batch if per_rank > self.batch else 1
        self.steps_per_epoch = min(steps, config.steps_per_epoch) if config.steps_per_epoch is not None else steps
        self.best, self.scores_on_e = math.inf, None
        if config.spec.oversample:           # classes balanced on every rank (DDP included)
            labels = train_set.labels[train_set.sample_indices]
            pos = max(float(labels.sum()), 1.0)
            neg = max(float(len(labels) - labels.sum()), 1.0)
            self.sampling_weights = np.where(labels > 0.5, 0.5 / pos, 0.5 / neg)
        self.loss_fn = _loss_fn(config.spec)
        self._feeds = None
        val_keys = np.arange(len(val_set))
        if config.val_images is not None and config.val_images < len(val_set):
            self.val_subset = np.sort(np.random.default_rng(config.seed).choice(len(val_set), config.val_images,
                                                                                replace=False))
        else:
            self.val_subset = val_keys
        self.val_keys = val_keys

    def initialise(self):
        """f copied from ``init_features`` (pretraining), the head's output started at the labels' mean."""
        c, train_set = self.config, self.train_set
        if c.init_features is not None:
            init_features_from(self.model, c.init_features, c.arch, int(self.store.identity["stem_settings"]["image_size_px"]))
        if c.spec.loss == "mse":
            self.model.start_at(np.nanmean(train_set.labels[train_set.sample_indices], axis=0))

    def feeds(self):
        """The T∖V feed and (rank 0) the V feed, made at the first batch (not for a finished run)."""
        if self._feeds is None:
            c = self.config
            train_feed = _Feed(self.train_set, self.store_path, self.device, c.images_per_step, c.num_workers,
                               show_progress=False)
            val_feed = _Feed(self.val_set, self.store_path, self.device, c.images_per_step * 2, c.num_workers) \
                if self.env.is_main else None
            self._feeds = (train_feed, val_feed)
        return self._feeds

    def trained_module(self):
        return _BCELogitsModel(self.model) if self.config.spec.loss == "bce" else self.model

    def hyperparameters(self, step, total_steps):
        if self.config.schedule == "constant":
            return {}
        return torch_one_cycle(step, total_steps, self.config.lr)

    def batches(self, epoch, keys, first_step):
        return self.feeds()[0].prepared(epoch, keys, self.preprocess, self.config, augment=True)

    def loss(self, out, y):
        return self.loss_fn(out.float(), y)

    def end_epoch(self, epoch, record, history, final):
        train_feed, val_feed = self.feeds()
        keys = self.val_keys if final else self.val_subset              # all of V at the end
        if self.config.bn_batches:
            record["val_mae_running_bn"] = evaluate(self.model, val_feed.batches(0, keys), self.config.spec,
                                                    self.preprocess)["val_mae"]
            recalibrate_batchnorm(self.model, _bn_inputs(train_feed, self.train_set, self.config, epoch,
                                                         self.preprocess))
        record.update(evaluate(self.model, val_feed.batches(0, keys), self.config.spec, self.preprocess))
        if record["val_loss"] < self.best:
            self.best = record["val_loss"]
            save_checkpoint(self.checkpoint_dir / "best.pt", self.kind, {**self.metadata, "epoch": epoch},
                            self.model.state_dict(), history=history)

    def finish(self, history, complete, finished_before):
        # scored after every call that trained (a resumed run's scores are its last epoch's), and by a
        # later call when the one that finished stopped before its scores were kept
        if history and (not finished_before or self.scores_on_e is None):
            self._feeds = None                             # E is read after T∖V and V are released
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            self.scores_on_e = _scores_on_e(self.model, self.checkpoint_dir, self.store_path, self.store,
                                            self.config, self.device, self.preprocess, int(history[-1]["epoch"]))
        if self.scores_on_e is not None and (not finished_before or not (self.checkpoint_dir / "E.json").is_file()):
            _write_scores_on_e(self.checkpoint_dir, self.scores_on_e)
        return {}

    def mismatch(self, saved_metadata):
        return _resume_mismatch(saved_metadata, self.metadata)

    def run_state(self):
        return {"best_val_loss": self.best, "E": self.scores_on_e}

    def load_run_state(self, state):
        best = state.get("best_val_loss")
        self.best = math.inf if best is None else best
        self.scores_on_e = state.get("E")


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
        best = load_checkpoint(checkpoint_dir / "best.pt", kind=CHECKPOINT_KIND)
        best_epoch = int(best["metadata"]["epoch"])
        if best_epoch == last_epoch:
            scores["best"] = dict(scores["last"])
        else:
            last_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
            model.load_state_dict(best["model"])
            scores["best"] = on_e(best_epoch)
            model.load_state_dict(last_weights)
    return scores


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
