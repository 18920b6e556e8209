"""Figures of descriptors against model parameters (the paper's Figs. 4 and 5)."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from agglib.descriptors import DESCRIPTOR_UNITS

THETA_LABELS = {"df": "θ_Df [-]", "rho": "θ_ρ [-]", "theta0": "θ_0 [particles]",
                "theta1": "θ_1 [particles]"}
DESCRIPTOR_LABELS = {"df": "empirical D_f(A)", "rho": "empirical ρ(A)", "rg": "R_g",
                     "s_tio2": "S_TiO2", "s_wo3": "S_WO3", "z_hetero": "Z_hetero",
                     "z_total": "Z_total", "n_particles": "N"}


def axis_label(descriptor: str) -> str:
    return f"{DESCRIPTOR_LABELS.get(descriptor, descriptor)} [{DESCRIPTOR_UNITS.get(descriptor, '-')}]"


def plot_descriptor_vs_theta(theta: np.ndarray, values: np.ndarray, parameter: str,
                             descriptor: str, title: str | None = None) -> go.Figure:
    """Distribution of an empirical descriptor for each preset value of one parameter.

    One violin per preset value, the per-value mean as a line and the identity
    as a dashed line (the paper's Fig. 4 shows the same densities as coloured
    scatter points).
    """
    theta = np.asarray(theta, float)
    values = np.asarray(values, float)
    levels = np.unique(theta)
    fig = go.Figure()
    for lv in levels:
        v = values[theta == lv]
        v = v[np.isfinite(v)]
        fig.add_trace(go.Violin(x=np.full(v.size, lv), y=v, name=f"{lv:g}", showlegend=False,
                                points=False, width=0.8 * float(np.min(np.diff(levels)))
                                if levels.size > 1 else 0.5, line_color="#1f77b4",
                                meanline_visible=True))
    means = [np.nanmean(values[theta == lv]) for lv in levels]
    fig.add_trace(go.Scatter(x=levels, y=means, mode="lines+markers", name="mean",
                             line=dict(color="#d62728")))
    fig.add_trace(go.Scatter(x=levels, y=levels, mode="lines", name="identity",
                             line=dict(color="black", dash="dash")))
    fig.update_layout(title=title, xaxis_title=THETA_LABELS.get(parameter, parameter),
                      yaxis_title=axis_label(descriptor), height=420)
    return fig


def plot_batch_means(groups: dict, descriptor: str, title: str | None = None) -> go.Figure:
    """Batch means of a descriptor for several θ specifications (the paper's Fig. 5).

    Parameters
    ----------
    groups : dict
        ``{label: array of batch means}``.
    """
    fig = go.Figure()
    for label, means in groups.items():
        means = np.asarray(means, float)
        fig.add_trace(go.Box(y=means, name=label, boxpoints="all", jitter=0.4, pointpos=0))
    fig.update_layout(title=title, yaxis_title=f"batch mean of {axis_label(descriptor)}",
                      xaxis_title="model parameters θ", showlegend=False, height=450)
    return fig


def plot_descriptor_distributions(samples: dict, descriptor: str, bins: int = 20,
                                  title: str | None = None) -> go.Figure:
    """Overlaid histograms of one descriptor for several groups, ``{label: values}``."""
    values = np.concatenate([np.asarray(v, float) for v in samples.values()])
    values = values[np.isfinite(values)]
    edges = np.linspace(values.min(), values.max() + 1e-9, bins + 1)
    fig = go.Figure()
    for label, v in samples.items():
        v = np.asarray(v, float)
        counts, _ = np.histogram(v[np.isfinite(v)], bins=edges)
        fig.add_trace(go.Bar(x=0.5 * (edges[1:] + edges[:-1]), y=counts, name=label, opacity=0.6,
                             width=float(edges[1] - edges[0])))
    fig.update_layout(barmode="overlay", title=title, xaxis_title=axis_label(descriptor),
                      yaxis_title="aggregates", height=380)
    return fig
