"""Small display helpers shared by the stage notebooks (HTML that renders offline)."""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure as _Figure

from opslib.control import outcomes
from opslib.errors import Invalid, Refused
from opslib.execution.report import BANNER_METADATA_KEY, banner_html

VERDICT_WORDS = tuple(v.value for v in outcomes.Verdict)


class VerdictWordError(Invalid, ValueError):
    pass


@dataclass(frozen=True)
class Banner:
    """A stage's verdict and its sentence, displayed as a coloured bar (offline HTML)."""

    verdict: str
    text: str

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> tuple[dict[str, str], dict[str, Any]]:
        data = {"text/html": banner_html(self.verdict, self.text), "text/plain": f"{self.verdict} — {self.text}"}
        # The mark by which the report puts the stage's (last) banner at the top of the page.
        return data, {BANNER_METADATA_KEY: {"verdict": self.verdict, "text": self.text}}


def banner(verdict: str, text: str) -> Banner:
    """The stage's verdict banner. ``verdict`` is a word of the shared vocabulary
    (``opslib.control.outcomes.Verdict``): one outcome never goes by two names."""
    word = str(verdict)
    if word not in VERDICT_WORDS:
        raise VerdictWordError(f"banner verdict {word!r}: not a stage verdict; one of {', '.join(VERDICT_WORDS)}")
    return Banner(word, text)


def facts(title: str, values: dict[str, Any]) -> pd.DataFrame:
    """A two-column table of labelled values (provenance, counts)."""
    frame = pd.DataFrame({"value": [str(v) for v in values.values()]}, index=list(values.keys()))
    frame.index.name = title
    return frame


@contextmanager
def error_banner_on_failure(what: str) -> Iterator[None]:
    """Show a banner in the report if the block raises, then let the error propagate (the runner
    records the failing cell and fails the run): REFUSED for a ``Refused`` (a guard said no;
    nothing was changed), else ERROR."""
    try:
        yield
    except Exception as exc:
        from IPython.display import display  # deferred: IPython is needed only in a notebook

        if isinstance(exc, Refused):
            display(banner("REFUSED", f"{what} was refused — {type(exc).__name__}: {exc}"))
        else:
            display(banner("ERROR", f"{what} did not complete — {type(exc).__name__}: {exc}"))
        raise


# Report plots. Figures are built without pyplot so a notebook shows each exactly once.
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
    for bar, count in zip(bars, table["events"], strict=True):
        ax.annotate(
            f"n={count}", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize=8
        )
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("like rate")
    ax.set_title(title)
    return fig


def funnel(steps: dict[str, int], title: str) -> Figure:
    """Horizontal bars, widest first: how many items survive each step."""
    fig = Figure(figsize=(8, 0.5 + 0.45 * max(len(steps), 1)), layout="constrained")
    ax = fig.subplots()
    labels = list(steps)[::-1]
    values = [steps[label] for label in labels]
    bars = ax.barh(labels, values, color="#1f4e8c")
    for bar, value in zip(bars, values, strict=True):
        ax.annotate(
            f"{value:,}",
            (bar.get_width(), bar.get_y() + bar.get_height() / 2),
            xytext=(4, 0),
            textcoords="offset points",
            va="center",
            fontsize=9,
        )
    ax.set_title(title)
    ax.set_xlim(0, max([*values, 1]) * 1.15)
    return fig


def bars(values: dict[str, float], title: str, ylabel: str, colour: str = "#1f4e8c") -> Figure:
    fig = Figure(figsize=(8, 3.2), layout="constrained")
    if not values:
        return _empty(fig, title)
    ax = fig.subplots()
    ax.bar([str(k) for k in values], list(values.values()), color=colour)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.tick_params(axis="x", labelrotation=30)
    return fig


