"""The factual-recall case study measured end to end on one model (issue 16; docs/factual.md
cites it).

    python bench/factual.py MODEL [--decoder DIR] [--threshold 0.05] [--keep 8]
                                  [--queries 10] [--skip-readings]

1. top-1 accuracy of the answer's first token on the held-out and the train templates, per
   relation and kind of subject;
2. the heads found by attribution (norm share at END over the upper layers) and their maps
   (bench/results/factual-<name>-heads.png);
3. for the --keep heads kept, InversionView readings at SUBJ and END per relation asked: how
   often the in-ε samples keep the subject and each of its attributes (cosine ε 0.25, cosine
   noise 0.75-0.9, read at the query's named position).

Writes bench/results/factual-<name>.json with the machine, the commit, the command and seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from inversionview import provenance
from inversionview.decoder.store import decoder_for
from inversionview.factual.evaluate import evaluate_factual
from inversionview.factual.heads import attribution_heads, plot_attribution
from inversionview.factual.readings import read_factual
from inversionview.probed import load_probed

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--decoder", type=Path, default=None)
    parser.add_argument("--name", default=None, help="results file name (default: the model's)")
    parser.add_argument("--threshold", type=float, default=0.05)
    parser.add_argument("--keep", type=int, default=8)
    parser.add_argument("--queries", type=int, default=10)
    parser.add_argument("--candidates", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--skip-readings", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    name = args.name or Path(args.model).name
    model = load_probed(args.model, "factual")
    record = {"benchmark": "factual", "model": args.model, "machine": provenance.machine(),
              "commit": provenance.commit(), "command": " ".join(["python", *sys.argv]),
              "seconds": {}}

    started = time.perf_counter()
    record["eval"] = {split: evaluate_factual(model, split) for split in ("eval", "train")}
    record["seconds"]["eval"] = round(time.perf_counter() - started, 1)
    held_out = record["eval"]["eval"]
    print(f"held-out templates: top-1 {held_out['top1_accuracy']:.3f} "
          + ", ".join(f"{r} {v['top1_accuracy']:.2f}" for r, v in held_out["by_relation"].items()))

    started = time.perf_counter()
    prompts = model.task.knowledge.prompts("eval")
    table = attribution_heads(model, prompts, args.threshold, args.keep)
    record["heads"] = table
    record["seconds"]["heads"] = round(time.perf_counter() - started, 1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    plot_attribution(table, RESULTS / f"factual-{name}-heads.png", name)
    print("kept heads:", ", ".join(table["kept"]))

    if not args.skip_readings and table["kept"]:
        decoder, directory = decoder_for(model, args.model, args.decoder)
        record["decoder"] = str(directory)
        started = time.perf_counter()
        record["readings"] = read_factual(model, decoder, table["kept"], queries=args.queries,
                                          seed=args.seed, candidates=args.candidates)
        record["seconds"]["readings"] = round(time.perf_counter() - started, 1)
    path = RESULTS / f"factual-{name}.json"
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(f"-> {path}")


if __name__ == "__main__":
    main()
