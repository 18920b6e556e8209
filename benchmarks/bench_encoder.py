"""Does bf16 autocast keep the encoder's accuracy, and how much faster is it? (anchor: fp32)

    python benchmarks/bench_encoder.py [--epochs 12] [--store data/datasets/quick-seed0.zarr]

Trains the image encoder twice on the quick grid dataset's T with the quick profile's settings
(without the continuous dataset's extra images, to keep the benchmark short) — once under
bfloat16 autocast, once in float32 — and reports training images/s and the per-image MAE of
every head on all of E. Needs the quick dataset (notebook 3 or ``agglib dataset build --profile
quick --out data/datasets/quick-seed0.zarr``). Results go to ``benchmarks/results/bench_encoder.txt``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

import agglib
from agglib.dataset import DatasetStore
from agglib.encoder import TrainedEncoder, encoder_labels, per_image_errors
from agglib.sets_training import train_encoder
from agglib.sets_training.pipeline import encoder_config

ROOT = Path(__file__).resolve().parents[1]


def per_image_mae(encoder: TrainedEncoder, store: DatasetStore) -> dict:
    """Every head's per-image error on all of E (homogeneous: misclassified share)."""
    idx = store.indices("E")
    pred = encoder.encode(store.read_images(idx)).predictions
    return per_image_errors(pred, encoder_labels(store.theta, store.descriptors)[idx])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--epochs", type=int, default=12, help="encoder epochs of each run")
    ap.add_argument("--store", default=str(ROOT / "data" / "datasets" / "quick-seed0.zarr"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_encoder.txt"))
    args = ap.parse_args(argv)
    agglib.config.set(progress_bars=False)
    store = DatasetStore(args.store)
    prof = agglib.load_profile("quick")
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, bf16 in (("bf16 autocast", True), ("float32", False)):
            result = train_encoder(store.path, encoder_config(prof, 0, epochs=args.epochs, bf16=bf16),
                                   Path(tmp) / label.replace(" ", "_"), show_progress_bars=False)
            speed = float(np.median([h["images_per_s"] for h in result["history"]]))
            rows[label] = {"images/s": speed, **per_image_mae(TrainedEncoder.load(result["path"]), store)}
    names = list(rows["float32"])
    lines = [f"encoder, quick dataset, {args.epochs} epochs each; per-image MAE on all {store.indices('E').size} "
             "images of E (homogeneous: misclassified share)",
             "| quantity | bf16 autocast | float32 | ratio |", "|---|---|---|---|"]
    for name in names:
        a, b = rows["bf16 autocast"][name], rows["float32"][name]
        lines.append(f"| {name} | {a:.4g} | {b:.4g} | {a / b if b else float('nan'):.2f} |")
    text = "\n".join(lines)
    print(text)
    Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
