"""agglib — 3D structure of TiO2–WO3 hetero-aggregates from 2D HAADF-STEM images.

The method of Fuchs et al., "Using convolutional neural networks for stereological
characterization of 3D hetero-aggregates based on synthetic STEM data".
"""

from agglib import config
from agglib.core.seeding import seed_all
from agglib.descriptors import describe
from agglib.model import (Aggregate, AggregationError, ModelParams, ParticleCount, ParticleModel,
                          RadiusDistribution, draw_grid_params, generate_aggregate, generate_aggregates)
from agglib.profiles import Profile, load_profile
from agglib.stem import HaadfTable, StemSettings, load_reference_table, render_stem

__version__ = "0.1.0"

__all__ = ["config", "seed_all", "describe", "Aggregate", "AggregationError", "ModelParams",
           "RadiusDistribution", "ParticleCount", "ParticleModel", "generate_aggregate", "generate_aggregates", "draw_grid_params", "Profile",
           "load_profile", "render_stem", "StemSettings", "HaadfTable", "load_reference_table",
           "__version__"]
