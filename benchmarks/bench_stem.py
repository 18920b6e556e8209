"""Virtual HAADF-STEM images per second at 512², against one abTEM multislice curve (the anchor).

    python benchmarks/bench_stem.py [--seconds 3] [--no-anchor]

For aggregates of N = 20, 50, 80 particles (θ = (1.8, 0.5, 2, 2), default settings: 512² px,
0.85 nm/px, 149 e/Å², blur, scan and shot noise): images per second with 1 process and with
all cores (process start-up included). The anchor is the wall time abTEM 1.0.11 takes for one
off-axis curve of the shipped table's settings (HAADF vs thickness to 60 nm); the renderer
draws an image from such curves, so the ratio says how many images one curve's time buys.
"""

from __future__ import annotations

import argparse
import os
import time

import agglib
from agglib.core.parallel import resolve_workers
from agglib.stem import StemSettings, load_reference_table, render_stem_many
from timing import items_per_second


def render_rate(aggregates, workers, min_seconds, settings):
    """Images per second over at least ``min_seconds``."""
    render_stem_many(aggregates[:4], seed=1, settings=settings, workers=1, show_progress_bars=False)

    def run(count):
        batch = (aggregates * (count // len(aggregates) + 1))[:count]
        render_stem_many(batch, seed=0, settings=settings, workers=workers, show_progress_bars=False)

    return items_per_second(run, len(aggregates), min_seconds)


def abtem_curve_seconds():
    """Wall time of one off-axis abTEM curve with the shipped table's settings [s]."""
    import abtem

    from agglib.stem.crystals import PHASES, build_crystal
    from agglib.stem.multislice import MultisliceSettings, simulate_curve
    from agglib.stem.orientations import table_orientations

    abtem.config.set({"fftw.planning_effort": "FFTW_ESTIMATE"})
    table = load_reference_table()
    settings = MultisliceSettings(**{**table.provenance["settings"],
                                     "detector_mrad": tuple(table.provenance["settings"]["detector_mrad"])})
    atoms = build_crystal("TiO2-rutile")
    orientation = table_orientations(atoms.cell.array)[-1]            # the random tilt
    t = time.perf_counter()
    simulate_curve(atoms, orientation, PHASES["TiO2-rutile"].sigmas, settings)
    return time.perf_counter() - t


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=3.0, help="minimum timing per case [s]")
    ap.add_argument("--no-anchor", action="store_true", help="skip the abTEM curve")
    args = ap.parse_args(argv)
    workers = resolve_workers(None)
    settings = StemSettings()
    print(f"agglib {agglib.__version__}, {workers} cores, images {settings.image_size_px}² px at "
          f"{settings.pixel_size_nm} nm/px, >= {args.seconds:g} s per case, "
          f"NUMBA_NUM_THREADS={os.environ.get('NUMBA_NUM_THREADS', 'default')}")
    header = f"{'N':>3} | {'1 process':>12} {f'{workers} processes':>14}"
    print(header)
    print("-" * len(header))
    rates = {}
    for n in (20, 50, 80):
        aggs = agglib.generate_aggregates(agglib.ModelParams(1.8, 0.5, 2, 2), 32, seed=n, n_particles=n,
                                          workers=1, show_progress_bars=False)
        r1 = render_rate(aggs, 1, args.seconds, settings)
        rw = render_rate(aggs, workers, args.seconds, settings)
        rates[n] = rw
        print(f"{n:>3} | {r1:>10.0f}/s {rw:>12.0f}/s", flush=True)
    if not args.no_anchor:
        seconds = abtem_curve_seconds()
        print(f"abTEM 1.0.11, one off-axis curve (rutile, 0–60 nm, table settings): {seconds:.1f} s")
        for n, r in rates.items():
            print(f"  N={n}: {r * seconds:,.0f} images in the time of one curve")


if __name__ == "__main__":
    main()
