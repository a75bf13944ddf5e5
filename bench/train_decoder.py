"""Decoder training: examples/s and the time-to-quality curve of one configuration.

    python bench/train_decoder.py MODEL --variant fast --minutes 60 [--threads 2]

trains the variant on MODEL (a directory, or a bundled artifact name) for the given minutes
of training, evaluating the in-ε rate per site (ε 0.1, T 1, min over positions) on the fixed
seeded held-out query set every --eval-every seconds, and writes
bench/results/train_decoder-<model>-<variant>-<minutes>min.json: the machine, the commit, the
command, examples/s and the curve. Run two variants at once with --threads 1 each to compare
them under the same conditions. Variants (what each changes from the one before it is in
VARIANTS) are the configurations compared in docs/decoders.md.
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

# Settings that the first rounds shared (lr 1e-3, 200 warmup steps, cosine, batch 256,
# no dropout, length buckets over pools of 8 batches, bf16 autocast).
B256 = dict(preset="fast", batch_size=256, warmup_steps=200, bucket_batches=8)

VARIANTS: dict[str, dict] = {
    # The paper's recipe: lr 1e-4 constant, batch 256, dropout 0.1 (plus bf16 where native).
    "paper": dict(preset="paper"),
    "paper-fp32": dict(preset="paper", precision="fp32"),
    # Round 1: the activation also added to every token's residual stream (zero-initialised).
    "b256": dict(B256),
    "b256+add": dict(B256, decoder_overrides=dict(condition_mode="slot+add")),
    # Round 2: a wider conditioning MLP (it runs once per example, so it is nearly free);
    # smaller batches (4x the optimizer steps for the same examples).
    "b256+wide": dict(B256, decoder_overrides=dict(condition_width=256, condition_hidden=1024)),
    "b64": dict(B256, batch_size=64, warmup_steps=400),
    # Round 3: smaller still, or a higher learning rate.
    "b32": dict(B256, batch_size=32, warmup_steps=800),
    "b64-lr2e-3": dict(B256, batch_size=64, warmup_steps=400, lr=2e-3),
    # The fast preset as shipped: b64 with pools of 32 batches (2,048 inputs) per bucket sort.
    "fast": dict(preset="fast"),
    "fast-fp32": dict(preset="fast", precision="fp32"),
    # Round 4: draw the sites the decoder reads worst more often (after every evaluation).
    "fast+rebalance2": dict(preset="fast", rebalance=2.0),
    # Training a finished decoder for longer (--continue-from): the fast preset restarted at
    # lr 1e-3 lost half the in-ε rate in 5 minutes and had not regained it after 15; a
    # lower peak keeps what the decoder had.
    "fast-lr3e-4": dict(preset="fast", lr=3e-4),
    # Round 5: a trained decoder continued with its weak sites drawn more often (the
    # rebalance of round 4 could not act while every site but x0.pre was near 0).
    "fast-lr3e-4+rebalance3": dict(preset="fast", lr=3e-4, rebalance=3.0),
    # Round 6: the activation enters as its direction and log-norm (per_example_norm), for
    # sites whose norm varies across positions and inputs.
    "fast+unitnorm": dict(preset="fast", decoder_overrides=dict(per_example_norm=True)),
    # The activation whitened per site (mean vector and covariance measured at init).
    "fast+whiten": dict(preset="fast", decoder_overrides=dict(whiten_activation=True)),
    # Round 7: a deeper decoder (4 layers instead of 2): writing an input with a given count
    # means counting the chosen letter while writing it.
    "fast+deep": dict(preset="fast", decoder_overrides=dict(n_layers=4)),
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
    parser.add_argument("--resume", action="store_true", help="continue a killed run")
    parser.add_argument("--continue-from", default=None,
                        help="a trained decoder of MODEL to train for longer (fresh optimizer "
                             "and schedule); the label gets '+continued'")
    parser.add_argument("--only-site", default=None,
                        help="train on this site's activations alone (site weights SITE=1, "
                             "*=0: a quick comparison of conditioning on one hard site; the "
                             "in-ε rates and the held-out loss are still measured over every "
                             "site); the label gets '+only-SITE'")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    probed = load_probed(args.model, args.task)
    # a directory is named by its folder (the authors' models), a bundled artifact "bundled-NAME"
    name = Path(args.model).name if "/" in args.model else f"bundled-{args.model}"
    only = f"+only-{args.only_site}" if args.only_site else ""
    label = f"{name}-{args.variant}{'+continued' * bool(args.continue_from)}{only}-{args.minutes:g}min"
    settings = dict(VARIANTS[args.variant])
    if args.only_site:
        settings["site_weights"] = {args.only_site: 1.0, "*": 0.0}
    out = args.runs / label
    config = DecoderTrainingConfig(out=out, minutes=args.minutes, seed=args.seed,
                                   eval_every_seconds=args.eval_every,
                                   continue_from=args.continue_from, **settings)
    started = time.perf_counter()
    train_decoder(probed, config, resume=args.resume)
    wall = time.perf_counter() - started
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    final = history[-1]
    record = {
        "benchmark": "train_decoder", "model": args.model, "task": probed.task.name,
        "variant": args.variant, "settings": settings, "only_site": args.only_site,
        "continued_from": args.continue_from and json.loads(
            (out / "decoder.json").read_text()).get("continued_from"),
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
