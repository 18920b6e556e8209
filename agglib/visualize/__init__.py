"""Plotly figures of aggregates and descriptors.

Importing this package registers the ``"agglib"`` plotly renderer and makes it the
default: each figure carries plotly's JSON (drawn by JupyterLab) and an HTML
``<div>`` that uses the one copy of plotly.js the book ships in ``_static/``, so
figures appear in the built book offline without inlining plotly.js per page.
"""

from agglib.visualize.aggregates import (aggregate_explorer, plot_aggregate, plot_aggregate_gallery,
                                        plot_particle_laws)
from agglib.visualize.dataset import plot_grid_coverage, plot_image_grid, plot_split_counts
from agglib.visualize.evaluation import (plot_headlines, plot_confusion, plot_error_by_preset,
                                         plot_prediction_vs_truth, plot_shadow_histograms, plot_shadow_means,
                                         plot_validation_error)
from agglib.visualize.descriptors import plot_batch_means, plot_descriptor_distributions, plot_descriptor_vs_theta
from agglib.visualize.plotly_book import register_book_renderer
from agglib.visualize.posterior import (plot_calibration, plot_coverage, plot_encoder_history, plot_error_by_set_size,
                                        plot_posterior)
from agglib.visualize.stem import (plot_aggregate_and_image, plot_field_of_view, plot_haadf_curves,
                                   plot_haadf_measurements, plot_image_slider, plot_render_maps, plot_stem_image)

register_book_renderer()

__all__ = ["plot_haadf_measurements", "plot_aggregate", "plot_aggregate_gallery", "aggregate_explorer", "plot_particle_laws",
           "plot_descriptor_vs_theta", "plot_batch_means", "plot_descriptor_distributions", "register_book_renderer",
           "plot_stem_image", "plot_aggregate_and_image", "plot_render_maps", "plot_haadf_curves",
           "plot_image_slider", "plot_field_of_view", "plot_grid_coverage", "plot_split_counts",
           "plot_image_grid", "plot_validation_error", "plot_prediction_vs_truth", "plot_error_by_preset",
           "plot_confusion", "plot_shadow_histograms", "plot_shadow_means",
           "plot_encoder_history", "plot_error_by_set_size", "plot_calibration", "plot_posterior", "plot_coverage", "plot_headlines"]
