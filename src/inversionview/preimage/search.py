"""Local search inside the ε-ball, seeded by the decoder's samples (issue 14).

The decoder alone finds large preimages well and small ones badly: where an activation is
specific, its ε-preimage is a few hundred inputs among 810,000 and the decoder's 1,024 draws
land on few of them, or none. Members of a preimage are rarely alone, though: change one
token of a member and the activation often stays inside ε. The search walks those edits:

1. Every round takes up to ``frontier`` inputs not yet expanded: members (inside ε) first,
   closest first, then inputs just outside (within ``margin`` x ε), which bridge members
   that differ in two tokens. While no member is known at all, it takes the ``beam`` closest
   inputs instead and climbs towards the query (a round that gets no closer counts against
   ``patience``).
2. The decoder, conditioned on the query activation and reading each input teacher-forced,
   proposes the edits: at every position, its ``per_position`` likeliest tokens there
   replace the token, or are inserted before it; and the token is deleted; and any two
   different tokens trade places (a member's operands' digits at one place, a count's
   letters in another order: inputs two substitutions apart that a single edit cannot
   reach without leaving the ball). The task writes
   what follows from the rest (``Task.complete``: an addition's sum, a count) and drops rows
   that are no input of it; rows already scored are dropped.
3. The ``round_size`` likeliest edits (by the decoder's log-probability of the new token)
   are scored on the probed model exactly as the decoder's candidates are.

It stops when a round expands nothing (the ball is ``saturated`` as far as these edits reach),
when ``members`` inputs are inside ε, when ``evaluations`` inputs have been scored, or when
climbing stops getting closer. Every choice is deterministic: the same query, the same result.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from inversionview import options
from inversionview.decoder.model import Decoder
from inversionview.errors import OptionError
from inversionview.tasks.abilities import Grammar


@dataclass
class SearchConfig:
    evaluations: int = 16384  # inputs scored on the probed model at most
    per_position: int = 8  # the decoder's likeliest tokens proposed at each position
    frontier: int = 64  # inputs expanded per round
    round_size: int = 2048  # edits scored per round at most (likeliest first)
    margin: float = 2.0  # expand inputs up to margin x ε too (bridges between members)
    beam: int = 16  # inputs expanded per round while no member is known
    patience: int = 2  # climbing rounds without getting closer before giving up
    transpositions: bool = True  # also propose two tokens trading places
    # On free text (``truncate``), also delete two consecutive tokens. Off: on 24 held-out
    # lm-kjv queries it found more members in 1, as many in 20 and fewer in 3 (it spends
    # budget; bench/results/text_readings-lm-kjv-{spans,no-spans}.json).
    spans: bool = False

    def __post_init__(self) -> None:
        self.evaluations = options.SEARCH_EVALUATIONS.check(self.evaluations)
        for name in ("per_position", "frontier", "round_size", "beam", "patience"):
            if int(getattr(self, name)) < 1:
                raise OptionError(f"the search's {name} must be at least 1, not {getattr(self, name)}")
        if not self.margin >= 1:
            raise OptionError(f"the search's margin must be at least 1 (x ε), not {self.margin}")


#: ``score(tokens [n, width]) -> (distance [n], best position [n], per-position distances)``
Score = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


@dataclass
class SearchOutcome:
    """What the search scored beyond the decoder's candidates."""

    tokens: torch.Tensor  # [m, width] the inputs it scored, in the order scored
    distance: torch.Tensor  # [m]
    best_position: torch.Tensor  # [m]
    per_position: torch.Tensor  # [m, width]
    round: torch.Tensor  # [m] the round (1, 2, ...) that scored each
    evaluations: int
    rounds: int
    stop: str  # why it stopped: saturated, members, evaluations, no-closer
    log: list[dict] = field(default_factory=list)  # per round: expanded, scored, new members, best


def row_keys(tokens: torch.Tensor) -> list[bytes]:
    """One hashable key per row of token ids."""
    array = tokens.to(torch.int64).contiguous().numpy()
    return [row.tobytes() for row in array]


