"""Training the set-level posterior (:class:`agglib.posterior.SetPosterior`) on cached embeddings.

The encoder's embeddings of the training images are computed once; each step draws ``batch``
configurations, a set size M uniform on 1 … ``max_images`` (at most the images a configuration
has in T) and, for each configuration, a random subset of M of its images. The loss is the sum
over θ_Df, θ_ρ, θ0, θ1 of the cross-entropy of the true grid cell (neural posterior estimation).
Every random draw comes from ``default_rng([seed, step])``: the run is a function of its seed.

A share of the configurations (``calibration_share``) is held out of this training. On random
sets of them the probability integral transform (PIT) of the truth is collected per parameter and
range of M, and its empirical CDF R becomes the recalibration map: the posterior CDF F is
replaced by R(F) (Kuleshov et al. 2018, "Accurate uncertainties for deep learning using
calibrated regression"). On the quick profile the uncalibrated histogram posterior of θ_Df was
too wide for large M and ρ's too narrow for M = 1; calibration is checked independently, by SBC
on the continuous dataset's E (notebook 6).
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

import agglib
from agglib.lr_schedule import one_cycle_lr, set_lr
from agglib.posterior import SetPosterior, ThetaGrid
from agglib.training._contracts import PosteriorConfig

__all__ = ["train_posterior", "config_members"]


def config_members(config_id: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of each configuration, padded with −1: (C, max count) and the count (C,) per configuration."""
    ids, inverse = np.unique(config_id, return_inverse=True)
    counts = np.bincount(inverse)
    table = np.full((ids.size, counts.max()), -1, dtype=np.int64)
    fill = np.zeros(ids.size, dtype=np.int64)
    for row, c in enumerate(inverse):
        table[c, fill[c]] = row
        fill[c] += 1
    return table, counts


def draw_sets(members: np.ndarray, counts: np.ndarray, rows: np.ndarray, m: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """For each configuration ``rows``, a random subset of ``min(m, count)`` members: indices (B, m), mask."""
    keys = rng.random(members[rows].shape)
    keys[members[rows] < 0] = np.inf                     # padding sorts last
    order = np.argsort(keys, axis=1)[:, :m]
    picked = np.take_along_axis(members[rows], order, axis=1)
    mask = np.arange(m)[None, :] < np.minimum(counts[rows], m)[:, None]
    return np.where(mask, picked, 0), mask


def train_posterior(embeddings: np.ndarray, theta: np.ndarray, config_id: np.ndarray, grid: ThetaGrid,
                    config: PosteriorConfig, *, show_progress_bars: bool | None = None) -> tuple[SetPosterior, list]:
    """Fit a :class:`SetPosterior` to embeddings (n, D) of images with their θ (n, 4) and configuration ids.

    Returns the trained module (in eval mode) and the loss history (one record per 100 steps).
    """
    torch.manual_seed(config.seed)
    model = SetPosterior(embeddings.shape[1], grid.sizes(), config.hidden)
    model.set_standardisation(embeddings)
    z = model.standardise(torch.as_tensor(embeddings, dtype=torch.float32))
    target = torch.as_tensor(grid.index(theta), dtype=torch.long)
    all_members, all_counts = config_members(config_id)
    held = np.random.default_rng([config.seed, 10**6]).random(all_members.shape[0]) < config.calibration_share
    if held.all() or (config.calibration_share > 0 and not held.any()):
        held[:] = False
        held[: int(round(config.calibration_share * held.size))] = True
    members, counts = all_members[~held], all_counts[~held]
    max_m = int(min(config.max_images, counts.max()))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    loss_fn = torch.nn.CrossEntropyLoss()
    show = agglib.config.get("progress_bars") if show_progress_bars is None else show_progress_bars
    history, running = [], 0.0
    model.train()
    for step in tqdm(range(config.steps), desc="set posterior", disable=not show):
        rng = np.random.default_rng([config.seed, step])
        rows = rng.integers(0, members.shape[0], config.batch)
        m = int(rng.integers(1, max_m + 1))
        idx, mask = draw_sets(members, counts, rows, m, rng)
        x = z[torch.from_numpy(idx)]
        if config.embedding_noise > 0:
            noise = torch.from_numpy(rng.standard_normal(x.shape).astype(np.float32))
            x = x + config.embedding_noise * noise
        y = target[torch.from_numpy(members[rows, 0])]
        set_lr(optimizer, one_cycle_lr(step, config.steps, config.lr))
        logits = model(x, torch.from_numpy(mask), standardised=True)
        loss = sum(loss_fn(lg, y[:, k]) for k, lg in enumerate(logits))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        running += float(loss.detach())
        if (step + 1) % 100 == 0 or step + 1 == config.steps:
            history.append({"step": step + 1, "loss": running / (step % 100 + 1)})
            running = 0.0
    model.eval()
    if held.any():
        fit_recalibration(model, z, theta, grid, all_members[held], all_counts[held], max_m, config.seed)
    return model, history


def fit_recalibration(model: SetPosterior, z: torch.Tensor, theta: np.ndarray, grid: ThetaGrid, members: np.ndarray,
                      counts: np.ndarray, max_m: int, seed: int, sets_per_size: int = 1000) -> None:
    """Tabulate ``model.recalibration`` from the PIT of the truth on random sets of held-out
    configurations (``members``), M = 1 … ``max_m``; θ0 and θ1 dequantised (θ + U(−½, ½))."""
    from agglib.posterior import PARAMETERS, RECAL_GROUPS, PosteriorEstimate, pit_values, recal_group

    rng = np.random.default_rng([seed, 10**6 + 1])
    pits, sizes = [], []
    with torch.no_grad():
        for m in range(1, max_m + 1):
            rows = rng.integers(0, members.shape[0], sets_per_size)
            idx, mask = draw_sets(members, counts, rows, m, rng)
            probs = model.probabilities(z[torch.from_numpy(idx)], torch.from_numpy(mask), recalibrate=False,
                                        standardised=True)
            estimate = PosteriorEstimate(dict(zip(PARAMETERS, probs)), grid, mask.sum(axis=1))
            pits.append(pit_values(estimate, theta[members[rows, 0]], seed=rng.integers(2**32)).to_numpy())
            sizes.append(mask.sum(axis=1))
    pits, groups = np.concatenate(pits), recal_group(np.concatenate(sizes))
    knots = np.linspace(0.0, 1.0, model.recalibration.shape[-1])
    maps = model.recalibration.clone()
    for k in range(len(PARAMETERS)):
        for g in range(len(RECAL_GROUPS)):
            values = np.sort(pits[groups == g, k])
            if values.size < 50:                   # too few sets of this size: keep the identity
                continue
            r = np.searchsorted(values, knots, side="right") / values.size
            r[0], r[-1] = 0.0, 1.0
            maps[k, g] = torch.from_numpy(np.maximum.accumulate(r))
    model.recalibration.copy_(maps)
