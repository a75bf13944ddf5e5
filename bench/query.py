"""Query speed, and the sampler against brute force at equal wall time.

    python bench/query.py MODEL [--task T] [--decoder DIR] [--threads 2] [--queries 5]

1. Time to a full query (the paper's 1,024 candidates, scoring, ΔP colouring of the ~100
   shown samples) on the task's default query: median of --repeats runs after one warm-up.
2. For --queries queries whose preimage is rare (fewer than 1 in 2,000 inputs of the task
   distribution lie in ε, measured on a seeded pool of 20,000), the query's distinct in-ε
   inputs of the task's space against brute force given the same wall time: draw inputs from
   the task distribution in batches, score them at the site (min over positions, ε 0.1) and
   count the distinct ones in ε. Twice per query: the paper's decoder-only sampling
   (--search 0) and the default query (with the local search), each against brute force
   given its own wall time. Reports the counts and their ratios per query and in total.

Writes bench/results/query-<model>.json with the machine, the commit and the command.
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
from inversionview.decoder.store import find_decoder, load_decoder
from inversionview.probed.distance import candidate_distances
from inversionview.preimage.query import QueryConfig, decoder_site_id, run_query
from inversionview.probed import load_probed

RESULTS = Path(__file__).parent / "results"
POOL = 20_000
RARE = 1 / 2000
BATCH = 1024


def time_full_query(model, decoder, repeats: int) -> dict:
    site, position = model.task.default_query
    text = model.task.example
    run_query(model, decoder, text, site, position, seed=0)  # warm-up
    runs = [run_query(model, decoder, text, site, position, seed=seed) for seed in range(repeats)]
    stats = [r.stats for r in runs]
    return {"input": text, "site": site, "position": position,
            "seconds_median": statistics.median(s.seconds for s in stats),
            "seconds": [s.seconds for s in stats],
            "seconds_sampling_median": statistics.median(s.seconds_sampling for s in stats),
            "seconds_scoring_median": statistics.median(s.seconds_scoring for s in stats),
            "seconds_colouring_median": statistics.median(s.seconds_colouring for s in stats),
            "in_epsilon_rate": [round(s.in_epsilon_rate, 4) for s in stats]}


def rare_queries(model, count: int, seed: int) -> list[tuple[str, str, str, float]]:
    """(text, site, position name, pool in-ε fraction) for ``count`` rare queries, drawn
    from a seeded stream over every site and named position."""
    task = model.task
    generator = torch.Generator().manual_seed(seed)
    pool = task.sample_tokens(POOL, generator)
    found = []
    sites = [s.short for s in model.sites]
    for attempt in range(200):
        text = task.decode(task.sample_tokens(1, generator)[0])
        site = sites[int(torch.randint(len(sites), (1,), generator=generator))]
        names = list(task.named_positions(text))
        position = names[int(torch.randint(len(names), (1,), generator=generator))]
        index = task.resolve_position(text, position)
        query = model.activations(model.tokens(text), site)[0, index]
        distance, _, _ = candidate_distances(model, model.site(site), query, pool)
        fraction = float((distance <= 0.1).float().mean())
        if fraction < RARE:
            found.append((text, site, position, fraction))
        if len(found) == count:
            break
    return found


def brute_force(model, text: str, site: str, position: str, seconds: float, seed: int) -> dict:
    task = model.task
    index = task.resolve_position(text, position)
    query = model.activations(model.tokens(text), site)[0, index]
    generator = torch.Generator().manual_seed(seed)
    inside: set[bytes] = set()
    drawn = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        tokens = task.sample_tokens(BATCH, generator)
        distance, _, _ = candidate_distances(model, model.site(site), query, tokens)
        for row in tokens[distance <= 0.1]:
            inside.add(row.numpy().tobytes())
        drawn += BATCH
    return {"drawn": drawn, "distinct_in_epsilon": len(inside)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--task", default=None)
    parser.add_argument("--decoder", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--queries", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_probed(args.model, args.task)
    directory = args.decoder or find_decoder(model)
    if directory is None:
        sys.exit(f"no decoder for {args.model}; pass --decoder")
    decoder, _ = load_decoder(directory, model)
    name = Path(args.model).name if "/" in args.model else f"bundled-{args.model}"

    full = time_full_query(model, decoder, args.repeats)
    print(f"{name}: full query {full['seconds_median']:.2f} s (median of {args.repeats}; sampling "
          f"{full['seconds_sampling_median']:.2f}, scoring {full['seconds_scoring_median']:.2f}, "
          f"colouring {full['seconds_colouring_median']:.2f})")
    comparisons = []
    for number, (text, site, position, fraction) in enumerate(rare_queries(model, args.queries, args.seed)):
        decoder_site_id(model, decoder, model.site(site))
        row = {"input": text, "site": site, "position": position, "pool_in_epsilon_fraction": fraction}
        for mode, config in (("decoder_only", QueryConfig(search=0)), ("default", QueryConfig())):
            result = run_query(model, decoder, text, site, position, config, seed=args.seed + number)
            seconds = result.stats.seconds
            # distinct inputs of the task's space inside ε (as brute force counts them)
            found = result.completeness.found
            brute = brute_force(model, text, site, position, seconds, seed=args.seed + number)
            row[mode] = {"seconds": seconds, "sampler_distinct_in_epsilon": found,
                         "brute_force_drawn": brute["drawn"],
                         "brute_force_distinct_in_epsilon": brute["distinct_in_epsilon"],
                         "ratio": found / brute["distinct_in_epsilon"] if brute["distinct_in_epsilon"] else None}
            print(f"  {text} {site} at {position!r} (pool rate {fraction:.5f}), {mode}: sampler "
                  f"{found} distinct in eps in {seconds:.2f} s; brute force "
                  f"{brute['distinct_in_epsilon']} from {brute['drawn']} draws", flush=True)
        comparisons.append(row)
    totals = {mode: {"sampler": sum(c[mode]["sampler_distinct_in_epsilon"] for c in comparisons),
                     "brute_force": sum(c[mode]["brute_force_distinct_in_epsilon"] for c in comparisons)}
              for mode in ("decoder_only", "default")}
    for total in totals.values():
        total["ratio_of_totals"] = total["sampler"] / total["brute_force"] if total["brute_force"] else None
    sampler_total, brute_total = totals["default"]["sampler"], totals["default"]["brute_force"]
    record = {
        "benchmark": "query", "model": args.model, "task": model.task.name, "decoder": str(directory),
        "threads": torch.get_num_threads(), "machine": provenance.machine(),
        "commit": provenance.commit(), "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "full_query": full, "rare_queries": comparisons,
        "totals": totals,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"query-{name}.json"
    path.write_text(json.dumps(record, indent=1) + "\n")
    ratio = "n/a (brute force found none)" if not brute_total else f"{sampler_total / brute_total:.1f}"
    print(f"total distinct in eps (default query): sampler {sampler_total}, brute force {brute_total}; "
          f"ratio {ratio}; decoder only: {totals['decoder_only']} -> {path}")


if __name__ == "__main__":
    main()
