"""Small display helpers shared by the stage notebooks (HTML that renders offline)."""

from __future__ import annotations

import html
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pandas as pd

_COLOURS = {"PASS": "#1b7f3b", "OK": "#1b7f3b", "FAIL": "#b3261e", "ERROR": "#7a1fa2", "INFO": "#1f4e8c"}


def banner(verdict: str, text: str) -> Any:
    from IPython.display import HTML

    colour = _COLOURS.get(verdict, "#444")
    return HTML(
        f'<div class="ops-banner" style="padding:12px 16px;border-radius:6px;color:white;'
        f'background:{colour};font-size:1.2em"><b>{html.escape(verdict)}</b> — {html.escape(text)}</div>'
    )


def facts(title: str, values: dict[str, Any]) -> pd.DataFrame:
    """A two-column table of labelled values (provenance, counts)."""
    frame = pd.DataFrame({"value": [str(v) for v in values.values()]}, index=list(values.keys()))
    frame.index.name = title
    return frame


@contextmanager
def error_banner_on_failure(what: str) -> Iterator[None]:
    """Show an ERROR banner in the report if the block raises, then let the error propagate
    (the runner records the failing cell and fails the run with ERROR)."""
    try:
        yield
    except Exception as exc:
        from IPython.display import display

        display(banner("ERROR", f"{what} did not complete — {type(exc).__name__}: {exc}"))
        raise
