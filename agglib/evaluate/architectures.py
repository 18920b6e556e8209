"""Comparing feature extractors f for CNN^Df on the same data and budget (paper Table 6)."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import torch

from agglib.nets import build_network
from agglib.paper_training import TrainConfig, train_network

__all__ = ["compare_architectures", "inference_rate"]


def inference_rate(arch: str, input_size: int, images: int = 64, batch: int = 32) -> float:
    """Images per second of a forward pass (CPU threads as configured) [1/s]."""
    net = build_network(arch, input_size).eval()
    x = torch.randn(batch, 1, input_size, input_size)
    with torch.no_grad():
        net(x[:4])
        t = time.perf_counter()
        done = 0
        while done < images:
            net(x)
            done += batch
    return done / (time.perf_counter() - t)


def compare_architectures(store, archs, train_images: int, run_dir, seed: int = 0,
                          eval_images: int | None = None, lr: float = 1e-4,
                          schedule: str = "constant") -> pd.DataFrame:
    """Train CNN^Df with each architecture on the same ``train_images`` augmented images of T
    (one pass, Adam at ``lr`` with ``schedule``), then measure per-image D̂_f MAE on
    ``eval_images`` images of E, training and inference speed.

    Returns one row per architecture: parameters, train images/s, inference images/s, MAE, and the
    run time relative to the fastest.
    """
    rows = []
    size = int(store.identity["stem_settings"]["image_size_px"])
    steps = max(1, train_images // 16)
    for arch in archs:
        cfg = TrainConfig(target="df", arch=arch, epochs=1, steps_per_epoch=steps, seed=seed, lr=lr,
                          schedule=schedule, val_images=eval_images)
        result = train_network(store.path, cfg, Path(run_dir) / f"table6-{arch}", show_progress_bars=False)
        hist = result["history"][-1]            # one epoch: its weights are scored on E after training
        rows.append({"architecture": arch, "parameters": result["metadata"]["parameters"],
                     "train images/s": hist["images_per_s"], "inference images/s": inference_rate(arch, size),
                     "per-image D̂_f MAE": result["E"]["last"]["E_mae"],
                     "training time [s]": hist["train_seconds"]})
    df = pd.DataFrame(rows).set_index("architecture")
    df["relative run time"] = df["training time [s]"] / df["training time [s]"].min()
    return df.round({"train images/s": 1, "inference images/s": 1, "per-image D̂_f MAE": 4,
                     "training time [s]": 1, "relative run time": 2})
