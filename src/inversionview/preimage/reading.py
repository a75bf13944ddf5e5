"""What a query's members say, token by token, and how far its nearest members lie (issue 28).

Free text has no attributes to agree on, so the reading is over the query's own tokens. For
each token of the query's prefix (up to the query position):

- ``kept``: the share of members (distinct cut prefixes inside ε, the query's own left out)
  that have the token at the same place counted back from their best position (aligned
  backwards: the query position against each member's best position), against the share of
  scored inputs outside ε that do; ``anywhere``: the same for the token anywhere in the cut
  prefix. A token the activation encodes is kept inside far more than outside.
- ``stays``: the share of substitutions of that token alone (the decoder's likeliest other
  tokens there) whose input stays inside ε: the tokens the activation ignores.

The ε profile counts the distinct members within several radii from everything a query
scored (the decoder's draws and every input the search scored), and lists the nearest
members even when none is inside ε, so "nothing in ε" still says how far the nearest input is
and what it keeps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

#: Radii of the ε profile, as multiples of ε.
PROFILE_MULTIPLES = (0.5, 1.0, 1.5, 2.0, 3.0, 5.0)
NEAREST = 5


@dataclass
class Scored:
    """Everything a query scored, one row per distinct cut prefix (the query's own left out):
    ``prefixes`` the cut prefixes as id lists, ``distance``, ``found_by`` ("decoder",
    "search N" or "substitution")."""

    prefixes: list[list[int]]
    distance: list[float]
    found_by: list[str]


def distinct_prefixes(rows: torch.Tensor, best: torch.Tensor, distance: torch.Tensor,
                      found_by: list[str], own: list[int]) -> Scored:
    """The closest scored input of each cut prefix of ``rows`` ``[n, W]`` (best positions
    ``best``, distances ``distance``), the query's own prefix ``own`` and unscorable rows
    left out; sorted by distance."""
    closest: dict[tuple[int, ...], tuple[float, str]] = {}
    for row, position, value, source in zip(rows.tolist(), best.tolist(), distance.tolist(), found_by):
        if position < 0 or not math.isfinite(value):
            continue
        prefix = tuple(row[: position + 1])
        if list(prefix) == own:
            continue
        if prefix not in closest or value < closest[prefix][0]:
            closest[prefix] = (value, source)
    order = sorted(closest, key=lambda p: (closest[p][0], p))
    return Scored([list(p) for p in order], [closest[p][0] for p in order],
                  [closest[p][1] for p in order])


def epsilon_profile(scored: Scored, epsilon: float, token_strings, nearest: int = NEAREST
                    ) -> dict:
    """Distinct members within each radius of ``PROFILE_MULTIPLES`` x ε, and the ``nearest``
    members (cut prefix as text pieces, distance, who found it)."""
    radii = [round(m * epsilon, 6) for m in PROFILE_MULTIPLES]
    return {
        "radii": radii,
        "members": [sum(d <= r for d in scored.distance) for r in radii],
        "nearest": [{"tokens": token_strings(prefix), "distance": round(d, 6), "found_by": source}
                    for prefix, d, source in list(zip(scored.prefixes, scored.distance,
                                                      scored.found_by))[:nearest]],
    }


def token_reading(query: list[int], position: int, scored: Scored, epsilon: float,
                  token_strings, substitutions: dict[int, tuple[int, int]] | None = None
                  ) -> list[dict]:
    """One row per token of the query's prefix after BOS (``query[1 : position + 1]``): the
    shares of members and of outside inputs that keep it (aligned backwards and anywhere), and
    with ``substitutions`` ({index: (inside, tried)}) the share of its substitutions that stay
    inside ε (None where no side has an input)."""
    inside = [p for p, d in zip(scored.prefixes, scored.distance) if d <= epsilon]
    outside = [p for p, d in zip(scored.prefixes, scored.distance) if d > epsilon]
    pieces = token_strings(query[: position + 1])
    rows = []
    for index in range(1, position + 1):
        token, back = query[index], position - index
        row = {"index": index, "token": pieces[index], "offset": -back}
        for side, prefixes in (("inside", inside), ("outside", outside)):
            aligned = [len(p) - 1 - back >= 1 and p[len(p) - 1 - back] == token for p in prefixes]
            anywhere = [token in p[1:] for p in prefixes]
            row[f"kept_{side}"] = _share(aligned)
            row[f"anywhere_{side}"] = _share(anywhere)
        row["n_inside"], row["n_outside"] = len(inside), len(outside)
        stays, tried = (substitutions or {}).get(index, (0, 0))
        row["stays"] = stays / tried if tried else None
        row["substitutions"] = tried
        rows.append(row)
    return rows


def _share(flags: list[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


@torch.no_grad()
def substitution_rows(decoder, query_row: torch.Tensor, position: int, activation: torch.Tensor,
                      site_id: int, bos_id: int, eos_id: int, pad_id: int, per_position: int
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """The query's prefix (``query_row`` ``[W]`` cut after ``position``, then EOS) with one
    token at 1 <= j <= position replaced by each of the decoder's ``per_position`` likeliest
    other tokens there (given the prefix before it and the query activation). Returns (rows
    ``[m, W]``, the substituted index ``[m]``)."""
    width = query_row.shape[0]
    prefix = query_row.clone()
    prefix[position + 1:] = pad_id
    if position + 1 < width:
        prefix[position + 1] = eos_id
    device = next(decoder.parameters()).device
    logits = decoder(prefix[None, :position + 1].to(device),
                     activation.to(device, torch.float32)[None],
                     torch.tensor([site_id], device=device)).float().cpu()[0]  # [position+1, V]
    logits[:, [bos_id, eos_id, pad_id]] = -math.inf
    rows, where = [], []
    for index in range(1, position + 1):
        choices = logits[index - 1].topk(min(per_position + 1, logits.shape[-1])).indices.tolist()
        for token in [t for t in choices if t != int(prefix[index])][:per_position]:
            row = prefix.clone()
            row[index] = token
            rows.append(row)
            where.append(index)
    if not rows:
        return prefix.new_zeros((0, width)), torch.zeros(0, dtype=torch.long)
    return torch.stack(rows), torch.tensor(where)
