"""Report plots. Figures are built without pyplot so a notebook shows each exactly once."""

from __future__ import annotations

import io

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure as _Figure


class Figure(_Figure):
    """A matplotlib figure that a notebook displays as an embedded PNG (works offline)."""

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        FigureCanvasAgg(self).print_png(buffer)
        return buffer.getvalue()

LIKE, DISLIKE = "#2e7d32", "#c62828"


def _empty(fig: Figure, title: str) -> Figure:
    ax = fig.subplots()
    ax.set_title(title)
    ax.text(0.5, 0.5, "no data in the window", ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()
    return fig


def stacked_ratings(table: pd.DataFrame, title: str, xlabel: str) -> Figure:
    """Stacked LIKE/DISLIKE bars, one bar per row of ``table`` (columns LIKE, DISLIKE)."""
    fig = Figure(figsize=(8, 3.2), layout="constrained")
    if table.empty:
        return _empty(fig, title)
    ax = fig.subplots()
    labels = [str(i) for i in table.index]
    ax.bar(labels, table["LIKE"], color=LIKE, label="LIKE")
    ax.bar(labels, table["DISLIKE"], bottom=table["LIKE"], color=DISLIKE, label="DISLIKE")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("events")
    ax.legend(loc="upper left")
    ax.tick_params(axis="x", labelrotation=30)
    return fig


def like_rate(table: pd.DataFrame, title: str) -> Figure:
    """Like rate per row of ``table`` (column like_rate), with the event count on each bar."""
    fig = Figure(figsize=(8, 3.2), layout="constrained")
    if table.empty:
        return _empty(fig, title)
    ax = fig.subplots()
    labels = [str(i) for i in table.index]
    bars = ax.bar(labels, table["like_rate"], color="#1f4e8c")
    for bar, count in zip(bars, table["events"]):
        ax.annotate(f"n={count}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("like rate")
    ax.set_title(title)
    return fig
