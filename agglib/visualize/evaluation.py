"""Figures of training and of the estimators' errors (paper Figs. 9–13, Table 4)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

__all__ = ["plot_headlines", "plot_validation_error", "plot_prediction_vs_truth", "plot_error_by_preset",
           "plot_confusion", "plot_shadow_histograms", "plot_shadow_means"]


def plot_validation_error(history: list, quantity: str = "D_f(A)", title: str | None = None) -> go.Figure:
    """Validation MAE per epoch: with training's running BatchNorm averages and, where the run
    recomputed them before validating (``bn_batches``), with the recomputed statistics."""
    df = pd.DataFrame(history)
    traces = []
    if "val_mae_running_bn" in df:
        traces.append(go.Scatter(x=df["epoch"] + 1, y=df["val_mae_running_bn"], mode="lines+markers",
                                 name="running BatchNorm averages (as trained in the paper)"))
    traces.append(go.Scatter(x=df["epoch"] + 1, y=df["val_mae"], mode="lines+markers",
                             name="BatchNorm statistics recomputed on T" if "val_mae_running_bn" in df
                             else "validation MAE"))
    fig = go.Figure(traces)
    fig.update_layout(title=title, xaxis_title="epoch", yaxis_title=f"validation MAE of {quantity} on E [-]",
                      height=380, legend=dict(orientation="h", y=-0.25))
    return fig


def plot_prediction_vs_truth(df: pd.DataFrame, quantity: str, unit: str = "-", title: str | None = None,
                             max_points: int = 5000) -> go.Figure:
    """Per-image prediction against the aggregate's true value, with the identity line."""
    d = df.sample(n=min(len(df), max_points), random_state=0) if len(df) > max_points else df
    lo = float(min(d["label"].min(), d["prediction"].min()))
    hi = float(max(d["label"].max(), d["prediction"].max()))
    fig = go.Figure([go.Scattergl(x=d["label"], y=d["prediction"], mode="markers", name="images of E",
                                  marker=dict(size=4, opacity=0.4)),
                     go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="identity",
                                line=dict(color="black", dash="dash"))])
    fig.update_layout(title=title, xaxis_title=f"true {quantity} of the aggregate [{unit}]",
                      yaxis_title=f"network output [{unit}]", height=430)
    return fig


def plot_error_by_preset(est: pd.DataFrame, truth_column: str, parameter_label: str,
                         title: str | None = None) -> go.Figure:
    """Estimator error (estimate − preset) per preset value, one box per value."""
    fig = go.Figure()
    for value in np.sort(est[truth_column].unique()):
        err = est.loc[est[truth_column] == value, "estimate"] - value
        fig.add_trace(go.Box(y=err, name=f"{value:g}", boxpoints="outliers", marker_color="#1f77b4",
                             showlegend=False))
    fig.add_hline(y=0, line_dash="dash", line_color="black")
    fig.update_layout(title=title, xaxis_title=f"preset {parameter_label}",
                      yaxis_title=f"estimate − preset {parameter_label}", height=400)
    return fig


def plot_confusion(table: pd.DataFrame, title: str | None = None) -> go.Figure:
    """A confusion table as a heatmap (rows: truth, columns: estimate)."""
    fig = go.Figure(go.Heatmap(z=table.to_numpy(), x=[str(c) for c in table.columns],
                               y=[str(i) for i in table.index], colorscale="Blues",
                               text=table.to_numpy(), texttemplate="%{text}",
                               hovertemplate="truth %{y}, estimate %{x}: %{z}<extra></extra>"))
    fig.update_layout(title=title, xaxis_title="estimate", yaxis_title="truth", height=420,
                      yaxis_autorange="reversed")
    return fig


