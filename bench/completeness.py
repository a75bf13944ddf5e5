"""Completeness, made exact (method.md §8): the sampler's recall of the true ε-preimage.

    python bench/completeness.py MODEL [--task addition] [--triples 8] [--seed 0] [--plots DIR]

Like the paper, draws --triples random (site, position, query) triples (seeded; positions
among the task's named positions); for each, scores all 810,000 addition inputs at the site,
runs the default query (1,024 candidates) and reports the true in-ε count, how many of them
the sampler found, recall and precision. Writes bench/results/completeness-<model>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from inversionview import provenance
from inversionview.decoder.store import find_decoder, load_decoder
from inversionview.preimage.exact import completeness, plot_completeness
from inversionview.probed import load_probed

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--task", default=None)
    parser.add_argument("--triples", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--plots", type=Path, default=None, help="write one scatter PNG per triple here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_probed(args.model, args.task)
    decoder, _ = load_decoder(find_decoder(model), model)
    task = model.task
    universe = task.enumerate_tokens()
    generator = torch.Generator().manual_seed(args.seed)
    name = Path(args.model).name if "/" in args.model else f"bundled-{args.model}"
    rows = []
    for number in range(args.triples):
        text = task.decode(task.sample_tokens(1, generator)[0])
        site = task.sites[int(torch.randint(len(task.sites), (1,), generator=generator))]
        names = list(task.named_positions(text))
        position = names[int(torch.randint(len(names), (1,), generator=generator))]
        report = completeness(model, decoder, text, site, position, seed=args.seed + number,
                              universe=universe)
        if args.plots is not None:
            report.plot = str(plot_completeness(report, model, decoder, universe,
                                                args.plots / f"{name}-{number}.png", seed=args.seed))
        rows.append(report.to_record())
        recall = "-" if report.recall is None else f"{report.recall:.3f}"
        precision = "-" if report.precision is None else f"{report.precision:.3f}"
        at_budget = "-" if report.recall_at_budget is None else f"{report.recall_at_budget:.3f}"
        print(f"{text} {site} at {position!r}: true in eps {report.true_in_epsilon}, found "
              f"{report.found_in_epsilon}, recall {recall} (at budget {at_budget}), "
              f"precision {precision}")
    with_set = [r for r in rows if r["recall"] is not None]
    mean_recall = sum(r["recall"] for r in with_set) / len(with_set) if with_set else None
    record = {"benchmark": "completeness", "model": args.model, "task": task.name,
              "threads": torch.get_num_threads(), "machine": provenance.machine(),
              "commit": provenance.commit(), "command": " ".join([Path(sys.executable).name, *sys.argv]),
              "triples": rows, "mean_recall": mean_recall,
              "mean_recall_at_budget": (sum(r["recall_at_budget"] for r in with_set) / len(with_set)
                                        if with_set else None),
              "total_true_in_epsilon": sum(r["true_in_epsilon"] for r in rows),
              "total_found_in_epsilon": sum(r["found_in_epsilon"] for r in rows)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"completeness-{name}.json"
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(f"mean recall {mean_recall} over {len(with_set)} triples -> {path}")


if __name__ == "__main__":
    main()
