"""Distances between a query activation and a candidate's activations (method.md §7).

D_j = ||z_q - z'_j||_2 / ||z_q||_2 (normalised by the query's norm only), or
1 - cos(z_q, z'_j), at every position j of the candidate; PAD and EOS positions are excluded
and BOS is not. A candidate's distance is the minimum over its positions, and the argmin is
its best position; or the value at one fixed position.
"""

from __future__ import annotations

import torch

from inversionview.options import Metric
from inversionview.probed.model import ProbedModel
from inversionview.probed.sites import Site


def position_distances(query: torch.Tensor, candidates: torch.Tensor, metric: Metric = "euclidean",
                       ) -> torch.Tensor:
    """``[batch, pos]`` distance of each candidate activation ``[batch, pos, d]`` to the
    query ``[d]`` (or one query per candidate, ``[batch, d]``)."""
    if query.dim() == 1:
        query = query.expand(candidates.shape[0], -1)
    query = query[:, None, :]
    if metric == "euclidean":
        return (candidates - query).norm(dim=-1) / query.norm(dim=-1)
    if metric == "cosine":
        return 1.0 - torch.nn.functional.cosine_similarity(candidates, query, dim=-1)
    raise ValueError(f"unknown metric {metric!r}; use 'euclidean' or 'cosine'")


def scorable_positions(model: ProbedModel, tokens: torch.Tensor) -> torch.Tensor:
    """``[batch, pos]`` bool: positions that count (not PAD, not EOS; BOS counts)."""
    tokenizer = model.tokenizer
    return (tokens != tokenizer.pad_id) & (tokens != tokenizer.eos_id)


@torch.no_grad()
def _row_chunks(model: ProbedModel, tokens: torch.Tensor, budget_bytes: int = 256 * 2**20
                ) -> list[slice]:
    """Candidates scored together: a forward's largest intermediates (every head's result, the
    MLP's hidden layer) fit in about ``budget_bytes``. 1,024 candidates through GPT-2 small
    in one batch peaked at 9 GB."""
    per_row = tokens.shape[1] * model.d_model * 4 * (model.n_heads + 8)
    size = max(1, budget_bytes // per_row)
    return [slice(start, start + size) for start in range(0, tokens.shape[0], size)]


def candidate_distances(model: ProbedModel, site: Site, query: torch.Tensor, tokens: torch.Tensor,
                        metric: Metric = "euclidean",
                        fixed_position: int | torch.Tensor | None = None,
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Score candidates ``tokens`` ``[batch, pos]`` against ``query`` (``[d]`` or ``[batch, d]``).

    Returns (distance ``[batch]``, best_position ``[batch]``, per-position distances
    ``[batch, pos]`` with inf where excluded). With ``fixed_position`` (one index for all, or
    a ``[batch]`` tensor of indices, -1 where a candidate lacks the position) the distance
    is read there: inf when that position is missing, PAD or EOS.
    """
    query = query.to(model.device)
    per_position = torch.cat([
        position_distances(query[rows] if query.dim() == 2 else query,
                           model.run_sites(tokens[rows], [site])[site], metric)
        for rows in _row_chunks(model, tokens)])
    per_position = per_position.masked_fill(~scorable_positions(model, tokens), float("inf"))
    if fixed_position is None:
        distance, best_position = per_position.min(dim=1)
        return distance, best_position, per_position
    positions = torch.as_tensor(fixed_position, device=per_position.device).expand(tokens.shape[0])
    present = (positions >= 0) & (positions < tokens.shape[1])
    read = per_position.gather(1, positions.clamp(0, tokens.shape[1] - 1)[:, None]).squeeze(1)
    distance = read.masked_fill(~present, float("inf"))
    return distance, positions.clone(), per_position