def plot_shadow_histograms(aggregates, config_id: int, descriptors=("s_tio2", "z_hetero", "z_total"),
                           bins: int = 20, title: str | None = None) -> go.Figure:
    """Histograms of descriptors of aggregates drawn from θ and from θ̂ (the paper's Fig. 14)."""
    from plotly.subplots import make_subplots

    from agglib.visualize.descriptors import axis_label

    d = aggregates[aggregates["config_id"] == config_id]
    fig = make_subplots(rows=1, cols=len(descriptors), subplot_titles=[axis_label(x) for x in descriptors],
                        horizontal_spacing=0.1)
    colours = {"θ": "#1f77b4", "θ̂": "#d62728"}
    for col, name in enumerate(descriptors, start=1):
        values = d[name].to_numpy(dtype=float)
        values = values[np.isfinite(values)]
        edges = np.linspace(values.min(), values.max() + 1e-9, bins + 1) if values.size else np.linspace(0, 1, bins + 1)
        for source in ("θ", "θ̂"):
            v = d.loc[d["source"] == source, name].to_numpy(dtype=float)
            counts, _ = np.histogram(v[np.isfinite(v)], bins=edges)
            fig.add_trace(go.Bar(x=0.5 * (edges[1:] + edges[:-1]), y=counts, name=f"from {source}",
                                 marker_color=colours[source], opacity=0.6, showlegend=col == 1,
                                 width=float(edges[1] - edges[0])), row=1, col=col)
    fig.update_yaxes(title_text="aggregates [count]", row=1, col=1)        # the same on every panel
    fig.update_layout(barmode="overlay", height=380, title=title)
    return fig


def plot_shadow_means(pairs, descriptors=("s_tio2", "z_hetero", "z_total"), title: str | None = None) -> go.Figure:
    """Descriptor means of the shadows against those of the truth, one point per configuration."""
    from plotly.subplots import make_subplots

    from agglib.visualize.descriptors import axis_label

    fig = make_subplots(rows=1, cols=len(descriptors), subplot_titles=[axis_label(x) for x in descriptors],
                        horizontal_spacing=0.1)
    for col, name in enumerate(descriptors, start=1):
        t, s = pairs[f"{name}_true"], pairs[f"{name}_shadow"]
        lo, hi = float(np.nanmin([t.min(), s.min()])), float(np.nanmax([t.max(), s.max()]))
        fig.add_trace(go.Scatter(x=t, y=s, mode="markers", showlegend=False, marker=dict(size=6)), row=1, col=col)
        fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", showlegend=False,
                                 line=dict(color="black", dash="dash")), row=1, col=col)
        fig.update_xaxes(title_text="mean from θ", row=1, col=col)
    fig.update_yaxes(title_text="mean from θ̂", row=1, col=1)               # the same on every panel
    fig.update_layout(height=380, title=title or "Descriptor means: digital shadows against the truth")
    return fig


def plot_headlines(table: pd.DataFrame, title: str | None = None) -> go.Figure:
    """The paper's headline numbers beside this build's (``table`` from
    :func:`agglib.evaluate.recorded_headlines`): errors (lower is better) and hit rates of θ0, θ1
    (higher is better), one bar per estimator."""
    from plotly.subplots import make_subplots

    from agglib.evaluate.estimators import HEADLINES

    fig = make_subplots(rows=1, cols=2, column_widths=[0.36, 0.64], horizontal_spacing=0.1,
                        subplot_titles=("MAE of θ̂_Df, θ̂_ρ [-] (lower is better)", "θ̂0, θ̂1 hits [share] (higher is better)"))
    colours = ["#444444", "#1f77b4", "#17becf", "#ff7f0e", "#9467bd", "#bbbbbb"]
    for k, name in enumerate(table.columns):
        for col, rows in enumerate(HEADLINES.values(), start=1):
            values = table.loc[list(rows), name]
            fig.add_trace(go.Bar(x=[r.replace("within ±1", "±1") for r in rows], y=values, name=name,
                                 marker_color=colours[k % len(colours)], showlegend=col == 1, legendgroup=name,
                                 hovertemplate="%{x}: %{y:.3f}<extra>" + name + "</extra>"), row=1, col=col)
    fig.update_yaxes(title_text="MAE [-]", row=1, col=1)
    fig.update_yaxes(title_text="share of samples [-]", range=[0, 1], row=1, col=2)
    fig.update_layout(barmode="group", title=title or "Headline numbers: the paper, agglib, the trivial predictor",
                      width=680, height=460, legend=dict(orientation="h", y=-0.2), margin=dict(l=60, r=20))
    return fig
