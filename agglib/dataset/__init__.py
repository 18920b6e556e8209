"""Datasets of (aggregate, image, θ) over the paper's grid, stored in Zarr (paper §2.3)."""

from agglib.dataset.build import build_dataset, generate_sample
from agglib.dataset.plan import EVAL, SPLIT_NAMES, TRAIN, DatasetPlan, make_plan
from agglib.dataset.store import DatasetStore, StoreMismatchError, default_store_path, open_store

__all__ = ["build_dataset", "generate_sample", "make_plan", "DatasetPlan", "DatasetStore", "open_store",
           "StoreMismatchError", "default_store_path", "TRAIN", "EVAL", "SPLIT_NAMES"]
