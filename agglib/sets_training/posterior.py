"""Training the set-level posterior (:class:`agglib.posterior.SetPosterior`) on cached summaries.

The encoder's per-image summaries of the training images are computed once; each step draws
``batch`` configurations, a set size M uniform on 1 … ``max_images`` (at most the images a
configuration has) and, for each configuration, a random subset of M of its images. The loss is
the negative log posterior density of the configuration's θ (neural posterior estimation with the
joint mixed family of :mod:`agglib.posterior`). Every random draw comes from
``default_rng([seed, step])``: the run is a function of its seed.

A share of the configurations (``validation_share``) is held out of the gradient steps; the
loss on fixed random sets of them is computed every ``validate_every`` steps and the weights of
the step with the lowest validation loss are the result (early stopping against over-fitting to
the training configurations). The pipeline then widens the posterior as fitted on other held-out
configurations (:mod:`agglib.sets_training.recalibration`); calibration is *checked* on fresh
simulations that neither touched (:mod:`agglib.evaluate.calibration`).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from tqdm.auto import tqdm

import agglib
from agglib.lr_schedule import one_cycle_lr, set_hyperparameters
from agglib.posterior import SetPosterior, ThetaGrid
from agglib.sets_training._contracts import PosteriorConfig

__all__ = ["train_posterior", "train_posterior_ensemble", "config_members", "draw_sets", "set_size",
           "validation_configurations"]


def set_size(rng, max_m: int, law: str) -> int:
    """One set size M ∈ 1 … ``max_m``: uniform, or log-uniform (as many sets of 1–2 images as of
    12–24: small sets, where the posterior is widest and hardest to calibrate, get their share)."""
    if law == "uniform":
        return int(rng.integers(1, max_m + 1))
    return int(min(max_m, np.floor(np.exp(rng.uniform(0.0, np.log(max_m + 1))))))


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


def validation_configurations(config_id: np.ndarray, share: float, seed: int, groups: np.ndarray | None = None) -> np.ndarray:
    """Which configurations (in the order of ``np.unique(config_id)``) :func:`train_posterior` holds
    out of its gradient steps: a share ``share`` of the ``groups`` (rows (n,), constant within a
    configuration; None: each configuration its own group), drawn with ``seed`` — at least one,
    never all, where ``share`` > 0. All configurations of a group are held out together."""
    ids, first = np.unique(config_id, return_index=True)
    if groups is None:                                   # each configuration its own group
        group_of = np.arange(ids.size)
    else:
        groups = np.asarray(groups)
        if len(set(zip(groups.tolist(), np.asarray(config_id).tolist()))) != ids.size:
            raise ValueError("groups must be constant within each configuration")
        group_of = np.unique(groups[first], return_inverse=True)[1].reshape(-1)
    held_group = np.random.default_rng([seed, 10**6]).random(group_of.max() + 1) < share
    if share > 0 and (held_group.all() or not held_group.any()):
        held_group[:] = False
        held_group[: max(1, int(round(share * held_group.size)))] = True
    return held_group[group_of]


def train_posterior(summaries: np.ndarray, theta: np.ndarray, config_id: np.ndarray, grid: ThetaGrid,
                    config: PosteriorConfig, *, groups: np.ndarray | None = None,
                    show_progress_bars: bool | None = None) -> tuple[SetPosterior, list]:
    """Fit a :class:`SetPosterior` to per-image summaries (n, K) with their θ (n, 4) and configuration ids.

    ``groups`` (n,), optional: configurations of one group are held out of the gradient steps
    together (the copies of one configuration read with and without its acquisition, whose images
    and θ are the same); None: each configuration is its own group.

    Returns the trained module (in eval mode, the weights of the best validation step) and the
    history (one record per ``validate_every`` steps: training loss, validation loss).
    """
    torch.manual_seed(config.seed)
    n0, n1 = grid.integers("theta0").size, grid.integers("theta1").size
    model = SetPosterior(summaries.shape[1], n0, n1, config.hidden, config.components)
    model.set_standardisation(summaries)
    z = model.standardise(torch.as_tensor(summaries, dtype=torch.float32))
    pair = torch.as_tensor(grid.discrete_index(theta), dtype=torch.long)
    u = torch.as_tensor(grid.to_unbounded(theta), dtype=torch.float32)
    all_members, all_counts = config_members(config_id)
    held = validation_configurations(config_id, config.validation_share, config.seed, groups)
    members, counts = all_members[~held], all_counts[~held]
    max_m = int(min(config.max_images, counts.max()))
    val_sets = _validation_sets(all_members[held], all_counts[held], max_m, config.seed) if held.any() else []
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    show = agglib.config.get("progress_bars") if show_progress_bars is None else show_progress_bars
    history, running, best = [], 0.0, (np.inf, None, 0)
    model.train()
    bar = tqdm(range(config.steps), desc="set posterior", disable=not show)
    for step in bar:
        rng = np.random.default_rng([config.seed, step])
        rows = rng.integers(0, members.shape[0], config.batch)
        m = set_size(rng, max_m, config.set_sizes)
        idx, mask = draw_sets(members, counts, rows, m, rng)
        first = torch.from_numpy(members[rows, 0])
        set_hyperparameters(optimizer, {"lr": one_cycle_lr(step, config.steps, config.lr)})
        loss = -model.log_prob(z[torch.from_numpy(idx)], torch.from_numpy(mask), pair[first], u[first],
                               standardised=True).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        running += float(loss.detach())
        if (step + 1) % config.validate_every == 0 or step + 1 == config.steps:
            record = {"step": step + 1, "loss": running / (step % config.validate_every + 1)}
            if val_sets:
                record["val_loss"] = _validation_loss(model, z, pair, u, val_sets)
                if record["val_loss"] < best[0]:
                    best = (record["val_loss"], copy.deepcopy(model.state_dict()), step + 1)
                model.train()
            history.append(record)
            bar.set_postfix(loss=f"{record['loss']:.3f}", val=f"{record.get('val_loss', float('nan')):.3f}")
            running = 0.0
    if best[1] is not None:
        model.load_state_dict(best[1])
        history.append({"step": best[2], "chosen": True, "val_loss": best[0]})
    return model.eval(), history


def train_posterior_ensemble(summaries: np.ndarray, theta: np.ndarray, config_id: np.ndarray, grid: ThetaGrid,
                             config: PosteriorConfig, *, groups: np.ndarray | None = None,
                             show_progress_bars: bool | None = None):
    """``config.members`` posteriors (:func:`train_posterior`, seeds ``seed · 1000 + k``, each with its
    own held-out configurations, or ``groups`` of them) as one :class:`agglib.posterior.PosteriorEnsemble`;
    returns it and the members' histories (``member`` added to each record)."""
    from dataclasses import replace

    from agglib.posterior import PosteriorEnsemble

    members, history = [], []
    for k in range(config.members):
        model, hist = train_posterior(summaries, theta, config_id, grid, replace(config, seed=config.seed * 1000 + k),
                                      groups=groups, show_progress_bars=show_progress_bars)
        members.append(model)
        history += [{**h, "member": k} for h in hist]
    return PosteriorEnsemble(members).eval(), history


def _validation_sets(members, counts, max_m, seed, per_size: int = 4):
    """Fixed random sets of the held-out configurations: ``per_size`` per configuration and M in
    1, 2, 4, 8 … ``max_m``."""
    rng = np.random.default_rng([seed, 10**6 + 1])
    sizes = sorted({*(2 ** k for k in range(8) if 2 ** k <= max_m), max_m})
    rows = np.repeat(np.arange(members.shape[0]), per_size)
    return [(members[rows, 0], *draw_sets(members, counts, rows, m, rng)) for m in sizes]


@torch.no_grad()
def _validation_loss(model, z, pair, u, sets) -> float:
    model.eval()
    total, n = 0.0, 0
    for first, idx, mask in sets:
        first = torch.from_numpy(first)
        lp = model.log_prob(z[torch.from_numpy(idx)], torch.from_numpy(mask), pair[first], u[first], standardised=True)
        total += float(-lp.sum())
        n += lp.numel()
    return total / max(n, 1)
