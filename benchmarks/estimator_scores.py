"""Accuracy and calibration of a trained estimator on fresh configurations (issue 21's protocol).

    python benchmarks/estimator_scores.py [--models agglib/data/models/sets-quick] [--acquisition none|drawn]
        [--configs 300] [--images 24] [--error-seed 1000] [--coverage-seed 2000]

Errors: ``--configs`` configurations drawn from the quick grid (``--error-seed``), ``--images`` images each
at the simulator's settings (and, for ``--acquisition drawn``, the same aggregates recorded with
the measured detector 0.72 and WO3/TiO2 contrast 0.69 — for an estimator that reads a known
acquisition, also with those two values given), θ̂ from the first M images
(:func:`agglib.evaluate.error_by_set_size`, M = 1, 4, 12, 24). Calibration: configurations
from the continuous prior (``--coverage-seed``), at the simulator's settings (``none``) or with one
acquisition drawn per sample (``drawn``; for an estimator that reads a known acquisition, also
with each sample's intensity scale and contrast given), :func:`agglib.evaluate.calibration.calibration_checks`
with 500 draws at M = 1, 4, 12, 24. Prints markdown tables; nothing is trained. With ``--write``
the scores also go to ``<models>/scores.json`` and replace the tables of ``<models>/README.md``
(from its first ``###`` heading to the next bold paragraph): notebook 5 of the book compares its
own fresh rows with that file (:func:`agglib.evaluate.recorded_scores`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

import agglib
from agglib.core.files import atomic_write_text
from agglib.estimate import SampleEstimator
from agglib.evaluate import error_by_set_size, fresh_configurations
from agglib.evaluate.calibration import calibration_report
from agglib.stem.acquisition import AcquisitionRanges
from run_records import run_header

MEASURED = {"intensity_scale": 0.72, "wo3_contrast": 0.69}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--models", default=None, help="estimator folder (None: the shipped sets-quick)")
    ap.add_argument("--acquisition", choices=["none", "drawn"], default="none",
                    help="calibration samples at the simulator's settings or with one drawn acquisition each")
    ap.add_argument("--configs", type=int, default=300, help="fresh configurations per set")
    ap.add_argument("--images", type=int, default=24, help="images per configuration (the largest M)")
    ap.add_argument("--error-seed", type=int, default=1000, help="seed of the grid configurations (errors)")
    ap.add_argument("--coverage-seed", type=int, default=2000, help="seed of the continuous configurations (coverage)")
    ap.add_argument("--write", action="store_true",
                    help="write <models>/scores.json and replace the tables of <models>/README.md")
    args = ap.parse_args(argv)
    agglib.config.set(progress_bars=False)
    from agglib.estimate import shipped_models_dir

    est = SampleEstimator.load(args.models or shipped_models_dir("sets"))
    prof = agglib.load_profile(est.metadata["profile"])
    sizes = [m for m in (1, 4, 12, 24) if m <= args.images]
    grid = fresh_configurations(prof, args.configs, args.images, seed=args.error_seed)
    errors = {"simulator's settings": error_by_set_size(est, est.summaries(grid["images"]), grid["theta"],
                                                        grid["config_id"], sizes, repeats=1)}
    if args.acquisition == "drawn":
        measured = fresh_configurations(prof, args.configs, args.images, seed=args.error_seed, acquisition=MEASURED)
        read = est.summaries(measured["images"])
        errors["measured detector and contrast"] = error_by_set_size(
            est, read, measured["theta"], measured["config_id"], sizes, repeats=1)
        if est.reads_acquisition:
            errors["measured detector and contrast, given"] = error_by_set_size(
                est, est.with_acquisition(read, MEASURED), measured["theta"], measured["config_id"], sizes, repeats=1)
    parts = [f"### Errors, {name} (grid prior, seed {args.error_seed})\n\n{table.round(3).to_markdown(index=False)}"
             for name, table in errors.items()]
    from agglib.dataset.plan import make_plan
    from agglib.evaluate import trivial_theta_scores

    plan = make_plan(prof, seed=0)                # the trivial predictor: the mean θ of the grid's configurations
    first = grid["theta"][np.unique(grid["config_id"], return_index=True)[1]]
    trivial = trivial_theta_scores(plan.configs, first)
    print("trivial predictor (mean θ of the grid), per configuration: "
          + ", ".join(f"{k} {v:.3f}" for k, v in trivial.items()))
    cont = fresh_configurations(prof, args.configs, args.images, seed=args.coverage_seed, prior="continuous",
                                acquisition=AcquisitionRanges() if args.acquisition == "drawn" else None)
    read = est.summaries(cont["images"])
    coverage = calibration_report(est, prof, args.configs, sizes, seed=0, fresh=cont, summaries=read)  # checks seeded M
    parts.append(f"### Coverage of 90 % regions (continuous prior, seed {args.coverage_seed}, acquisition "
                 f"{args.acquisition})\n\n" + coverage.round(3).to_markdown())
    given = None
    if args.acquisition == "drawn" and est.reads_acquisition:
        given = calibration_report(est, prof, args.configs, sizes, seed=0, fresh=cont, summaries=read,
                                   acquisition_given=True)
        parts.append(f"### Coverage of 90 % regions (continuous prior, seed {args.coverage_seed}, acquisition drawn "
                     "and given)\n\n" + given.round(3).to_markdown())
    tables = "\n\n".join(parts)
    print(tables)
    if args.write:
        folder = Path(args.models or shipped_models_dir("sets"))
        record = {**run_header("estimator_scores.py", argv), "configs": args.configs, "images": args.images,
                  "error_seed": args.error_seed, "coverage_seed": args.coverage_seed,
                  "errors": {name: table.to_dict(orient="records") for name, table in errors.items()},
                  "trivial": trivial,
                  "coverage": coverage.reset_index().to_dict(orient="records"),
                  **({} if given is None else {"coverage_acquisition_given": given.reset_index().to_dict(orient="records")})}
        atomic_write_text(folder / "scores.json", json.dumps(record, indent=1, ensure_ascii=False))
        readme = (folder / "README.md").read_text()
        start = readme.index("\n### ") + 1
        end = readme.index("\n**", start) + 1
        atomic_write_text(folder / "README.md", readme[:start] + tables + "\n\n" + readme[end:])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
