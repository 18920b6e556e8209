"""Does the out-of-model warning fire on samples the model cannot make, and stay silent on in-model ones?

    python benchmarks/out_of_model.py [--fit-configs 240] [--test-configs 60] [--oom-samples 40] [--seed 0]

With the shipped default estimator (``load_default_estimator()``: the encoder trained on a
randomised acquisition), on 128² images of the quick profile:

1. *fitting*: ``--fit-configs`` in-model configurations × ``--fit-images`` images simulated as
   :func:`agglib.evaluate.out_of_model.reference_for_estimator` does
   (:func:`agglib.misspecification.reference_simulation`: θ_Df, θ_ρ from the grid's values for
   half of the configurations, from the prior's intervals for the others; a quarter of the
   configurations at the paper's acquisition, the rest each with one acquisition drawn from the
   estimator's ``AcquisitionRanges``); a :class:`agglib.misspecification.SummaryReference` for
   each feature vector (``outputs``: the encoder's 13 head outputs; ``embedding``: its 128-d
   embedding) and each set statistic (``combined``, ``set_mean``, ``mean_d2``, ``mean_vector``), thresholds
   cross-fitted (and once without, for the default);
2. *false alarms*: fresh in-model configurations with other seeds — ``--test-configs`` from
   :func:`agglib.evaluate.fresh_configurations` (the quick profile's grid, the paper's acquisition)
   and as many with one drawn acquisition each — cut into disjoint samples of M = 1, 4, 12, 24 images
   of one configuration;
3. *detections*: ``--oom-samples`` samples of ``--oom-images`` images of each out-of-model kind
   (:func:`agglib.evaluate.out_of_model.out_of_model_samples`: half-radius particles; EDX-like W and
   Ti maps scaled to a HAADF signal level).

Also reported: the share of each kind of sample the intensity check of ``agglib fit``
(:mod:`agglib.fit.intensity`) already refuses. Encoded features are cached in ``--cache`` (keyed
by the arguments) so that other levels or statistics are cheap to compare. Prints markdown tables;
writes them to ``benchmarks/results/out_of_model.txt``.
"""

from __future__ import annotations

import argparse
import json
import hashlib
from pathlib import Path
import tempfile
import time
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SET_SIZES = (1, 4, 12, 24)


def load_estimator():
    """The default estimator; its encoder alone if the posterior does not load (only the encoder is needed)."""
    from agglib.estimate import load_default_estimator, shipped_models_dir

    try:
        return load_default_estimator(), "load_default_estimator()"
    except Exception as err:                      # noqa: BLE001 — report and fall back
        from agglib.encoder import TrainedEncoder
        from agglib.stem import StemSettings

        encoder = TrainedEncoder.load(shipped_models_dir("robust") / "encoder.pt")
        note = (f"encoder of {shipped_models_dir('robust').name} (the default estimator's; its posterior did not "
                f"load: {type(err).__name__}: {err})")
        return SimpleNamespace(encoder=encoder, training_metadata=encoder.metadata,
                               stem_settings=StemSettings(**encoder.metadata["stem_settings"])), note


