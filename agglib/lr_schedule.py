"""Learning rate as a pure function of the step (after facebookresearch/mae ``util/lr_sched.py``).

Because the rate depends on nothing but the step number, a resumed run continues on exactly the
schedule of an uninterrupted one — nothing to fast-forward or replay.
"""

from __future__ import annotations

import math

__all__ = ["one_cycle_lr", "torch_one_cycle", "set_hyperparameters"]


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


def set_hyperparameters(optimizer, values: dict) -> None:
    """Set ``lr`` (and ``beta1`` of Adam-like optimizers) of every parameter group from ``values``
    (:func:`one_cycle_lr` as ``{"lr": …}``, :func:`torch_one_cycle`; missing keys are kept)."""
    for group in optimizer.param_groups:
        if "lr" in values:
            group["lr"] = values["lr"]
        if "beta1" in values:
            group["betas"] = (values["beta1"], *group["betas"][1:])


def _cosine(start: float, end: float, pct: float) -> float:
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)


def torch_one_cycle(step: int, total_steps: int, max_lr: float, pct_start: float = 0.15, div_factor: float = 25.0,
                    final_div_factor: float = 1e4, base_momentum: float = 0.85,
                    max_momentum: float = 0.95) -> dict:
    """The rate and Adam's β1 of :class:`torch.optim.lr_scheduler.OneCycleLR` (cosine, two phases)
    after ``step`` steps, as a pure function — the same floats, step for step (a test).

    The paper networks' ``schedule="onecycle"``: from ``max_lr / div_factor`` up to ``max_lr``
    over ``pct_start`` of the steps, then down to ``max_lr / div_factor / final_div_factor``;
    β1 cycles the other way between ``max_momentum`` and ``base_momentum``.

    Returns
    -------
    dict
        ``{"lr": float, "beta1": float}``.
    """
    initial = max_lr / div_factor
    low = initial / final_div_factor
    warm_end = float(pct_start * total_steps) - 1
    if step <= warm_end:
        pct = step / warm_end
        return {"lr": _cosine(initial, max_lr, pct), "beta1": _cosine(max_momentum, base_momentum, pct)}
    pct = (step - warm_end) / (total_steps - 1 - warm_end)
    return {"lr": _cosine(max_lr, low, pct), "beta1": _cosine(base_momentum, max_momentum, pct)}
