"""Readings on a language model: how many non-trivial members a query finds (issue 28).

    python bench/text_readings.py lm-kjv --corpus data/kjv.txt [--decoder DIR] [--queries 24]
                                  [--sites x0.mid,a1.0,...] [--search 4096] [--threads 1]

Queries are held-out pieces of the corpus (the split the decoder never trained on), each read
at a random real position of the piece, at a spread of sites (every layer's residual stream,
a head or two per layer, the MLPs). Every query runs three ways on the same seed:

- ``decoder``: the decoder's draws alone (the paper's sampling, ``--search 0``);
- ``decoder+search``: the default query (the decoder's draws, then the local search);
- ``random+search``: the same search seeded by a decoder of the same shape with random
  weights: what the search finds without the decoder's knowledge of the activation.

Members are counted as distinct cut prefixes inside ε, the query's own prefix left out
(``preimage/members.py``). Per arm: the median number of members, the share of queries with
any, the mean and the median time. Writes bench/results/text_readings-<name>.json with the
machine, the commit, the command and every query's figures.
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
from inversionview.decoder.model import Decoder
from inversionview.decoder.store import decoder_for
from inversionview.decoder.train import attach_corpus
from inversionview.preimage.query import QueryConfig, run_query
from inversionview.preimage.search import SearchConfig
from inversionview.probed import load_probed

RESULTS = Path(__file__).parent / "results"
DEFAULT_SITES = "x0.mid,a0.1,a1.0,a1.2,x1.post,a2.0,a2.3,m2,x2.mid,a3.0,a3.1,x3.post"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--decoder", default=None, help="default: the model's bundled decoder")
    parser.add_argument("--name", default=None)
    parser.add_argument("--queries", type=int, default=24)
    parser.add_argument("--sites", default=DEFAULT_SITES)
    parser.add_argument("--search", type=int, default=None, help="default: the task's")
    parser.add_argument("--candidates", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--arms", default="decoder,decoder+search,random+search",
                        help="which arms to run, comma separated")
    parser.add_argument("--spans", action=argparse.BooleanOptionalAction, default=None,
                        help="the search's two-token span deletions (default: SearchConfig's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_probed(args.model)
    model = attach_corpus(model, args.corpus, args.max_tokens)
    decoder, directory = decoder_for(model, args.model, Path(args.decoder) if args.decoder else None)
    decoder_name = str(directory)
    torch.manual_seed(args.seed)
    random_decoder = Decoder(decoder.config).eval()
    random_decoder.site_names = decoder.site_names
    sites = [s for s in args.sites.split(",") if s]
    generator = torch.Generator().manual_seed(args.seed + 77)
    pieces = model.task.sample_tokens(args.queries, generator, held_out=True)
    task = model.task
    arms = {"decoder": (decoder, 0), "decoder+search": (decoder, args.search),
            "random+search": (random_decoder, args.search)}
    arms = {arm: arms[arm] for arm in args.arms.split(",") if arm}
    settings = SearchConfig() if args.spans is None else SearchConfig(spans=args.spans)
    rows = []
    for number, piece in enumerate(pieces):
        length = int(task.lengths(piece[None])[0])
        real = length - 1 if int(piece[length - 1]) == task.vocab.eos_id else length
        position = 1 + int(torch.randint(real - 1, (1,), generator=generator))
        text = task.decode(piece[:real])
        site = sites[number % len(sites)]
        row = {"text": text, "site": site, "position": position}
        for arm, (sampler, search) in arms.items():
            config = QueryConfig(candidates=args.candidates, search=search, search_settings=settings)
            started = time.perf_counter()
            result = run_query(model, sampler, text, site, position, config, seed=args.seed + number)
            seconds = time.perf_counter() - started
            members = result.completeness.found
            row[arm] = {"members": members, "drawn": result.completeness.found_by_decoder,
                        "by_search": result.completeness.found_by_search,
                        "query_context_draws": result.stats.query_context,
                        "in_epsilon_inputs_raw": result.stats.in_epsilon_inputs,
                        "profile": result.epsilon_profile["members"],
                        "seconds": round(seconds, 3)}
        rows.append(row)
        print(f"{number + 1}/{len(pieces)} {site}@{position}: "
              + ", ".join(f"{arm} {row[arm]['members']}" for arm in arms), flush=True)
    summary = {}
    for arm in arms:
        members = [row[arm]["members"] for row in rows]
        seconds = [row[arm]["seconds"] for row in rows]
        summary[arm] = {"median_members": statistics.median(members),
                        "mean_members": round(sum(members) / len(members), 2),
                        "share_with_any": round(sum(m > 0 for m in members) / len(members), 3),
                        "median_seconds": round(statistics.median(seconds), 3),
                        "max_seconds": round(max(seconds), 3)}
    name = args.name or Path(args.model).name
    record = {"benchmark": "text_readings", "model": args.model, "decoder": decoder_name,
              "corpus": args.corpus, "machine": provenance.machine(), "commit": provenance.commit(),
              "command": " ".join([Path(sys.executable).name, *sys.argv]),
              "threads": torch.get_num_threads(), "queries": len(rows), "sites": sites,
              "search": args.search if args.search is not None else task.default_search,
              "candidates": args.candidates, "spans": settings.spans, "summary": summary,
              "rows": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"text_readings-{name}.json"
    path.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    for arm, figures in summary.items():
        print(f"{arm:>15}: median {figures['median_members']} members, "
              f"{figures['share_with_any']:.0%} of queries with any, "
              f"median {figures['median_seconds']:.1f} s")
    print(f"-> {path}")


if __name__ == "__main__":
    main()
