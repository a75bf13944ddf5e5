"""Readings pooled over many queries: how often the in-ε samples keep each attribute of their
query, against how often the out-of-ε ones do (the case studies' agreement tables).

    rows = pooled_agreement(model, decoder, [("a3.1", "END")], texts_of, ("io", "s"), config)

``texts_of(index)`` gives the query texts of the index-th target; every query runs with its
own seed and the agreement rows of ``PreimageResult.attribute_agreement`` (the decoder's draws)
are summed over the queries, so a reading rests on every in-ε sample of every query.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from inversionview.decoder.model import Decoder
from inversionview.probed.subject import Subject


def pooled_agreement(model: Subject, decoder: Decoder, targets: Sequence[tuple[str, str]],
                     texts_of: Callable[[int], Sequence[str]], attributes: Sequence[str],
                     config, seed: int = 0) -> list[dict[str, Any]]:
    """Per (site, position): the pooled inside / outside agreement of each of ``attributes``
    over the queries ``texts_of(index)``, how many queries had a sample in ε and how many
    distinct in-ε samples there were in all."""
    from inversionview.preimage.query import run_query

    rows = []
    for index, (site, position) in enumerate(targets):
        texts = list(texts_of(index))
        counts = {name: [0, 0, 0, 0] for name in attributes}  # in agree, in n, out agree, out n
        with_inside = in_epsilon = 0
        for number, text in enumerate(texts):
            result = run_query(model, decoder, text, site, position, config, seed=seed + number)
            rows_of = {row["attribute"]: row for row in result.attribute_agreement}
            with_inside += result.stats.in_epsilon_distinct > 0
            in_epsilon += result.stats.in_epsilon_distinct
            for name in attributes:
                row = rows_of.get(name)
                if row is None:
                    continue
                if row["inside"] is not None:
                    counts[name][0] += round(row["inside"] * row["n_inside"])
                    counts[name][1] += row["n_inside"]
                if row["outside"] is not None:
                    counts[name][2] += round(row["outside"] * row["n_outside"])
                    counts[name][3] += row["n_outside"]
        rows.append({
            "site": site, "position": position, "queries": len(texts),
            "queries_with_inside": with_inside, "distinct_in_epsilon": in_epsilon,
            "attributes": {name: {"inside": c[0] / c[1] if c[1] else None, "n_inside": c[1],
                                  "outside": c[2] / c[3] if c[3] else None, "n_outside": c[3]}
                           for name, c in counts.items()}})
    return rows


__all__ = ["pooled_agreement"]