def simulate_and_encode(estimator, args) -> dict:
    """Features (both kinds) and intensity statistics of every sample set of the benchmark."""
    import agglib
    from agglib.evaluate import fresh_configurations
    from agglib.evaluate.out_of_model import OUT_OF_MODEL_KINDS, in_model_samples, out_of_model_samples
    from agglib.evaluate.out_of_model import reference_simulation

    spec = reference_simulation(estimator)                  # as reference_for_estimator simulates
    settings = spec.pop("settings")

    def encode(images, n_sets, m, fractions=True):
        flat = images.reshape(-1, *images.shape[-2:])
        enc = estimator.encoder.encode(flat)
        out = {"embedding": enc.embedding.reshape(n_sets, m, -1).astype(np.float64),
               "outputs": enc.outputs.reshape(n_sets, m, -1).astype(np.float64)}
        if fractions:
            out["fractions"] = images.reshape(n_sets, m, *images.shape[-2:]) / settings.electrons_per_pixel
        return out

    out, timing = {}, {}
    t = time.perf_counter()
    sims = in_model_samples(settings, args.fit_configs, args.fit_images, args.seed, **spec)
    out["fit"] = encode(sims["images"], args.fit_configs, args.fit_images, fractions=False)
    out["fit"]["paper"] = np.array([a is None for a in sims["acquisition"]])
    timing["fit"] = time.perf_counter() - t

    t = time.perf_counter()
    fresh = fresh_configurations(agglib.load_profile("quick"), args.test_configs, max(SET_SIZES), args.seed + 1,
                                 workers=1, show_progress_bars=False)
    out["paper acquisition (fresh_configurations)"] = encode(fresh["images"], args.test_configs, max(SET_SIZES))
    sims = in_model_samples(settings, args.test_configs, max(SET_SIZES), args.seed + 2,
                            **{**spec, "acquisition": "randomised", "grid": None})
    out["randomised acquisition, one per sample"] = encode(sims["images"], args.test_configs, max(SET_SIZES))
    timing["in-model tests"] = time.perf_counter() - t

    for kind in OUT_OF_MODEL_KINDS:
        t = time.perf_counter()
        sims = out_of_model_samples(kind, settings, args.oom_samples, args.oom_images, args.seed + 3,
                                    prior=spec["prior"])
        out[kind] = encode(sims["images"], args.oom_samples, args.oom_images)
        timing[kind] = time.perf_counter() - t
    return out, timing


def intensity_refusals(estimator, sets) -> float:
    """Share of samples (sets of images, as fractions of the beam) the intensity check refuses."""
    from agglib.fit.intensity import check_intensity, intensity_reference

    reference = intensity_reference(estimator)
    return float(np.mean([bool(check_intensity(s, reference)[0]) for s in sets]))


def disjoint_sets(features: np.ndarray, m: int) -> np.ndarray:
    """(configs, n, D) → (configs · ⌊n/m⌋, m, D): disjoint consecutive sets of m images of one configuration."""
    c, n, d = features.shape
    k = n // m
    return features[:, :k * m].reshape(c * k, m, d)


def flagged(reference, sets: np.ndarray) -> float:
    return float(np.mean([reference.score(s)["out_of_model"] for s in sets]))


