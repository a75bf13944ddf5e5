"""Members of a preimage are cut prefixes (method.md §7, issue 28).

Every probed model here is causal: the activation at position j depends only on tokens
0..j. A scored input's evidence is therefore its **cut prefix**, its tokens up to its best
position; what follows is free, and any continuation of the query's own prefix is a member
at distance 0 that says nothing about what the activation keeps. So scored inputs are
merged by cut prefix (one member each, however many continuations were drawn), and the
member whose cut prefix is the query's own is set apart as the query's context: it is left
out of every reading and rate, and reported beside them as a raw figure.

On the toy tasks the grammar fixes what follows most query positions (counting's ``:``,
addition's ``=``), where a cut prefix and an input are one and the same; where it does not
(counting's ``|``, addition's ``+``), inputs that differ only after the cut are one member.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from inversionview.preimage.result import Sample


def cut_key(row: torch.Tensor, best_position: int, distance: float) -> bytes | None:
    """The cut prefix of one scored row ``[W]`` as a hashable key (None: no scorable
    position, so no evidence to cut at)."""
    if best_position < 0 or not math.isfinite(distance):
        return None
    return row[: best_position + 1].to(torch.int64).contiguous().numpy().tobytes()


def cut_keys(rows: torch.Tensor, best_position: torch.Tensor, distance: torch.Tensor
             ) -> list[bytes | None]:
    """``cut_key`` of every row of ``rows`` ``[n, W]``."""
    return [cut_key(row, int(best), float(d)) for row, best, d in zip(rows, best_position, distance)]


def query_key(query_ids: torch.Tensor, position: int) -> bytes:
    """The query's own cut prefix ``query_ids[: position + 1]`` as a key."""
    return query_ids[: position + 1].to(torch.int64).contiguous().numpy().tobytes()


@dataclass
class QueryContext:
    """The scored inputs whose cut prefix is the query's own (its context, continued):
    members at distance 0 that say nothing. Left out of readings and rates."""

    draws: int = 0  # the decoder's draws among them, with repeats
    continuations: int = 0  # distinct inputs among them (drawn, or found by the search)

    def to_dict(self) -> dict[str, int]:
        return {"draws": self.draws, "continuations": self.continuations}


@dataclass
class Member:
    """One cut prefix: its sample (the first, closest input that has it), its key and the
    token row ``[W]`` of that input."""

    sample: Sample
    key: bytes | None
    row: torch.Tensor


def merge_by_cut(samples: list[Sample], keys: list[bytes | None], rows: list[torch.Tensor],
                 query: bytes) -> tuple[list[Member], QueryContext]:
    """One member per cut prefix, in the order of ``samples`` (sorted by distance, so the
    first input of a prefix is its closest); the query's own prefix set apart.

    A member's sample keeps its first input's text and tokens (what follows the cut is shown
    dimmed, never counted), adds up the decoder's draws (``multiplicity``) and counts its
    distinct inputs (``continuations``); it was drawn by the decoder when any of its inputs
    was; its attributes are those on which all its inputs agree (what the evidence fixes)."""
    merged: dict[bytes | int, Member] = {}
    context = QueryContext()
    for index, (sample, key, row) in enumerate(zip(samples, keys, rows)):
        if key is not None and key == query:
            context.draws += sample.multiplicity
            context.continuations += 1
            continue
        slot: bytes | int = index if key is None else key
        first = merged.get(slot)
        if first is None:
            merged[slot] = Member(replace(sample, attributes=dict(sample.attributes)), key, row)
            continue
        kept = first.sample
        kept.multiplicity += sample.multiplicity
        kept.continuations += 1
        if sample.found_by == "decoder":
            kept.found_by = "decoder"
        kept.attributes = {name: value for name, value in kept.attributes.items()
                           if name in sample.attributes and sample.attributes[name] == value}
    return list(merged.values()), context
