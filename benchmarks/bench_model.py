"""Aggregates per second: agglib's two-stage model against pyfracval (the anchor).

    pip install pyfracval==0.1.0        # the anchor; not a dependency of agglib
    python benchmarks/bench_model.py [--count 200] [--anchor-seconds 30]

For N in {20, 50, 80} and D_f in {1.5, 2.0, 2.5} (k_f = 1.3, radii mean 12 nm, SD 3 nm):
agglib with 1 process and with all cores, pyfracval with 1 process, and the ratio
agglib(1 process) / pyfracval. pyfracval's rate counts failed attempts in its time
(it runs in a child process stopped when its budget is spent); when it finishes no
aggregate within the budget the ratio is a lower bound (">").
agglib uses θ = (D_f, 0.5, 3, 3): mixed primary clusters of 3 particles.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import os
import tempfile
import time

import numpy as np

import agglib
from agglib.core.parallel import resolve_workers
from agglib.model.particles import RadiusDistribution
from timing import items_per_second


def agglib_rate(n, df, workers, min_seconds, seed=0):
    """Aggregates per second, timed over at least ``min_seconds`` (process start-up included)."""
    p = agglib.ModelParams(df, 0.5, 3, 3)
    agglib.generate_aggregates(p, 8, seed=seed + 1, n_particles=n, workers=1,
                               show_progress_bars=False)  # compile / warm
    return items_per_second(lambda count: agglib.generate_aggregates(
        p, count, seed=seed, n_particles=n, workers=workers, show_progress_bars=False), 64, min_seconds)


def _pyfracval_loop(cfg, seed, ok, attempts):
    from pyfracval.main_runner import run_simulation

    logging.disable(logging.CRITICAL)
    with tempfile.TemporaryDirectory() as tmp:
        run_simulation(0, dict(cfg, N=10, Df=1.8), output_base_dir=tmp, seed=1)  # compile / warm
        ready.set()
        k = 0
        while True:
            success, _, _ = run_simulation(k, dict(cfg), output_base_dir=tmp, seed=seed + k)
            with attempts.get_lock():
                attempts.value += 1
                ok.value += bool(success)
            k += 1


def pyfracval_rate(n, df, budget_s, seed=0):
    """(aggregates/s, successes, attempts) of pyfracval in one process over ``budget_s`` seconds.

    pyfracval retries internally without bound, so it runs in a child process that is
    stopped when the budget is spent, whatever it is doing.
    """
    global ready
    law = RadiusDistribution()
    cfg = dict(N=n, Df=df, kf=1.3, rp_g=float(np.exp(law.mu_ln)), rp_gstd=float(np.exp(law.sigma_ln)),
               tol_ov=1e-6, n_subcl_percentage=0.1, ext_case=0)
    ctx = mp.get_context("fork")
    ok, attempts = ctx.Value("i", 0), ctx.Value("i", 0)
    ready = ctx.Event()
    proc = ctx.Process(target=_pyfracval_loop, args=(cfg, seed, ok, attempts), daemon=True)
    proc.start()
    ready.wait(120)
    with attempts.get_lock():
        ok0, att0 = ok.value, attempts.value
    time.sleep(budget_s)
    with attempts.get_lock():
        n_ok, n_att = ok.value - ok0, attempts.value - att0
    proc.kill()
    proc.join()
    return n_ok / budget_s, n_ok, n_att


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=3.0, help="minimum agglib timing per case [s]")
    ap.add_argument("--anchor-seconds", type=float, default=20.0, help="pyfracval time budget per case [s]")
    ap.add_argument("--no-anchor", action="store_true", help="skip pyfracval")
    args = ap.parse_args(argv)
    workers = resolve_workers(None)
    try:
        import pyfracval  # noqa: F401
        anchor = not args.no_anchor
    except ImportError:
        print("pyfracval not installed: pip install pyfracval==0.1.0 (anchor column skipped)")
        anchor = False
    print(f"agglib {agglib.__version__}, >= {args.seconds:g} s per agglib case, "
          f"{args.anchor_seconds:g} s per pyfracval case, {workers} cores, "
          f"NUMBA_NUM_THREADS={os.environ.get('NUMBA_NUM_THREADS', 'default')}")
    header = f"{'N':>3} {'Df':>4} | {'agglib 1 proc':>13} {f'agglib {workers} proc':>13} | {'pyfracval':>10} {'ok/tries':>9} | {'ratio':>8}"
    print(header)
    print("-" * len(header))
    for n in (20, 50, 80):
        for df in (1.5, 2.0, 2.5):
            r1 = agglib_rate(n, df, 1, args.seconds)
            rw = agglib_rate(n, df, workers, args.seconds)
            line = f"{n:>3} {df:>4.1f} | {r1:>11.0f}/s {rw:>11.0f}/s |"
            if anchor:
                ra, ok, tries = pyfracval_rate(n, df, args.anchor_seconds)
                if ok:
                    line += f" {ra:>8.2f}/s {ok:>4}/{tries:<4} | {r1 / ra:>7.0f}×"
                else:
                    line += f" {'0':>8}/s {ok:>4}/{tries:<4} | >{r1 * args.anchor_seconds:>6.0f}×"
            print(line, flush=True)


if __name__ == "__main__":
    main()
