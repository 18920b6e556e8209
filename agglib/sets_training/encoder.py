"""The image encoder's training recipe (:mod:`agglib.encoder`) for the engine (:mod:`agglib.engine`).

Everything random in an epoch is a function of (seed, epoch, step): the order of the images
(:func:`agglib.engine.epoch_order`), the augmentation (a generator seeded per epoch, drawn for
the whole global batch of each step, so that every rank takes its part of one draw) and the
learning rate (:func:`agglib.lr_schedule.one_cycle_lr` of the step). ``last.pt`` is written
after every epoch (and, with ``checkpoint_every_steps``, within one); calling
:func:`train_encoder` again on the same folder continues from it — mid-epoch too — and gives
the weights of a run that was never interrupted. Under ``torchrun`` (or any ``RANK``/``WORLD_SIZE``
launch) each of K processes trains on ``batch / K`` images of every global batch, with BatchNorm
over the global batch and the loss of the global batch (:func:`agglib.encoder.multitask_loss`
with the global counts), so it reaches one process's weights up to float rounding (a test). No
weights are chosen by their score on E (that would leak the evaluation set into the estimator):
the final epoch's weights are the encoder, written to ``encoder.pt``.

Before it is written, the BatchNorm statistics are recomputed in float32 over ``bn_batches``
batches of training images with the final weights (precise BatchNorm,
:func:`agglib.engine.recalibrate_batchnorm`). Under bf16 autocast the running averages that
training keeps are accumulated from bf16 activations and lag the moving weights; in eval mode
they made the size heads collapse (R_g and N errors 2–5 × those of a float32 run,
``benchmarks/bench_encoder.py``).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

import agglib
from agglib.checkpoint import load_checkpoint, save_checkpoint
from agglib.core.distributed import resident_budget
from agglib.dataset.store import DatasetStore
from agglib.encoder import (ENCODER_TARGETS, ImageEncoder, augmentation_draws, encoder_inputs, encoder_labels,
                            label_scaling, multitask_loss, per_image_errors, unscale_predictions)
from agglib.engine import Recipe, read_progress, recalibrate_batchnorm, run_training, training_session
from agglib.lr_schedule import one_cycle_lr
from agglib.preprocess import augment_batch
from agglib.sets_training._contracts import EncoderConfig, NotTrainedError

__all__ = ["train_encoder", "EncoderRecipe"]


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, epoch, 7]).generate_state(1)[0]))


def _scores(model, images, labels_raw, names, scaling, epp, device, batch=256) -> dict:
    """Per-target MAE (natural units; accuracy for ``homogeneous``) of the encoder on images."""
    model.eval()
    outs = []
    with torch.no_grad():
        for k in range(0, images.shape[0], batch):
            outs.append(model(encoder_inputs(images[k:k + batch], epp).to(device))[1].float().cpu())
    result = {}
    for name, err in per_image_errors(unscale_predictions(torch.cat(outs).numpy(), scaling), labels_raw, names).items():
        if ENCODER_TARGETS[name].loss == "bce":
            result[f"{name}_accuracy"] = 1.0 - err
        else:
            result[f"{name}_mae"] = err
    return result


class EncoderRecipe(Recipe):
    """The image encoder for the engine: its images (T of a store, plus ``extra_training``), AdamW,
    the multi-task loss, the one-cycle rate, scores on a fixed subset of E after each epoch,
    precise BatchNorm and ``encoder.pt`` at the end."""

    kind = "encoder"
    name = "encoder"
    outputs = ("encoder.pt",)

    def __init__(self, store_path, config: EncoderConfig, out_dir: Path, env, device, extra_training=()):
        self.config, self.out_dir, self.env, self.device = config, out_dir, env, device
        self.extra_training = list(extra_training)
        self.seed, self.epochs, self.bf16 = config.seed, config.epochs, config.bf16
        store = self.store = DatasetStore(store_path)
        names = self.names = list(ENCODER_TARGETS)
        self.labels_raw = encoder_labels(store.theta, store.descriptors, names)
        self.t_idx, self.e_idx = store.indices("T"), store.indices("E")
        train_labels = [self.labels_raw[self.t_idx]]
        sources = [{"dataset_sha256": store.identity_sha256(), "images": int(self.t_idx.size)}]
        for extra, rows in self.extra_training:
            if extra.identity["stem_settings"] != store.identity["stem_settings"] \
                    or extra.identity.get("acquisition_ranges") != store.identity.get("acquisition_ranges"):
                raise ValueError(f"{extra.path} was rendered with other STEM settings or acquisition than {store.path}")
            train_labels.append(encoder_labels(extra.theta, extra.descriptors, names)[np.asarray(rows)])
            sources.append({"dataset_sha256": extra.identity_sha256(), "images": int(len(rows)),
                            "first_index": int(np.min(rows)), "last_index": int(np.max(rows))})
        self.train_labels = np.concatenate(train_labels)
        self.scaling = label_scaling(self.train_labels, names)
        settings = store.identity["stem_settings"]
        self.epp = float(store.stem_settings.electrons_per_pixel)
        size = int(settings["image_size_px"])
        self.n_items = len(self.train_labels)
        if config.batch % env.world_size:
            raise ValueError(f"the encoder's batch of {config.batch} images is not a multiple of the "
                             f"{env.world_size} processes that share it: launch a number of processes that divides "
                             f"it (1, 2, 4, 8 … for 64), or set EncoderConfig(batch=…)")
        if self.n_items < config.batch:
            raise ValueError(f"the encoder's batch of {config.batch} images is larger than its {self.n_items} "
                             f"training images ({store.path}): choose a batch of at most {self.n_items}")
        self.batch = config.batch // env.world_size
        self.steps_per_epoch = max(self.n_items // config.batch, 1)
        meta = {"kind": "encoder", "agglib": agglib.__version__, "input_size": size,
                "pixel_size_nm": float(settings["pixel_size_nm"]), "electrons_per_pixel": self.epp,
                "stem_settings": settings, "label_scaling": self.scaling, "profile": store.identity["profile_name"],
                "profile_fields": store.identity["profile"], "dataset_seed": int(store.identity["seed"]),
                "dataset_sha256": store.identity_sha256(), "training_images": sources,
                "train_config": asdict(config)}
        if store.identity.get("acquisition_ranges"):
            meta["acquisition_ranges"] = store.identity["acquisition_ranges"]
        self.metadata = meta
        torch.manual_seed(config.seed)
        self.model = ImageEncoder(size, len(names)).to(device).to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.bce_mask = torch.tensor([ENCODER_TARGETS[n].loss == "bce" for n in names], device=device)
        self._images = self._val = None

    @property
    def images(self) -> torch.Tensor:
        """The training images [counts], read at first use (on a GPU held in its memory)."""
        if self._images is None:
            store = self.store
            images = torch.from_numpy(np.concatenate([store.read_images(self.t_idx)]
                                                     + [extra.read_images(rows) for extra, rows in self.extra_training]))
            if self.device.type == "cuda" and images.numel() * images.element_size() <= resident_budget(self.device):
                images = images.to(self.device)
            self._images = images
            self._y = torch.from_numpy((self.train_labels - np.asarray(self.scaling["mean"], np.float32))
                                       / np.asarray(self.scaling["sd"], np.float32))
        return self._images

    def hyperparameters(self, step, total_steps):
        return {"lr": one_cycle_lr(step, total_steps, self.config.lr)}

    def batches(self, epoch, keys, first_step):
        images, c, env = self.images, self.config, self.env
        gen = _epoch_generator(c.seed, epoch)
        for _ in range(first_step):                            # the draws of the steps already taken
            augmentation_draws(c.batch, gen, c.max_shift_px)
        for a in range(0, len(keys) - self.batch + 1, self.batch):
            rows = torch.from_numpy(keys[a:a + self.batch])
            params = augmentation_draws(c.batch, gen, c.max_shift_px)[env.rank::env.world_size]
            counts = augment_batch(images[rows.to(images.device)], params, fill=0.0)
            yield encoder_inputs(counts, self.epp).to(self.device), self._y[rows].to(self.device)

    def loss(self, out, y):
        counts = None
        if self.env.distributed:                               # the finite labels of the global batch
            import torch.distributed as dist

            counts = torch.isfinite(y).sum(dim=0)
            dist.all_reduce(counts)
        heads = out[1] if out[1].dtype == torch.float64 else out[1].float()      # bf16 outputs: loss in float32
        loss = multitask_loss(heads, y.to(heads.dtype), self.bce_mask, counts)
        return loss * self.env.world_size if self.env.distributed else loss   # DDP averages the ranks' gradients

    def end_epoch(self, epoch, record, history, final):
        c = self.config
        if self._val is None:
            pick = np.sort(np.random.default_rng([c.seed, 1]).permutation(self.e_idx.size)[:c.val_images])
            self._val = (torch.from_numpy(self.store.read_images(self.e_idx[pick])), self.labels_raw[self.e_idx[pick]]) \
                if pick.size else ()
        if self._val:
            record.update(_scores(self.model, *self._val, self.names, self.scaling, self.epp, self.device))

    def finish(self, history, complete, finished_before):
        final = self.out_dir / "encoder.pt"
        if not (finished_before and _trained_epochs(final) == len(history)):
            _precise_batchnorm(self.model, self.images, self.epp, self.device, self.config)
            save_checkpoint(final, "encoder", {**self.metadata, "epochs_trained": len(history),
                                               "bn_recalibrated": self.config.bn_batches},
                            self.model.state_dict(), history=history)
        return {"path": final}

    def mismatch(self, saved):
        differ = [k for k in ("dataset_sha256", "input_size", "training_images")
                  if saved.get(k) != self.metadata.get(k)]
        return differ + [f"train_config.{k} ({v!r} there, {self.config.identity().get(k)!r} here)"
                         for k, v in EncoderConfig(**saved["train_config"]).identity().items()
                         if self.config.identity().get(k) != v]


def _trained_epochs(path: Path) -> int | None:
    """The epochs of the encoder in ``path`` (None when there is none): one a time budget ended
    early is not the finished one."""
    if not path.is_file():
        return None
    return int(load_checkpoint(path, kind="encoder")["metadata"].get("epochs_trained", -1))


def _precise_batchnorm(model, images: torch.Tensor, epp: float, device, config: EncoderConfig) -> None:
    """BatchNorm statistics in float32 over ``config.bn_batches`` batches of the training images
    (a seeded choice, unaugmented)."""
    if config.bn_batches == 0:
        return
    order = np.random.default_rng([config.seed, 2]).permutation(images.shape[0])
    batches = [order[k:k + config.batch] for k in range(0, min(order.size, config.bn_batches * config.batch), config.batch)]
    recalibrate_batchnorm(model, (encoder_inputs(images[torch.from_numpy(b).to(images.device)], epp).to(device)
                                  for b in batches))
    model.eval()


def train_encoder(store_path, config: EncoderConfig, out_dir, *, show_progress_bars: bool | None = None,
                  stop_after_epochs: int | None = None, stop_after_steps: int | None = None,
                  checkpoint_every_steps: int | None = None, time_budget_s: float | None = None,
                  extra_training=(), train: bool = True) -> dict:
    """Train (or resume, or return at once if finished) the image encoder of a dataset with the
    engine (:func:`agglib.engine.run_training`).

    Parameters
    ----------
    store_path : path-like
        A finished dataset store (trains on T; scores a fixed subset of E after each epoch).
    config : EncoderConfig
    out_dir : path-like
        Receives ``last.pt`` (for resuming), ``encoder.pt`` (the trained encoder) and
        ``history.json``.
    show_progress_bars : bool, optional
        Epoch and step bars (default: ``agglib.config['progress_bars']``).
    stop_after_epochs : int, optional
        Return after this many epochs of this call (``last.pt`` written, no ``encoder.pt``), as
        an interruption would; call again to continue. For time-sliced jobs and the resume tests.
    stop_after_steps : int, optional
        The same after this many steps of this call (``last.pt`` as of the last
        ``checkpoint_every_steps``).
    checkpoint_every_steps : int, optional
        Also write ``last.pt`` every this many steps within an epoch.
    time_budget_s : float, optional
        Stop after the epoch during which this wall time [s] was exceeded and write
        ``encoder.pt`` from the epochs done (a later call continues to ``config.epochs``).
    extra_training : sequence of (DatasetStore, indices)
        More training images from other stores with the same STEM settings (the new method adds
        part of the continuous dataset's T: configurations the posterior never trains on).
    train : bool
        False: only return a finished encoder of this configuration; raise
        :class:`agglib.sets_training.NotTrainedError` instead of training.

    Returns
    -------
    dict
        ``history`` (one record per epoch: loss, images/s, scores on E) and ``path`` of
        ``encoder.pt`` (None while unfinished).
    """
    out_dir = Path(out_dir)
    with training_session(config.device) as (env, device):
        recipe = EncoderRecipe(store_path, config, out_dir, env, device, extra_training)
        if not train:                          # only a finished encoder of this run, read as it is
            state, start_epoch, _ = read_progress(recipe, out_dir / "last.pt")
            if start_epoch < config.epochs or _trained_epochs(out_dir / "encoder.pt") != len(state["history"]):
                raise NotTrainedError(f"no finished encoder of this configuration in {out_dir} "
                                      f"({start_epoch} of {config.epochs} epochs done)")
            return {"history": state["history"], "path": out_dir / "encoder.pt"}
        result = run_training(recipe, out_dir, show_progress_bars=show_progress_bars,
                              stop_after_epochs=stop_after_epochs, stop_after_steps=stop_after_steps,
                              checkpoint_every_steps=checkpoint_every_steps, time_budget_s=time_budget_s)
        return {"history": result["history"], "path": result.get("path")}
