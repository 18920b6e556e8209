"""Figures of the new method: encoder training, error against the number of images, calibration,
marginal posteriors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

__all__ = ["plot_encoder_history", "plot_error_by_set_size", "plot_calibration", "plot_posterior", "plot_coverage"]

_LABELS = {"df": "θ_Df [-]", "rho": "θ_ρ [-]", "theta0": "θ0 [particles]", "theta1": "θ1 [particles]"}


def plot_encoder_history(history: list, scores=("df_mae", "rho_mae", "theta0_mae", "theta1_mae"),
                         title: str | None = None) -> go.Figure:
    """Training loss and per-image MAE on a fixed subset of E, per epoch."""
    df = pd.DataFrame(history)
    fig = make_subplots(rows=1, cols=2, subplot_titles=("multi-task loss on T (augmented)",
                                                        "per-image MAE on E, relative to epoch 1"),
                        horizontal_spacing=0.16)
    fig.add_trace(go.Scatter(x=df["epoch"] + 1, y=df["train_loss"], mode="lines+markers", name="loss"), 1, 1)
    for s in scores:
        if s in df:
            fig.add_trace(go.Scatter(x=df["epoch"] + 1, y=df[s] / df[s].iloc[0], mode="lines+markers",
                                     name=s.replace("_mae", "")), 1, 2)
    fig.update_xaxes(title_text="epoch")
    fig.update_yaxes(title_text="loss [standardised units²]", type="log", row=1, col=1)
    fig.update_yaxes(title_text="MAE / epoch 1's [-]", row=1, col=2)
    fig.update_layout(title=title, height=380)
    return fig


def plot_error_by_set_size(tables: dict, title: str | None = None) -> go.Figure:
    """θ̂ error against the number of images M: ``tables = {name: error_by_set_size(...)}``; one
    colour per table, θ0 solid and θ1 dotted in the exact-hit panel."""
    fig = make_subplots(rows=1, cols=3, subplot_titles=("θ̂_Df MAE", "θ̂_ρ MAE", "θ̂0, θ̂1 (dotted) exact"),
                        horizontal_spacing=0.1)
    colours = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd"]
    for k, (name, t) in enumerate(tables.items()):
        c = colours[k % len(colours)]
        common = dict(mode="lines+markers", legendgroup=name, marker=dict(size=5))
        fig.add_trace(go.Scatter(x=t["M"], y=t["θ̂_Df MAE"], name=name, line=dict(color=c), **common), 1, 1)
        fig.add_trace(go.Scatter(x=t["M"], y=t["θ̂_ρ MAE"], name=name, line=dict(color=c), showlegend=False, **common), 1, 2)
        fig.add_trace(go.Scatter(x=t["M"], y=t["θ̂0 exact"], name=f"{name}: θ0", line=dict(color=c), showlegend=False,
                                 **common), 1, 3)
        fig.add_trace(go.Scatter(x=t["M"], y=t["θ̂1 exact"], name=f"{name}: θ1", line=dict(color=c, dash="dot"),
                                 showlegend=False, **common), 1, 3)
    fig.update_xaxes(title_text="M [images]")
    fig.update_yaxes(title_text="MAE [-]", row=1, col=1)
    fig.update_yaxes(title_text="share exact [-]", range=[0, 1], row=1, col=3)
    fig.update_layout(title=title or "Error against the number of images", height=440,
                      legend=dict(orientation="h", y=-0.22, x=0), margin=dict(b=110))
    return fig


def plot_calibration(pit: pd.DataFrame, m: int | None = None, bins: int = 10, title: str | None = None) -> go.Figure:
    """Simulation-based calibration: histograms of the PIT of the truth, one panel per parameter.

    A calibrated posterior gives flat histograms (the band: ±2 binomial SD around the expected count).
    """
    d = pit if m is None else pit[pit["M"] == m]
    params = [p for p in ("df", "rho", "theta0", "theta1") if p in d]
    fig = make_subplots(rows=1, cols=len(params), subplot_titles=[_LABELS[p] for p in params], shared_yaxes=True)
    n = len(d)
    expected = n / bins
    sd = np.sqrt(n * (1 / bins) * (1 - 1 / bins))
    for k, p in enumerate(params):
        counts, edges = np.histogram(d[p], bins=bins, range=(0, 1))
        fig.add_trace(go.Bar(x=(edges[1:] + edges[:-1]) / 2, y=counts, width=1 / bins, showlegend=False,
                             marker_color="#1f77b4"), 1, k + 1)
        fig.add_hrect(y0=max(expected - 2 * sd, 0), y1=expected + 2 * sd, line_width=0, fillcolor="grey",
                      opacity=0.2, row=1, col=k + 1)
    fig.update_xaxes(title_text="PIT of the truth [-]", range=[0, 1])
    fig.update_yaxes(title_text="posteriors [count]", col=1)
    fig.update_layout(title=title or f"Simulation-based calibration ({n} posteriors{'' if m is None else f', M = {m}'})",
                      height=340, bargap=0.05)
    return fig


def plot_posterior(estimate, truth=None, sample: int = 0, title: str | None = None, draws: int = 2000,
                   seed: int = 0) -> go.Figure:
    """One sample's posterior: the marginal densities of θ_Df and θ_ρ [1/unit] with their 90 %
    central intervals, the marginal probabilities of θ0 and θ1, and joint draws of (θ_Df, θ_ρ)
    (the dependence the marginals do not show); the truth (red) if known."""
    one = estimate.select([sample])
    fig = make_subplots(rows=2, cols=3, specs=[[{}, {}, {"rowspan": 2}], [{}, {}, None]],
                        subplot_titles=["θ_Df", "θ_ρ", "joint draws of (θ_Df, θ_ρ)", "θ0", "θ1"],
                        horizontal_spacing=0.12, vertical_spacing=0.2)
    cells = {"df": (1, 1), "rho": (1, 2), "theta0": (2, 1), "theta1": (2, 2)}
    for p in ("df", "rho"):
        x, density = one.density_curve(p, 400)
        fig.add_trace(go.Scatter(x=x, y=density, mode="lines", showlegend=False,
                                 line=dict(color="#1f77b4")), *cells[p])
        a, b = one.interval(p, 0.9)[0]
        fig.add_vrect(x0=a, x1=b, fillcolor="#1f77b4", opacity=0.12, line_width=0, row=cells[p][0], col=cells[p][1])
    for p in ("theta0", "theta1"):
        fig.add_trace(go.Bar(x=one.grid.integers(p), y=one.probabilities(p)[0], showlegend=False,
                             marker_color="#1f77b4"), *cells[p])
    th = one.sample(draws, seed=seed)
    fig.add_trace(go.Scattergl(x=th[:, 0], y=th[:, 1], mode="markers", marker=dict(size=3, opacity=0.3, color="#1f77b4"),
                               showlegend=False), 1, 3)
    if truth is not None:
        for k, p in enumerate(("df", "rho", "theta0", "theta1")):
            fig.add_vline(x=float(truth[k]), line_color="red", line_dash="dash", row=cells[p][0], col=cells[p][1])
        fig.add_trace(go.Scatter(x=[float(truth[0])], y=[float(truth[1])], mode="markers", showlegend=False,
                                 marker=dict(color="red", symbol="x", size=10)), 1, 3)
    for p, (r, c) in cells.items():
        fig.update_xaxes(title_text=_LABELS[p], row=r, col=c)
    fig.update_yaxes(title_text="density [1/unit]", row=1, col=1)
    fig.update_yaxes(title_text="probability [-]", row=2, col=1)
    fig.update_xaxes(title_text="θ_Df [-]", row=1, col=3)
    fig.update_yaxes(title_text="θ_ρ [-]", row=1, col=3)
    fig.update_layout(title=title or "Posterior of one sample (shaded: 90 % central interval; red: truth)",
                      height=560, bargap=0.2)
    return fig


def plot_coverage(table: pd.DataFrame, columns=None, band=(0.85, 0.95), title: str | None = None) -> go.Figure:
    """Coverage of 90 % credible regions against the number of images M: one line per check
    (``table`` from :func:`agglib.evaluate.calibration.calibration_report`, rows M), with the
    band accepted as calibrated."""
    columns = columns or [c for c in table.columns if c.endswith((" central", " HPD")) or c == "TARP"]
    fig = go.Figure()
    fig.add_hrect(y0=band[0], y1=band[1], fillcolor="grey", opacity=0.15, line_width=0)
    fig.add_hline(y=0.9, line_dash="dash", line_color="black")
    for c in columns:
        fig.add_trace(go.Scatter(x=table.index, y=table[c], mode="lines+markers", name=c))
    fig.update_xaxes(title_text="M [images of one sample]", type="log", tickvals=list(table.index))
    low = float(np.nanmin(table[columns].to_numpy())) if len(columns) else band[0]
    fig.update_yaxes(title_text="share of 90 % regions holding the truth [-]",
                     range=[min(band[0] - 0.05, np.floor(low * 20) / 20 - 0.02), 1.0])   # the band, not 0–1
    fig.update_layout(title=title or "Coverage of 90 % credible regions (grey: accepted band)", height=420,
                      legend=dict(orientation="h", y=-0.25))
    return fig
