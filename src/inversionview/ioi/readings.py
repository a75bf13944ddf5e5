"""What the IOI circuit's heads encode, read two ways (issue 15, item 5; method.md §10).

    rows = read_heads(model, decoder, [("a3.1", "END"), ("a1.2", "S2")], queries=20)
    edits = edit_table(model, [("a2.0", "END")], n=200)
    table = dla_table(model, [("a3.1", "END", "io"), ("a1.2", "S2", "s")], n=1000)

``read_heads`` runs InversionView queries on seeded IOI prompts and pools, over the queries,
how often the in-ε samples (the decoder's draws, as the paper) keep each attribute of the
query (IO name, S name, order, the names' positions, template) against how often the
out-of-ε samples do: an attribute the activation encodes is kept inside far more than
outside.

``edit_table`` needs no decoder: it edits each of ``n`` prompts in one attribute at a time
(another IO name, another S name, the other order, another place, object or template) and
measures how far the head's output at the position moves (normalised distance, as a query's):
an attribute whose edit stays within ε does not matter to the activation; one whose edit
moves it far is part of what the ε-preimage must keep. It says why a head can have no in-ε
samples: when every name edit moves it past ε, its preimage within the IOI prompts is the
prompts with both names of the query, about one in names² of them.

``dla_table`` is the paper's Table 4 baseline: direct logit attribution of the head's output
at the position, and how often the expected name (IO for a name mover, S otherwise) is among
the 30 tokens it promotes (suppresses) most, and also the most promoted (suppressed) of the
names; a name's token with and without its leading space both count.
"""

from __future__ import annotations

from typing import Any, Sequence

import random

import torch

from inversionview.decoder.model import Decoder
from inversionview.probed.subject import Subject
from inversionview.probed.sites import Site

READ_ATTRIBUTES = ("io", "s", "order", "io_position", "s1_position", "s2_position", "template")
READ_POSITIONS = ("S1+1", "S2", "END")
#: Where each role acts, and so where its reading is taken (Wang et al.; method.md §10): name
#: movers and S-inhibition heads at END, duplicate-token and induction heads at S2, previous-
#: token heads at S1+1.
ROLE_POSITIONS = {"name mover": "END", "negative name mover": "END", "s-inhibition": "END",
                  "induction": "S2", "duplicate token": "S2", "previous token": "S1+1"}
#: The names whose keeping a member reading measures, and the named positions of their token
#: in the query, latest first: the token is looked for anywhere in a member, so either of S's
#: tokens does for keeping, and the latest one in the prefix is the one substituted.
MEMBER_NAMES = {"io": ("IO",), "s": ("S2", "S1")}
TOP = 30  # Table 4's "top 30 promoted (suppressed)"
EDITS = ("io", "s", "order", "place", "object", "template")


