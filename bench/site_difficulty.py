"""How hard each site is to sample into ε: the decoder's in-ε rate beside the task
distribution's own (issue 14, item 4).

    python bench/site_difficulty.py MODEL [--task T] [--decoder DIR] [--per-site 8]
                                    [--samples 16] [--pool 20000] [--threads 1]

For the decoder's held-out queries (``decoder.evaluate.held_out_queries``, the training
evaluation's positions), two rates per query: the decoder's in-ε rate (``--samples`` draws at
T 1, no noise, re-scored, minimum over positions: the training curves' measure), and the
fraction of a seeded pool of ``--pool`` task inputs whose activation is within ε of the
query's (minimum over positions): how large the ε-preimage is in the task's own
distribution. Their ratio is what the decoder gains over drawing task inputs; a site whose
pool rate is near 0 has tiny preimages, and a decoder's in-ε rate there is bounded by how
precisely it can place a sample, not by how often it draws the task's inputs.

The summary pools every site's queries by their pool rate (none in the pool, under 0.1 %,
0.1-1 %, over 1 %) and gives the decoder's mean in-ε rate in each.

``--given ATTRIBUTE`` (a task attribute, e.g. counting's ``count``) splits both rates by
whether an input shares the query's value of it: for the pool, the share of in-ε members that
share it and the share of the inputs sharing it that are in ε (how much of the attribute's
class the ε-ball holds); for the decoder, the share of its draws that share it and their
in-ε rate. A site can be hard because the decoder does not read the attribute, or because
the ε-ball is a small part of the attribute's class and the decoder must place its draws
inside that part.

Writes bench/results/site-difficulty-<name>.json with the machine, the commit and the command.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from inversionview import provenance
from inversionview.decoder.evaluate import held_out_queries
from inversionview.decoder.store import decoder_for
from inversionview.probed.distance import candidate_distances, position_distances, scorable_positions
from inversionview.probed import load_probed

RESULTS = Path(__file__).parent / "results"
#: Pool-rate strata for the summary: no member in the pool, under 0.1 %, 0.1-1 %, over 1 %.
STRATA = (("none in the pool", 0.0, 0.0), ("under 0.1 %", 1e-12, 1e-3),
          ("0.1-1 %", 1e-3, 1e-2), ("over 1 %", 1e-2, 1.0))


def by_preimage_size(sites: dict) -> list[dict]:
    """The decoder's mean in-ε rate over every query (all sites) in each pool-rate stratum:
    whether the decoder misses where preimages are small or everywhere."""
    queries = [query for site in sites.values() for query in site["per_query"]]
    rows = []
    for label, low, high in STRATA:
        chosen = [q["decoder"] for q in queries if low <= q["pool"] <= high]
        rows.append({"pool_rate": label, "queries": len(chosen),
                     "decoder_in_epsilon": round(statistics.fmean(chosen), 4) if chosen else None})
    return rows


@torch.no_grad()
def pool_members(model, site, queries: torch.Tensor, pool: torch.Tensor, epsilon: float,
                 chunk: int = 2000) -> torch.Tensor:
    """``[q, pool]``: whether each pool input is within ``epsilon`` of each query activation."""
    inside = torch.zeros(len(queries), len(pool), dtype=torch.bool)
    for start in range(0, len(pool), chunk):
        rows = pool[start:start + chunk]
        values = model.run_sites(rows, [site])[site].cpu()
        valid = scorable_positions(model, rows).cpu()
        for index, query in enumerate(queries):
            distance = position_distances(query, values).masked_fill(~valid, float("inf"))
            inside[index, start:start + chunk] = distance.min(dim=1).values <= epsilon
    return inside


@torch.no_grad()
def decoder_draws(model, decoder, site, site_id: int, queries: torch.Tensor, samples: int,
                  epsilon: float, generator: torch.Generator) -> tuple[torch.Tensor, list[str]]:
    """``[q, samples]`` in-ε of the decoder's draws for each query, and the draws' texts."""
    vocab = model.task.vocab
    activation = queries.repeat_interleave(samples, dim=0)
    ids = torch.full((len(activation),), site_id, dtype=torch.long)
    drawn = decoder.sample(activation, ids, vocab.bos_id, vocab.eos_id, vocab.pad_id, 1.0,
                           generator)
    distance, _, _ = candidate_distances(model, site, activation, drawn)
    return (distance.cpu() <= epsilon).view(len(queries), samples), model.task.decode_batch(drawn)


def share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def given_attribute(attribute: str, query_values: list, pool_values: list, inside: torch.Tensor,
                    draw_values: list, drawn_inside: torch.Tensor) -> dict:
    """The split by ``attribute`` (see the module's docstring), pooled over a site's queries."""
    pool_same = torch.tensor([[v == q for v in pool_values] for q in query_values])
    samples = drawn_inside.shape[1]
    draw_same = torch.tensor([[draw_values[i * samples + j] == q for j in range(samples)]
                              for i, q in enumerate(query_values)])
    return {
        "attribute": attribute,
        "pool_members_sharing_it": share(int((inside & pool_same).sum()), int(inside.sum())),
        "pool_sharing_it_in_epsilon": share(int((inside & pool_same).sum()), int(pool_same.sum())),
        "draws_sharing_it": share(int(draw_same.sum()), draw_same.numel()),
        "draws_sharing_it_in_epsilon": share(int((drawn_inside & draw_same).sum()), int(draw_same.sum())),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--task", default=None)
    parser.add_argument("--decoder", default=None)
    parser.add_argument("--name", default=None)
    parser.add_argument("--per-site", type=int, default=8, help="queries per site and position")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--pool", type=int, default=20_000)
    parser.add_argument("--epsilon", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--given", default=None, help="a task attribute to split the rates by "
                        "(counting: count, query_letter, length)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_probed(args.model, args.task)
    decoder, directory = decoder_for(model, args.model, args.decoder)
    name = args.name or (Path(args.model).name if "/" in args.model else f"bundled-{args.model}")
    started = time.perf_counter()
    queries = held_out_queries(model, args.per_site, args.seed)
    pool = model.task.sample_tokens(args.pool, torch.Generator().manual_seed(args.seed + 7))
    generator = torch.Generator().manual_seed(args.seed)
    task = model.task
    if args.given:
        pool_values = [task.attributes(text).get(args.given) for text in task.decode_batch(pool)]
        if all(value is None for value in pool_values):
            parser.error(f"the {task.name} task has no attribute {args.given!r}")
    sites = {}
    for site_id, site in enumerate(model.sites):
        chosen = queries.site_id == site_id
        activations = queries.activation[chosen]
        inside = pool_members(model, site, activations, pool, args.epsilon)
        drawn_inside, drawn = decoder_draws(model, decoder, site, site_id, activations,
                                            args.samples, args.epsilon, generator)
        by_pool = inside.float().mean(dim=1).tolist()
        by_decoder = drawn_inside.float().mean(dim=1).tolist()
        decoder_mean, pool_mean = statistics.fmean(by_decoder), statistics.fmean(by_pool)
        sites[site.short] = {
            "decoder_in_epsilon": round(decoder_mean, 4),
            "pool_in_epsilon": round(pool_mean, 6),
            "pool_in_epsilon_median": round(statistics.median(by_pool), 6),
            "queries_without_pool_member": sum(rate == 0 for rate in by_pool),
            "ratio": round(decoder_mean / pool_mean, 1) if pool_mean else None,
            "queries": len(by_pool),
            "per_query": [{"decoder": round(d, 4), "pool": round(p, 6)}
                          for d, p in zip(by_decoder, by_pool)],
        }
        print(f"{site.short:8} decoder {decoder_mean:.3f}  pool {pool_mean:.5f} "
              f"(median {statistics.median(by_pool):.5f}, {sites[site.short]['queries_without_pool_member']}"
              f"/{len(by_pool)} queries with none)  ratio {sites[site.short]['ratio']}", flush=True)
        if args.given:
            query_values = [task.attributes(task.decode(row)).get(args.given)
                            for row in queries.tokens[chosen]]
            split = given_attribute(args.given, query_values, pool_values, inside,
                                    [task.attributes(t).get(args.given) for t in drawn],
                                    drawn_inside)
            sites[site.short]["given"] = split
            print(f"{'':8} given {args.given}: pool in-ε members sharing it "
                  f"{split['pool_members_sharing_it']}, pool inputs sharing it in ε "
                  f"{split['pool_sharing_it_in_epsilon']}; draws sharing it "
                  f"{split['draws_sharing_it']}, in ε {split['draws_sharing_it_in_epsilon']}")
    record = {"benchmark": "site_difficulty", "model": args.model, "task": model.task.name,
              "decoder": str(directory), "epsilon": args.epsilon, "pool": args.pool,
              "samples": args.samples, "per_site": args.per_site, "given": args.given,
              "threads": torch.get_num_threads(), "machine": provenance.machine(),
              "commit": provenance.commit(), "command": " ".join(["python", *sys.argv]),
              "seconds": round(time.perf_counter() - started, 1),
              "by_preimage_size": by_preimage_size(sites), "sites": sites}
    for row in record["by_preimage_size"]:
        print(f"queries with pool rate {row['pool_rate']:>16}: {row['queries']:>4}, decoder "
              f"in-ε {row['decoder_in_epsilon']}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"site-difficulty-{name}{'-given-' + args.given if args.given else ''}.json"
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(f"-> {path}")


if __name__ == "__main__":
    main()
