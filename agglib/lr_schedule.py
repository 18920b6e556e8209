"""Learning rate as a pure function of the step (after facebookresearch/mae ``util/lr_sched.py``).

Because the rate depends on nothing but the step number, a resumed run continues on exactly the
schedule of an uninterrupted one — nothing to fast-forward or replay.
"""

from __future__ import annotations

import math

__all__ = ["one_cycle_lr", "set_lr"]


def one_cycle_lr(step: int, total_steps: int, peak_lr: float, warmup: float = 0.15,
                 final_ratio: float = 1e-3) -> float:
    """Linear warm-up over the first ``warmup`` share of the steps, then cosine decay.

    Parameters
    ----------
    step : int
        Steps already taken (0-based).
    total_steps : int
        Steps of the whole run.
    peak_lr : float
        Rate at the end of the warm-up.
    warmup : float
        Share of the steps spent warming up, in [0, 1).
    final_ratio : float
        Rate at the last step as a share of ``peak_lr``.
    """
    total_steps = max(int(total_steps), 1)
    n_warm = max(int(round(warmup * total_steps)), 1)
    if step < n_warm:
        return peak_lr * (step + 1) / n_warm
    progress = min((step - n_warm) / max(total_steps - n_warm, 1), 1.0)
    low = peak_lr * final_ratio
    return low + 0.5 * (peak_lr - low) * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer, lr: float) -> None:
    """Set the learning rate of every parameter group."""
    for group in optimizer.param_groups:
        group["lr"] = lr