@torch.no_grad()
def edit_proposals(decoder: Decoder, rows: torch.Tensor, activation: torch.Tensor, site_id: int,
                   bos_id: int, eos_id: int, pad_id: int, per_position: int,
                   transpositions: bool = True, cut: torch.Tensor | None = None,
                   spans: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Every single-token edit of ``rows`` ``[F, W]`` that the decoder proposes, and every
    transposition of two different tokens. With ``cut`` ``[F]`` (each row's best position
    + 1), edits stay inside each row's cut prefix (an insertion may extend it by one token):
    in a causal model what follows the cut is not evidence, so editing it finds nothing new.
    ``spans`` (free text) adds the deletion of every two consecutive tokens: a phrase
    ("unto Moses", "of the") is often one unit that single deletions reach only through
    an input that is out of ε.

    Returns (edited rows ``[P, W]``, priority ``[P]`` = the decoder's log-probability of the
    token that the edit puts in place, given the prefix and the query activation). Rows keep
    their width: an insertion into a full row is not proposed.
    """
    device = next(decoder.parameters()).device
    n_rows, width = rows.shape
    site_ids = torch.full((n_rows,), site_id, dtype=torch.long, device=device)
    logits = decoder(rows[:, :-1].to(device), activation.to(device, torch.float32).expand(n_rows, -1),
                     site_ids).float().cpu()  # [F, W-1, V]: index j-1 predicts position j
    logits[..., pad_id] = -math.inf
    log_probs = logits.log_softmax(dim=-1)
    proposable = log_probs.clone()
    proposable[..., [bos_id, eos_id]] = -math.inf
    k = min(per_position + 1, proposable.shape[-1])
    top_log_probs, top_tokens = proposable.topk(k, dim=-1)  # [F, W-1, k]

    n_tokens = (rows != pad_id).sum(dim=1)
    is_eos = rows == eos_id
    end = torch.where(is_eos.any(dim=1), is_eos.float().argmax(dim=1), n_tokens)  # EOS index
    if cut is not None:
        end = torch.minimum(end, cut.to(end.dtype))
    position = torch.arange(1, width)[None, :]  # [1, W-1]: the edited position j
    current = rows[:, 1:]  # [F, W-1]

    # Substitutions at 1 <= j < end: the likeliest tokens other than the current one.
    differs = top_tokens != current[..., None]
    keep = differs & (differs.long().cumsum(dim=-1) <= per_position)
    keep &= (position < end[:, None])[..., None]
    substitute = _pick(keep, top_log_probs, top_tokens)
    # Insertions before 1 <= j <= end, into rows that have room: the likeliest tokens.
    keep = (torch.arange(k) < per_position)[None, None, :].expand_as(top_tokens).clone()
    keep &= ((position <= end[:, None]) & (n_tokens[:, None] < width))[..., None]
    insert = _pick(keep, top_log_probs, top_tokens)
    # Deletions at 1 <= j < end; priority: the log-probability of the token that moves up.
    following = torch.cat([rows[:, 2:], torch.full((n_rows, 1), pad_id)], dim=1)  # [F, W-1]
    moved_up = log_probs.gather(-1, following.clamp(max=log_probs.shape[-1] - 1)[..., None]).squeeze(-1)
    delete_f, delete_j = torch.nonzero(position < end[:, None], as_tuple=True)
    delete_j = delete_j + 1

    columns = torch.arange(width)[None, :]
    edited, priority = [], []
    if substitute[0].numel():
        f, j, token, value = substitute
        row = rows[f].clone()
        row[torch.arange(len(f)), j] = token
        edited.append(row)
        priority.append(value)
    if insert[0].numel():
        f, j, token, value = insert
        source = columns - (columns > j[:, None]).long()  # [P, W]: after j, one to the left
        row = rows[f].gather(1, source)
        row[torch.arange(len(f)), j] = token
        edited.append(row)
        priority.append(value)
    if delete_f.numel():
        source = columns + (columns >= delete_j[:, None]).long()
        row = rows[delete_f].gather(1, source.clamp(max=width - 1))
        row = row.masked_fill(source >= width, pad_id)
        edited.append(row)
        priority.append(moved_up[delete_f, delete_j - 1])
    # Span deletions of tokens j and j+1 at 1 <= j, j + 1 < end; priority: the
    # log-probability of the token that moves up to j.
    if spans:
        span_f, span_j = torch.nonzero(position[:, :-1] + 1 < end[:, None], as_tuple=True)
        span_j = span_j + 1
        source = columns + 2 * (columns >= span_j[:, None]).long()
        row = rows[span_f].gather(1, source.clamp(max=width - 1))
        row = row.masked_fill(source >= width, pad_id)
        after = rows[span_f, (span_j + 2).clamp(max=width - 1)]
        after = torch.where(span_j + 2 < width, after, torch.full_like(after, pad_id))
        edited.append(row)
        priority.append(log_probs[span_f, span_j - 1, after.clamp(max=log_probs.shape[-1] - 1)])
    # Transpositions of two different tokens at 1 <= i < j < end; priority: the less likely
    # of the two tokens in its new place (as the decoder reads the unswapped prefix).
    first, second = torch.triu_indices(width - 1, width - 1, offset=1) + 1  # [pairs] each
    swap_f, pair = torch.nonzero((second[None, :] < end[:, None])
                                 & (rows[:, first] != rows[:, second]), as_tuple=True)
    if transpositions and swap_f.numel():
        i, j, each = first[pair], second[pair], torch.arange(len(swap_f))
        row = rows[swap_f].clone()
        at_i, at_j = row[each, i], row[each, j]
        row[each, i], row[each, j] = at_j, at_i
        edited.append(row)
        priority.append(torch.minimum(log_probs[swap_f, i - 1, at_j], log_probs[swap_f, j - 1, at_i]))
    if not edited:
        return rows.new_zeros((0, width)), torch.zeros(0)
    return torch.cat(edited), torch.cat(priority)


def _add_cuts(cuts: set[bytes], rows: torch.Tensor, best: torch.Tensor, exclude: bytes | None) -> None:
    """Add the cut prefixes of ``rows`` (their best positions ``best``) to ``cuts``, but not
    ``exclude``."""
    for row, position in zip(rows, best.tolist()):
        key = row[: position + 1].to(torch.int64).contiguous().numpy().tobytes()
        if key != exclude:
            cuts.add(key)


def _one_per_cut(ordered: torch.Tensor, tokens: torch.Tensor, best: torch.Tensor,
                 expanded_cuts: set[bytes], expanded: torch.Tensor) -> torch.Tensor:
    """``ordered`` (indices into ``tokens``) less the rows whose cut prefix was expanded
    already (or comes earlier in ``ordered``), which are marked expanded."""
    kept = []
    for index in ordered.tolist():
        key = tokens[index, : int(best[index]) + 1].to(torch.int64).contiguous().numpy().tobytes()
        if key in expanded_cuts:
            expanded[index] = True
            continue
        expanded_cuts.add(key)
        kept.append(index)
    return torch.tensor(kept, dtype=torch.long)


def _truncated(rows: torch.Tensor, cut: torch.Tensor, eos_id: int, pad_id: int) -> torch.Tensor:
    """``rows`` ``[F, W]`` with everything after each row's cut (``cut`` tokens kept) replaced
    by EOS and PAD."""
    columns = torch.arange(rows.shape[1])[None, :]
    out = rows.masked_fill(columns >= cut[:, None], pad_id)
    at = cut.clamp(max=rows.shape[1] - 1)
    fits = cut < rows.shape[1]
    out[torch.nonzero(fits).flatten(), at[fits]] = eos_id
    return out


def _pick(keep: torch.Tensor, values: torch.Tensor, tokens: torch.Tensor):
    """(row, position j, token, log-probability) of the kept entries of ``[F, W-1, k]``."""
    f, j, slot = torch.nonzero(keep, as_tuple=True)
    return f, j + 1, tokens[f, j, slot], values[f, j, slot]


@torch.no_grad()
def local_search(decoder: Decoder, activation: torch.Tensor, site_id: int, task: Grammar,
                 score: Score, seeds: torch.Tensor, seed_distance: torch.Tensor, epsilon: float,
                 members_wanted: int, config: SearchConfig | None = None,
                 on_round: Callable[[int, int], None] | None = None,
                 seed_best: torch.Tensor | None = None, exclude: bytes | None = None,
                 truncate: bool = False) -> SearchOutcome:
    """Search around ``seeds`` ``[n, W]`` (the decoder's distinct candidates, their distances
    ``[n]``) for more inputs within ``epsilon`` (see the module's docstring).

    ``task.complete`` makes edits inputs; ``score`` scores rows on the probed model. A member
    counts towards ``members_wanted`` when it is an input of the task (``Task.in_space``).
    ``on_round(evaluations, budget)`` is told the progress.

    With ``seed_best`` (the seeds' best positions ``[n]``) members are cut prefixes
    (preimage/members.py): a member counts once per cut prefix and not at all when its cut
    prefix is ``exclude`` (the query's own), and edits stay inside each row's cut prefix.
    ``truncate`` (free text, where no grammar writes what follows) also replaces what follows
    a row's cut by EOS before editing it, so rows that share a cut prefix are expanded once.
    """
    config = config or SearchConfig()
    vocab = task.vocab
    width = seeds.shape[1]
    seen = set(row_keys(seeds))
    # Everything scored so far: the seeds, then each round's batch (what the outcome returns).
    pool_tokens = [seeds]
    pool_distance = [seed_distance.float().cpu()]
    by_cut = seed_best is not None
    pool_best = [seed_best.cpu() if by_cut else torch.zeros(len(seeds), dtype=torch.long)]
    expanded = torch.zeros(len(seeds), dtype=torch.bool)
    expanded_cuts: set[bytes] = set()
    member_cuts: set[bytes] = set()
    if by_cut:
        inside = (seed_distance <= epsilon) & task.in_space(seeds)
        _add_cuts(member_cuts, seeds[inside], pool_best[0][inside], exclude)
        members = len(member_cuts)
    else:
        members = int(((seed_distance <= epsilon) & task.in_space(seeds)).sum())

    found_best, found_per_position, found_round = [], [], []
    evaluations, rounds, best, stale, stop = 0, 0, float(seed_distance.min()) if len(seeds) else math.inf, 0, ""
    log: list[dict] = []
    while True:
        if members >= members_wanted:
            stop = "members"
            break
        if evaluations >= config.evaluations:
            stop = "evaluations"
            break
        tokens = torch.cat(pool_tokens)
        distance = torch.cat(pool_distance)
        expanded = torch.cat([expanded, torch.zeros(len(tokens) - len(expanded), dtype=torch.bool)])
        near = ~expanded & (distance <= epsilon * config.margin)
        climbing = members == 0 and not bool(near.any())
        if climbing:
            near = ~expanded & torch.isfinite(distance)
            take = config.beam
        else:
            take = config.frontier
        if not bool(near.any()):
            stop = "saturated" if members else "no-closer"
            break
        candidates = torch.nonzero(near).flatten()
        ordered = candidates[torch.argsort(distance[candidates], stable=True)]
        cut = None
        if by_cut:
            best_all = torch.cat(pool_best)
            ordered = _one_per_cut(ordered, tokens, best_all, expanded_cuts, expanded)
            chosen = ordered[:take]
            cut = best_all[chosen] + 1
        else:
            chosen = ordered[:take]
        expanded[chosen] = True
        if not len(chosen):
            continue
        parents = tokens[chosen]
        if truncate and cut is not None:
            parents = _truncated(parents, cut, vocab.eos_id, vocab.pad_id)
        rows, priority = edit_proposals(decoder, parents, activation, site_id, vocab.bos_id,
                                        vocab.eos_id, vocab.pad_id, config.per_position,
                                        config.transpositions, cut, spans=truncate and config.spans)
        rows, ok = task.complete(rows)
        rows, priority = rows[ok], priority[ok]
        order = torch.argsort(priority, descending=True, stable=True)
        fresh = []
        for index, key in zip(order.tolist(), row_keys(rows[order])):
            if key not in seen:
                seen.add(key)
                fresh.append(index)
                if len(fresh) >= min(config.round_size, config.evaluations - evaluations):
                    break
        rounds += 1
        if not fresh:
            stale += climbing
            log.append({"round": rounds, "expanded": len(chosen), "scored": 0, "new_members": 0,
                        "best": best})
            if climbing and stale >= config.patience:
                stop = "no-closer"
                break
            continue
        batch = rows[torch.tensor(fresh)]
        distance_new, best_new, per_position_new = score(batch)
        distance_new = distance_new.float().cpu()
        evaluations += len(batch)
        if by_cut:
            before = len(member_cuts)
            inside = distance_new <= epsilon  # all rows are inputs (complete)
            _add_cuts(member_cuts, batch[inside], best_new.cpu()[inside], exclude)
            new_members = len(member_cuts) - before
            members = len(member_cuts)
        else:
            new_members = int((distance_new <= epsilon).sum())  # all rows are inputs (complete)
            members += new_members
        pool_tokens.append(batch)
        pool_distance.append(distance_new)
        pool_best.append(best_new.cpu().long())
        found_best.append(best_new.cpu())
        found_per_position.append(per_position_new.cpu())
        found_round.append(torch.full((len(batch),), rounds))
        closest = float(distance_new.min())
        if climbing:
            stale = 0 if closest < best else stale + 1
        best = min(best, closest)
        log.append({"round": rounds, "expanded": len(chosen), "scored": len(batch),
                    "new_members": new_members, "best": round(best, 6)})
        if on_round is not None:
            on_round(evaluations, config.evaluations)
        if climbing and members == 0 and stale >= config.patience:
            stop = "no-closer"
            break

    if found_round:
        return SearchOutcome(torch.cat(pool_tokens[1:]), torch.cat(pool_distance[1:]), torch.cat(found_best),
                             torch.cat(found_per_position), torch.cat(found_round), evaluations,
                             rounds, stop, log)
    empty = seeds.new_zeros((0, width))
    return SearchOutcome(empty, torch.zeros(0), torch.zeros(0, dtype=torch.long),
                         torch.zeros(0, width), torch.zeros(0, dtype=torch.long), 0, rounds, stop, log)