def grouped_bars(table: pd.DataFrame, title: str, ylabel: str) -> Figure:
    """One group of bars per row of ``table``, one bar per column (e.g. tokens per character
    by script, per model), each labelled with its value; a missing value draws no bar."""
    fig = Figure(figsize=(8, 3.2), layout="constrained")
    if table.empty:
        return _empty(fig, title)
    ax = fig.subplots()
    width = 0.8 / max(len(table.columns), 1)
    x = np.arange(len(table.index))
    palette = ["#1f4e8c", "#e08a00", "#2e7d32", "#6a1b9a"]
    for i, column in enumerate(table.columns):
        values = pd.to_numeric(table[column], errors="coerce").to_numpy(dtype=float)
        drawn = ax.bar(x + i * width, np.nan_to_num(values), width, label=str(column), color=palette[i % len(palette)])
        for bar, value in zip(drawn, values, strict=True):
            if np.isfinite(value):
                ax.annotate(
                    f"{value:.2f}",
                    (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center",
                    va="bottom",
                    fontsize=8,
                )
    ax.set_xticks(x + width * (len(table.columns) - 1) / 2, [str(i) for i in table.index])
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.legend(loc="upper left", fontsize=8)
    return fig


def lines(table: pd.DataFrame, title: str, ylabel: str, full_scale: bool = True) -> Figure:
    """One line per column of ``table`` over its index (e.g. like rate per model per day);
    ``full_scale`` draws 0–1, else the axis fits the values (small differences stay visible)."""
    fig = Figure(figsize=(8, 3.2), layout="constrained")
    if table.empty:
        return _empty(fig, title)
    ax = fig.subplots()
    for column in table.columns:
        ax.plot([str(i) for i in table.index], table[column], marker="o", label=str(column))
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    if full_scale:
        ax.set_ylim(0, 1.05)
    ax.legend(loc="lower left", fontsize=8)
    ax.tick_params(axis="x", labelrotation=30)
    return fig


def loss_curve(history: list[tuple[int, float]], title: str) -> Figure:
    fig = Figure(figsize=(8, 3.2), layout="constrained")
    if not history:
        return _empty(fig, title)
    ax = fig.subplots()
    steps, losses = zip(*history, strict=True)
    ax.plot(steps, losses, marker=".", color="#1f4e8c")
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    return fig


def deltas_with_ci(table: pd.DataFrame, title: str) -> Figure:
    """One point per metric (row): the delta with its CI as an error bar; zero marked."""
    fig = Figure(figsize=(8, 3.0), layout="constrained")
    ax = fig.subplots()
    y = list(range(len(table)))
    delta = table["delta"].to_numpy()
    low = delta - table["ci95_low"].to_numpy()
    high = table["ci95_high"].to_numpy() - delta
    colours = ["#2e7d32" if d >= 0 else "#c62828" for d in delta]
    ax.errorbar(delta, y, xerr=[low, high], fmt="none", ecolor="#555", capsize=6)
    ax.scatter(delta, y, color=colours, zorder=3, s=60)
    ax.axvline(0, color="#999", linestyle="--")
    ax.set_yticks(y, [str(i) for i in table.index])
    ax.set_xlabel("candidate − baseline")
    ax.set_title(title)
    return fig


def release_timeline(history: pd.DataFrame, title: str = "release history") -> Figure:
    """Which model served when (a step line), with every release event marked."""
    fig = Figure(figsize=(9, 3.2), layout="constrained")
    if history.empty:
        return _empty(fig, title)
    ax = fig.subplots()
    models = list(dict.fromkeys(history["active"]))
    level = [models.index(m) for m in history["active"]]
    times = list(history["at"])
    ax.step(times, level, where="post", color="#1f4e8c", linewidth=2)
    colours = {
        "BOOTSTRAP": "#555",
        "OPEN_CANDIDATE": "#f9a825",
        "CANDIDATE_READY": "#f9a825",
        "CUTOVER": "#2e7d32",
        "ABORT_CANDIDATE": "#c62828",
        "PREPARE_ROLLBACK": "#7a1fa2",
        "COMPLETE_ROLLBACK": "#7a1fa2",
    }
    for t, y, kind in zip(times, level, history["kind"], strict=True):
        ax.scatter([t], [y], color=colours.get(kind, "#333"), zorder=3, s=40)
        ax.annotate(kind, (t, y), xytext=(3, 6), textcoords="offset points", fontsize=7, rotation=20)
    ax.set_yticks(range(len(models)), models)
    ax.set_ylim(-0.5, len(models) - 0.5)
    ax.set_title(title)
    fig.autofmt_xdate()
    return fig


TREND_MARKERS = {"CUTOVER": ("#2e7d32", "-"), "COMPLETE_ROLLBACK": ("#7a1fa2", "--")}


def metric_trend(
    points: pd.DataFrame, markers: pd.DataFrame, metrics: Sequence[tuple[str, str]], title: str = "metric trend"
) -> Figure:
    """A panel per metric: each evaluation's baseline and candidate over time (candidate coloured
    by its decision, its bar the baseline plus the 95 % CI of the delta), with vertical lines at
    every release (CUTOVER) and rollback (COMPLETE_ROLLBACK) in ``markers``.

    ``points`` holds ``at``, ``decision`` and per metric ``<m>_baseline``, ``<m>_candidate``,
    ``<m>_ci95_low``, ``<m>_ci95_high``; ``markers`` holds ``at`` and ``kind``."""
    fig = Figure(figsize=(9, 2.4 * max(len(metrics), 1) + 0.6), layout="constrained")
    if points.empty:
        return _empty(fig, title)
    axes = fig.subplots(len(metrics), 1, sharex=True, squeeze=False)[:, 0]
    times = list(points["at"])
    decisions = list(points["decision"])
    colours = [LIKE if d == "PASS" else DISLIKE for d in decisions]
    for ax, (key, label) in zip(axes, metrics, strict=True):
        base = points[f"{key}_baseline"].astype(float).to_numpy()
        cand = points[f"{key}_candidate"].astype(float).to_numpy()
        low = points[f"{key}_ci95_low"].astype(float).to_numpy()
        high = points[f"{key}_ci95_high"].astype(float).to_numpy()
        ax.plot(times, base, marker="s", linestyle=":", color="#777", label="baseline")
        ax.plot(times, cand, linestyle="-", color="#1f4e8c", alpha=0.5)
        # The CI is of the delta: drawn around the candidate as baseline + [low, high].
        below, above = cand - (base + low), (base + high) - cand
        has_ci = ~(np.isnan(below) | np.isnan(above))
        if has_ci.any():
            ax.errorbar(
                [t for t, ok in zip(times, has_ci, strict=True) if ok],
                cand[has_ci],
                yerr=[np.clip(below[has_ci], 0, None), np.clip(above[has_ci], 0, None)],
                fmt="none",
                ecolor="#555",
                capsize=4,
            )
        ax.scatter(times, cand, color=colours, zorder=3, s=40, label="candidate (green PASS, red FAIL)")
        for at, kind in zip(markers.get("at", []), markers.get("kind", []), strict=True):
            colour, style = TREND_MARKERS.get(str(kind), ("#333", ":"))
            ax.axvline(at, color=colour, linestyle=style, linewidth=1.2)
        ax.set_ylabel(label)
    for kind, (colour, style) in TREND_MARKERS.items():
        if not markers.empty and (markers["kind"] == kind).any():
            axes[0].plot([], [], color=colour, linestyle=style, label=kind)
    axes[0].set_title(title)
    axes[0].legend(loc="best", fontsize=7)
    fig.autofmt_xdate()
    return fig
