"""Training the set-level posterior (:class:`agglib.posterior.SetPosterior`) on cached embeddings.

The encoder's embeddings of the training images are computed once; each step draws ``batch``
configurations, a set size M uniform on 1 … ``max_images`` (at most the images a configuration
has in T) and, for each configuration, a random subset of M of its images. The loss is the sum
over θ_Df, θ_ρ, θ0, θ1 of the cross-entropy of the true grid cell (neural posterior estimation).
Every random draw comes from ``default_rng([seed, step])``: the run is a function of its seed.
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
    members, counts = config_members(config_id)
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
    return model.eval(), history
