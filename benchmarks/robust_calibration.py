"""Calibration of the default estimator under each fixed acquisition of the robustness table.

    python benchmarks/robust_calibration.py [--configs 300] [--images 24] [--seed 2000]
        [--out agglib/data/runs/robust_calibration.json]

For every acquisition of :data:`agglib.evaluate.robustness.PERTURBATIONS`, the same fresh
configurations (θ from the continuous prior, aggregates and images made in memory, never stored)
are recorded with it; the samples the intensity check of ``agglib fit`` accepts are checked with
:func:`agglib.evaluate.calibration.calibration_report` at M = 1, 4, 12, 24 — for an estimator that
reads a known acquisition, as a user who does not know it runs it and as one who gives its intensity
scale and WO3/TiO2 contrast (``agglib fit --intensity-scale … --wo3-contrast …``). The JSON it writes is
shipped in ``agglib/data/runs/`` and shown by notebook 6 (:func:`agglib.evaluate.recorded_run`).
About 15 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import agglib
from agglib.core.files import atomic_write_text
from agglib.estimate import SampleEstimator, shipped_models_dir
from agglib.evaluate.calibration import calibration_under_acquisitions
from agglib.evaluate.robustness import PERTURBATIONS
from run_records import json_rows, run_header

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--configs", type=int, default=300, help="fresh configurations per acquisition")
    ap.add_argument("--images", type=int, default=24, help="images per configuration (the largest M)")
    ap.add_argument("--seed", type=int, default=2000, help="seed of the configurations, aggregates and images")
    ap.add_argument("--models", default=None, help="estimator folder (None: the shipped default, sets-quick-robust)")
    ap.add_argument("--out", default=str(ROOT / "agglib" / "data" / "runs" / "robust_calibration.json"))
    args = ap.parse_args(argv)
    agglib.config.set(progress_bars=False)
    estimator = SampleEstimator.load(args.models or shipped_models_dir("robust"))
    prof = agglib.load_profile("quick")
    sizes = [m for m in (1, 4, 12, 24) if m <= args.images]
    t0 = time.perf_counter()
    given = (False, True) if estimator.reads_acquisition else (False,)
    table = calibration_under_acquisitions(estimator, prof, PERTURBATIONS, args.configs, sizes, seed=args.seed,
                                           acquisition_given=given)
    record = {**run_header("robust_calibration.py", argv),
              "estimator": "sets-quick-robust" if args.models is None else Path(args.models).name,
              "configs": args.configs, "images": args.images, "seed": args.seed,
              "seconds": round(time.perf_counter() - t0, 1), "rows": json_rows(table)}
    atomic_write_text(Path(args.out), json.dumps(record, indent=1, ensure_ascii=False))
    print(table.round(3).to_string())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