OOM_LABELS = {"half_radius": "half-radius particles (6 ± 1.5 nm)", "edx_w": "EDX-like W map (WO3 only)",
              "edx_ti": "EDX-like Ti map (TiO2 only)"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--fit-configs", type=int, default=240, help="in-model configurations fitting the reference")
    ap.add_argument("--fit-images", type=int, default=24, help="images per fitting configuration (= max_images)")
    ap.add_argument("--test-configs", type=int, default=60,
                    help="fresh in-model configurations of 24 images for the false alarms, per acquisition kind")
    ap.add_argument("--oom-samples", type=int, default=40, help="out-of-model samples of each kind")
    ap.add_argument("--oom-images", type=int, default=12, help="images M per out-of-model sample")
    ap.add_argument("--level", type=float, default=0.99, help="quantile of the thresholds")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--torch-threads", type=int, default=1, help="CPU threads of the encoder")
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "agglib-out-of-model"),
                    help="folder of cached encoded features")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "out_of_model.txt"))
    args = ap.parse_args(argv)

    import torch

    import agglib
    from agglib.misspecification import COMBINED_PARTS, FEATURES, STATISTICS, SummaryReference

    torch.set_num_threads(args.torch_threads)
    agglib.config.set(progress_bars=False)
    estimator, source = load_estimator()
    key = json.dumps({k: getattr(args, k) for k in ("fit_configs", "fit_images", "test_configs", "oom_samples",
                                                    "oom_images", "seed")} | {"simulation": 2}, sort_keys=True)
    cache = Path(args.cache) / f"features-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"
    t0 = time.perf_counter()
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as f:
            names = json.loads(str(f["names"]))
            data = {n: {k: f[f"{i}:{k}"] for k in ("embedding", "outputs")} for i, n in enumerate(names)}
            data["fit"]["paper"] = f["fit_paper"]
            refused = json.loads(str(f["refused"]))
        timing = {"(cached)": 0.0}
    else:
        data, timing = simulate_and_encode(estimator, args)
        refused = {n: intensity_refusals(estimator, [s[:12] for s in d["fractions"]]) for n, d in data.items()
                   if n != "fit"}
        cache.parent.mkdir(parents=True, exist_ok=True)
        names = list(data)
        np.savez(cache, names=json.dumps(names), fit_paper=data["fit"]["paper"], refused=json.dumps(refused),
                 **{f"{i}:{k}": data[n][k] for i, n in enumerate(names) for k in ("embedding", "outputs")})
    in_model = [n for n in data if n.startswith(("paper", "randomised"))]
    oom = [n for n in data if n in OOM_LABELS]
    n_images = sum(d["outputs"].shape[0] * d["outputs"].shape[1] for d in data.values())

    fit = data["fit"]
    config_id = np.repeat(np.arange(args.fit_configs), args.fit_images)
    m_oom = args.oom_images
    variants = [(feat, stat, True) for feat in FEATURES for stat in STATISTICS] + [("outputs", "combined", False)]
    results, refs = [], {}
    for feat, stat, crossfit in variants:
        x = fit[feat].reshape(-1, fit[feat].shape[-1])
        t = time.perf_counter()
        ref = SummaryReference.fit(x, config_id, args.seed, max_images=args.fit_images, level=args.level,
                                   statistic=stat, crossfit=crossfit, feature_name=feat)
        refs[feat, stat, crossfit] = ref
        row = {"variant": (feat, stat, crossfit), "fit_s": time.perf_counter() - t,
               "shrinkage": (ref.info["shrinkage_within"], ref.info["shrinkage_means"])}
        for n in in_model:
            for m in SET_SIZES:
                sets = disjoint_sets(data[n][feat], m)
                row[n, m], row[n, m, "count"] = flagged(ref, sets), len(sets)
        for n in oom:
            for m in (1, 4, m_oom):
                sets = disjoint_sets(data[n][feat], m)
                row[n, m], row[n, m, "count"] = flagged(ref, sets), len(sets)
            # separation: median over samples of log10(statistic / threshold) at M = oom_images
            row[n, "margin"] = float(np.median([np.log10(ref.set_statistic(s) / ref.threshold(len(s)))
                                                for s in data[n][feat]]))
        results.append(row)

    def name(variant):
        feat, stat, crossfit = variant
        return f"{feat} | {stat} | {'yes' if crossfit else 'no'}"

    default = results[variants.index(("outputs", "combined", True))]
    in_label = {in_model[0]: "in-model, paper acquisition (`fresh_configurations`, grid θ)",
                in_model[1]: "in-model, randomised acquisition (one per sample, θ from the prior)"}
    lines = [f"# Out-of-model warning: {source}", "",
             f"Reference (`reference_simulation`): {args.fit_configs} in-model configurations × {args.fit_images} "
             f"images, θ_Df and θ_ρ from the quick grid's values for half of them and uniform on the prior's "
             f"intervals for the others; a quarter at the paper's acquisition ({int(fit['paper'].sum())} here), "
             f"the rest each with one acquisition drawn from the estimator's AcquisitionRanges. Thresholds at level "
             f"{args.level} from sets of one half's configurations scored by the model of the other half (cross-fit: "
             f"both ways); seed {args.seed}. False alarms: {args.test_configs} fresh configurations × 24 images of each "
             f"acquisition kind (seeds {args.seed + 1}, {args.seed + 2}), disjoint samples of M images of one "
             f"configuration ({args.test_configs} samples at M = 24, {args.test_configs * 24} at M = 1). Detections: "
             f"{args.oom_samples} samples × {m_oom} images of each out-of-model kind (seed {args.seed + 3}; smaller M: "
             f"disjoint subsets). {n_images} images of 128² px encoded in all.", "",
             "## Rates of the default: head outputs, combined statistic, cross-fitted thresholds", "",
             "| samples | M | samples tested | flagged out of model | target |", "|---|---|---|---|---|"]
    for n in in_model:
        lines += [f"| {in_label[n]} | {m} | {default[n, m, 'count']} | {default[n, m]:.3f} | ≤ 0.05 |" for m in SET_SIZES]
    for n in oom:
        lines += [f"| {OOM_LABELS[n]} | {m} | {default[n, m, 'count']} | {default[n, m]:.3f} | "
                  f"{'≥ 0.90' if m == m_oom else '—'} |" for m in (1, 4, m_oom)]
    lines += ["", "## Features and statistics compared (share of samples flagged)", "",
              "| features | statistic | cross-fit | " + " | ".join(
                  [f"in-model {'paper' if n.startswith('paper') else 'random acq.'} M={m}" for n in in_model
                   for m in SET_SIZES] + [f"{n} M={m_oom}" for n in oom]) + " |",
              "|---|---|---|" + "---|" * (len(in_model) * len(SET_SIZES) + len(oom))]
    for r in results:
        lines.append(f"| {name(r['variant'])} | "
                     + " | ".join([f"{r[n, m]:.3f}" for n in in_model for m in SET_SIZES]
                                  + [f"{r[n, m_oom]:.3f}" for n in oom]) + " |")
    lines += ["", "## Detection against M, and separation (median over samples of log10(statistic / threshold) at "
              f"M = {m_oom}; > 0: flagged)", "",
              "| features | statistic | cross-fit | " + " | ".join(f"{n} M={m}" for n in oom for m in (1, 4, m_oom))
              + " | " + " | ".join(f"{n} margin" for n in oom) + " | shrinkage λ (within / means) |",
              "|---|---|---|" + "---|" * (4 * len(oom) + 1)]
    for r in results:
        lines.append(f"| {name(r['variant'])} | "
                     + " | ".join(f"{r[n, m]:.3f}" for n in oom for m in (1, 4, m_oom)) + " | "
                     + " | ".join(f"{r[n, 'margin']:+.2f}" for n in oom)
                     + " | {:.3f} / {:.3f} |".format(*r["shrinkage"]))
    ref = refs["outputs", "combined", True]
    shown = [m for m in (1, 2, 4, 8, 12, 16, 24) if m <= ref.max_images]
    lines += ["", "## Thresholds of the default against M", "",
              "| M | " + " | ".join(str(m) for m in shown) + " |", "|---|" + "---|" * len(shown),
              *[f"| {part}: {args.level} quantile | " + " | ".join(f"{ref.scales[j, m - 1]:.1f}" for m in shown) + " |"
                for j, part in enumerate(COMBINED_PARTS)],
              "| combined: threshold of max(parts / quantiles) | " + " | ".join(f"{ref.threshold(m):.3f}"
                                                                                for m in shown) + " |",
              "", "## Share refused by the intensity check of `agglib fit` (first 12 images of each sample)", "",
              "| samples | refused |", "|---|---|"]
    lines += [f"| {OOM_LABELS.get(n) or in_label[n]} | {v:.3f} |" for n, v in refused.items()]
    lines += ["", "Time [s]: " + ", ".join(f"{k} {v:.0f}" for k, v in timing.items())
              + f"; total {time.perf_counter() - t0:.0f} (torch threads {args.torch_threads})"]
    text = "\n".join(lines)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
