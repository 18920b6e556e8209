"""The stochastic 3D model of TiO2–WO3 hetero-aggregates (paper §2.1.1–2.1.2)."""

from agglib.model.aggregate import MATERIAL_NAMES, TIO2, WO3, Aggregate
from agglib.model.generate import AggregationError, generate_aggregate, generate_aggregates
from agglib.model.params import (CONTACT_FACTOR, DF_GRID, FRACTAL_PREFACTOR, RHO_GRID, THETA_GRID,
                                 ModelParams, draw_grid_params)
from agglib.model.particles import (N_PARTICLES_RANGE, PAPER_PARTICLES, ParticleCount, ParticleModel,
                                    RadiusDistribution)

__all__ = ["Aggregate", "AggregationError", "ModelParams", "RadiusDistribution", "ParticleCount", "ParticleModel",
           "PAPER_PARTICLES",
           "generate_aggregate", "generate_aggregates", "draw_grid_params", "WO3", "TIO2", "MATERIAL_NAMES",
           "CONTACT_FACTOR", "FRACTAL_PREFACTOR", "DF_GRID", "RHO_GRID", "THETA_GRID",
           "N_PARTICLES_RANGE"]
