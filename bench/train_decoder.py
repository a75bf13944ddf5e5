"""Decoder training: examples/s and the time-to-quality curve of one configuration.

    python bench/train_decoder.py MODEL --variant fast --minutes 60 [--threads 2]

trains the variant on MODEL (a directory, or a bundled artifact name) for the given minutes
of training, evaluating the in-ε rate per site (ε 0.1, T 1, min over positions) on the fixed
seeded held-out query set every --eval-every seconds, and writes
bench/results/train_decoder-<model>-<variant>-<minutes>min.json: the machine, the commit, the
command, examples/s and the curve. Run two variants at once with --threads 1 each to compare
them under the same conditions. Variants (what each changes from the one before it is in
VARIANTS) are the configurations compared in the README.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from inversionview import provenance
from inversionview.decoder.train import DecoderTrainingConfig, train_decoder
from inversionview.probed import load_probed

RESULTS = Path(__file__).parent / "results"

VARIANTS: dict[str, dict] = {
    # The paper's recipe: lr 1e-4 constant, batch 256, dropout 0.1 (plus bf16 where native).
    "paper": dict(preset="paper"),
    "paper-fp32": dict(preset="paper", precision="fp32"),
    # lr 1e-3 warmup + cosine, no dropout, length buckets, bf16 autocast.
    "fast": dict(preset="fast"),
    "fast-fp32": dict(preset="fast", precision="fp32"),
    "fast-nobucket": dict(preset="fast", bucket_batches=1),
    # The activation also added to every token's residual stream.
    "fast+add": dict(preset="fast", decoder_overrides=dict(condition_mode="slot+add")),
    "fast+add-lr2e-3": dict(preset="fast", lr=2e-3,
                            decoder_overrides=dict(condition_mode="slot+add")),
    "fast+add-b128": dict(preset="fast", batch_size=128,
                          decoder_overrides=dict(condition_mode="slot+add")),
    "fast+add-rebalance": dict(preset="fast", rebalance=3.0,
                               decoder_overrides=dict(condition_mode="slot+add")),
    # A wider conditioning MLP (runs once per example, so nearly free).
    "fast+wide": dict(preset="fast", decoder_overrides=dict(condition_width=256,
                                                            condition_hidden=1024)),
    # Smaller batches: 4x the optimizer steps per example.
    "fast-b64": dict(preset="fast", batch_size=64, warmup_steps=400),
    "fast-lr3e-3": dict(preset="fast", lr=3e-3),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--task", default=None)
    parser.add_argument("--variant", required=True, choices=sorted(VARIANTS))
    parser.add_argument("--minutes", type=float, required=True)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-every", type=float, default=120.0, help="seconds of training")
    parser.add_argument("--runs", type=Path, default=Path("runs/bench"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    probed = load_probed(args.model, args.task)
    name = Path(args.model).name if "/" in args.model else args.model
    label = f"{name}-{args.variant}-{args.minutes:g}min"
    out = args.runs / label
    config = DecoderTrainingConfig(out=out, minutes=args.minutes, seed=args.seed,
                                   eval_every_seconds=args.eval_every, **VARIANTS[args.variant])
    started = time.perf_counter()
    train_decoder(probed, config)
    wall = time.perf_counter() - started
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    final = history[-1]
    record = {
        "benchmark": "train_decoder", "model": args.model, "task": probed.task.name,
        "variant": args.variant, "settings": VARIANTS[args.variant],
        "minutes": args.minutes, "threads": torch.get_num_threads(),
        "machine": provenance.machine(), "commit": provenance.commit(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "examples": final["examples"],
        "examples_per_second": round(final["examples"] / final["seconds"], 1),
        "wall_seconds_with_evaluation": round(wall, 1),
        "final": {k: final[k] for k in ("in_epsilon_mean", "in_epsilon", "well_formed",
                                        "distinct_in_epsilon", "loss")},
        "curve": [{k: entry[k] for k in ("seconds", "examples", "loss", "in_epsilon_mean",
                                         "in_epsilon", "well_formed", "distinct_in_epsilon")}
                  for entry in history],
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"train_decoder-{label}.json"
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(f"{label}: {record['examples_per_second']} examples/s, mean in-eps "
          f"{final['in_epsilon_mean']:.3f} (min {min(final['in_epsilon'].values()):.3f}, "
          f"distinct {final['distinct_in_epsilon']}) -> {path}")


if __name__ == "__main__":
    main()
