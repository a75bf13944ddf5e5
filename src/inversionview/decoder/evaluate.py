"""Decoder quality on a fixed, seeded held-out query set (method.md §7, issue 3).

The in-ε rate of a query is the fraction of decoder samples (T = 1, no noise) whose distance
to the query activation, re-scored on the probed model (minimum over positions), is within
ε. Rates are reported per site, averaged over the held-out queries of that site.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from inversionview.decoder.model import Decoder
from inversionview.decoder.positions import allowed_positions
from inversionview.preimage.distance import candidate_distances
from inversionview.probed.model import ProbedModel


@dataclass
class QuerySet:
    tokens: torch.Tensor  # [n, n_ctx] query inputs
    site_id: torch.Tensor  # [n]
    position: torch.Tensor  # [n]
    activation: torch.Tensor  # [n, d]


#: Query positions of the held-out evaluation set (the issue's target): counting ``:`` and
#: the query letter, addition ``+ = A1 A2 A3``; other tasks: all their named positions.
EVAL_POSITIONS = {"counting": (":", "query"), "addition": ("+", "=", "A1", "A2", "A3")}


def held_out_queries(model: ProbedModel, per_site: int, seed: int,
                     positions: tuple[str, ...] | None = None, policy: str = "uniform"
                     ) -> QuerySet:
    """``per_site`` queries for every (site, named position): fresh inputs drawn from a
    generator seeded with ``seed`` + 1,000,003 (apart from any training seed's streams).
    Free text has no named positions: its queries are held-out corpus pieces at positions
    drawn as the decoder's training draws them under its position ``policy``
    (``positions.py``; uniform: any real token after BOS)."""
    task = model.task
    generator = torch.Generator().manual_seed(seed + 1_000_003)
    rows, site_ids, query_positions = [], [], []
    if task.sites is None and positions is None:
        for site_id, _ in enumerate(model.sites):
            tokens = task.sample_tokens(per_site, generator, held_out=True)
            allowed = allowed_positions(model, tokens, torch.full((len(tokens),), site_id), policy)
            scores = torch.rand(tokens.shape, generator=generator).masked_fill(~allowed, -1.0)
            rows.extend(tokens)
            site_ids.extend([site_id] * per_site)
            query_positions.extend(scores.argmax(dim=1).tolist())
    else:
        positions = positions or EVAL_POSITIONS.get(task.name, task.position_names)
        for site_id, _ in enumerate(model.sites):
            for name in positions:
                tokens = task.sample_tokens(per_site, generator)
                for row in tokens:
                    rows.append(row)
                    site_ids.append(site_id)
                    query_positions.append(task.resolve_in_tokens(row, name))
    tokens = torch.stack(rows)
    site_id, position = torch.tensor(site_ids), torch.tensor(query_positions)
    activation = torch.empty(len(rows), model.d_model)
    for index, site in enumerate(model.sites):
        chosen = site_id == index
        values = model.activations(tokens[chosen], site, position[chosen])
        activation[chosen] = values.cpu()
    return QuerySet(tokens, site_id, position, activation)


@torch.no_grad()
def in_epsilon_rates(decoder: Decoder, model: ProbedModel, queries: QuerySet, samples_per_query: int,
                     epsilon: float, generator: torch.Generator) -> dict[str, object]:
    """Per-site in-ε rate, fraction of well-formed samples and of distinct in-ε samples."""
    was_training = decoder.training
    decoder.eval()
    task = model.task
    vocab = task.vocab
    device = next(decoder.parameters()).device
    n_sites = len(model.sites)
    hits, totals = torch.zeros(n_sites), torch.zeros(n_sites)
    well_formed, distinct_in, all_in = 0, 0, 0
    for index, site in enumerate(model.sites):
        chosen = torch.nonzero(queries.site_id == index).flatten()
        activation = queries.activation[chosen].repeat_interleave(samples_per_query, dim=0)
        site_id = torch.full((activation.shape[0],), index, dtype=torch.long)
        samples = decoder.sample(activation.to(device), site_id.to(device), vocab.bos_id,
                                 vocab.eos_id, vocab.pad_id, 1.0, generator).cpu()
        distance, _, _ = candidate_distances(model, site, activation, samples)
        inside = (distance <= epsilon).cpu()
        hits[index] += inside.sum()
        totals[index] += inside.numel()
        texts = task.decode_batch(samples)
        well_formed += sum(task.validate(text).well_formed for text in texts)
        for query in range(len(chosen)):
            block = slice(query * samples_per_query, (query + 1) * samples_per_query)
            inside_texts = [t for t, ok in zip(texts[block], inside[block].tolist()) if ok]
            distinct_in += len(set(inside_texts))
            all_in += len(inside_texts)
    if was_training:
        decoder.train()
    rates = (hits / totals).tolist()
    return {
        "in_epsilon": dict(zip([s.short for s in model.sites], rates)),
        "in_epsilon_mean": sum(rates) / n_sites,
        "well_formed": well_formed / totals.sum().item(),
        "distinct_in_epsilon": distinct_in / all_in if all_in else None,
    }
