"""HAADF-STEM simulation: reference tables (abTEM) and the fast image renderer (paper §2.1.3–2.1.4)."""

from agglib.stem.reference import (ExtrapolationWarning, HaadfTable, default_table_path,
                                   load_reference_table)
from agglib.stem.render import (DEFAULT_PIXEL_SIZE_NM, RenderResult, StemSettings, render_stem_many,
                                projected_extent_nm, projected_extents, render_stem)

__all__ = ["HaadfTable", "ExtrapolationWarning", "load_reference_table", "default_table_path",
           "StemSettings", "RenderResult", "render_stem", "render_stem_many", "projected_extent_nm", "projected_extents",
           "DEFAULT_PIXEL_SIZE_NM"]
