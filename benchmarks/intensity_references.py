"""Simulate the intensity references of the shipped estimators and ship them with the package.

    python benchmarks/intensity_references.py

``agglib fit`` compares a sample's intensities with samples simulated as the estimator's training
images were (:func:`agglib.fit.intensity.intensity_reference`: 256 configurations × 8 images,
about 20 s on 2 cores per estimator setting). For the shipped estimators those references are
written to ``agglib/data/intensity/`` (package data), so a first ``fit`` — and ``make book`` —
simulate none. Run this after a change to the simulator, the particles or the reference's
statistics; the test suite checks that a shipped reference equals a fresh simulation.
"""

from __future__ import annotations

import time

import numpy as np

import agglib
from agglib.core.files import atomic_open
from agglib.estimate import ParameterEstimator, SampleEstimator, shipped_models_dir
from agglib.fit.intensity import SHIPPED_REFERENCES, reference_file_name, reference_key, simulate_reference


def shipped_keys() -> dict:
    """File name → key of every shipped estimator's reference (estimators of one setting share one)."""
    estimators = [SampleEstimator.load(shipped_models_dir(m)) for m in ("robust", "sets", "bremen2023")]
    estimators.append(ParameterEstimator.load(shipped_models_dir("paper")))
    keys = [reference_key(est) for est in estimators]
    return {reference_file_name(k): k for k in keys}


def main() -> int:
    agglib.config.set(progress_bars=False)
    SHIPPED_REFERENCES.mkdir(parents=True, exist_ok=True)
    keys = shipped_keys()
    for stale in SHIPPED_REFERENCES.glob("intensity-*.npz"):
        if stale.name not in keys:
            stale.unlink()
            print(f"removed {stale.name} (no shipped estimator has its settings)")
    for name, key in keys.items():
        t0 = time.perf_counter()
        stats = simulate_reference(key)
        with atomic_open(SHIPPED_REFERENCES / name) as fh:
            np.savez(fh, **stats)
        print(f"{name}: {time.perf_counter() - t0:.0f} s, signal median {np.median(stats['signal']):.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
