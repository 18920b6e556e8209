"""Evaluation: the estimators on E (paper §3.1–3.3) and, later, digital shadows (§3.4)."""

from agglib.evaluate.estimators import (PAPER_RESULTS, batch_estimates, batch_groups, batch_size_study,
                                        confusion_table, default_run_dir, integer_accuracy, mae,
                                        predict_split, r2, results_table, trivial_mae)

__all__ = ["PAPER_RESULTS", "predict_split", "batch_groups", "batch_estimates", "batch_size_study",
           "integer_accuracy", "confusion_table", "mae", "r2", "trivial_mae", "default_run_dir",
           "results_table"]
