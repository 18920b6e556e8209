"""Figures of virtual HAADF-STEM images, their maps and the HAADF reference curves.

Images are embedded as PNG (``go.Image``) rather than heatmaps: a 512² heatmap would put
262,144 numbers per image into the page; a PNG is a few tens of kB and still zooms and pans.
Axes are in nm.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from agglib.model.aggregate import TIO2, WO3, Aggregate
from agglib.visualize.aggregates import MATERIAL_COLOURS, _material_mesh, _scene, _extent

__all__ = ["plot_stem_image", "plot_aggregate_and_image", "plot_render_maps", "plot_haadf_curves",
           "plot_haadf_measurements",
           "plot_image_slider", "plot_field_of_view", "image_trace"]

_PHASE_DASH = ["solid", "dash", "dot", "dashdot"]


def _png_data_uri(image: np.ndarray, vmin: float | None = None, vmax: float | None = None) -> str:
    from PIL import Image

    img = np.asarray(image, dtype=np.float64)
    lo = float(np.min(img)) if vmin is None else vmin
    hi = float(np.max(img)) if vmax is None else vmax
    scaled = np.clip((img - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0)
    buf = io.BytesIO()
    Image.fromarray((scaled * 255).round().astype(np.uint8), mode="L").save(buf, format="PNG",
                                                                           optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def image_trace(image: np.ndarray, pixel_size_nm: float, vmin=None, vmax=None, name=None) -> go.Image:
    """A grey-scale image trace with axes in nm (row 0 at the top)."""
    return go.Image(source=_png_data_uri(image, vmin, vmax), x0=0.0, dx=pixel_size_nm, y0=0.0,
                    dy=pixel_size_nm, name=name, hoverinfo="x+y")


def _image_axes(fig, row=None, col=None):
    kw = {} if row is None else dict(row=row, col=col)
    fig.update_xaxes(title_text="x [nm]", **kw)
    fig.update_yaxes(title_text="y [nm]", scaleanchor="x" if row is None else None, **kw)


def plot_stem_image(image: np.ndarray, pixel_size_nm: float, title: str | None = None) -> go.Figure:
    """One HAADF-STEM image [counts] with axes in nm."""
    fig = go.Figure(image_trace(image, pixel_size_nm))
    _image_axes(fig)
    fig.update_layout(title=title, height=520, width=560, margin=dict(l=60, r=20, t=50, b=50))
    return fig


def plot_aggregate_and_image(aggregate: Aggregate, result, title: str | None = None) -> go.Figure:
    """The paper's Fig. 3: an aggregate (as oriented for imaging, beam along −z) beside its image.

    Parameters
    ----------
    aggregate : Aggregate
    result : RenderResult
        From ``render_stem(aggregate, ..., return_maps=True)``.
    """
    oriented = aggregate.rotated(result.rotation)
    fig = make_subplots(rows=1, cols=2, specs=[[{"type": "scene"}, {"type": "xy"}]],
                        subplot_titles=("3D aggregate (beam along z)", "virtual HAADF-STEM image"),
                        horizontal_spacing=0.12, column_widths=[0.45, 0.55])
    for mesh in (_material_mesh(oriented, WO3, 8), _material_mesh(oriented, TIO2, 8)):
        if mesh is not None:
            fig.add_trace(mesh, row=1, col=1)
    fig.add_trace(image_trace(result.image, result.settings.pixel_size_nm), row=1, col=2)
    lo, hi = float(result.image.min()), float(result.image.max())
    fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", showlegend=False, hoverinfo="skip",
                             marker=dict(colorscale="gray", cmin=lo, cmax=hi, color=[lo],
                                         colorbar=dict(title="counts", thickness=12, x=1.02))), row=1, col=2)
    fig.update_xaxes(title_text="x [nm]", nticks=6, row=1, col=2)
    fig.update_yaxes(title_text="y [nm]", nticks=6, row=1, col=2)
    fig.update_layout(title=title or (str(aggregate.params) if aggregate.params else None),
                      scene=_scene(_extent([oriented]), ticks=False), height=580, margin=dict(l=0, r=10, t=60, b=40),
                      scene_camera=dict(eye=dict(x=0, y=0, z=-1.9), up=dict(x=0, y=-1, z=0),
                                        center=dict(x=0, y=0, z=0)),
                      legend=dict(orientation="h", x=0.0, y=-0.08))     # beside the colour bar it would overlap
    return fig


def plot_render_maps(result, crop: bool = True) -> go.Figure:
    """Projected thickness [nm] and noise-free HAADF counts per material, and the noisy image."""
    size = result.settings.image_size_px
    px = result.settings.pixel_size_nm
    rows_cols = [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2), (2, 3)]
    panels = [
        (result.thickness_maps["WO3"], f"WO3 t ≤ {result.thickness_maps['WO3'].max():.0f} nm"),
        (result.thickness_maps["TiO2"], f"TiO2 t ≤ {result.thickness_maps['TiO2'].max():.0f} nm"),
        (sum(result.thickness_maps.values()), "total thickness"),
        (result.material_maps["WO3"], f"WO3 ≤ {result.material_maps['WO3'].max():.0f} counts"),
        (result.material_maps["TiO2"], f"TiO2 ≤ {result.material_maps['TiO2'].max():.0f} counts"),
        (result.image, "final image"),
    ]
    if crop:
        occupied = np.argwhere(result.expected > 0)
        lo = np.maximum(occupied.min(axis=0) - 8, 0) if occupied.size else np.array([0, 0])
        hi = np.minimum(occupied.max(axis=0) + 8, size - 1) if occupied.size else np.array([size - 1] * 2)
    else:
        lo, hi = np.array([0, 0]), np.array([size - 1, size - 1])
    fig = make_subplots(rows=2, cols=3, subplot_titles=[t for _, t in panels],
                        horizontal_spacing=0.05, vertical_spacing=0.1)
    vmax_counts = float(max(result.material_maps["WO3"].max(), result.material_maps["TiO2"].max(), 1.0))
    for (data, _), (r, c) in zip(panels, rows_cols):
        vmax = None if r == 1 else (vmax_counts if c < 3 else None)
        sub = data[lo[0]:hi[0] + 1, lo[1]:hi[1] + 1]
        trace = image_trace(sub, px, vmin=0.0, vmax=vmax)
        trace.x0, trace.y0 = lo[1] * px, lo[0] * px
        fig.add_trace(trace, row=r, col=c)
        fig.update_xaxes(title_text="x [nm]", row=r, col=c)
        fig.update_yaxes(title_text="y [nm]" if c == 1 else None, row=r, col=c)   # beside a panel it would overlap
    fig.update_layout(height=760, margin=dict(l=50, r=20, t=120, b=40),
                      title="Thickness (top) and noise-free HAADF maps (bottom) per material<br>(the WO3 and TiO2 HAADF maps share one grey scale)")
    return fig


def plot_haadf_curves(table, title: str | None = None) -> go.Figure:
    """HAADF fraction vs thickness for every phase and orientation of a reference table."""
    fig = go.Figure()
    colour = {"WO3": MATERIAL_COLOURS[WO3], "TiO2": MATERIAL_COLOURS[TIO2]}
    phase_index = {}
    for phase in table.phases:
        material = table.materials[phase]
        dash = _PHASE_DASH[phase_index.setdefault(material, {}).setdefault(phase, len(phase_index[material])) % 4]
        for k, (orientation, values) in enumerate(table.curves[phase].items()):
            fig.add_trace(go.Scatter(x=table.thickness_nm, y=values, mode="lines",
                                     line=dict(color=colour[material], dash=dash, width=1.5),
                                     name=phase, legendgroup=phase, showlegend=k == 0,
                                     hovertemplate=f"{phase} {orientation}<br>%{{x}} nm: %{{y:.4f}}<extra></extra>"))
    fig.update_layout(title=title or "HAADF signal vs thickness (10 orientations per phase)",
                      xaxis_title="thickness [nm]",
                      yaxis_title="HAADF signal [fraction of incident probe]",
                      height=480, legend=dict(x=0.02, y=0.98))
    return fig


def plot_haadf_measurements(comparison, table, efficiency: float, title: str | None = None) -> go.Figure:
    """Measured centre intensities of primary particles (crosses) against the table's mean curve of
    each material, for an ideal detector (dashed) and with the detector ``efficiency`` (solid)."""
    fig = go.Figure()
    colour = {"WO3": MATERIAL_COLOURS[WO3], "TiO2": MATERIAL_COLOURS[TIO2]}
    t = np.asarray(table.thickness_nm)
    for material in ("WO3", "TiO2"):
        g = comparison[comparison["material"] == material]
        fig.add_trace(go.Scatter(x=g["diameter_nm"], y=g["measured"], mode="markers", name=f"{material} measured",
                                 marker=dict(symbol="x", size=7, color=colour[material]),
                                 hovertemplate="diameter %{x:.1f} nm: %{y:.4f}<extra></extra>"))
        curve = table.curve_stack(material).mean(axis=0)
        fig.add_trace(go.Scatter(x=t, y=curve, mode="lines", name=f"{material} table, ideal detector",
                                 line=dict(color=colour[material], dash="dash")))
        fig.add_trace(go.Scatter(x=t, y=curve * efficiency, mode="lines",
                                 name=f"{material} table × detector efficiency {efficiency:.2f}",
                                 line=dict(color=colour[material])))
    fig.update_layout(title=title or "Simulated HAADF signal against measured primary particles",
                      xaxis_title="thickness = particle diameter [nm]",
                      yaxis_title="HAADF signal [fraction of incident beam]", height=540,
                      xaxis_range=[0, 1.1 * float(comparison["diameter_nm"].max())],
                      yaxis_range=[0, 1.3 * float(comparison["measured"].max())],
                      legend=dict(orientation="h", x=0.0, y=-0.2), margin=dict(b=140))   # below: not on the curves
    return fig


def plot_image_slider(images, labels, pixel_size_nm: float, slider_label: str,
                      title: str | None = None, common_scale: bool = False) -> go.Figure:
    """Several images of one scene behind a slider (works in JupyterLab and the static book).

    Parameters
    ----------
    images : sequence of (H, W) arrays
    labels : sequence of str
        Slider tick labels, e.g. doses.
    common_scale : bool
        One grey scale for all images (else each image is scaled to its own range).
    """
    vmax = float(max(np.max(i) for i in images)) if common_scale else None
    fig = go.Figure([image_trace(img, pixel_size_nm, vmin=0.0 if common_scale else None, vmax=vmax)
                     for img in images])
    for k, trace in enumerate(fig.data):
        trace.visible = k == 0
    steps = [dict(method="update", label=str(lab),
                  args=[{"visible": [j == k for j in range(len(images))]}]) for k, lab in enumerate(labels)]
    fig.update_layout(sliders=[dict(active=0, steps=steps, currentvalue=dict(prefix=f"{slider_label}: "),
                                    pad=dict(t=50))],
                      title=title, height=600, width=560, margin=dict(l=60, r=20, t=50, b=40))
    _image_axes(fig)
    return fig


def plot_field_of_view(extents_nm: np.ndarray, df_values: np.ndarray, fov_nm: float,
                       pixel_size_nm: float) -> go.Figure:
    """Share of aggregates wholly inside the field of view, overall and per θ_Df."""
    extents_nm = np.asarray(extents_nm)
    df_values = np.asarray(df_values)
    grid = np.unique(df_values)
    share = [float(np.mean(extents_nm[df_values == d] <= fov_nm)) for d in grid]
    fig = go.Figure(go.Bar(x=[f"{d:.1f}" for d in grid], y=share, name="per θ_Df",
                           hovertemplate="θ_Df %{x}: %{y:.1%}<extra></extra>"))
    overall = float(np.mean(extents_nm <= fov_nm))
    xs = [f"{d:.1f}" for d in grid]
    # reference lines as legend entries: annotations over the bars collide with them and the ticks
    fig.add_trace(go.Scatter(x=xs, y=[overall] * len(xs), mode="lines", line=dict(dash="dash", color="black"),
                             name=f"all θ_Df: {overall:.1%}"))
    fig.add_trace(go.Scatter(x=xs, y=[0.95] * len(xs), mode="lines", line=dict(dash="dot", color="red"),
                             name="target: 95 %"))
    fig.update_layout(title=f"Aggregates wholly inside {fov_nm:.0f} nm ({pixel_size_nm:g} nm/px × "
                            f"{round(fov_nm / pixel_size_nm)} px)",
                      xaxis_title="θ_Df [-]", yaxis_title="share inside the field of view",
                      legend=dict(orientation="h", y=-0.25),
                      yaxis_tickformat=".0%", yaxis_range=[0, 1.05], height=400)
    return fig
