"""The reading aid: how often each task attribute of a sample agrees with the query's,
inside the ε-ball versus outside it (issue 4, item 5).

An attribute that the activation encodes agrees with the query inside the ball far more often
than outside it (counting's ``count`` at a1.0 ``:``: about 1.0 inside, 0.1 outside); one it
does not encode agrees about as often on both sides. This is the offline, deterministic
counterpart of the paper's LLM interpretation. Each distinct well-formed sample counts once.
"""

from __future__ import annotations

from typing import Any

from inversionview.preimage.result import Sample


def attribute_agreement(attribute_names: tuple[str, ...] | list[str], query: dict[str, Any],
                        samples: list[Sample]) -> list[dict[str, Any]]:
    """One row per attribute the query has: ``inside`` and ``outside`` agreement fractions
    (None when no well-formed sample lies on that side), their ``contrast`` (inside - outside)
    and the sample counts; sorted by contrast, highest first (rows without one last)."""
    rows = []
    for name in attribute_names:
        if name not in query:
            continue
        sides: dict[bool, list[bool]] = {True: [], False: []}
        for sample in samples:
            if name in sample.attributes:
                sides[sample.in_epsilon].append(sample.attributes[name] == query[name])
        inside = sum(sides[True]) / len(sides[True]) if sides[True] else None
        outside = sum(sides[False]) / len(sides[False]) if sides[False] else None
        contrast = inside - outside if inside is not None and outside is not None else None
        rows.append({"attribute": name, "query_value": query[name], "inside": inside,
                     "outside": outside, "contrast": contrast, "n_inside": len(sides[True]),
                     "n_outside": len(sides[False])})
    return sorted(rows, key=lambda row: (row["contrast"] is None, -(row["contrast"] or 0.0),
                                         -(row["inside"] or 0.0)))
