"""Completeness, made exact (method.md §8; issue 14): how much of the true ε-preimage a query finds.

    python bench/completeness.py MODEL [--task addition] [--per-stratum 15] [--seed 0]
    python bench/completeness.py MODEL --task counting [--triples 30] [--pool 200000]

Addition (the whole input space, 810,000 inputs, is scored): draws a seeded stream of
(query, site, position) triples over every site and the positions + = A1 A2 A3, computes each
one's exact ε-preimage, and keeps the first --per-stratum triples of each stratum of its size
(under 100, 100-1,000, 1,000-10,000, over 10,000 members). Each kept triple is queried twice
with the same seed: the decoder alone (--search 0) and the default query (with the local
search), both drawing within the task's grammar; with --free also the decoder alone sampling
freely, the paper's sampling (the reference row). Per triple and mode: the true size, the members found,
recall, recall at budget (min(found, B) / min(true, B), B = the query's 1,024 candidates),
precision (of the members the query reports as inside ε, the share truly inside), distinct
in-ε inputs, seconds of the default query (shown samples coloured, as a user gets it), and the
query's own size estimate against the true size.

Counting (no enumeration): a seeded pool of --pool inputs from the task distribution stands
in for the space. Each input's probability under the task's sampler is known, so the pool
estimates a preimage's size (Horvitz-Thompson); recall is measured on the pool's members
(the share of them the query found).

Writes bench/results/completeness-<model>.json with the machine, the commit and the command.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import torch

from inversionview import provenance
from inversionview.decoder.store import find_decoder, load_decoder
from inversionview.probed.distance import position_distances, scorable_positions
from inversionview.preimage.query import QueryConfig, run_query
from inversionview.preimage.search import row_keys
from inversionview.probed import load_probed

RESULTS = Path(__file__).parent / "results"
STRATA = (("<100", 1, 100), ("100-1k", 100, 1_000), ("1k-10k", 1_000, 10_000),
          (">10k", 10_000, math.inf))
POSITIONS = ("+", "=", "A1", "A2", "A3")
BUDGET = 1024
EPSILON = 0.1


def stratum_of(size: float) -> str:
    return next(name for name, low, high in STRATA if low <= size < high)


@torch.no_grad()
def site_activations(model, site, tokens: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """``[N, W, d]`` activations of every row of ``tokens`` at ``site``."""
    return torch.cat([model.run_sites(tokens[i:i + chunk], [site])[site].cpu()
                      for i in range(0, len(tokens), chunk)])


@torch.no_grad()
def exact_distances(activations: torch.Tensor, scorable: torch.Tensor, query: torch.Tensor,
                    chunk: int = 65536) -> torch.Tensor:
    """``[N]`` min-over-positions distance (as the query scores) of every cached row."""
    out = []
    for i in range(0, len(activations), chunk):
        distance = position_distances(query, activations[i:i + chunk])
        out.append(distance.masked_fill(~scorable[i:i + chunk], math.inf).min(dim=1).values)
    return torch.cat(out)


def members_by_site(model, candidates: list[tuple[str, str, str]], space: torch.Tensor):
    """(index into ``candidates``, ``[N]`` bool: the rows of ``space`` inside the triple's ε)
    for every triple, one site at a time (each site's activations over the space computed once)."""
    scorable = scorable_positions(model, space)
    started = time.perf_counter()
    for site in sorted({c[1] for c in candidates}):
        activations = site_activations(model, model.site(site), space)
        for number, (text, s, position) in enumerate(candidates):
            if s == site:
                index = model.task.resolve_position(text, position)
                query = model.activations(model.tokens(text), site)[0, index]
                yield number, exact_distances(activations, scorable, query) <= EPSILON
        del activations
        print(f"  exact preimages at {site}: done ({time.perf_counter() - started:.0f} s)", flush=True)


def triple_stream(model, generator: torch.Generator, positions: tuple[str, ...]):
    task = model.task
    sites = [s.short for s in model.sites]
    while True:
        text = task.decode(task.sample_tokens(1, generator)[0])
        site = sites[int(torch.randint(len(sites), (1,), generator=generator))]
        names = [p for p in positions if p in task.named_positions(text)]
        position = names[int(torch.randint(len(names), (1,), generator=generator))]
        yield text, site, position


def run_modes(model, decoder, text: str, site: str, position: str, seed: int, modes: dict):
    """{mode: (timed result, every-sample result)} for each mode's QueryConfig."""
    out = {}
    for mode, config in modes.items():
        timed = run_query(model, decoder, text, site, position, config, seed=seed)
        every = run_query(model, decoder, text, site, position,
                          QueryConfig(**{**config.__dict__, "all_samples": True}), seed=seed)
        out[mode] = (timed, every)
        assert timed.completeness == every.completeness  # the same query, only shown differently
    return out


def members_reported(result, index_of: dict[bytes, int], task) -> tuple[set[int], int]:
    """(universe indices of the in-ε samples that are inputs of the space, distinct in-ε)."""
    inside = [s for s in result.samples if s.in_epsilon]
    if not inside:
        return set(), 0
    keys = row_keys(task.encode_batch([s.text for s in inside]))
    return {index_of[k] for k in keys if k in index_of}, len(inside)


def mode_record(timed, every, members: torch.Tensor, index_of, task) -> dict:
    found_set, distinct_in = members_reported(every, index_of, task)
    true_size = int(members.sum())
    found = sum(1 for i in found_set if members[i])
    completeness = timed.completeness
    estimate = completeness.estimated_size if completeness else None
    return {
        "found": found, "reported_in_space": len(found_set), "distinct_in_epsilon": distinct_in,
        "recall": found / true_size,
        "recall_at_budget": min(found, BUDGET) / min(true_size, BUDGET),
        "precision": found / len(found_set) if found_set else None,
        "seconds": timed.stats.seconds, "seconds_search": timed.stats.seconds_search,
        "estimate": completeness.estimate if completeness else None,
        "estimated_size": estimate,
        "estimate_ratio": estimate / true_size if estimate else None,
        "estimate_members_drawn": completeness.found_by_decoder if completeness else None,
        "search": completeness.search if completeness else None,
        "found_by_search": completeness.found_by_search if completeness else None,
    }


def summarise(rows: list[dict], modes: list[str]) -> dict:
    summary = {}
    for mode in modes:
        values = [r[mode] for r in rows]
        by_stratum = {}
        for name, _, _ in STRATA:
            inside = [r[mode] for r in rows if r["stratum"] == name]
            if inside:
                by_stratum[name] = {
                    "triples": len(inside),
                    "median_recall_at_budget": statistics.median(v["recall_at_budget"] for v in inside),
                    "median_recall": statistics.median(v["recall"] for v in inside),
                    "median_seconds": statistics.median(v["seconds"] for v in inside)}
        ratios = [v["estimate_ratio"] for v in values if v["estimate_ratio"]]
        errors = [abs(math.log10(r)) for r in ratios]
        precisions = [v["precision"] for v in values if v["precision"] is not None]
        summary[mode] = {
            "triples": len(values),
            "median_recall_at_budget": statistics.median(v["recall_at_budget"] for v in values),
            "mean_recall_at_budget": statistics.fmean(v["recall_at_budget"] for v in values),
            "median_recall": statistics.median(v["recall"] for v in values),
            "min_precision": min(precisions) if precisions else None,
            "median_distinct_in_epsilon": statistics.median(v["distinct_in_epsilon"] for v in values),
            "median_seconds": statistics.median(v["seconds"] for v in values),
            "max_seconds": max(v["seconds"] for v in values),
            "by_stratum": by_stratum,
            "estimate": {
                "triples_with_estimate": len(ratios),
                "median_abs_log10_error": statistics.median(errors) if errors else None,
                "within_2x": sum(e <= math.log10(2) for e in errors) / len(errors) if errors else None,
                "within_10x": sum(e <= 1 for e in errors) / len(errors) if errors else None,
                "underestimates": sum(r < 1 for r in ratios) / len(ratios) if ratios else None},
        }
    return summary


def bench_enumerable(model, decoder, args, modes: dict) -> tuple[list[dict], dict]:
    task = model.task
    universe = task.enumerate_tokens()
    index_of = {key: i for i, key in enumerate(row_keys(universe))}
    generator = torch.Generator().manual_seed(args.seed)
    stream = triple_stream(model, generator, POSITIONS)
    candidates = [next(stream) for _ in range(args.candidates)]
    sizes, member_masks = [None] * len(candidates), {}
    cache = None
    if args.exact_cache is not None:  # the exact preimages of this stream, computed once
        # named by the probed weights: the bundled "addition" and the authors' .../addition differ
        cache = args.exact_cache / (f"{task.name}-{model.weights_hash()[:12]}-seed{args.seed}-"
                                    f"{args.candidates}.safetensors")
        if cache.exists():
            from safetensors.torch import load_file

            masks = load_file(str(cache))["members"].bool()
            sizes = masks.sum(dim=1).tolist()
            member_masks = dict(enumerate(masks))
    for number, inside in members_by_site(model, candidates, universe) if not member_masks else ():
        sizes[number] = int(inside.sum())
        member_masks[number] = inside
    if cache is not None and not cache.exists():
        from safetensors.torch import save_file

        cache.parent.mkdir(parents=True, exist_ok=True)
        save_file({"members": torch.stack([member_masks[i] for i in range(len(candidates))]).to(torch.uint8)},
                  str(cache))
    chosen, per_stratum = [], Counter()
    for number, size in enumerate(sizes):
        stratum = stratum_of(size)
        if per_stratum[stratum] < args.per_stratum:
            per_stratum[stratum] += 1
            chosen.append(number)
    available = Counter(stratum_of(size) for size in sizes)
    rows = []
    for seed, number in enumerate(chosen):
        text, site, position = candidates[number]
        results = run_modes(model, decoder, text, site, position, args.seed + seed, modes)
        row = {"query": text, "site": site, "position": position, "seed": args.seed + seed,
               "true_size": sizes[number], "stratum": stratum_of(sizes[number])}
        for mode, (timed, every) in results.items():
            row[mode] = mode_record(timed, every, member_masks[number], index_of, task)
        rows.append(row)
        print(f"{text} {site} at {position!r}: true {sizes[number]}; "
              + "; ".join(f"{mode}: found {row[mode]['found']}, recall@B {row[mode]['recall_at_budget']:.2f}, "
                          f"est {row[mode]['estimated_size']}, {row[mode]['seconds']:.2f} s"
                          for mode in modes), flush=True)
    return rows, {"candidate_triples": len(candidates), "available_per_stratum": dict(available)}


def counting_log_probability(task, tokens: torch.Tensor) -> torch.Tensor:
    """``[n]`` log-probability of each input under the counting task's sampler: an ordered
    letter triple (6 orders of the set), counts 1..9 each, a uniform arrangement of the
    multiset, and the query slot."""
    from inversionview.tasks.counting import LETTERS

    log_p = []
    for text in task.decode_batch(tokens):
        context = text[1:text.index("|")]
        counts = Counter(context).values()
        arrangements = math.lgamma(len(context) + 1) - sum(math.lgamma(c + 1) for c in counts)
        n_letters = len(LETTERS)
        log_p.append(math.log(6) - math.log(n_letters * (n_letters - 1) * (n_letters - 2))
                     - 3 * math.log(9) - arrangements - math.log(3))
    return torch.tensor(log_p, dtype=torch.float64)


def bench_pool(model, decoder, args, modes: dict) -> tuple[list[dict], dict]:
    task = model.task
    pool = torch.unique(task.sample_tokens(args.pool, torch.Generator().manual_seed(args.seed + 1)), dim=0)
    index_of = {key: i for i, key in enumerate(row_keys(pool))}
    weights = torch.exp(-counting_log_probability(task, pool))  # 1 / p(x)
    generator = torch.Generator().manual_seed(args.seed)
    stream = triple_stream(model, generator, task.position_names)
    candidates = [next(stream) for _ in range(args.triples)]
    rows = []
    for number, members in members_by_site(model, candidates, pool):
        text, site, position = candidates[number]
        # Horvitz-Thompson over the pool's draws (unique rows: weight by draw count ~ 1)
        size = float(weights[members].sum()) / args.pool
        results = run_modes(model, decoder, text, site, position, args.seed + number, modes)
        row = {"query": text, "site": site, "position": position, "seed": args.seed + number,
               "pool_members": int(members.sum()), "estimated_size": size,
               "stratum": stratum_of(size) if members.any() else "none in pool"}
        for mode, (timed, every) in results.items():
            found_set, distinct_in = members_reported(every, index_of, task)
            found_pool = sum(1 for i in found_set if members[i])
            completeness = timed.completeness
            row[mode] = {
                "distinct_in_epsilon": distinct_in,
                "pool_recall": found_pool / int(members.sum()) if members.any() else None,
                "recall_at_budget": (min(distinct_in, BUDGET) / min(size, BUDGET)
                                     if members.any() else None),
                "seconds": timed.stats.seconds,
                "query_estimated_size": completeness.estimated_size if completeness else None,
                "search": completeness.search if completeness else None}
        rows.append(row)
        print(f"{text} {site} at {position!r}: pool members {int(members.sum())}, est size {size:.3g}; "
              + "; ".join(f"{mode}: {row[mode]['distinct_in_epsilon']} in eps, pool recall "
                          f"{row[mode]['pool_recall']}, {row[mode]['seconds']:.2f} s" for mode in modes),
              flush=True)
    return rows, {"pool": args.pool, "pool_distinct": len(pool)}


def summarise_pool(rows: list[dict], modes: list[str]) -> dict:
    summary = {}
    for mode in modes:
        with_members = [r[mode] for r in rows if r["pool_members"]]
        ratios = [r[mode]["query_estimated_size"] / r["estimated_size"] for r in rows
                  if r["pool_members"] and r[mode]["query_estimated_size"]]
        summary[mode] = {
            "triples": len(rows), "triples_with_pool_members": len(with_members),
            "median_pool_recall": statistics.median(v["pool_recall"] for v in with_members) if with_members else None,
            "median_recall_at_budget": (statistics.median(v["recall_at_budget"] for v in with_members)
                                        if with_members else None),
            "median_distinct_in_epsilon": statistics.median(r[mode]["distinct_in_epsilon"] for r in rows),
            "median_seconds": statistics.median(r[mode]["seconds"] for r in rows),
            "max_seconds": max(r[mode]["seconds"] for r in rows),
            "estimate_vs_pool": {
                "triples": len(ratios),
                "median_abs_log10_error": (statistics.median(abs(math.log10(r)) for r in ratios)
                                           if ratios else None)}}
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--task", default=None)
    parser.add_argument("--per-stratum", type=int, default=15)
    parser.add_argument("--candidates", type=int, default=600, help="triples drawn to fill the strata")
    parser.add_argument("--triples", type=int, default=30, help="counting: triples")
    parser.add_argument("--pool", type=int, default=200_000, help="counting: pool size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--name", default=None, help="results file suffix (default: the model's name)")
    parser.add_argument("--exact-cache", type=Path, default=None,
                        help="a directory to keep the exact preimages of the triple stream in")
    parser.add_argument("--settings", default=None,
                        help='search settings to try, JSON (e.g. {"per_position": 8})')
    parser.add_argument("--decoder-only", action=argparse.BooleanOptionalAction, default=True,
                        help="also run the decoder-only reference row")
    parser.add_argument("--free", action="store_true",
                        help="also run the decoder alone sampling freely (the paper's sampling; "
                             "the other rows draw within the task's grammar)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_probed(args.model, args.task)
    decoder, _ = load_decoder(find_decoder(model), model)
    modes = {"decoder_only_free": QueryConfig(search=0, constrain=False)} if args.free else {}
    if args.decoder_only:
        modes["decoder_only"] = QueryConfig(search=0)
    modes["default"] = QueryConfig()
    if args.settings:
        from inversionview.preimage.search import SearchConfig

        modes["default"] = QueryConfig(search_settings=SearchConfig(**json.loads(args.settings)))
    name = args.name or (Path(args.model).name if "/" in args.model else f"bundled-{args.model}")
    if model.task.name == "addition":
        rows, selection = bench_enumerable(model, decoder, args, modes)
        summary = summarise(rows, list(modes))
    else:
        rows, selection = bench_pool(model, decoder, args, modes)
        summary = summarise_pool(rows, list(modes))
    record = {"benchmark": "completeness", "model": args.model, "task": model.task.name,
              "epsilon": EPSILON, "budget": BUDGET, "threads": torch.get_num_threads(),
              "machine": provenance.machine(), "commit": provenance.commit(),
              "command": " ".join([Path(sys.executable).name, *sys.argv]),
              "modes": {mode: {"search": config.search, "constrain": config.constrain,
                               "settings": (config.search_settings.__dict__
                                                                      if config.search_settings else "default")}
                        for mode, config in modes.items()},
              "selection": selection, "summary": summary, "triples": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"completeness-{name}.json"
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    print(f"-> {path}")


if __name__ == "__main__":
    main()
