"""Exporting a trained decoder: its weights in fp16 beside a manifest that records the in-ε
rates it reaches as exported, re-measured on its training run's held-out queries."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from inversionview.decoder.evaluate import held_out_queries, in_epsilon_rates
from inversionview.decoder.store import DecoderLoadError, load_decoder, read_manifest, save_decoder
from inversionview.decoder.train import attach_corpus
from inversionview.probed.subject import Subject


def with_training_corpus(model: Subject, training: dict[str, Any], run_dir: Path) -> Subject:
    """``model`` as the decoder in ``run_dir`` was trained on it (``training``: its manifest's
    training settings): free text draws its inputs from the same corpus (the path as the
    training command gave it, relative to where it ran), since its held-out queries come from
    there; a task with inputs of its own is returned as it is."""
    if not model.task.needs_corpus:
        return model
    corpus = training.get("corpus")
    if not isinstance(corpus, str) or not Path(corpus).exists():
        raise DecoderLoadError(f"{run_dir} was trained on the corpus {corpus!r}, which is not "
                               f"there; export it from the directory its training ran in (its "
                               f"held-out queries are drawn from that corpus)")
    return attach_corpus(model, corpus, training.get("max_tokens", 32),
                         training.get("field", "text"))


def export_decoder(run_dir: Path, destination: Path, model: Subject, seed: int = 0,
                   dtype: torch.dtype = torch.float16) -> dict[str, Any]:
    """Copy a trained decoder into ``destination`` with weights in ``dtype`` (fp16 halves a
    shipped decoder), re-measuring its in-ε rates as exported on the held-out queries of its
    training seed (same queries, sample draws from ``seed``). Returns the new manifest."""
    decoder, manifest = load_decoder(run_dir, model)
    training = manifest.get("training", {})
    model = with_training_corpus(model, training, run_dir)
    save_decoder(decoder, model, destination, {}, dtype=dtype)
    exported, _ = load_decoder(destination, model)
    queries = held_out_queries(model, training.get("eval_queries_per_site", 8),
                               training.get("seed", 0), policy=training.get("positions", "uniform"))
    quality = in_epsilon_rates(exported, model, queries, training.get("eval_samples_per_query", 16),
                               training.get("epsilon", 0.1), torch.Generator().manual_seed(seed))
    record = {key: value for key, value in manifest.items()
              if key not in ("kind", "task", "sites", "probed_weights_sha256", "probed_source",
                             "config", "processing", "special_ids", "tokenizer_sha256")}
    record.update(weights_dtype=str(dtype).removeprefix("torch."), exported_from=str(run_dir),
                  exported_in_epsilon=quality["in_epsilon"],
                  exported_in_epsilon_mean=quality["in_epsilon_mean"],
                  exported_well_formed=quality["well_formed"],
                  exported_distinct_in_epsilon=quality["distinct_in_epsilon"])
    save_decoder(decoder, model, destination, record, dtype=dtype)
    return read_manifest(destination)


__all__ = ["export_decoder", "with_training_corpus"]
