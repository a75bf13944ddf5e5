"""What the heads found by attribution move, read with InversionView (issue 16, item 6).

For each head, position (SUBJ, END) and relation asked, queries on held-out prompts of that
relation; the in-ε samples' agreement with the query's subject and its attributes (country,
capital, language, currency, region) is pooled over the queries, against the out-of-ε
samples'. The paper's finding is that upper-layer heads move attributes of the subject
whatever relation was asked: then an attribute the relation does not ask for (the language
when the capital is asked) is kept inside ε as often as the one it asks for.

    rows = read_factual(model, decoder, ["a3.1"], queries=10)

The query recipe is the paper's for factual recall: cosine distance with ε 0.25, read at the
query's named position in each sample, noise at a cosine of 0.75-0.9 to the query.
"""

from __future__ import annotations

import random
from typing import Any, Collection, Sequence

from inversionview.decoder.model import Decoder
from inversionview.factual.evaluate import factual_task
from inversionview.factual.knowledge import ATTRIBUTES, check_relations
from inversionview.probed.subject import Subject

READ_POSITIONS = ("SUBJ", "END")
READ_ATTRIBUTES = ("subject", "kind", *ATTRIBUTES)
EPSILON = 0.25
NOISE_COSINE = (0.75, 0.9)


def read_factual(model: Subject, decoder: Decoder, heads: Sequence[str],
                 positions: Sequence[str] = READ_POSITIONS, relations: Sequence[str] | None = None,
                 queries: int = 10, seed: int = 0, candidates: int = 256,
                 epsilon: float = EPSILON, noise_cosine: tuple[float, float] | None = NOISE_COSINE,
                 banned: tuple[int, ...] = (), subjects: Collection[str] | None = None
                 ) -> list[dict[str, Any]]:
    """Per (head, position, relation): the pooled agreement of READ_ATTRIBUTES over
    ``queries`` held-out prompts of the relation (drawn by ``seed``; only prompts about
    ``subjects`` when given, to read on one split of the subjects and test on another)."""
    from inversionview.preimage.pooled import pooled_agreement
    from inversionview.preimage.query import query_config

    task = factual_task(model)
    relations = check_relations(relations)
    config = query_config(candidates=candidates, epsilon=epsilon, metric="cosine",
                          fixed_position=True, search=0, noise_cosine=noise_cosine, banned=banned)
    targets, texts, asked = [], [], []
    for relation in relations:
        pool = task.knowledge.prompts("eval", [relation])
        if subjects is not None:
            pool = [p for p in pool if p.subject in subjects]
        chosen = random.Random(f"{seed}-{relation}").sample(pool, min(queries, len(pool)))
        for head in heads:
            for position in positions:
                targets.append((head, position))
                texts.append([p.text for p in chosen])
                asked.append(relation)
    rows = pooled_agreement(model, decoder, targets, lambda index: texts[index],
                            READ_ATTRIBUTES, config, seed)
    for row, relation in zip(rows, asked):
        row["relation"] = relation
    return rows


__all__ = ["READ_ATTRIBUTES", "READ_POSITIONS", "read_factual"]
