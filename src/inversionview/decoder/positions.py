"""Where a decoder's training activations are read: the position policies (``--positions``).

A policy gives, for a batch of inputs and the site drawn for each example, the positions
the example may be read at (a mask); the stream (``data.ActivationStream``) draws one of
them uniformly and, whatever the policy, sends 1 % of the examples to BOS (method.md §5:
token colouring compares against the BOS activation, so the decoder must know it).

    uniform            every position a user may query: the task's ``query_position_mask``
                       (free text: every real token after BOS; a toy task: its named
                       positions). The paper's policy for the toy tasks and IOI; the default.
    last               the last of those positions in each input: for free text its last
                       real token (the one before EOS), where a causal LM reads the prompt
                       to predict what comes next (IOI's END, a factual prompt's last token).
    low-bos-attention  for a head site aL.H: the lower half of each input's queryable
                       positions ranked by head H's attention to BOS, that is the
                       ceil(n / 2) of its n queryable positions where the head attends least
                       to BOS (ties go to the earlier position), so the argmin is always
                       among them. Any other site (residual stream, MLP, a whole layer's
                       attention) has no single attention pattern: it falls back to uniform.

    last-or-least-bos  the paper's factual-recall policy, for a head site aL.H: the last
                       queryable position or the one where head H attends least to BOS,
                       half and half; an input where the head attends to BOS with more than
                       FILTER_BOS_ATTENTION at both is filtered out (the stream draws another
                       input in its place). Any other site: every queryable position.

Why low-bos-attention: the paper's factual-recall decoder (GPT-2 XL, upper-layer heads) was
trained at positions where the head attends little to BOS, because a head that attends to
BOS (its no-op, an attention sink) moves almost nothing and its output there says little
about the input. Neither the paper's summaries nor method.md give the exact rule, so the
rule above is this project's: relative to each input (no threshold to tune per head, and a
head that attends mostly to BOS everywhere still yields its least-BOS positions), and half
of the positions rather than only the argmin, so that each input still teaches the decoder
more than one position. The attention is read from the probed model as it is read for the
activations (processed or raw: the processing does not change attention patterns).
"""

from __future__ import annotations

import torch

from inversionview.options import POSITIONS
from inversionview.probed.subject import Subject


def allowed_positions(model: Subject, tokens: torch.Tensor, site_id: torch.Tensor,
                      policy: str = "uniform") -> torch.Tensor:
    """``[batch, pos]`` bool: where example i (input ``tokens[i]``, site
    ``model.sites[site_id[i]]``) may be read under ``policy`` (module docstring). A row may
    be all False (an input with no queryable position); the stream then reads BOS."""
    POSITIONS.check(policy)
    queryable = model.task.query_position_mask(tokens)
    if policy == "last":
        return last_position(queryable)
    if policy == "low-bos-attention":
        return low_bos_attention(model, tokens, site_id, queryable)
    if policy == "last-or-least-bos":
        return last_or_least_bos(model, tokens, site_id, queryable)
    return queryable


#: last-or-least-bos drops an input whose head attends to BOS above this at both of its
#: positions (this project's choice: the paper filtered by BOS attention without a number).
FILTER_BOS_ATTENTION = 0.95


@torch.no_grad()
def last_or_least_bos(model: Subject, tokens: torch.Tensor, site_id: torch.Tensor,
                      queryable: torch.Tensor) -> torch.Tensor:
    """``[batch, pos]``: for a head site, the last queryable position and the queryable one
    where the head attends least to BOS (one position when they coincide), or none when the
    head attends to BOS above FILTER_BOS_ATTENTION at both; other sites: every queryable one."""
    last = last_position(queryable)

    def choose(to_bos: torch.Tensor, mask: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        least = to_bos.masked_fill(~mask, float("inf")).argmin(dim=1)
        chosen = last[rows].cpu().clone()
        chosen[torch.arange(len(rows)), least] |= mask.any(dim=1)
        busy = (to_bos.masked_fill(~chosen, float("inf")) <= FILTER_BOS_ATTENTION).any(dim=1)
        return chosen & busy[:, None]

    return _by_head_attention_to_bos(model, tokens, site_id, queryable, choose)


def last_position(queryable: torch.Tensor) -> torch.Tensor:
    """``[batch, pos]``: only the last True of each row of ``queryable``."""
    index = torch.arange(queryable.shape[1], device=queryable.device)
    last = torch.where(queryable, index, -1).argmax(dim=1)
    chosen = torch.zeros_like(queryable)
    chosen[torch.arange(len(last)), last] = True
    return chosen & queryable


@torch.no_grad()
def low_bos_attention(model: Subject, tokens: torch.Tensor, site_id: torch.Tensor,
                      queryable: torch.Tensor) -> torch.Tensor:
    """``[batch, pos]``: for a head site, the queryable positions of the lower half by the
    head's attention to BOS; for any other site, every queryable position. One forward per
    layer that holds a drawn head, over the rows of that layer's heads."""
    return _by_head_attention_to_bos(model, tokens, site_id, queryable,
                                     lambda to_bos, mask, rows: lowest_half(to_bos, mask))


def _by_head_attention_to_bos(model: Subject, tokens: torch.Tensor, site_id: torch.Tensor,
                              queryable: torch.Tensor, choose) -> torch.Tensor:
    """``queryable`` with each head example's row replaced by ``choose(to_bos [r, q],
    queryable [r, q], rows [r])``, its head's attention to BOS from every position; rows of
    other sites keep every queryable position. One forward per layer that holds a drawn head,
    over the rows of that layer's heads."""
    heads = [(site.layer, site.head) if site.kind == "head" else (-1, 0) for site in model.sites]
    layer, head = torch.tensor(heads)[site_id.cpu()].unbind(dim=1)
    allowed = queryable.clone()
    for each_layer in layer.unique().tolist():
        if each_layer < 0:
            continue
        rows = torch.nonzero(layer == each_layer).flatten()
        pattern = model.attention_patterns(tokens[rows], each_layer).cpu()  # [r, head, q, k]
        to_bos = pattern[torch.arange(len(rows)), head[rows], :, 0]  # [r, q]
        allowed[rows] = choose(to_bos, queryable[rows].cpu(), rows).to(allowed.device)
    return allowed


def lowest_half(values: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """``[batch, pos]``: of each row's allowed positions (n of them), the ceil(n / 2) with the
    smallest ``values`` (ties: the earlier position)."""
    order = values.masked_fill(~allowed, float("inf")).argsort(dim=1, stable=True)
    rank = order.argsort(dim=1)  # rank[i, p]: where position p stands in row i's order
    keep = (allowed.sum(dim=1, keepdim=True) + 1) // 2
    return allowed & (rank < keep)
