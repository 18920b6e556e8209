"""A plotly renderer whose output shows both in JupyterLab and in the offline book."""

from __future__ import annotations

import plotly.io as pio
from plotly.io._base_renderers import MimetypeRenderer

RENDERER_NAME = "agglib"


class BookRenderer(MimetypeRenderer):
    """Emit ``application/vnd.plotly.v1+json`` and an HTML div without plotly.js.

    The HTML expects a global ``Plotly`` object, which the book loads once from
    ``_static/plotly.min.js`` (copied from the installed plotly package at build time).
    """

    def to_mimebundle(self, fig_dict):
        html = pio.to_html(fig_dict, include_plotlyjs=False, full_html=False,
                           config={"displaylogo": False, "responsive": True}, validate=False)
        return {"application/vnd.plotly.v1+json": fig_dict, "text/html": html}


def register_book_renderer(make_default: bool = True) -> None:
    """Register the ``"agglib"`` renderer (and make it plotly's default)."""
    pio.renderers[RENDERER_NAME] = BookRenderer()
    if make_default:
        pio.renderers.default = RENDERER_NAME


def plotly_js_path():
    """Path of the plotly.min.js shipped inside the installed plotly package."""
    from importlib.resources import files

    return files("plotly") / "package_data" / "plotly.min.js"
