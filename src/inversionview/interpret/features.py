"""What an in-ε sample can keep of its query: the features a per-site summary counts.

A feature is a yes/no question about one sample given its query: "does it have the same
count?", "are its hundreds digits the query's, in either order?", "is the token just before
its best position the query's?". Three kinds:

- ``attribute``: a task attribute equals the query's (``count``, ``F1``, ``io``, ...).
- ``fuzzy``: a numeric attribute is within one of the query's (``count ±1``, ``F2 ±1``), the
  paper's "numerically close digits".
- ``derived``: a relation the task names (addition: ``{F1,S1}``, the two digits of a place in
  either order; ``F2+S2``, their sum, and ``F2+S2 ±1``).
- ``token``: mined from the tokens themselves, for a language model's text: the query's
  token at offset r from the query position is the sample's token at offset r from its best
  position (``token@-1``), or appears anywhere in the sample's cut prefix, its tokens up to
  its best position (``token@-1 anywhere``).

    features = task_features(task)
    features[0].keeps(query_input, sample)   # True, False or None (not applicable)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from inversionview.tasks.abilities import Annotator

#: Offsets from the query position whose tokens the mined features compare (0: the token at
#: the position itself; -1: the one before it, ...).
TOKEN_OFFSETS = (0, -1, -2, -3)


@dataclass(frozen=True)
class Feature:
    name: str
    kind: str  # attribute, fuzzy, derived, token
    # (query attributes, query tokens, query position, sample) -> kept? (None: not applicable)
    test: Callable[[dict[str, Any], list[str], int, Any], bool | None]

    def keeps(self, query_attributes: dict[str, Any], query_tokens: list[str],
              query_position: int, sample) -> bool | None:
        return self.test(query_attributes, query_tokens, query_position, sample)


def _attribute(name: str) -> Feature:
    def test(query, _tokens, _position, sample):
        if name not in query or query[name] is None or name not in sample.attributes:
            return None
        return sample.attributes[name] == query[name]
    return Feature(name, "attribute", test)


def _fuzzy(name: str) -> Feature:
    def test(query, _tokens, _position, sample):
        mine, theirs = query.get(name), sample.attributes.get(name)
        if not isinstance(mine, int) or not isinstance(theirs, int):
            return None
        return abs(mine - theirs) <= 1
    return Feature(f"{name} ±1", "fuzzy", test)


def derived(name: str, value: Callable[[dict[str, Any]], Any], fuzzy: bool = False) -> Feature:
    """A feature on a value computed from the attributes (``fuzzy``: within one of it)."""
    def test(query, _tokens, _position, sample):
        if not query or not sample.attributes:
            return None
        try:  # a malformed sample may lack an attribute the value needs: it says nothing
            mine, theirs = value(query), value(sample.attributes)
        except (KeyError, TypeError):
            return None
        if mine is None or theirs is None:
            return None
        return abs(mine - theirs) <= 1 if fuzzy else mine == theirs
    return Feature(f"{name} ±1" if fuzzy else name, "derived", test)


def _token_at(offset: int, anywhere: bool) -> Feature:
    def test(_query, tokens, position, sample):
        index = position + offset
        if not 0 < index < len(tokens) or sample.best_position < 0:
            return None
        token = tokens[index]
        if anywhere:  # in the cut prefix: what follows the best position is no evidence
            return token in sample.tokens[1:sample.best_position + 1]
        there = sample.best_position + offset
        return 0 < there < len(sample.tokens) and sample.tokens[there] == token
    name = f"token@{offset:+d}" if offset else "token@0"
    return Feature(f"{name} anywhere" if anywhere else name, "token", test)


def token_features(offsets: tuple[int, ...] = TOKEN_OFFSETS) -> list[Feature]:
    return [_token_at(offset, anywhere) for anywhere in (False, True) for offset in offsets]


def task_features(task: Annotator) -> list[Feature]:
    """The features of ``task``: its attributes (numeric ones the task names as fuzzy also
    within one), the relations it derives (``Task.derived_relations``), and the mined token
    features of a language model's text (the only ones for free text; a toy task's attributes
    already say what its characters mean)."""
    features = [_attribute(name) for name in task.attribute_names]
    features += [_fuzzy(name) for name in task.fuzzy_attributes]
    features += [derived(r.name, r.value, r.fuzzy) for r in task.derived_relations()]
    return features + (token_features() if task.mines_tokens else [])


__all__ = ["Feature", "TOKEN_OFFSETS", "derived", "task_features", "token_features"]
