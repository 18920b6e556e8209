"""Figures of training and of the estimators' errors (paper Figs. 9–13, Table 4)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

__all__ = ["plot_training_history", "plot_prediction_vs_truth", "plot_error_by_preset",
           "plot_batch_size_study", "plot_confusion"]


def plot_training_history(history: list, title: str | None = None) -> go.Figure:
    """Training and validation loss per epoch."""
    df = pd.DataFrame(history)
    fig = go.Figure([go.Scatter(x=df["epoch"] + 1, y=df["train_loss"], name="training loss (T, augmented)",
                                mode="lines+markers"),
                     go.Scatter(x=df["epoch"] + 1, y=df["val_loss"], name="validation loss (E)",
                                mode="lines+markers")])
    fig.update_layout(title=title, xaxis_title="epoch", yaxis_title="loss (MSE or BCE)", yaxis_type="log",
                      height=360)
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


def plot_batch_size_study(curves: dict, title: str | None = None) -> go.Figure:
    """MAE of batch-mean estimators against ν (the paper's Fig. 9); ``curves = {name: DataFrame}``."""
    fig = go.Figure([go.Scatter(x=df["nu"], y=df["MAE"], mode="lines+markers", name=name)
                     for name, df in curves.items()])
    fig.update_layout(title=title or "Estimator error against batch size ν", xaxis_title="ν [images]",
                      yaxis_title="MAE against the preset θ", height=380)
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
