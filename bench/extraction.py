"""Activation extraction throughput against a plain HuggingFace forward, same model, same batch.

    python bench/extraction.py [--models lm-kjv gpt2-small-random] [--batch 16] [--length 64]
                               [--repeats 5] [--threads 1]

For each model, one seeded batch of random token ids (BOS first; throughput does not depend on
what the tokens say) goes through:

- ``hf``: the HuggingFace model's own forward (logits), ``torch.no_grad``, eval mode;
- ``first_head``: ``ProbedModel.activations`` of the first layer's first head (the backend
  stops after the layer a site needs);
- ``last_residual``: the last layer's residual stream (the whole model);
- ``all_sites``: every site of the model in one pass (``run_sites``, what scoring a grid needs);
- ``processed_logits``: the processed model's logits (what patching reads),

each read processed (TransformerLens processing, the default) and raw. Times are medians of
``--repeats`` runs after one warm-up, measured in the same process one after the other; the
figure that matters is the ratio ``hf seconds / extraction seconds`` (above 1: faster than a
plain forward). ``gpt2-small-random`` is GPT-2 small's configuration (12 layers, d 768, 12
heads, vocabulary 50,257) with random weights, saved to a temporary directory with the
bundled LM's tokenizer: GPT-2's weights cannot be downloaded here.

Then the full query time on the bundled LM with its decoder (``lm-kjv``'s default query: 1,024
candidates, scoring, ΔP colouring of the shown samples), median of ``--repeats`` seeds after
one warm-up.

Writes bench/results/extraction.json with the machine, the commit and the command.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from inversionview import provenance
from inversionview.artifacts import find_artifact
from inversionview.probed import load_probed
from inversionview.text.tokenizer import TOKENIZER_FILES

RESULTS = Path(__file__).parent / "results"


def gpt2_small_random(directory: Path) -> Path:
    """GPT-2 small's configuration, random weights, the bundled LM's tokenizer."""
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config()).save_pretrained(directory)
    tokenizer_dir = find_artifact("lm-kjv")
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).exists():
            shutil.copy(tokenizer_dir / name, directory / name)
    return directory


def timed(function, repeats: int) -> float:
    function()  # warm-up
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


@torch.no_grad()
def measure(directory: str | Path, batch: int, length: int, repeats: int) -> dict:
    record = {}
    for processing in ("processed", "raw"):
        model = load_probed(str(directory), processing=processing)
        length = min(length, model.task.context)
        generator = torch.Generator().manual_seed(0)
        tokens = torch.randint(0, model.task.vocab.model_size, (batch, length), generator=generator)
        tokens[:, 0] = model.task.vocab.bos_id
        hf = model.hf_model.eval()
        deepest = f"x{model.n_layers - 1}.post"
        runs = {
            "hf": lambda: hf(tokens).logits,
            "first_head": lambda: model.activations(tokens, "a0.0"),
            "last_residual": lambda: model.activations(tokens, deepest),
            "all_sites": lambda: model.run_sites(tokens, model.sites),
            "processed_logits": lambda: model.processed_logits(tokens),
        }
        seconds = {name: timed(run, repeats) for name, run in runs.items()}
        record[processing] = {
            "seconds": {name: round(value, 5) for name, value in seconds.items()},
            "tokens_per_second": {name: round(batch * length / value)
                                  for name, value in seconds.items()},
            "ratio_to_hf": {name: round(seconds["hf"] / value, 3)
                            for name, value in seconds.items() if name != "hf"},
            "backend": type(model.processed).__name__,
        }
        record["shape"] = {"layers": model.n_layers, "heads": model.n_heads,
                           "d_model": model.d_model, "sites": len(model.sites),
                           "batch": batch, "length": length}
    return record


def time_query(model: str, repeats: int) -> dict:
    """bench/query.py's full-query timing, on a bundled model with its decoder."""
    from inversionview import InversionView
    from query import time_full_query  # bench/query.py (bench/ is on the path of a script)

    iv = InversionView(model)
    return {"model": model, **time_full_query(iv.model, iv.decoder, repeats)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["lm-kjv", "gpt2-small-random"])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.models:
            directory = gpt2_small_random(Path(scratch)) if name == "gpt2-small-random" else name
            results[name] = measure(directory, args.batch, args.length, args.repeats)
            for processing in ("processed", "raw"):
                row = results[name][processing]
                print(f"{name} {processing} ({row['backend']}): hf {row['seconds']['hf']:.4f} s; "
                      + ", ".join(f"{k} x{v:.2f}" for k, v in row["ratio_to_hf"].items()))
    query = time_query("lm-kjv", args.repeats)
    print(f"full query on lm-kjv ({query['site']} at {query['position']}): median "
          f"{query['seconds_median']:.2f} s")
    record = {"benchmark": "extraction", "machine": provenance.machine(),
              "commit": provenance.commit(), "command": provenance.command_line(),
              "threads": torch.get_num_threads(), "results": results, "query": query}
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "extraction.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
