"""Characterise your own images: θ̂ with intervals from measured HAADF-STEM images, and digital shadows."""

from agglib.fit.characterise import (MIN_STABLE_IMAGES, FitResult, characterise, draw_shadows, export_shadows,
                                     prepare_image, shadow_summary)
from agglib.fit.io import SUPPORTED_SUFFIXES, ImageInputError, MeasuredImage, read_image

__all__ = ["characterise", "FitResult", "prepare_image", "draw_shadows", "export_shadows", "shadow_summary",
           "read_image", "MeasuredImage", "ImageInputError", "SUPPORTED_SUFFIXES", "MIN_STABLE_IMAGES"]
