"""CNN^Df at the paper profile on one GPU: the paper's training, its validation curve and θ̂_Df on E.

    python benchmarks/paper_df.py --work /scratch/paper --out agglib/data/runs/paper_df_h100.json \
        [--device cuda] [--workers 16] [--time-budget-s 420] [--set FIELD=VALUE ...]

Builds (or finds) the paper profile's dataset (32,400 aggregates, 512² px at 0.85 nm/px, seed 0)
in ``--work``, trains the paper's network for D_f(A) with the profile's settings, which are the
paper's (Adam 1e-4, constant rate, batch 16, MSE, 30 epochs; best checkpoint by validation loss)
with the profile's ``val_images`` and ``bn_batches``, and scores it on E. The validation that
picks the best checkpoint is on V, 1/6 of T's configurations held out of training
(:class:`agglib.paper_training.TrainConfig` ``val_share``), never on E; E only scores the best and the last
checkpoint: the per-image MAE of D̂_f(A) against D_f(A), and the MAE of θ̂_Df (the mean of D̂_f
over disjoint groups of ν = 12 images of one configuration, Eq. 13) against the preset θ_Df,
beside the paper's 0.041 and the trivial predictor (the mean θ_Df of T). With ``--bn-batches`` > 0
the BatchNorm statistics are recomputed over that many batches of T∖V before each validation; the
history keeps the validation MAE with training's running averages too (``val_mae_running_bn``),
so one run shows both. A ``--work`` run made before V existed is not resumed (its best epoch was
chosen on E): use a new ``--work`` folder.

Rerunning with the same ``--work`` resumes the training where it stopped (also on another machine
with the folder copied: the dataset is identified by its content, not its path). The JSON holds
the command, the device, the timings, the history and the scores; notebook 7 plots it.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import torch

def predict_on_device(net, held, indices, chunk: int = 256) -> np.ndarray:
    """D̂_f(A) of the images ``indices``, held on the device (``ResidentImages``) and preprocessed there."""
    out = []
    with torch.no_grad():
        for k in range(0, len(indices), chunk):
            x = net.preprocess(held.counts(indices[k:k + chunk]))[:, None]
            out.append(net.model(x).float().cpu())
    return torch.cat(out).numpy()


def score(checkpoint: Path, epoch: int, store, held, device, nu: int) -> dict:
    """θ̂_Df and per-image D̂_f(A) MAE on all of E of one checkpoint, beside the trivial predictor's."""
    from agglib.estimate import load_estimator
    from agglib.evaluate.estimators import batch_estimates, mae, trivial_mae

    net = load_estimator(checkpoint, device)
    idx = store.indices("E")
    pred = predict_on_device(net, held, idx)
    truth = store.descriptors["df"].to_numpy()[idx]
    groups = batch_estimates(pd.DataFrame({"index": idx, "prediction": pred}), store, nu, split="E", seed=0)
    return {"checkpoint": checkpoint.name, "epoch": int(epoch),
            "theta_df_mae": mae(groups["estimate"], groups["theta_df"]),
            "theta_df_mae_trivial": trivial_mae(store, groups["theta_df"].to_numpy(), "df"),
            "theta_df_groups": int(len(groups)),
            "per_image_df_mae": mae(pred, truth),
            "per_image_df_mae_trivial": trivial_mae(store, truth, "df"),
            "images": int(idx.size)}


def _is_report(path: Path) -> bool:
    """Whether ``path`` is a report this script wrote (which a rerun may replace)."""
    try:
        return str(json.loads(path.read_text()).get("command", "")).startswith("python benchmarks/paper_df.py")
    except (OSError, ValueError, AttributeError):
        return False


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", required=True, help="folder for the dataset store and the run (resumed if present)")
    ap.add_argument("--out", required=True, help="JSON file of the results")
    ap.add_argument("--device", default="cuda", help="cuda, cuda:1, cpu (default: %(default)s)")
    ap.add_argument("--workers", type=int, default=16, help="processes building and reading the dataset (default: %(default)s)")
    ap.add_argument("--time-budget-s", type=float, default=None,
                    help="stop training after the epoch during which this many seconds passed (default: none)")
    ap.add_argument("--profile", default="paper", help="profile of the dataset (default: %(default)s)")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="override a profile field, e.g. --set epochs_single=2 (repeatable; for trial runs)")
    args = ap.parse_args(argv)

    from agglib.core.files import atomic_write_text
    from agglib.dataset import build_dataset
    from agglib.dataset.pytorch import ResidentImages
    from agglib.estimate import load_estimator
    from agglib.evaluate import PAPER_RESULTS
    from agglib.profiles import load_profile
    from agglib.paper_training import train_for_profile

    out = Path(args.out)
    if out.exists() and not _is_report(out):          # checked before hours of work, not after
        ap.error(f"--out {out} exists and is not a report of this script; it is never replaced: choose another file")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    changes = dict(item.split("=", 1) for item in args.set)
    profile = load_profile(args.profile, **{k: json.loads(v) for k, v in changes.items()})
    path = work / f"{args.profile}-seed0.zarr"
    t = time.perf_counter()
    store = build_dataset(path, profile, seed=0, workers=args.workers)
    build_seconds = time.perf_counter() - t
    t = time.perf_counter()
    result = train_for_profile(profile, "df", path, work, device=args.device, num_workers=None,
                               time_budget_s=args.time_budget_s, checkpoint_every_steps=400)
    train_seconds = time.perf_counter() - t
    device = torch.device(args.device)
    held = ResidentImages(store.path, store.indices("E"), device, num_workers=args.workers)   # E read once
    best_epoch = int(load_estimator(work / "df" / "best.pt").metadata["epoch"])
    scores = [score(work / "df" / name, epoch, store, held, device, profile.batch_size)
              for name, epoch in (("best.pt", best_epoch), ("last.pt", len(result["history"]) - 1))]
    paper_mae = PAPER_RESULTS["θ̂_Df MAE"]
    report = {
        "command": "python benchmarks/paper_df.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
        "torch": torch.__version__, "profile": args.profile, "profile_changes": changes,
        "dataset": {"samples": len(store), "T": int(store.indices("T").size), "E": int(store.indices("E").size),
                    "image_size_px": int(store.images.shape[1]), "build_seconds_this_call": build_seconds},
        "train_config": result["metadata"]["train_config"], "train_seconds_this_call": train_seconds,
        "validation": result["metadata"]["validation"],          # the best epoch is chosen on V, not on E
        "epochs_done": len(result["history"]), "history": result["history"], "scores": scores,
        "paper": {"theta_df_mae": paper_mae, "nu": profile.batch_size},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(report, indent=1) + "\n")
    best = scores[0]
    print(f"CNN^Df, {args.profile} profile, {len(result['history'])} epochs on {report['device']}: "
          f"θ̂_Df MAE {best['theta_df_mae']:.4f} (paper {paper_mae}, trivial {best['theta_df_mae_trivial']:.4f}); "
          f"per-image D̂_f MAE {best['per_image_df_mae']:.4f} (trivial {best['per_image_df_mae_trivial']:.4f}); "
          f"build {build_seconds:.0f} s, training {train_seconds:.0f} s → {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
