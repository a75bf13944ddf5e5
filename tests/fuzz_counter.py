"""How many generated cases the fuzz tests ran, by suite, for the summary at the end of a
pytest run (``fuzz cases: CLI 750, API 1,020, files 60, total 1,830``)."""

from __future__ import annotations

from collections import Counter

CASES: Counter[str] = Counter()


def count_case(suite: str, n: int = 1) -> None:
    """Count ``n`` cases of ``suite``; a suite named "X exit N" is a breakdown of X, not
    counted again in the total."""
    CASES[suite] += n
