"""What a sample's images tell the default estimator about their acquisition, and what it costs.

    python benchmarks/acquisition_identifiability.py [--configs 1000] [--images 24] [--seed 6000]
        [--out agglib/data/runs/acquisition_identifiability.json]

Fresh configurations (θ from the continuous prior; aggregates and images made in memory, never
stored), each recorded with one acquisition drawn from the estimator's training ranges and shared
by its images. For M images per sample it writes (:mod:`agglib.evaluate.identifiability`):

* the cross-validated R² with which the pooled summaries the posterior reads predict each
  acquisition setting (:func:`~agglib.evaluate.identifiability.acquisition_identifiability`);
* the posterior's error, bias and spread of θ_Df and θ_ρ in bins of the extra blur, the pixel
  zoom and the WO3/TiO2 contrast (:func:`~agglib.evaluate.identifiability.error_by_acquisition`).

The JSON is shipped in ``agglib/data/runs/`` and shown by notebook 6
(:func:`agglib.evaluate.recorded_run`). About 5 minutes on 2 CPU cores at the defaults.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import agglib
from agglib.core.files import atomic_write_text
from agglib.estimate import SampleEstimator, shipped_models_dir
from agglib.evaluate.identifiability import acquisition_identifiability, error_by_acquisition
from agglib.evaluate.sets import fresh_configurations
from agglib.stem.acquisition import AcquisitionRanges
from run_records import json_rows, run_header

ROOT = Path(__file__).resolve().parents[1]
#: Bin edges of the settings whose effect on the error is written.
BINS = {"extra_blur_nm": (0.0, 0.3, 0.6, 0.9, 1.2, 1.5), "pixel_zoom": (1.0, 1.0, 1.2, 1.4, 1.6),
        "wo3_contrast": (0.65, 0.8, 0.95, 1.1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--configs", type=int, default=1000, help="fresh configurations (samples)")
    ap.add_argument("--images", type=int, default=24, help="images per sample M")
    ap.add_argument("--seed", type=int, default=6000, help="seed of the configurations, acquisitions and images")
    ap.add_argument("--models", default=None, help="estimator folder (None: the shipped default, sets-quick-robust)")
    ap.add_argument("--workers", type=int, default=None, help="processes making the images (None: one per core)")
    ap.add_argument("--out", default=str(ROOT / "agglib" / "data" / "runs" / "acquisition_identifiability.json"))
    args = ap.parse_args(argv)
    estimator = SampleEstimator.load(args.models or shipped_models_dir("robust"))
    ranges = AcquisitionRanges.from_dict(estimator.training_metadata["acquisition_ranges"])
    t0 = time.perf_counter()
    fresh = fresh_configurations(agglib.load_profile("quick"), args.configs, args.images, args.seed,
                                 prior="continuous", acquisition=ranges, workers=args.workers)
    summaries = estimator.summaries(fresh["images"])
    identifiability = acquisition_identifiability(estimator, fresh, args.images, summaries=summaries)
    errors = {key: error_by_acquisition(estimator, fresh, key, edges, args.images, summaries=summaries)
              for key, edges in BINS.items()}
    record = {**run_header("acquisition_identifiability.py", argv),
              "estimator": "sets-quick-robust" if args.models is None else Path(args.models).name,
              "configs": args.configs, "images": args.images, "seed": args.seed,
              "seconds": round(time.perf_counter() - t0, 1), "identifiability": json_rows(identifiability),
              "error_by": {key: json_rows(table) for key, table in errors.items()}}
    atomic_write_text(Path(args.out), json.dumps(record, indent=1, ensure_ascii=False))
    print(identifiability.round(3).to_string())
    for table in errors.values():
        print(table.round(4).to_string())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
