"""3D views of aggregates: spheres coloured by material (WO3 blue, TiO2 orange, as in the paper)."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from agglib.model.aggregate import MATERIAL_NAMES, TIO2, WO3, Aggregate

MATERIAL_COLOURS = {WO3: "#1f77b4", TIO2: "#ff7f0e"}


def _unit_sphere(n_lat: int = 8, n_lon: int = 12):
    """Vertices and triangles of a UV sphere of radius 1."""
    lat = np.linspace(0, np.pi, n_lat + 1)
    lon = np.linspace(0, 2 * np.pi, n_lon, endpoint=False)
    v = np.array([[np.sin(t) * np.cos(p), np.sin(t) * np.sin(p), np.cos(t)]
                  for t in lat for p in lon])
    tri = []
    for i in range(n_lat):
        for j in range(n_lon):
            a, b = i * n_lon + j, i * n_lon + (j + 1) % n_lon
            c, d = a + n_lon, b + n_lon
            tri += [(a, b, c), (b, d, c)]
    return v, np.array(tri)


def _material_mesh(agg: Aggregate, material: int, resolution: int) -> go.Mesh3d | None:
    sel = np.flatnonzero(agg.labels == material)
    if sel.size == 0:
        return None
    v, t = _unit_sphere(resolution, 2 * resolution)
    verts = (agg.radii[sel, None, None] * v[None] + agg.positions[sel, None, :]).reshape(-1, 3)
    tris = (t[None] + (np.arange(sel.size) * len(v))[:, None, None]).reshape(-1, 3)
    return go.Mesh3d(x=verts[:, 0], y=verts[:, 1], z=verts[:, 2],
                     i=tris[:, 0], j=tris[:, 1], k=tris[:, 2],
                     color=MATERIAL_COLOURS[material], name=MATERIAL_NAMES[material],
                     flatshading=False, showlegend=True, hoverinfo="name",
                     lighting=dict(ambient=0.45, diffuse=0.8, specular=0.2))


def _scene(extent: float, ticks: bool = True) -> dict:
    """A cube of side 2·extent [nm] seen from far enough that its tick labels stay inside the frame
    (plotly's default camera puts the cube's near corners outside a narrow scene); without ticks,
    no axes and a closer camera (the aggregate lies within the cube's inscribed sphere)."""
    ax = dict(range=[-extent, extent], showbackground=False, zeroline=False, nticks=5, tickfont=dict(size=10),
              visible=ticks)                   # without ticks, no axes at all (the paper's Fig. 2 has none)
    return dict(xaxis={**ax, "title": "x [nm]"}, yaxis={**ax, "title": "y [nm]"},
                zaxis={**ax, "title": "z [nm]"}, aspectmode="cube",
                camera=dict(eye=dict(x=1.55, y=1.55, z=1.0) if ticks else dict(x=1.2, y=1.2, z=0.8),
                            center=dict(x=0, y=0, z=-0.08 if ticks else 0.0)))


def _extent(aggs) -> float:
    return max(float(np.max(np.linalg.norm(a.positions, axis=1) + a.radii)) for a in aggs) * 1.05


def plot_aggregate(agg: Aggregate, title: str | None = None, resolution: int = 8) -> go.Figure:
    """Interactive 3D view of one aggregate (spheres to scale, axes in nm).

    Parameters
    ----------
    agg : Aggregate
    title : str, optional
        Default: θ of the aggregate.
    resolution : int
        Latitude bands per sphere (more is smoother and heavier).
    """
    fig = go.Figure([m for m in (_material_mesh(agg, WO3, resolution),
                                 _material_mesh(agg, TIO2, resolution)) if m is not None])
    fig.update_layout(title=title or (str(agg.params) if agg.params else None),
                      scene=_scene(_extent([agg])), height=520, margin=dict(l=0, r=0, t=60, b=0),
                      legend=dict(orientation="h", y=1.0, x=1.0, xanchor="right", yanchor="bottom"))
    return fig


def plot_aggregate_gallery(aggs, titles=None, cols: int = 2, resolution: int = 6) -> go.Figure:
    """Several aggregates side by side on a common scale (the paper's Fig. 2): each in a cube of the
    same side, without tick labels (the side is given in the title) so that narrow panels are not cut."""
    aggs = list(aggs)
    rows = -(-len(aggs) // cols)
    titles = titles or [str(a.params) for a in aggs]
    fig = make_subplots(rows=rows, cols=cols, specs=[[{"type": "scene"}] * cols] * rows,
                        subplot_titles=titles, horizontal_spacing=0.03, vertical_spacing=0.06)
    extent = _extent(aggs)
    for k, agg in enumerate(aggs):
        r, c = divmod(k, cols)
        for mat in (WO3, TIO2):
            mesh = _material_mesh(agg, mat, resolution)
            if mesh is not None:
                mesh.showlegend = k == 0
                mesh.legendgroup = MATERIAL_NAMES[mat]
                fig.add_trace(mesh, row=r + 1, col=c + 1)
        fig.layout[f"scene{k + 1 if k else ''}"].update(_scene(extent, ticks=False))
    fig.update_layout(height=380 * rows, margin=dict(l=10, r=10, t=90, b=10),
                      title=dict(text=f"common scale: cubes of side {2 * extent:.0f} nm", font=dict(size=13)),
                      legend=dict(orientation="h", y=-0.02, x=0.5, xanchor="center"))
    return fig


def aggregate_explorer(n_particles: int = 50, seed: int = 0):
    """ipywidgets sliders for θ driving a 3D view (JupyterLab only; the book shows a static figure).
    Returns the view (a plotly ``FigureWidget``, needs anywidget: the ``lab`` extra)."""
    import ipywidgets as widgets
    from IPython.display import display

    from agglib.model import ModelParams, generate_aggregate

    sliders = dict(
        df=widgets.FloatSlider(value=1.8, min=1.5, max=2.5, step=0.1, description="θ_Df"),
        rho=widgets.FloatSlider(value=0.5, min=0.0, max=1.0, step=0.1, description="θ_ρ"),
        theta0=widgets.IntSlider(value=2, min=1, max=6, description="θ_0"),
        theta1=widgets.IntSlider(value=2, min=1, max=6, description="θ_1"),
        n_particles=widgets.IntSlider(value=n_particles, min=20, max=80, description="N"),
        seed=widgets.IntText(value=seed, description="seed"),
    )

    def figure():
        v = {k: s.value for k, s in sliders.items()}
        agg = generate_aggregate(ModelParams(v["df"], v["rho"], v["theta0"], v["theta1"]), v["n_particles"],
                                 seed=v["seed"])
        return plot_aggregate(agg)

    # A plotly FigureWidget redrawn in place: no Output widget capturing .show() inside a callback,
    # which left headless kernels (papermill, nbclient) waiting until their timeout.
    view = go.FigureWidget(figure())

    def redraw(_change=None):
        new = figure()
        with view.batch_update():
            view.data = []
            view.add_traces(list(new.data))
            view.layout = new.layout

    for slider in sliders.values():
        slider.observe(redraw, names="value")
    items = list(sliders.values())
    display(widgets.VBox([widgets.HBox(items[:3]), widgets.HBox(items[3:]), view]))
    return view


def _ecdf(values):
    v = np.sort(np.asarray(values, dtype=float))
    return v, np.arange(1, v.size + 1) / v.size


def plot_particle_laws(particles, measured_radii: dict, measured_counts=None, draws: int = 20000, seed: int = 0,
                       reference=None, title: str | None = None) -> go.Figure:
    """The model's particles beside measured ones: empirical CDFs of the radii per material [nm] and
    of the particles per aggregate N (log axis).

    Parameters
    ----------
    particles : ParticleModel
        The model's laws (drawn ``draws`` times).
    measured_radii : dict
        ``{"WO3": radii, "TiO2": radii}`` [nm].
    measured_counts : array-like, optional
        Measured particles per aggregate.
    reference : ParticleModel, optional
        A second model shown dotted (e.g. the paper's).
    """
    rng = np.random.default_rng(seed)
    panels = ["WO3 radii", "TiO2 radii", "particles per aggregate N"]
    fig = make_subplots(rows=1, cols=3, subplot_titles=panels, horizontal_spacing=0.07)
    models = [("model", particles, "solid")] + ([("paper's model", reference, "dot")] if reference is not None else [])
    colours = {"WO3": "#1f77b4", "TiO2": "#ff7f0e", "N": "#2ca02c"}
    for col, name in enumerate(("WO3", "TiO2"), start=1):
        x, y = _ecdf(measured_radii[name])
        fig.add_trace(go.Scatter(x=x, y=y, mode="markers", marker=dict(size=5, color="black"),
                                 name="measured", legendgroup="measured", showlegend=col == 1), row=1, col=col)
        for label, model, dash in models:
            law = model.radius_wo3 if name == "WO3" else model.radius_tio2
            x, y = _ecdf(law.sample(rng, draws))
            fig.add_trace(go.Scatter(x=x, y=y, mode="lines", line=dict(color=colours[name], dash=dash),
                                     name=label, legendgroup=label, showlegend=col == 1), row=1, col=col)
        fig.update_xaxes(title_text="radius [nm]", row=1, col=col)
    if measured_counts is not None:
        x, y = _ecdf(measured_counts)
        fig.add_trace(go.Scatter(x=x, y=y, mode="markers", marker=dict(size=6, color="black"), name="measured",
                                 legendgroup="measured", showlegend=False), row=1, col=3)
    for label, model, dash in models:
        x, y = _ecdf([model.n_particles.sample(rng) for _ in range(min(draws, 5000))])
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines", line=dict(color=colours["N"], dash=dash, shape="hv"),
                                 name=label, legendgroup=label, showlegend=False), row=1, col=3)
    fig.update_xaxes(title_text="N [particles]", type="log", row=1, col=3)
    fig.update_yaxes(title_text="cumulative share", row=1, col=1)
    fig.update_layout(title=title, height=380, legend=dict(orientation="h", y=-0.25))
    return fig
