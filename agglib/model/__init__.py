"""The stochastic 3D model of TiO2–WO3 hetero-aggregates (paper §2.1.1–2.1.2)."""

from agglib.model.aggregate import MATERIAL_NAMES, TIO2, WO3, Aggregate
from agglib.model.generate import AggregationError, generate_aggregate, generate_aggregates
from agglib.model.params import (CONTACT_FACTOR, DF_GRID, FRACTAL_PREFACTOR, N_PARTICLES_RANGE,
                                 RHO_GRID, THETA_GRID, ModelParams, RadiusDistribution,
                                 draw_grid_params)

__all__ = ["Aggregate", "AggregationError", "ModelParams", "RadiusDistribution",
           "generate_aggregate", "generate_aggregates", "draw_grid_params", "WO3", "TIO2", "MATERIAL_NAMES",
           "CONTACT_FACTOR", "FRACTAL_PREFACTOR", "DF_GRID", "RHO_GRID", "THETA_GRID",
           "N_PARTICLES_RANGE"]
