"""Decoders on disk: a directory with ``decoder.safetensors`` and ``decoder.json`` (config,
the sha256 of the probed weights it was trained on, and the training manifest).

``find_decoder`` picks the shipped decoder trained on a given probed model by that hash;
``load_decoder`` loads one and refuses a decoder trained on other weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from inversionview.artifacts import list_artifacts
from inversionview.decoder.model import Decoder, DecoderConfig
from inversionview.errors import UserError
from inversionview.probed.model import ProbedModel, atomic_path, write_json_atomic

WEIGHTS, MANIFEST = "decoder.safetensors", "decoder.json"


class DecoderLoadError(UserError, ValueError):
    """A decoder directory that is missing, malformed, or trained on another probed model."""


def save_decoder(decoder: Decoder, model: ProbedModel, directory: Path, manifest: dict[str, Any],
                 dtype: torch.dtype = torch.float32) -> None:
    """Write the weights (in ``dtype``; fp16 halves a shipped decoder) and the manifest."""
    directory = Path(directory)
    with atomic_path(directory / WEIGHTS) as tmp:
        save_file({k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype)
                   .contiguous() for k, v in decoder.state_dict().items()}, str(tmp))
    write_json_atomic(directory / MANIFEST, {
        "kind": "decoder", "task": model.task.name, "sites": list(model.task.sites),
        "probed_weights_sha256": model.weights_hash(), "probed_source": model.source,
        "config": decoder.config.to_dict(), **manifest})


def read_manifest(directory: Path) -> dict[str, Any]:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise DecoderLoadError(f"{directory} is not a decoder directory: it has no {MANIFEST} "
                               f"(train one with `inversionview train-decoder`)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DecoderLoadError(f"{path} is not valid JSON: {error}") from None
    if manifest.get("kind") != "decoder" or "config" not in manifest:
        raise DecoderLoadError(f"{path} is not a decoder manifest (kind {manifest.get('kind')!r})")
    return manifest


def load_decoder(directory: Path, model: ProbedModel | None = None, device: str = "cpu"
                 ) -> tuple[Decoder, dict[str, Any]]:
    """(decoder in float32, eval mode; manifest). With ``model``, check that the decoder was
    trained on exactly these probed weights."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    if model is not None and manifest.get("probed_weights_sha256") != model.weights_hash():
        raise DecoderLoadError(
            f"decoder {directory} was trained on other probed weights "
            f"({manifest.get('probed_source')}, sha256 {str(manifest.get('probed_weights_sha256'))[:12]}) "
            f"than {model.source} (sha256 {model.weights_hash()[:12]}); a decoder reads only the "
            f"model it was trained on")
    try:
        decoder = Decoder(DecoderConfig(**manifest["config"]))
        state = load_file(str(directory / WEIGHTS))
        decoder.load_state_dict({k: v.float() if v.is_floating_point() else v
                                 for k, v in state.items()})
    except (TypeError, ValueError, RuntimeError, FileNotFoundError) as error:
        raise DecoderLoadError(f"cannot load decoder {directory}: {error}") from None
    return decoder.to(device).eval(), manifest


def shipped_decoders() -> dict[str, tuple[Path, dict[str, Any]]]:
    """name -> (directory, manifest) of the bundled decoders."""
    return {name: entry for name, entry in list_artifacts().items()
            if entry[1].get("kind") == "decoder"}


def find_decoder(model: ProbedModel) -> Path | None:
    """The bundled decoder trained on ``model``'s weights, if there is one."""
    digest = model.weights_hash()
    for directory, manifest in shipped_decoders().values():
        if manifest.get("probed_weights_sha256") == digest:
            return directory
    return None


def decoder_for(model: ProbedModel, name: str, directory: Path | None = None
                ) -> tuple[Decoder, Path]:
    """(decoder, its directory) for ``model``: ``directory``, or the bundled decoder trained
    on its weights; a DecoderLoadError that says how to get one otherwise. ``name`` is how
    the user named the model (for the message)."""
    directory = directory or find_decoder(model)
    if directory is None:
        raise DecoderLoadError(
            f"no bundled decoder was trained on {name} (sha256 {model.weights_hash()[:12]}); "
            f"train one with `inversionview train-decoder {name} --out RUN_DIR --minutes 60` "
            f"and pass it with --decoder")
    decoder, _ = load_decoder(directory, model)
    return decoder, Path(directory)


def export_decoder(run_dir: Path, destination: Path, model: ProbedModel, seed: int = 0,
                   dtype: torch.dtype = torch.float16) -> dict[str, Any]:
    """Copy a trained decoder into ``destination`` with weights in ``dtype`` (fp16 halves a
    shipped decoder), re-measuring its in-ε rates as exported on the held-out queries of its
    training seed (same queries, sample draws from ``seed``). Returns the new manifest."""
    from inversionview.decoder.evaluate import held_out_queries, in_epsilon_rates

    decoder, manifest = load_decoder(run_dir, model)
    training = manifest.get("training", {})
    save_decoder(decoder, model, destination, {}, dtype=dtype)
    exported, _ = load_decoder(destination, model)
    queries = held_out_queries(model, training.get("eval_queries_per_site", 8),
                               training.get("seed", 0))
    quality = in_epsilon_rates(exported, model, queries, training.get("eval_samples_per_query", 16),
                               training.get("epsilon", 0.1), torch.Generator().manual_seed(seed))
    record = {key: value for key, value in manifest.items()
              if key not in ("kind", "task", "sites", "probed_weights_sha256", "probed_source",
                             "config")}
    record.update(weights_dtype=str(dtype).removeprefix("torch."), exported_from=str(run_dir),
                  exported_in_epsilon=quality["in_epsilon"],
                  exported_in_epsilon_mean=quality["in_epsilon_mean"],
                  exported_well_formed=quality["well_formed"],
                  exported_distinct_in_epsilon=quality["distinct_in_epsilon"])
    save_decoder(decoder, model, destination, record, dtype=dtype)
    return read_manifest(destination)
