"""Decoder quality on a fixed, seeded held-out query set (method.md §7, issue 3).

The in-ε rate of a query is the fraction of decoder samples (T = 1, no noise) whose distance
to the query activation, re-scored on the probed model (minimum over positions), is within
ε. Rates are reported per site, averaged over the held-out queries of that site.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from inversionview.decoder.model import Decoder, random_like
from inversionview.decoder.positions import allowed_positions
from inversionview.probed.distance import candidate_distances
from inversionview.probed.subject import Subject


@dataclass
class QuerySet:
    tokens: torch.Tensor  # [n, n_ctx] query inputs
    site_id: torch.Tensor  # [n]
    position: torch.Tensor  # [n]
    activation: torch.Tensor  # [n, d]


def held_out_queries(model: Subject, per_site: int, seed: int,
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
    if task.free_text and positions is None:
        for site_id, _ in enumerate(model.sites):
            tokens = task.sample_tokens(per_site, generator, held_out=True)
            allowed = allowed_positions(model, tokens, torch.full((len(tokens),), site_id), policy)
            scores = torch.rand(tokens.shape, generator=generator).masked_fill(~allowed, -1.0)
            rows.extend(tokens)
            site_ids.extend([site_id] * per_site)
            query_positions.extend(scores.argmax(dim=1).tolist())
    else:
        positions = positions or task.eval_positions or task.position_names
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
def in_epsilon_rates(decoder: Decoder, model: Subject, queries: QuerySet, samples_per_query: int,
                     epsilon: float, generator: torch.Generator, controls: bool = True
                     ) -> dict[str, object]:
    """Per-site in-ε rate of the decoder's samples (T 1, no noise, no grammar mask), counting a
    sample only when its cut prefix (its tokens up to its best position) is not the query's
    own: any continuation of the query's prefix is a member that says nothing (issue 28).

    With ``controls``, two decoders that know nothing of the query are measured on the same
    queries, samples and scoring: ``other_activation`` (this decoder given another held-out
    query's activation of the same site) and ``random_decoder`` (a decoder of the same shape
    with random weights, seeded). A site where the decoder does not beat both is listed under
    ``flagged``. ``in_epsilon_raw`` counts the query's own prefix too (the figure before)."""
    was_training = decoder.training
    decoder.eval()
    task = model.task
    control_generator = torch.Generator().manual_seed(int(torch.randint(2**31, (1,), generator=generator)))
    shuffled = _other_activations(queries)
    arms = {"decoder": (decoder, queries.activation)}
    if controls:
        arms["other_activation"] = (decoder, shuffled)
        control_seed = int(torch.randint(2**31, (1,), generator=control_generator))
        arms["random_decoder"] = (random_like(decoder, control_seed), queries.activation)
    rates: dict[str, list[float]] = {name: [] for name in arms}
    raw: list[float] = []
    well_formed = total = distinct_in = all_in = 0
    for index, site in enumerate(model.sites):
        chosen = torch.nonzero(queries.site_id == index).flatten()
        target = queries.activation[chosen].repeat_interleave(samples_per_query, dim=0)
        own = [queries.tokens[q, : int(queries.position[q]) + 1] for q in chosen.tolist()]
        for name, (sampler, conditioning) in arms.items():
            source = conditioning[chosen].repeat_interleave(samples_per_query, dim=0)
            samples = _draw(sampler, task, source, index,
                            generator if name == "decoder" else control_generator)
            distance, best, _ = candidate_distances(model, site, target, samples)
            inside = (distance <= epsilon).cpu()
            context = _is_query_context(samples, best.cpu(), own, samples_per_query)
            rates[name].append(float((inside & ~context).float().mean()))
            if name != "decoder":
                continue
            raw.append(float(inside.float().mean()))
            texts = task.decode_batch(samples)
            well_formed += sum(task.validate(text).well_formed for text in texts)
            total += len(texts)
            for query in range(len(chosen)):
                block = slice(query * samples_per_query, (query + 1) * samples_per_query)
                prefixes = [bytes(samples[i, : int(best[i]) + 1].numpy().astype("int64"))
                            for i in range(block.start, block.stop) if inside[i] and not context[i]]
                distinct_in += len(set(prefixes))
                all_in += len(prefixes)
    if was_training:
        decoder.train()
    names = [s.short for s in model.sites]
    result: dict[str, object] = {
        "in_epsilon": dict(zip(names, rates["decoder"])),
        "in_epsilon_mean": sum(rates["decoder"]) / len(names),
        "in_epsilon_raw": dict(zip(names, raw)),
        "well_formed": well_formed / total,
        "distinct_in_epsilon": distinct_in / all_in if all_in else None,
    }
    if controls:
        result["controls"] = {name: dict(zip(names, rates[name])) for name in arms if name != "decoder"}
        result["controls_mean"] = {name: sum(rates[name]) / len(names) for name in arms if name != "decoder"}
        result["flagged"] = [site for site, mine, *others in zip(names, *rates.values())
                             if not mine > max(others)]
    return result


def _draw(decoder: Decoder, task, activation: torch.Tensor, site_index: int,
          generator: torch.Generator) -> torch.Tensor:
    vocab = task.vocab
    device = next(decoder.parameters()).device
    site_id = torch.full((activation.shape[0],), site_index, dtype=torch.long)
    if generator.device != device:
        generator = torch.Generator(device=device).manual_seed(int(torch.randint(2**31, (1,), generator=generator)))
    return decoder.sample(activation.to(device), site_id.to(device), vocab.bos_id, vocab.eos_id,
                          vocab.pad_id, 1.0, generator).cpu()


def _other_activations(queries: QuerySet) -> torch.Tensor:
    """Each query's activation replaced by the next held-out query's of the same site."""
    shuffled = queries.activation.clone()
    for site in queries.site_id.unique().tolist():
        rows = torch.nonzero(queries.site_id == site).flatten()
        shuffled[rows] = queries.activation[rows.roll(-1)]
    return shuffled


def _is_query_context(samples: torch.Tensor, best: torch.Tensor, own: list[torch.Tensor],
                      per_query: int) -> torch.Tensor:
    """``[n]`` bool: the sample's cut prefix is its query's own (``own[i // per_query]``)."""
    flags = torch.zeros(len(samples), dtype=torch.bool)
    for i in range(len(samples)):
        prefix = own[i // per_query]
        flags[i] = int(best[i]) + 1 == len(prefix) and bool((samples[i, : len(prefix)] == prefix).all())
    return flags
