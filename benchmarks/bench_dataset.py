"""Dataset samples per second (aggregate + 512² image + descriptors, written to Zarr), 1 vs 2 workers.

    python benchmarks/bench_dataset.py [--samples-per-config 6]

Builds a slice of the paper profile (all θ0, θ1 and θ_Df draws for θ_ρ = 0.5: 72 configurations)
with the Dask build on 1 and on all cores, and extrapolates to the paper's 32,400 samples. The
anchor is the serial loop without Dask or Zarr (the same work in one process, kept in memory);
then the time of one sample is split into its steps (aggregate, image, descriptors, compression).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

import agglib
from agglib.core.parallel import resolve_workers
from agglib.dataset import build_dataset, make_plan
from agglib.dataset.build import stem_settings_for
from agglib.descriptors import DESCRIPTOR_NAMES

PAPER_SAMPLES = 32400


def timed_build(profile, workers, tmp: Path) -> float:
    path = tmp / f"bench-{workers}.zarr"
    shutil.rmtree(path, ignore_errors=True)
    t = time.perf_counter()
    build_dataset(path, profile, seed=1, workers=workers, show_progress_bars=False)
    return time.perf_counter() - t


def step_times(profile, count: int = 100) -> dict:
    """Seconds per sample of each step, in this process."""
    import numcodecs

    from agglib.stem import render_stem

    plan = make_plan(profile, seed=2)
    settings = stem_settings_for(profile)
    blosc = numcodecs.Blosc(cname="zstd", clevel=3, shuffle=numcodecs.Blosc.BITSHUFFLE)
    totals = dict.fromkeys(("aggregate", "image", "descriptors", "compress"), 0.0)
    for i in range(count):
        a_seed, i_seed = np.random.SeedSequence(int(plan.sample_seed[i])).spawn(2)
        t0 = time.perf_counter()
        agg = agglib.generate_aggregate(agglib.ModelParams(*plan.theta[i]), seed=a_seed)
        t1 = time.perf_counter()
        img = render_stem(agg, seed=i_seed, settings=settings)
        t2 = time.perf_counter()
        d = agglib.describe(agg)
        _ = [d[k] for k in DESCRIPTOR_NAMES]
        t3 = time.perf_counter()
        blosc.encode(img.astype(np.uint32))
        t4 = time.perf_counter()
        for key, dt in zip(totals, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            totals[key] += dt
    return {k: v / count for k, v in totals.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples-per-config", type=int, default=6)
    args = ap.parse_args(argv)
    cores = resolve_workers(None)
    profile = agglib.load_profile("paper", rho_values=[0.5], samples_per_config=args.samples_per_config,
                                  eval_per_config=max(1, args.samples_per_config // 3), shard_size=24)
    n = profile.n_samples
    print(f"agglib {agglib.__version__}, {cores} cores; paper profile slice: {n} samples, "
          f"{profile.image_size_px}² px images at {profile.pixel_size_nm} nm/px")
    steps = step_times(profile)
    serial = sum(steps.values())
    print(f"anchor, serial loop in one process (no Dask, no Zarr): {1 / serial:.1f} samples/s")
    with tempfile.TemporaryDirectory() as tmp:
        rates = {}
        for w in sorted({1, cores}):
            seconds = timed_build(profile, w, Path(tmp))
            rates[w] = n / seconds
            print(f"Dask build, {w} worker(s): {n} samples in {seconds:.1f} s = {rates[w]:.1f} samples/s "
                  f"(×{rates[w] * serial:.2f} the serial loop); paper profile ({PAPER_SAMPLES:,}) ≈ "
                  f"{PAPER_SAMPLES / rates[w] / 60:.1f} min")
    print("time per sample in one process, by step:")
    for k, v in steps.items():
        print(f"  {k:<12} {v * 1e3:7.2f} ms  ({v / serial:5.1%})")


if __name__ == "__main__":
    main()
