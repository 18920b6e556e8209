"""The epoch loop of the image encoder (:mod:`agglib.encoder`).

Everything random in an epoch is a function of (seed, epoch, step): the order of the images
(``default_rng([seed, epoch])``), the augmentation (a generator seeded per epoch) and the
learning rate (:func:`agglib.lr_schedule.one_cycle_lr` of the step). ``last.pt`` is written
after every epoch; calling :func:`train_encoder` again on the same folder continues from it and
gives the same weights as a run that was never interrupted. No weights are chosen by their
score on E (that would leak the evaluation set into the estimator): the final epoch's weights
are the encoder, written to ``encoder.pt``.

Before it is written, the BatchNorm statistics are recomputed in float32 over ``bn_batches``
batches of training images with the final weights (precise BatchNorm, as the paper networks'
:func:`agglib.train.recalibrate_batchnorm`). Under bf16 autocast the running averages that
training keeps are accumulated from bf16 activations and lag the moving weights; in eval mode
they made the size heads collapse (R_g and N errors 2–5 × those of a float32 run,
``benchmarks/bench_encoder.py``).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

import agglib
from agglib.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from agglib.core.distributed import pick_device
from agglib.core.files import atomic_write_text
from agglib.dataset.store import DatasetStore
from agglib.encoder import (ENCODER_TARGETS, ImageEncoder, augment_counts, encoder_inputs, encoder_labels,
                            label_scaling, multitask_loss, per_image_errors, unscale_predictions)
from agglib.lr_schedule import one_cycle_lr, set_lr
from agglib.training._contracts import EncoderConfig

__all__ = ["train_encoder"]


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


def _precise_batchnorm(model, images: torch.Tensor, epp: float, device, config: EncoderConfig) -> None:
    """BatchNorm statistics in float32 over ``config.bn_batches`` batches of the training images
    (a seeded choice, unaugmented)."""
    from agglib.train.loop import recalibrate_batchnorm

    if config.bn_batches == 0:
        return
    order = np.random.default_rng([config.seed, 2]).permutation(images.shape[0])
    batches = [order[k:k + config.batch] for k in range(0, min(order.size, config.bn_batches * config.batch), config.batch)]
    recalibrate_batchnorm(model, (encoder_inputs(images[torch.from_numpy(b)], epp).to(device) for b in batches))
    model.eval()


def train_encoder(store_path, config: EncoderConfig, out_dir, *, show_progress_bars: bool | None = None,
                  stop_after_epochs: int | None = None, extra_training=(), train: bool = True) -> dict:
    """Train (or resume, or return at once if finished) the image encoder of a dataset.

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
        Return after this many epochs of this call (``last.pt`` written, no ``encoder.pt``), as an
        interruption would; call again to continue. For time-sliced jobs and the resume test.
    extra_training : sequence of (DatasetStore, indices)
        More training images from other stores with the same STEM settings (the new method adds
        part of the continuous dataset's T: configurations the posterior never trains on).
    train : bool
        False: only return a finished encoder of this configuration; raise
        :class:`agglib.training.NotTrainedError` instead of training.

    Returns
    -------
    dict
        ``history`` (one record per epoch: loss, images/s, scores on E) and ``path`` of ``encoder.pt``.
    """
    out_dir = Path(out_dir)
    store = DatasetStore(store_path)
    device = pick_device(config.device)
    names = list(ENCODER_TARGETS)
    labels_raw = encoder_labels(store.theta, store.descriptors, names)
    t_idx, e_idx = store.indices("T"), store.indices("E")
    train_labels = [labels_raw[t_idx]]
    sources = [{"dataset_sha256": store.identity_sha256(), "images": int(t_idx.size)}]
    for extra, rows in extra_training:
        if extra.identity["stem_settings"] != store.identity["stem_settings"] \
                or extra.identity.get("acquisition_ranges") != store.identity.get("acquisition_ranges"):
            raise ValueError(f"{extra.path} was rendered with other STEM settings or acquisition than {store.path}")
        train_labels.append(encoder_labels(extra.theta, extra.descriptors, names)[np.asarray(rows)])
        sources.append({"dataset_sha256": extra.identity_sha256(), "images": int(len(rows)),
                        "first_index": int(np.min(rows)), "last_index": int(np.max(rows))})
    train_labels = np.concatenate(train_labels)
    scaling = label_scaling(train_labels, names)
    settings = store.identity["stem_settings"]
    epp = float(store.stem_settings.electrons_per_pixel)
    size = int(settings["image_size_px"])
    n_train = len(train_labels)
    steps_per_epoch = max(n_train // config.batch, 1)
    total_steps = config.epochs * steps_per_epoch
    meta = {"kind": "encoder", "agglib": agglib.__version__, "input_size": size,
            "pixel_size_nm": float(settings["pixel_size_nm"]), "electrons_per_pixel": epp,
            "stem_settings": settings, "label_scaling": scaling, "profile": store.identity["profile_name"],
            "profile_fields": store.identity["profile"], "dataset_seed": int(store.identity["seed"]),
            "dataset_sha256": store.identity_sha256(), "training_images": sources, "train_config": asdict(config)}
    if store.identity.get("acquisition_ranges"):
        meta["acquisition_ranges"] = store.identity["acquisition_ranges"]
    final, last = out_dir / "encoder.pt", out_dir / "last.pt"

    torch.manual_seed(config.seed)
    model = ImageEncoder(size, len(names)).to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    history, start_epoch = [], 0
    if last.is_file():
        state = load_checkpoint(last, kind="encoder", map_location="cpu")
        saved = state["metadata"]
        differ = [k for k in ("dataset_sha256", "input_size", "training_images") if saved.get(k) != meta.get(k)]
        differ += [f"train_config.{k}" for k, v in EncoderConfig(**saved["train_config"]).identity().items()
                   if config.identity().get(k) != v]
        if differ:
            raise CheckpointError(f"{last} belongs to another run ({', '.join(differ)} differ); "
                                  "use another folder")
        history, start_epoch = state["history"], int(state["progress"]["epoch"]) + 1
        if start_epoch >= config.epochs and final.is_file():
            return {"history": history, "path": final}
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    if not train:
        from agglib.training._contracts import NotTrainedError

        raise NotTrainedError(f"no finished encoder of this configuration in {out_dir} "
                              f"({start_epoch} of {config.epochs} epochs done)")

    show = agglib.config.get("progress_bars") if show_progress_bars is None else show_progress_bars
    images = torch.from_numpy(np.concatenate([store.read_images(t_idx)]
                                             + [extra.read_images(rows) for extra, rows in extra_training]))
    y = torch.from_numpy((train_labels - np.asarray(scaling["mean"], np.float32))
                         / np.asarray(scaling["sd"], np.float32))
    bce_mask = torch.tensor([ENCODER_TARGETS[n].loss == "bce" for n in names], device=device)
    val_pick = np.sort(np.random.default_rng([config.seed, 1]).permutation(e_idx.size)[:config.val_images])
    val_images = torch.from_numpy(store.read_images(e_idx[val_pick])) if val_pick.size else None
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bf16)
    bar = tqdm(range(start_epoch, config.epochs), desc="encoder epochs", disable=not show,
               initial=start_epoch, total=config.epochs)
    for epoch in bar:
        if stop_after_epochs is not None and epoch - start_epoch >= stop_after_epochs:
            return {"history": history, "path": None}
        order = np.random.default_rng([config.seed, epoch]).permutation(n_train)
        gen = _epoch_generator(config.seed, epoch)
        model.train()
        t0, running = time.perf_counter(), 0.0
        steps = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}", leave=False, disable=not show)
        for step in steps:
            batch = torch.from_numpy(order[step * config.batch:(step + 1) * config.batch])
            x = encoder_inputs(augment_counts(images[batch], gen, config.max_shift_px), epp).to(device)
            set_lr(optimizer, one_cycle_lr(epoch * steps_per_epoch + step, total_steps, config.lr))
            with autocast:
                _, out = model(x)
            loss = multitask_loss(out.float(), y[batch].to(device), bce_mask)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            running += float(loss.detach())
        seconds = time.perf_counter() - t0
        record = {"epoch": epoch, "train_loss": running / steps_per_epoch, "train_seconds": seconds,
                  "images_per_s": steps_per_epoch * config.batch / max(seconds, 1e-9)}
        if val_images is not None:
            record.update(_scores(model, val_images, labels_raw[e_idx[val_pick]], names, scaling, epp, device))
        history.append(record)
        save_checkpoint(last, "encoder", meta, model.state_dict(), optimizer_state=optimizer.state_dict(),
                        progress={"epoch": epoch, "step": (epoch + 1) * steps_per_epoch}, history=history)
        bar.set_postfix(loss=f"{record['train_loss']:.3f}")
    _precise_batchnorm(model, images, epp, device, config)
    save_checkpoint(final, "encoder", {**meta, "epochs_trained": len(history), "bn_recalibrated": config.bn_batches},
                    model.state_dict(), history=history)
    atomic_write_text(out_dir / "history.json", json.dumps(history, indent=1))
    return {"history": history, "path": final}

