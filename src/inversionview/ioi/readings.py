"""What the IOI circuit's heads encode, read two ways (issue 15, item 5; method.md §10).

    rows = read_heads(model, decoder, [("a3.1", "END"), ("a1.2", "S2")], queries=20)
    table = dla_table(model, [("a3.1", "END", "io"), ("a1.2", "S2", "s")], n=1000)

``read_heads`` runs InversionView queries on seeded IOI prompts and pools, over the queries,
how often the in-ε samples (the decoder's draws, as the paper) keep each attribute of the
query (IO name, S name, order, the names' positions, template) against how often the
out-of-ε samples do: an attribute the activation encodes is kept inside far more than
outside.

``dla_table`` is the paper's Table 4 baseline: direct logit attribution of the head's output
at the position, and how often the expected name (IO for a name mover, S otherwise) is among
the 30 tokens it promotes (suppresses) most, and also the most promoted (suppressed) of the
names; a name's token with and without its leading space both count.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from inversionview.decoder.model import Decoder
from inversionview.probed.model import ProbedModel
from inversionview.probed.sites import Site

READ_ATTRIBUTES = ("io", "s", "order", "io_position", "s1_position", "s2_position", "template")
READ_POSITIONS = ("S1+1", "S2", "END")
TOP = 30  # Table 4's "top 30 promoted (suppressed)"


def read_heads(model: ProbedModel, decoder: Decoder, targets: Sequence[tuple[str, str]],
               queries: int = 20, seed: int = 0, candidates: int = 256,
               fixed_position: bool = True, epsilon: float = 0.1) -> list[dict[str, Any]]:
    """Per (site, position): the pooled inside / outside agreement of each attribute over
    ``queries`` prompts (``fixed_position``: distance at the query's named position in each
    sample, as the paper's Fig. 4b), and how many queries had a sample in ε."""
    from inversionview.preimage.pooled import pooled_agreement
    from inversionview.preimage.query import query_config

    config = query_config(candidates=candidates, epsilon=epsilon, fixed_position=fixed_position,
                          search=0)
    return pooled_agreement(
        model, decoder, targets,
        lambda index: [p.text for p in model.task.prompts.prompts(queries, seed * 1_000 + index)],
        READ_ATTRIBUTES, config, seed)


def name_token_ids(model: ProbedModel) -> dict[str, list[int]]:
    """Each name's single-token ids: with its leading space, and without where that is one
    token too."""
    prompts = model.task.prompts
    found = {}
    for name, spaced in prompts.name_ids.items():
        bare = model.task.vocab.encode(name)
        found[name] = [spaced] + (bare if len(bare) == 1 else [])
    return found


@torch.no_grad()
def dla_table(model: ProbedModel, targets: Sequence[tuple[str, str, str]], n: int = 1000,
              seed: int = 0, top: int = TOP) -> list[dict[str, Any]]:
    """Per (site, position, expected "io" or "s"): the Table 4 rates over ``n`` prompts."""
    task = model.task
    prompts = task.prompts.prompts(n, seed)
    names = name_token_ids(model)
    name_of = {token: name for name, tokens in names.items() for token in tokens}
    name_tokens = torch.tensor(sorted(name_of))
    rows = []
    tokens = model.tokens([p.text for p in prompts])
    index = torch.arange(n, device=tokens.device)
    for site_name, position, expected in targets:
        site = model.site(site_name)
        at = torch.tensor([p.positions[position] for p in prompts], device=tokens.device)
        final = Site(model.n_layers - 1, "resid_post")
        values = model.run_sites(tokens, [site, final])
        dla = model.direct_logits(values[site][index, at], values[final][index, at]).float().cpu()
        wanted = [getattr(p, expected) for p in prompts]
        hits = {"promoted": 0, "suppressed": 0, "promoted_first_name": 0,
                "suppressed_first_name": 0}
        for row, name in enumerate(wanted):
            for side, scores in (("promoted", dla[row]), ("suppressed", -dla[row])):
                best = set(scores.topk(top).indices.tolist())
                inside = any(token in best for token in names[name])
                first = name_of[int(name_tokens[scores[name_tokens].argmax()])] == name
                hits[side] += inside
                hits[f"{side}_first_name"] += inside and first
        rows.append({"site": site_name, "position": position, "expected": expected, "n": n,
                     **{f"top{top}_{key}": value / n for key, value in hits.items()}})
    return rows


__all__ = ["READ_ATTRIBUTES", "READ_POSITIONS", "dla_table", "name_token_ids", "read_heads"]
