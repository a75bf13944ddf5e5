"""Re-measure the shipped decoders' per-site figures under issue 28's rule, beside controls.

    python bench/remeasure_decoders.py [artifacts/decoder-counting ...] [--threads 1]

For each decoder (default: every ``artifacts/decoder-*``), on the held-out queries of its
training seed and position policy (``decoder.evaluate.held_out_queries``), with sample draws
seeded 0 as ``export-decoder`` does: the in-ε rate counting only members whose cut prefix is
not the query's own, the raw rate beside it, and the two controls (the decoder given another
query's activation of the same site; a random decoder of the same shape). The figures are
written into the decoder's ``decoder.json`` (``exported_in_epsilon`` and the rest; the
weights are not touched) and into bench/results/remeasure-decoders.json with the machine,
the commit and the command.
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
from inversionview.decoder.store import load_decoder
from inversionview.decoder.export import with_training_corpus
from inversionview.probed import load_probed

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def remeasure(directory: Path) -> dict:
    manifest = json.loads((directory / "decoder.json").read_text())
    training = manifest.get("training", {})
    model = with_training_corpus(load_probed(manifest["probed_source"], manifest.get("task")),
                                 training, directory)
    decoder, _ = load_decoder(directory, model)
    started = time.perf_counter()
    queries = held_out_queries(model, training.get("eval_queries_per_site", 8),
                               training.get("seed", 0), policy=training.get("positions", "uniform"))
    quality = in_epsilon_rates(decoder, model, queries, training.get("eval_samples_per_query", 16),
                               training.get("epsilon", 0.1), torch.Generator().manual_seed(0))
    figures = {
        "exported_in_epsilon": quality["in_epsilon"],
        "exported_in_epsilon_mean": quality["in_epsilon_mean"],
        "exported_in_epsilon_raw": quality["in_epsilon_raw"],
        "exported_well_formed": quality["well_formed"],
        "exported_distinct_in_epsilon": quality["distinct_in_epsilon"],
        "exported_controls": quality["controls"],
        "exported_controls_mean": quality["controls_mean"],
        "exported_flagged": quality["flagged"],
    }
    before = manifest.get("exported_in_epsilon_mean")
    manifest.update(figures)
    manifest["remeasured"] = {"rule": "members are cut prefixes, the query's own left out (issue 28)",
                              "commit": provenance.commit(),
                              "command": " ".join([Path(sys.executable).name, *sys.argv]),
                              "previous_in_epsilon_mean": before}
    (directory / "decoder.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return {"decoder": str(directory.relative_to(ROOT)) if directory.is_relative_to(ROOT) else str(directory),
            "previous_in_epsilon_mean": before, "seconds": round(time.perf_counter() - started, 1),
            **figures}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("decoders", nargs="*", type=Path)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    decoders = [d.resolve() for d in args.decoders] or sorted(ROOT.glob("artifacts/decoder-*"))
    path = RESULTS / "remeasure-decoders.json"
    record = json.loads(path.read_text()) if path.exists() else {"benchmark": "remeasure_decoders",
                                                                  "decoders": {}}
    record.update(machine=provenance.machine(), commit=provenance.commit(),
                  command=" ".join([Path(sys.executable).name, *sys.argv]))
    for directory in decoders:
        row = remeasure(directory)
        record["decoders"][row["decoder"]] = row
        flagged = row["exported_flagged"]
        print(f"{row['decoder']}: mean in-eps {row['exported_in_epsilon_mean']:.3f} "
              f"(was {row['previous_in_epsilon_mean']}); controls "
              + ", ".join(f"{k} {v:.3f}" for k, v in row["exported_controls_mean"].items())
              + f"; {len(flagged)} of {len(row['exported_in_epsilon'])} sites do not beat both"
              + f" ({row['seconds']} s)", flush=True)
        RESULTS.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=1) + "\n")
    print(f"-> {path}")


if __name__ == "__main__":
    main()
