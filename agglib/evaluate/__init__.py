"""Evaluation: the estimators on E (paper §3.1–3.3), the new method's posterior, digital shadows (§3.4)."""

from agglib.evaluate.estimators import (PAPER_RESULTS, batch_estimates, batch_groups, confusion_table, default_run_dir, mae,
                                        paper_method_estimates, r2, recorded_run, recorded_run_scores, recorded_scores,
                                        same_as_recorded,
                                        results_table, trivial_mae, HEADLINES, recorded_headlines,
                                        recorded_coverage)
from agglib.evaluate.sets import (CeilingShadows, ceiling, error_by_set_size, fresh_configurations,
                                  posterior_on_store, theta_scores, trivial_theta_scores, true_summaries)
from agglib.evaluate.shadows import (PAPER_SHADOW_RESULTS, SHADOW_DESCRIPTORS, error_by_particle_count,
                                    shadow_comparison, shadow_params, shadow_range_coverage, shadow_table)

__all__ = ["HEADLINES", "recorded_headlines", "recorded_coverage", "recorded_run", "recorded_run_scores", "recorded_scores", "same_as_recorded", "CeilingShadows", "shadow_range_coverage", "PAPER_SHADOW_RESULTS", "SHADOW_DESCRIPTORS", "error_by_particle_count", "shadow_comparison",
           "shadow_params", "shadow_table", "PAPER_RESULTS", "batch_groups", "batch_estimates",
           "confusion_table", "mae", "r2", "trivial_mae", "default_run_dir",
           "results_table", "paper_method_estimates", "ceiling", "error_by_set_size",
           "fresh_configurations", "posterior_on_store", "theta_scores", "trivial_theta_scores", "true_summaries"]