def read_heads(model: Subject, decoder: Decoder, targets: Sequence[tuple[str, str]],
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


def read_members(model: Subject, decoder: Decoder, targets: Sequence[tuple[str, str]],
                 queries: int = 20, seed: int = 0, candidates: int = 256, search: int | None = None,
                 epsilon: float = 0.1) -> list[dict[str, Any]]:
    """Per (site, position): the default text query (decoder draws, then the search; members
    are distinct cut prefixes, the query's own left out) on ``queries`` prompts, and what its
    members keep of the names: over every query, the share of members inside ε whose cut prefix
    holds the query's IO (S) name token, against the share of the inputs scored outside ε (the
    decoder's draws and the search's edits that left the ball), with the share of substitutions
    of that token that stay inside ε (``read_tokens``). ``queries_with_inside`` counts the
    queries with at least one member; ``members`` lists each query's count."""
    from inversionview.preimage.query import query_config, run_query

    config = query_config(candidates=candidates, epsilon=epsilon, search=search)
    rows = []
    for index, (site, position) in enumerate(targets):
        prompts = model.task.prompts.prompts(queries, seed * 1_000 + index)
        pooled = {name: [0.0, 0, 0.0, 0, 0.0, 0] for name in MEMBER_NAMES}  # in, n, out, n, stays, n
        members, seconds = [], 0.0
        for number, prompt in enumerate(prompts):
            result = run_query(model, decoder, prompt.text, site, position, config, seed=seed + number)
            members.append(result.completeness.found)
            seconds += result.stats.seconds
            by_index = {row["index"]: row for row in result.token_reading}
            for name, named in MEMBER_NAMES.items():
                found = [by_index[prompt.positions[n]] for n in named
                         if prompt.positions.get(n) in by_index]
                if not found:  # the name comes after the position read
                    continue
                row = found[0]
                counts = pooled[name]
                if row["anywhere_inside"] is not None:
                    counts[0] += row["anywhere_inside"] * row["n_inside"]
                    counts[1] += row["n_inside"]
                if row["anywhere_outside"] is not None:
                    counts[2] += row["anywhere_outside"] * row["n_outside"]
                    counts[3] += row["n_outside"]
                if row["stays"] is not None:
                    counts[4] += row["stays"] * row["substitutions"]
                    counts[5] += row["substitutions"]
        rows.append({
            "site": site, "position": position, "queries": len(prompts),
            "queries_with_inside": sum(m > 0 for m in members), "members": members,
            "distinct_in_epsilon": sum(members), "seconds": round(seconds, 1),
            "search": config.search if config.search is not None else model.task.default_search,
            "attributes": {name: {"inside": c[0] / c[1] if c[1] else None, "n_inside": c[1],
                                  "outside": c[2] / c[3] if c[3] else None, "n_outside": c[3],
                                  "stays": c[4] / c[5] if c[5] else None}
                           for name, c in pooled.items()}})
    return rows


def name_token_ids(model: Subject) -> dict[str, list[int]]:
    """Each name's single-token ids: with its leading space, and without where that is one
    token too."""
    prompts = model.task.prompts
    found = {}
    for name, spaced in prompts.name_ids.items():
        bare = model.task.vocab.encode(name)
        found[name] = [spaced] + (bare if len(bare) == 1 else [])
    return found


def edited_prompts(generator, prompt, rng: random.Random) -> dict[str, Any]:
    """``prompt`` changed in one attribute at a time, the rest kept (EDITS order)."""
    def other(values, *avoid):
        return rng.choice([value for value in values if value not in avoid])

    p = prompt
    return {
        "io": generator.build(p.template, other(generator.names, p.io, p.s), p.s, p.order, p.place, p.object),
        "s": generator.build(p.template, p.io, other(generator.names, p.io, p.s), p.order, p.place, p.object),
        "order": generator.build(p.template, p.io, p.s, "BABA" if p.order == "ABBA" else "ABBA",
                                 p.place, p.object),
        "place": generator.build(p.template, p.io, p.s, p.order, other(generator.places, p.place), p.object),
        "object": generator.build(p.template, p.io, p.s, p.order, p.place, other(generator.objects, p.object)),
        "template": generator.build(other(generator.template_ids(), p.template), p.io, p.s, p.order,
                                    p.place, p.object),
    }


@torch.no_grad()
def edit_table(model: Subject, targets: Sequence[tuple[str, str]], n: int = 200,
               seed: int = 0, epsilon: float = 0.1) -> list[dict[str, Any]]:
    """Per (site, position): for each one-attribute edit (EDITS), the median normalised
    distance between the activation at the named position of ``n`` seeded prompts and of
    their edits, and the fraction of edits within ``epsilon`` (module docstring)."""
    generator = model.task.prompts
    prompts = generator.prompts(n, seed)
    rng = random.Random(seed)
    edited = [edited_prompts(generator, prompt, rng) for prompt in prompts]
    all_prompts = prompts + [e[kind] for kind in EDITS for e in edited]
    tokens = model.tokens([p.text for p in all_prompts])
    read_at = [(model.site(site), torch.tensor([p.positions[position] for p in all_prompts]))
               for site, position in targets]
    sites = sorted({site for site, _ in read_at}, key=str)
    # only each target's position is kept: every position of every site of GPT-2 small's
    # circuit on 1,400 prompts would be gigabytes
    reads: list[list[torch.Tensor]] = [[] for _ in targets]
    for start in range(0, len(all_prompts), 256):
        chunk = model.run_sites(tokens[start:start + 256], sites)
        for parts, (site, at) in zip(reads, read_at):
            values = chunk[site]
            parts.append(values[torch.arange(len(values)), at[start:start + 256].to(values.device)]
                         .float().cpu())
    rows = []
    for (site, _), (_, position), parts in zip(read_at, targets, reads):
        read = torch.cat(parts)
        query, rest = read[:n], read[n:].view(len(EDITS), n, -1)
        distance = (rest - query).norm(dim=-1) / query.norm(dim=-1).clamp_min(1e-12)
        rows.append({"site": site.short, "position": position, "n": n, "epsilon": epsilon,
                     "edits": {kind: {"median": round(distance[i].median().item(), 4),
                                      "inside": round((distance[i] <= epsilon).float().mean().item(), 4)}
                               for i, kind in enumerate(EDITS)}})
    return rows


@torch.no_grad()
def dla_table(model: Subject, targets: Sequence[tuple[str, str, str]], n: int = 1000,
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


__all__ = ["EDITS", "MEMBER_NAMES", "READ_ATTRIBUTES", "READ_POSITIONS", "ROLE_POSITIONS",
           "dla_table", "edit_table", "edited_prompts", "name_token_ids", "read_heads",
           "read_members"]
