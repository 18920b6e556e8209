"""Command-line interface: ``agglib <command> ...`` for batch jobs."""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import agglib


def _cmd_generate(args) -> int:
    params = agglib.ModelParams(args.df, args.rho, args.theta0, args.theta1)
    aggs = agglib.generate_aggregates(params, args.count, seed=args.seed, n_particles=args.n_particles,
                                      cluster_sizes=args.cluster_sizes, workers=args.workers)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    width = len(str(max(args.count - 1, 0)))
    for k, agg in enumerate(aggs):
        agg.save(out / f"aggregate_{k:0{width}d}.npz")
    print(f"wrote {len(aggs)} aggregates with {params} to {out}/")
    return 0


def _cmd_describe(args) -> int:
    writer = csv.writer(sys.stdout)
    writer.writerow(["file", *agglib.descriptors.DESCRIPTOR_NAMES])
    for path in args.paths:
        d = agglib.describe(agglib.Aggregate.load(path))
        writer.writerow([path, *(d[k] for k in agglib.descriptors.DESCRIPTOR_NAMES)])
    return 0


def _cmd_profiles(args) -> int:
    from agglib.profiles import available_profiles, load_profile

    for name in available_profiles():
        p = load_profile(name)
        print(f"{name}: {p.description}")
        for k, v in p.to_dict().items():
            if k not in ("name", "description"):
                print(f"    {k} = {v}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="agglib", description=agglib.__doc__.splitlines()[0])
    ap.add_argument("--version", action="version", version=f"agglib {agglib.__version__}")
    sub = ap.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="draw aggregates from θ and save them as .npz files")
    g.add_argument("--df", type=float, required=True, help="θ_Df, fractal dimension (1, 3)")
    g.add_argument("--rho", type=float, required=True, help="θ_ρ, fraction of WO3 particles [0, 1]")
    g.add_argument("--theta0", type=float, required=True, help="θ0, WO3 primary-cluster size >= 1")
    g.add_argument("--theta1", type=float, required=True, help="θ1, TiO2 primary-cluster size >= 1")
    g.add_argument("--count", type=int, default=1, help="number of aggregates")
    g.add_argument("--n-particles", type=int, default=None, help="N (default uniform on 20..80)")
    g.add_argument("--cluster-sizes", choices=["fixed", "poisson"], default="fixed")
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    g.add_argument("--out", required=True, help="output folder")
    g.set_defaults(func=_cmd_generate)

    d = sub.add_parser("describe", help="descriptors of saved aggregates, as CSV on stdout")
    d.add_argument("paths", nargs="+")
    d.set_defaults(func=_cmd_describe)

    p = sub.add_parser("profiles", help="list the run-size profiles")
    p.set_defaults(func=_cmd_profiles)
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, agglib.AggregationError) as err:
        print(f"agglib: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
