"""HAADF-STEM simulation: reference tables (abTEM) and the fast image renderer (paper §2.1.3–2.1.4)."""

from agglib.stem.reference import (ExtrapolationWarning, HaadfTable, default_table_path,
                                   load_reference_table)
from agglib.stem.render import (DEFAULT_PIXEL_SIZE_NM, RenderResult, StemSettings,
                                projected_extent_nm, render_stem)

__all__ = ["HaadfTable", "ExtrapolationWarning", "load_reference_table", "default_table_path",
           "StemSettings", "RenderResult", "render_stem", "projected_extent_nm",
           "DEFAULT_PIXEL_SIZE_NM"]
