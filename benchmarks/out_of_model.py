"""Does the shipped estimators' out-of-model warning stay silent on in-model samples and fire on others?

    OMP_NUM_THREADS=1 python benchmarks/out_of_model.py [--configs 300] [--oom-samples 50]
        [--fracval-samples 20] [--fracval-aggregates 4] [--seed 0]

Measures the reference each estimator stores (fitted during training on its posterior's training
images; ``est.out_of_model(est.encoder.encode(images).outputs)``, what ``agglib fit`` uses), for
the default ``sets-quick-robust`` (``load_default_estimator()``: trained on a randomised
acquisition shared by each sample's images) and ``sets-quick`` (trained on the paper's acquisition):

1. *false alarms*: ``--configs`` fresh in-model configurations × 24 images from
   :func:`agglib.evaluate.fresh_configurations` (quick profile) with ``prior="continuous"`` and
   ``prior="grid"``, at the simulator's settings, and — for the robust estimator only, the acquisition
   it was trained on — with ``acquisition=AcquisitionRanges()`` (one acquisition per configuration,
   shared by its images; the same θ and aggregates as the paper-acquisition samples of that prior:
   same seed), cut into disjoint samples of M = 1, 4, 12, 24 images of one configuration;
2. *detections*: ``--oom-samples`` samples × 12 images of each kind of
   :func:`agglib.evaluate.out_of_model.out_of_model_samples` (half-radius particles; EDX-like W and
   Ti maps put on a HAADF signal level), at M = 12 and on disjoint subsets of M = 4;
3. *another generator* (when ``pyfracval`` is installed, ``pip install pyfracval==0.1.0``):
   ``--fracval-samples`` samples of FracVAL aggregates (D_f uniform on 1.6–2.2 per sample, k_f 1.3,
   N uniform on 20–80, the model's radius law; each particle WO3 with a per-sample probability
   uniform on 0.2–0.8), ``--fracval-aggregates`` aggregates per sample, each rendered with
   :func:`agglib.stem.render_stem` at 12 / ``--fracval-aggregates`` random orientations
   (FracVAL takes about 1 s per aggregate, with failed attempts); ``--fracval-budget`` caps its time.

Prints a markdown report; writes it to ``benchmarks/results/out_of_model.txt`` and the same rows to
``agglib/data/runs/out_of_model.json`` (``--record``), the recorded run notebook 10 shows.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
import sys
import tempfile
import time
import warnings

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SET_SIZES = (1, 4, 12, 24)
OOM_SIZES = (4, 12)
OOM_LABELS = {"half_radius": "half-radius particles (6 ± 1.5 nm)", "edx_w": "EDX-like W map (WO3 only)",
              "edx_ti": "EDX-like Ti map (TiO2 only)", "fracval": "FracVAL aggregates (D_f 1.6–2.2)"}


def rates(estimator, outputs: np.ndarray, sizes) -> dict:
    """outputs (samples, images, K) → {M: (flagged, sets, median statistic / threshold)} over disjoint
    consecutive sets of M images of each sample."""
    out = {}
    for m in sizes:
        k = outputs.shape[1] // m
        scores = [estimator.out_of_model(s) for s in outputs[:, :k * m].reshape(-1, m, outputs.shape[-1])]
        out[m] = (sum(s["out_of_model"] for s in scores), len(scores),
                  float(np.median([s["statistic"] / s["threshold"] for s in scores])))
    return out


def encode(estimator, images: np.ndarray, n_samples: int) -> np.ndarray:
    flat = images.reshape(-1, *images.shape[-2:])
    return np.asarray(estimator.encoder.encode(flat).outputs, dtype=np.float64).reshape(n_samples, -1, 13)


def fracval_samples(settings, n_samples, n_aggregates, images_per_sample, seed, budget_s):
    """Images (samples, M, H, W) [counts] of FracVAL aggregates, the per-sample D_f, and attempts/successes."""
    from pyfracval.main_runner import run_simulation

    from agglib import Aggregate
    from agglib.model.particles import RadiusDistribution
    from agglib.stem import ExtrapolationWarning, render_stem

    logging.disable(logging.CRITICAL)
    law = RadiusDistribution()
    base = dict(kf=1.3, rp_g=float(np.exp(law.mu_ln)), rp_gstd=float(np.exp(law.sigma_ln)), tol_ov=1e-6,
                n_subcl_percentage=0.1, ext_case=0)
    size = settings.image_size_px
    images, dfs, attempts, t0 = [], [], 0, time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for ss in np.random.SeedSequence([int(seed), 30]).spawn(n_samples):
            if time.perf_counter() - t0 > budget_s:
                break
            rng = np.random.default_rng(ss)
            df, wo3_share = float(rng.uniform(1.6, 2.2)), float(rng.uniform(0.2, 0.8))
            sample = np.empty((images_per_sample, size, size), dtype=np.float32)
            j = 0
            for a in range(n_aggregates):
                ok = False
                while not ok and time.perf_counter() - t0 <= budget_s:
                    attempts += 1
                    ok, xyz, r = run_simulation(0, dict(base, N=int(rng.integers(20, 81)), Df=df),
                                                output_base_dir=tmp, seed=int(rng.integers(2**31 - 1)))
                if not ok:
                    break
                xyz = xyz - np.average(xyz, axis=0, weights=r ** 3)      # about the centre of mass
                agg = Aggregate(xyz, r, (rng.random(len(r)) >= wo3_share).astype(np.int64))   # 0 = WO3
                views = images_per_sample // n_aggregates + (a < images_per_sample % n_aggregates)
                for _ in range(views):
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", ExtrapolationWarning)
                        sample[j] = render_stem(agg, seed=rng, settings=settings)
                    j += 1
            if j == images_per_sample:
                images.append(sample)
                dfs.append(df)
    return np.array(images), np.array(dfs), attempts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--configs", type=int, default=300, help="fresh in-model configurations × 24 images per kind")
    ap.add_argument("--oom-samples", type=int, default=50, help="out-of-model samples × 12 images per kind")
    ap.add_argument("--fracval-samples", type=int, default=20, help="FracVAL samples × 12 images (0: skip)")
    ap.add_argument("--fracval-aggregates", type=int, default=4, help="FracVAL aggregates per sample")
    ap.add_argument("--fracval-budget", type=float, default=150.0, help="FracVAL time cap [s]")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "out_of_model.txt"))
    ap.add_argument("--record", default=str(ROOT / "agglib" / "data" / "runs" / "out_of_model.json"),
                    help="the rows as JSON (the recorded run notebook 10 shows)")
    args = ap.parse_args(argv)
    command = "OMP_NUM_THREADS=1 python benchmarks/out_of_model.py " + " ".join(sys.argv[1:] if argv is None else argv)

    import torch

    import agglib
    from agglib.estimate import SampleEstimator, load_default_estimator, shipped_models_dir
    from agglib.evaluate import fresh_configurations
    from agglib.evaluate.out_of_model import OUT_OF_MODEL_KINDS, out_of_model_samples
    from agglib.stem.acquisition import AcquisitionRanges

    torch.set_num_threads(1)
    agglib.config.set(progress_bars=False)
    estimators = {"sets-quick-robust": load_default_estimator(),
                  "sets-quick": SampleEstimator.load(shipped_models_dir("sets"))}
    settings = estimators["sets-quick"].stem_settings
    assert all(e.stem_settings == settings for e in estimators.values())
    profile = agglib.load_profile("quick")
    timing, t_all, n_enc = {}, time.perf_counter(), 0

    # 1. false alarms: (label, prior, acquisition, seed, estimators)
    in_model = [("continuous θ, paper acquisition", "continuous", None, args.seed + 1, list(estimators)),
                ("grid θ, paper acquisition", "grid", None, args.seed + 2, list(estimators)),
                ("continuous θ, AcquisitionRanges() per sample", "continuous", AcquisitionRanges(), args.seed + 1,
                 ["sets-quick-robust"]),
                ("grid θ, AcquisitionRanges() per sample", "grid", AcquisitionRanges(), args.seed + 2,
                 ["sets-quick-robust"])]
    results = {}                                   # (estimator, label) → rates
    for label, prior, acquisition, seed, names in in_model:
        t = time.perf_counter()
        images = fresh_configurations(profile, args.configs, max(SET_SIZES), seed, prior=prior,
                                      acquisition=acquisition, workers=1, show_progress_bars=False)["images"]
        timing["in-model: simulate"] = timing.get("in-model: simulate", 0.0) + time.perf_counter() - t
        for name in names:
            t = time.perf_counter()
            results[name, label] = rates(estimators[name], encode(estimators[name], images, args.configs), SET_SIZES)
            key = "in-model: encode and score"
            timing[key] = timing.get(key, 0.0) + time.perf_counter() - t
            n_enc += images.shape[0]

    # 2. detections
    oom = {}
    for i, kind in enumerate(OUT_OF_MODEL_KINDS):
        t = time.perf_counter()
        images = out_of_model_samples(kind, settings, args.oom_samples, 12, args.seed + 10 + i)["images"]
        for name, est in estimators.items():
            results[name, kind] = rates(est, encode(est, images, args.oom_samples), OOM_SIZES)
            n_enc += images.shape[0] * images.shape[1]
        oom[kind] = (args.oom_samples, f"seed {args.seed + 10 + i}")
        timing[f"{kind} (simulate, encode, score)"] = time.perf_counter() - t

    # 3. another generator
    fracval_note = "FracVAL: skipped (--fracval-samples 0)."
    if args.fracval_samples:
        try:
            import pyfracval  # noqa: F401
        except ImportError:
            fracval_note = "FracVAL: skipped, pyfracval not installed (pip install pyfracval==0.1.0)."
        else:
            t = time.perf_counter()
            images, dfs, attempts = fracval_samples(settings, args.fracval_samples, args.fracval_aggregates, 12,
                                                    args.seed + 20, args.fracval_budget)
            if len(images):
                for name, est in estimators.items():
                    results[name, "fracval"] = rates(est, encode(est, images, len(images)), OOM_SIZES)
                    n_enc += images.shape[0] * images.shape[1]
                oom["fracval"] = (len(images), f"seed {args.seed + 20}")
            timing["fracval (generate, render, encode, score)"] = time.perf_counter() - t
            fracval_note = (f"FracVAL (pyfracval 0.1.0, seed {args.seed + 20}): {len(images)} of "
                            f"{args.fracval_samples} samples completed within {args.fracval_budget:g} s, 12 images "
                            f"of each from {args.fracval_aggregates} aggregates at random orientations "
                            f"({len(images) * args.fracval_aggregates} successful runs of {attempts} attempts); "
                            f"sample D_f {', '.join(f'{d:.2f}' for d in dfs)}.")

    ref = estimators["sets-quick-robust"].out_of_model_reference
    ref_info = {"level": ref.level, **ref.info}

    def cell(r):
        k, n, _ = r
        return f"{k / n:.3f} ({k}/{n})"

    lines = ["# Out-of-model warning of the shipped estimators' stored references", "",
             f"Command: `{command}` (torch threads 1). Reference: "
             f"`est.out_of_model(est.encoder.encode(images).outputs)` — encoder head outputs, combined statistic, "
             f"level {ref_info['level']}, fitted in training on the posterior's training images "
             f"({ref_info['configs']} configurations, {ref_info['fit_images']} images). Images: 128² px at 3.4 nm/px, "
             f"{settings.dose_e_per_A2:g} e/Å² (the quick profile's simulator settings).", "",
             f"False alarms: {args.configs} fresh configurations × 24 images per row (`fresh_configurations`, quick "
             f"profile; seed {args.seed + 1} for continuous θ, {args.seed + 2} for grid θ; the AcquisitionRanges rows "
             f"reuse those seeds: same θ and aggregates, one drawn acquisition per configuration), disjoint samples "
             f"of M images of one configuration. Entries: share flagged (flagged / samples).", "",
             "## False alarms on in-model samples (target ≈ 0.01, ≤ 0.05)", "",
             "| estimator | in-model samples | " + " | ".join(f"M = {m}" for m in SET_SIZES) + " |",
             "|---|---|" + "---|" * len(SET_SIZES)]
    for label, _, _, _, names in in_model:
        for name in names:
            lines.append(f"| {name} | {label} | " + " | ".join(cell(results[name, label][m]) for m in SET_SIZES)
                         + " |")
    lines += ["", "## Detections on out-of-model samples (target ≥ 0.90 at M = 12)", "",
              "Samples of 12 images (M = 4: disjoint thirds). " + "; ".join(
                  f"{k}: {n} samples, {s}" for k, (n, s) in oom.items()) + ". Median ratio: median over samples "
              "of statistic / threshold at M = 12 (> 1: flagged).", "",
              "| estimator | samples | " + " | ".join(f"M = {m}" for m in OOM_SIZES) + " | median ratio, M = 12 |",
              "|---|---|" + "---|" * (len(OOM_SIZES) + 1)]
    for kind in oom:
        for name in estimators:
            r = results[name, kind]
            lines.append(f"| {name} | {OOM_LABELS[kind]} | " + " | ".join(cell(r[m]) for m in OOM_SIZES)
                         + f" | {r[12][2]:.2f} |")
    lines += ["", fracval_note, "",
              "Time [s], one core: " + ", ".join(f"{k} {v:.0f}" for k, v in timing.items())
              + f"; total {time.perf_counter() - t_all:.0f} ({n_enc} image encodings)."]
    text = "\n".join(lines)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    rows = [{"estimator": name, "samples": label, "kind": "in-model", "M": m, "flagged": results[name, label][m][0],
             "sets": results[name, label][m][1]} for label, _, _, _, names in in_model for name in names
            for m in SET_SIZES]
    rows += [{"estimator": name, "samples": OOM_LABELS[kind], "kind": "out-of-model", "M": m,
              "flagged": results[name, kind][m][0], "sets": results[name, kind][m][1]}
             for kind in oom for name in estimators for m in OOM_SIZES]
    record = {"command": command, "date": time.strftime("%Y-%m-%d"), "level": ref_info["level"],
              "configs": args.configs, "fracval": fracval_note, "rows": rows}
    Path(args.record).write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
