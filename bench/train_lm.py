"""The record of a train-lm run, and its shipped copy: curve, held-out loss, greedy samples.

    python bench/train_lm.py runs/lm-kjv --name kjv --ship artifacts/lm-kjv

Reads the run's manifest (inversionview.json, written by ``inversionview train-lm``),
optionally copies the model for shipping (float16 weights, config, tokenizer, manifest; no
checkpoint, optimizer or metrics; every file checked to be under 20 MB), reloads the copy
offline (``HFTokenizer.from_directory``, ``GPT2LMHeadModel.from_pretrained``), and writes
bench/results/train_lm-<name>.json with the greedy continuations of a few prompts by the
shipped (float16) weights.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from transformers import GPT2LMHeadModel

from inversionview import provenance
from inversionview.probed.train_lm import ship_lm
from inversionview.text.tokenizer import HFTokenizer

RESULTS = Path(__file__).parent / "results"
MAX_FILE_BYTES = 20 * 1024 * 1024
PROMPTS = ("And the LORD said unto Moses,", "In the beginning", "Jesus answered and said unto",
           "Blessed are")


@torch.no_grad()
def greedy(model: GPT2LMHeadModel, tokenizer: HFTokenizer, prompt: str) -> str:
    """The prompt's greedy continuation, to the end of the model's context (it was never
    trained to predict the end of a text: EOS is a decoder-only id)."""
    ids = [tokenizer.bos_id] + tokenizer.encode(prompt)
    while len(ids) < model.config.n_positions:
        logits = model(torch.tensor([ids])).logits[0, -1]
        ids.append(int(logits.argmax()))
    return tokenizer.decode(ids[1 + len(tokenizer.encode(prompt)):])


def ioi_accuracy(directory: Path) -> dict:
    """IOI accuracy and logit difference of the model in ``directory`` on 1,000 prompts of
    the held-out and of the train templates."""
    from inversionview.ioi.circuit import evaluate_ioi
    from inversionview.probed import load_probed

    model = load_probed(directory, "ioi")
    return {split: {k: v for k, v in evaluate_ioi(model, 1000, 0, split).items()
                    if k != "by_order"} for split in ("eval", "train")}


def factual_accuracy(directory: Path) -> dict:
    """Top-1 accuracy of the answer's first token of the model in ``directory`` on every
    prompt of the held-out and of the train templates, per relation and kind of subject."""
    from inversionview.factual.evaluate import evaluate_factual
    from inversionview.probed import load_probed

    model = load_probed(directory, "factual")
    return {split: {k: v for k, v in evaluate_factual(model, split).items() if k != "by_template"}
            for split in ("eval", "train")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--name", required=True)
    parser.add_argument("--ship", type=Path, default=None, help="copy the model here (float16)")
    parser.add_argument("--task", default="text", help="text, ioi or factual: the shipped "
                        "manifest says so and the task's accuracy of the shipped weights is "
                        "recorded")
    parser.add_argument("--default-query", default=None,
                        help="SITE@POSITION: the shipped model's default query (on its example)")
    args = parser.parse_args()
    manifest = json.loads((args.run / "inversionview.json").read_text())
    directory = args.run
    files = {}
    extra = {}
    if args.default_query:
        site, _, position = args.default_query.partition("@")
        extra["default_query"] = {"site": site, "position": position}
    if args.ship is not None:
        directory = ship_lm(args.run, args.ship, task=args.task, extra=extra)
        files = {path.name: path.stat().st_size for path in sorted(directory.iterdir())}
        too_big = {name: size for name, size in files.items() if size >= MAX_FILE_BYTES}
        if too_big:
            raise SystemExit(f"files of 20 MB or more in {directory}: {too_big}")
    model = GPT2LMHeadModel.from_pretrained(str(directory), local_files_only=True).eval()
    tokenizer = HFTokenizer.from_directory(directory, model.config.vocab_size)
    training = manifest["training"]
    record = {
        "benchmark": "train_lm",
        "model": provenance.portable_path(directory),
        "corpus": manifest["corpus"],
        "tokenizer": manifest["tokenizer"],
        "settings": {key: training[key] for key in (
            "vocab_size", "max_tokens", "seed", "batch_size", "lr", "min_lr_fraction",
            "warmup_steps", "weight_decay", "grad_clip", "length_pool", "model_overrides")},
        "shape": {key: model.config.to_dict()[key] for key in (
            "n_layer", "n_embd", "n_head", "n_inner", "n_positions", "vocab_size")},
        "parameters": manifest["parameters"],
        "minutes": training["minutes"],
        "threads": manifest["machine"]["cpu_threads"],
        "machine": manifest["machine"],
        "commit": manifest["commit"],
        "command": manifest["command"],
        "commands": manifest["commands"],
        "steps": manifest["steps"],
        "tokens": manifest["tokens"],
        "tokens_per_second": manifest["tokens_per_second"],
        "wall_seconds": manifest["wall_seconds"],
        "held_out_loss": manifest["held_out_loss"],
        "held_out_perplexity": manifest["held_out_perplexity"],
        "held_out": manifest["held_out"],
        "shipped_files_bytes": files,
        "greedy_float16" if args.ship else "greedy": {
            prompt: greedy(model, tokenizer, prompt) for prompt in PROMPTS},
        **({"ioi": ioi_accuracy(directory)} if args.task == "ioi" else {}),
        **({"factual": factual_accuracy(directory)} if args.task == "factual" else {}),
        "report_command": provenance.command_line(),
        "report_commit": provenance.commit(),
        "curve": manifest["history"],
    }
    if args.ship is not None and args.task == "ioi":  # the shipped model says what it reached
        manifest_path = directory / "inversionview.json"
        shipped = json.loads(manifest_path.read_text())
        shipped["ioi_accuracy"] = {"measured_by": "bench/train_lm.py ioi_accuracy: "
                                   "evaluate_ioi(model, 1000, seed 0, split)", **record["ioi"]}
        manifest_path.write_text(json.dumps(shipped, indent=1) + "\n")
    if args.ship is not None and args.task == "factual":
        manifest_path = directory / "inversionview.json"
        shipped = json.loads(manifest_path.read_text())
        shipped["factual_accuracy"] = {"measured_by": "bench/train_lm.py factual_accuracy: "
                                       "evaluate_factual(model, split)", **record["factual"]}
        manifest_path.write_text(json.dumps(shipped, indent=1) + "\n")
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"train_lm-{args.name}.json"
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {path}: held-out loss {record['held_out_loss']:.4f} (perplexity "
          f"{record['held_out_perplexity']:.2f}), {record['tokens_per_second']:.0f} tokens/s")
    for prompt, continuation in record["greedy_float16" if args.ship else "greedy"].items():
        print(f"  {prompt}{continuation}")


if __name__ == "__main__":
    main()
