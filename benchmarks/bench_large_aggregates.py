"""What aggregates of real size cost: generation and rendering at N = 20 … 650 (issue 23).

    python benchmarks/bench_large_aggregates.py [--count 8] [--write]

The bremen2023 profile's particles (measured radii per material, Gerken et al. 2023) at
θ = (D_f, 0.5, 3, 3) for D_f in {1.5, 2.0, 2.5} and N in {20, 80, 200, 650}; one process. Per
cell: seconds per aggregate (generation, restarts included; the aggregation kernel is compiled
before timing), the restarts per aggregate, and seconds per image rendered at the profile's
settings (128 px at 0.625 nm/px, 80 nm field of view) and at the paper's (512 px at 0.85 nm/px,
435 nm), the median radius of gyration [nm], and the cost relative to N = 80 (the paper's largest)
at the same D_f — ratios measured in one run, which another machine's speed scales alike.
With ``--write`` the table goes to ``benchmarks/results/bench_large_aggregates.txt`` (notebook 3
shows it).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd

import agglib
from agglib.model.particles import ParticleCount, ParticleModel
from agglib.stem import StemSettings, render_stem

RESULT = Path(__file__).with_name("results") / "bench_large_aggregates.txt"


def measure(count: int) -> pd.DataFrame:
    bremen = agglib.load_profile("bremen2023")
    particles = bremen.particles
    profile_settings = StemSettings(image_size_px=bremen.image_size_px, pixel_size_nm=bremen.pixel_size_nm)
    paper_settings = StemSettings()
    agglib.generate_aggregate(agglib.ModelParams(2.0, 0.5, 3, 3), 20, seed=0, particles=particles)   # compile
    render_stem(agglib.generate_aggregate(agglib.ModelParams(2.0, 0.5, 3, 3), 20, seed=0), seed=0,
                settings=profile_settings)
    rows = []
    for df in (1.5, 2.0, 2.5):
        for n in (20, 80, 200, 650):
            model = ParticleModel(particles.radius_wo3, particles.radius_tio2, ParticleCount(n, n))
            t = time.perf_counter()
            aggs = [agglib.generate_aggregate(agglib.ModelParams(df, 0.5, 3, 3), seed=k, particles=model)
                    for k in range(count)]
            generate_s = (time.perf_counter() - t) / count
            t = time.perf_counter()
            for k, a in enumerate(aggs):
                render_stem(a, seed=k, settings=profile_settings)
            render_s = (time.perf_counter() - t) / count
            t = time.perf_counter()
            for k, a in enumerate(aggs[:2]):
                render_stem(a, seed=k, settings=paper_settings)
            render_paper_s = (time.perf_counter() - t) / min(2, count)
            rg = np.array([agglib.describe(a)["rg"] for a in aggs])
            rows.append({"D_f": df, "N": n, "generate [s]": generate_s,
                         "restarts per aggregate": np.mean([a.info["aggregate_restarts"] + a.info["cluster_restarts"]
                                                            for a in aggs]),
                         "render 128 px, 80 nm [s]": render_s, "render 512 px, 435 nm [s]": render_paper_s,
                         "R_g [nm]": float(np.median(rg))})
    table = pd.DataFrame(rows)
    at_80 = table[table.N == 80].set_index("D_f")
    table["generate / N=80"] = table["generate [s]"] / table["D_f"].map(at_80["generate [s]"])
    table["render / N=80"] = table["render 128 px, 80 nm [s]"] / table["D_f"].map(at_80["render 128 px, 80 nm [s]"])
    return table


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--count", type=int, default=8, help="aggregates per cell")
    ap.add_argument("--write", action="store_true", help=f"write the table to {RESULT}")
    args = ap.parse_args(argv)
    table = measure(args.count)
    text = (f"# python benchmarks/bench_large_aggregates.py --count {args.count}\n"
            f"# {platform.machine()}, {os.cpu_count()} cores, one process used, agglib {agglib.__version__}\n"
            + table.to_string(index=False, float_format=lambda v: f"{v:.3g}") + "\n")
    print(text)
    if args.write:
        RESULT.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
