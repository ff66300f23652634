"""What counts as the same question: one project, the same words up to case and whitespace.

Dataset generation tallies votes per question, training keeps a question on one side of the
validation split, and evaluation sets refuse questions seen in training traffic — all by this key.
"""

from __future__ import annotations

QueryKey = tuple[str, str]  # (project_id, normalised query text)


def normalise_query(text: str) -> str:
    return " ".join(text.casefold().split())
