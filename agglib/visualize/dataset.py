"""Figures of a dataset store: grid coverage, split counts, sample images."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from agglib.visualize.stem import image_trace

__all__ = ["plot_grid_coverage", "plot_split_counts", "plot_image_grid"]


def plot_grid_coverage(store) -> go.Figure:
    """Samples per (θ_ρ, θ_Df) and per (θ0, θ1): which configurations the dataset holds."""
    theta = store.theta
    fig = make_subplots(rows=1, cols=2, subplot_titles=("samples per (θ_Df, θ_ρ)", "samples per (θ0, θ1)"),
                        horizontal_spacing=0.12)
    for col, (a, b) in enumerate(((0, 1), (2, 3)), start=1):
        xs, ys = np.unique(theta[:, a]), np.unique(theta[:, b])
        counts = np.zeros((ys.size, xs.size), dtype=int)
        for x, y in theta[:, [a, b]]:
            counts[np.searchsorted(ys, y), np.searchsorted(xs, x)] += 1
        fig.add_trace(go.Heatmap(x=[f"{v:g}" for v in xs], y=[f"{v:g}" for v in ys], z=counts, coloraxis="coloraxis",
                                 hovertemplate="%{x}, %{y}: %{z} samples<extra></extra>"), row=1, col=col)
    fig.update_xaxes(title_text="θ_Df", row=1, col=1)
    fig.update_yaxes(title_text="θ_ρ", row=1, col=1)
    fig.update_xaxes(title_text="θ0 [particles]", row=1, col=2)
    fig.update_yaxes(title_text="θ1 [particles]", row=1, col=2)
    fig.update_layout(height=420, title="Grid coverage",       # one colour scale for both panels, from 0
                      coloraxis=dict(colorscale="Blues", cmin=0, colorbar=dict(title="samples")))
    return fig


def _span(counts: np.ndarray) -> str:
    """``"18"`` when every configuration has as many samples, else ``"12–18"``."""
    lo, hi = int(counts.min()), int(counts.max())
    return f"{lo}" if lo == hi else f"{lo}–{hi}"


def plot_split_counts(store) -> go.Figure:
    """How many samples of each configuration are in T and in E."""
    n_conf = store.configs.shape[0]
    t = np.bincount(store.config_id[store.split == 0], minlength=n_conf)
    e = np.bincount(store.config_id[store.split == 1], minlength=n_conf)
    fig = go.Figure([go.Histogram(x=t, name="T (training)"), go.Histogram(x=e, name="E (evaluation)")])
    fig.update_layout(barmode="group", height=360, xaxis_title="samples of one configuration [-]",
                      yaxis_title="configurations [-]",
                      title=f"Samples per configuration: T {_span(t)}, E {_span(e)} ({n_conf} configurations)")
    return fig


def plot_image_grid(images, titles, pixel_size_nm: float, cols: int = 4, title: str | None = None) -> go.Figure:
    """Images [counts] in a grid, each on its own grey scale, axes in nm."""
    images = list(images)
    rows = -(-len(images) // cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=list(titles), horizontal_spacing=0.03,
                        vertical_spacing=0.08)
    for k, img in enumerate(images):
        fig.add_trace(image_trace(img, pixel_size_nm), row=k // cols + 1, col=k % cols + 1)
    fig.update_xaxes(showticklabels=False)
    fig.update_yaxes(showticklabels=False)
    fov = images[0].shape[0] * pixel_size_nm if images else 0
    fig.update_layout(height=260 * rows + 60, title=title or f"field of view {fov:.0f} nm per image",
                      margin=dict(l=20, r=20, t=70, b=20))
    return fig
