"""Several decoders of one probed model on the same held-out queries, beside their controls.

    python bench/compare_decoders.py artifacts/decoder-ioi runs/decoder-ioi-3 \
        --name decoder-ioi-continued [--per-site 16] [--seed 0] [--threads 1]

``remeasure_decoders.py`` measures each decoder on its own training seed's queries, so two
runs with different seeds are not comparable; here every decoder is measured on the queries
drawn with ``--seed`` (``decoder.evaluate.held_out_queries``, uniform positions), the same
sample draws (seeded 0), and beside the same two controls (the decoder given another
query's activation of the site; a random decoder of its shape): the non-trivial in-ε rate
per site (members whose cut prefix is the query's own left out), the raw rate, and the
sites where a decoder does not beat both controls. Written to
bench/results/compare-decoders-NAME.json with the machine, the commit and the command.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from inversionview import provenance
from inversionview.decoder.evaluate import held_out_queries, in_epsilon_rates
from inversionview.decoder.store import load_decoder, read_manifest
from inversionview.decoder.export import with_training_corpus
from inversionview.probed import load_probed

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("decoders", nargs="+", type=Path)
    parser.add_argument("--name", required=True)
    parser.add_argument("--per-site", type=int, default=16)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--epsilon", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    first = read_manifest(args.decoders[0])
    model = with_training_corpus(load_probed(first["probed_source"], first.get("task")),
                                 first.get("training", {}), args.decoders[0])
    queries = held_out_queries(model, args.per_site, args.seed)
    record = {"benchmark": "compare_decoders", "machine": provenance.machine(),
              "commit": provenance.commit(),
              "command": " ".join([Path(sys.executable).name, *sys.argv]),
              "probed": first["probed_source"], "queries_per_site": args.per_site,
              "samples_per_query": args.samples, "epsilon": args.epsilon,
              "query_seed": args.seed, "decoders": {}}
    for directory in args.decoders:
        decoder, manifest = load_decoder(directory, model)
        started = time.perf_counter()
        quality = in_epsilon_rates(decoder, model, queries, args.samples, args.epsilon,
                                   torch.Generator().manual_seed(0))
        row = {"examples": manifest.get("examples"), "wall_seconds": manifest.get("wall_seconds"),
               "in_epsilon": quality["in_epsilon"], "in_epsilon_mean": quality["in_epsilon_mean"],
               "in_epsilon_raw": quality["in_epsilon_raw"], "controls": quality["controls"],
               "controls_mean": quality["controls_mean"], "flagged": quality["flagged"],
               "seconds": round(time.perf_counter() - started, 1)}
        record["decoders"][str(directory)] = row
        print(f"{directory}: non-trivial in-eps {row['in_epsilon_mean']:.3f}; controls "
              + ", ".join(f"{k} {v:.3f}" for k, v in row["controls_mean"].items())
              + f"; {len(row['flagged'])} of {len(row['in_epsilon'])} sites do not beat both "
              f"({row['examples']} training examples; {row['seconds']} s)", flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"compare-decoders-{args.name}.json"
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(f"-> {path}")


if __name__ == "__main__":
    main()
