"""Memory and speed with a GPT-2-sized vocabulary: a decoder's training and a full query.

    python bench/large_vocab.py [--vocab 50257] [--examples 512] [--candidates 1024]
                                [--threads 2]

GPT-2's weights and tokenizer cannot be downloaded here, so the probed model is GPT-2 small's
configuration with random weights (12 layers, d 768, 12 heads, ``--vocab`` tokens) and the
tokenizer a word-level one with exactly ``--vocab`` entries (``<|endoftext|>`` and words
``w1``, ``w2``...); the corpus is seeded random sentences over that vocabulary. It measures,
in one process:

- a decoder trained for ``--examples`` examples on every site (the default decoder: 2 layers,
  d 256, a ``vocab + 2``-row embedding and unembedding): examples per second, steps;
- one query of ``--candidates`` candidates on a head of the last layer: seconds by stage;
- the process's peak resident memory after each (``ru_maxrss``), and the sizes of the
  largest tensors involved (the decoder's logits per batch, the probed weights).

Writes bench/results/large_vocab.json with the machine, the commit and the command.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import tempfile
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from inversionview import provenance
from inversionview.decoder.train import DecoderTrainingConfig, train_decoder
from inversionview.decoder.store import load_decoder
from inversionview.preimage.query import QueryConfig, run_query
from inversionview.probed import load_probed

RESULTS = Path(__file__).parent / "results"


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def word_level_model(directory: Path, vocab: int) -> Path:
    """GPT-2 small's shape with random weights, and a ``vocab``-entry word-level tokenizer."""
    words = {"<|endoftext|>": 0, **{f"w{i}": i for i in range(1, vocab)}}
    tokenizer = Tokenizer(models.WordLevel(words, unk_token="<|endoftext|>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<|endoftext|>",
                            eos_token="<|endoftext|>", unk_token="<|endoftext|>"
                            ).save_pretrained(directory)
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=vocab, bos_token_id=0, eos_token_id=0)
                    ).save_pretrained(directory)
    return directory


def corpus(path: Path, vocab: int, lines: int = 20_000, seed: int = 0) -> Path:
    rng = random.Random(seed)
    path.write_text("\n".join(" ".join(f"w{rng.randrange(1, vocab)}"
                                       for _ in range(rng.randrange(8, 40)))
                              for _ in range(lines)))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=50_257)
    parser.add_argument("--examples", type=int, default=512)
    parser.add_argument("--candidates", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    record = {"benchmark": "large_vocab", "machine": provenance.machine(),
              "commit": provenance.commit(), "command": provenance.command_line(),
              "threads": torch.get_num_threads(), "vocab": args.vocab}
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        directory = word_level_model(root / "model", args.vocab)
        text = corpus(root / "corpus.txt", args.vocab)
        model = load_probed(directory)
        record["after_load_peak_rss_mb"] = peak_rss_mb()
        record["probed"] = {"parameters": sum(p.numel() for p in model.hf_model.parameters()),
                            "sites": len(model.sites), "tokenizer_size": model.task.vocab.size}
        config = DecoderTrainingConfig(out=root / "decoder", examples=args.examples,
                                       corpus=str(text), max_tokens=32,
                                       eval_every_seconds=1e9, eval_queries_per_site=1,
                                       eval_samples_per_query=2)
        started = time.perf_counter()
        train_decoder(model, config, show_progress=False)
        seconds = time.perf_counter() - started
        metrics = [json.loads(line) for line in (root / "decoder" / "metrics.jsonl").open()]
        decoder, manifest = load_decoder(root / "decoder", model)
        batch = manifest["training"].get("batch_size")
        record["training"] = {
            "examples": args.examples, "seconds_with_setup_and_final_eval": round(seconds, 1),
            "examples_per_second": metrics[-1].get("examples_per_second"),
            "batch_size": batch, "precision": manifest["training"].get("precision"),
            "decoder_parameters": sum(p.numel() for p in decoder.parameters()),
            "logits_mb_per_batch": round((batch or 0) * (32 + 2) * decoder.config.vocab_size * 4
                                         / 2**20, 1),
            "peak_rss_mb": peak_rss_mb()}
        site = f"a{model.n_layers - 1}.0"
        text_in = "w11 w42 w7 w1999 w3000 w11 w5 w42"
        result = run_query(model, decoder, text_in, site, "last",
                           QueryConfig(candidates=args.candidates), seed=0)
        stats = result.stats
        record["query"] = {"site": site, "candidates": args.candidates,
                           "seconds": stats.seconds, "seconds_sampling": stats.seconds_sampling,
                           "seconds_scoring": stats.seconds_scoring,
                           "seconds_colouring": stats.seconds_colouring,
                           "peak_rss_mb": peak_rss_mb()}
    print(json.dumps({k: record[k] for k in ("probed", "training", "query")}, indent=2))
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "large_vocab.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
