"""Decoders on disk: a directory with ``decoder.safetensors`` and ``decoder.json`` (config,
the sha256 of the probed weights it was trained on, and the training manifest).

``find_decoder`` picks the shipped decoder trained on a given probed model by that hash;
``load_decoder`` loads one and refuses a decoder trained on other weights. A file that
cannot be used (not JSON, fields of the wrong type, truncated weights, weights that do not
fit the config) raises ``DecoderLoadError`` naming the file.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from inversionview.artifacts import list_artifacts
from inversionview.decoder.model import Decoder, DecoderConfig
from inversionview.errors import UserError, echo
from inversionview.files import (atomic_path, first_line, positive_int, read_json_object,
                                read_safetensors, weights_mismatch, write_json_atomic)
from inversionview.probed.subject import Subject
from inversionview.provenance import portable_path

WEIGHTS, MANIFEST = "decoder.safetensors", "decoder.json"


class DecoderLoadError(UserError, ValueError):
    """A decoder directory that is missing, malformed, or trained on another probed model."""


def save_decoder(decoder: Decoder, model: Subject, directory: Path, manifest: dict[str, Any],
                 dtype: torch.dtype = torch.float32) -> None:
    """Write the weights (in ``dtype``; fp16 halves a shipped decoder) and the manifest."""
    directory = Path(directory)
    with atomic_path(directory / WEIGHTS) as tmp:
        save_file({k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype)
                   .contiguous() for k, v in decoder.state_dict().items()}, str(tmp))
    write_json_atomic(directory / MANIFEST, {
        "kind": "decoder", "task": model.task.name, **decoder_identity(model),
        "probed_source": portable_path(model.source),
        "config": decoder.config.to_dict(), **manifest})


def decoder_identity(model: Subject) -> dict[str, Any]:
    """What a decoder must match in the model it reads: its weights, the sites in the
    decoder's order, how activations are processed, and the token ids (a text model's
    tokenizer by fingerprint)."""
    vocab = model.task.vocab
    identity = {"sites": [site.short for site in model.sites],
                "probed_weights_sha256": model.weights_hash(), "processing": model.processing,
                "special_ids": {"bos": vocab.bos_id, "eos": vocab.eos_id, "pad": vocab.pad_id}}
    fingerprint = vocab.fingerprint()  # None for a toy task's characters
    if fingerprint is not None:
        identity["tokenizer_sha256"] = fingerprint
    return identity


def read_manifest(directory: Path) -> dict[str, Any]:
    """decoder.json, checked: kind "decoder", the config an object, the task and the probed
    weights' sha256 strings (the sites a list of names and the training record an object, if
    present). A DecoderLoadError naming the file says what is wrong otherwise."""
    path = Path(directory) / MANIFEST
    if not Path(directory).exists():
        raise DecoderLoadError(f"decoder directory {directory} does not exist")
    if not path.is_file():
        raise DecoderLoadError(f"{directory} is not a decoder directory: it has no {MANIFEST} "
                               f"(train one with `inversionview train-decoder`)")
    manifest = read_json_object(path, DecoderLoadError, _EXPECTED)
    if manifest.get("kind") != "decoder":
        raise DecoderLoadError(f"{path} is not a decoder manifest: kind is "
                               f"{echo(manifest.get('kind'))}; expected 'decoder'")
    for name, kind, required, described in _MANIFEST_FIELDS:
        if name not in manifest:
            if required:
                raise DecoderLoadError(f"{path} has no {name} field; expected {_EXPECTED}")
            continue
        value = manifest[name]
        if not isinstance(value, kind) or (kind is list and not all(isinstance(v, str) for v in value)):
            raise DecoderLoadError(f"{path}: {name} is {echo(value)}; expected {described}")
    return manifest


_EXPECTED = ("a JSON object with the decoder's config and the sha256 of the probed weights it "
             "was trained on, as written by `inversionview train-decoder`")
_MANIFEST_FIELDS = [  # (name, type, required, what it must be)
    ("config", dict, True, "a JSON object of decoder settings"),
    ("task", str, True, "a task name"),
    ("probed_weights_sha256", str, True, "the sha256 of the probed weights, a string"),
    ("probed_source", str, False, "the probed model's path, a string"),
    ("sites", list, False, "a list of site names"),
    ("processing", str, False, "processed or raw"),
    ("special_ids", dict, False, "a JSON object of the BOS, EOS and PAD ids"),
    ("tokenizer_sha256", str, False, "the sha256 of the tokenizer, a string"),
    ("training", dict, False, "a JSON object of training settings"),
    ("init_from", dict, False, "a JSON object of the pretrained LM's path and weights' sha256"),
]


def load_decoder(directory: Path, model: Subject | None = None, device: str = "cpu"
                 ) -> tuple[Decoder, dict[str, Any]]:
    """(decoder in float32, eval mode; manifest). With ``model``, check that the decoder was
    trained on exactly these probed weights. A file that cannot be used raises
    DecoderLoadError naming it."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    manifest_path, weights_path = directory / MANIFEST, directory / WEIGHTS
    if model is not None and manifest["probed_weights_sha256"] != model.weights_hash():
        raise DecoderLoadError(
            f"decoder {directory} was trained on other probed weights "
            f"({manifest.get('probed_source')}, sha256 {manifest['probed_weights_sha256'][:12]}) "
            f"than {model.source} (sha256 {model.weights_hash()[:12]}); a decoder reads only the "
            f"model it was trained on")
    config = _decoder_config(manifest_path, manifest["config"])
    if model is not None:
        _check_fits_model(config, model, manifest_path)
        _check_identity(manifest, model, manifest_path)
    if not weights_path.is_file():
        raise DecoderLoadError(f"{weights_path} is missing; expected the decoder's weights "
                               f"beside {manifest_path}")
    state = read_safetensors(weights_path, DecoderLoadError,
                             "the decoder's weights as written by `inversionview train-decoder`")
    try:
        decoder = Decoder(config)
    except (ValueError, TypeError, RuntimeError) as error:
        raise DecoderLoadError(f"{manifest_path}: its config does not build a decoder "
                               f"({first_line(error)})") from None
    problems = weights_mismatch(decoder.state_dict(), state)
    if problems is not None:
        raise DecoderLoadError(f"{weights_path} does not match the config in {manifest_path}: "
                               f"{problems}")
    try:
        decoder.load_state_dict({k: v.float() if v.is_floating_point() else v
                                 for k, v in state.items()})
    except RuntimeError as error:
        raise DecoderLoadError(f"{weights_path} cannot be loaded with the config in "
                               f"{manifest_path} ({first_line(error)})") from None
    names = manifest.get("sites")
    if names is None and model is not None:  # older manifests: the task's sites
        names = [site.short for site in model.sites]
    decoder.site_names = tuple(names or ())
    return decoder.to(device).eval(), manifest


def _check_identity(manifest: dict[str, Any], model: Subject, path: Path) -> None:
    """Refuse a decoder whose processing, tokenizer, special ids or site list differ from
    the model's (older manifests lack some fields: those were written for processed toy
    tasks, whose ids and sites are fixed)."""
    identity = decoder_identity(model)
    processing = manifest.get("processing", "processed")
    if processing != model.processing:
        flag = "without --raw" if processing == "processed" else "with --raw"
        raise DecoderLoadError(f"{path}: the decoder was trained on {processing} activations but "
                               f"the model is read {model.processing}; load the model {flag}")
    if "tokenizer_sha256" in manifest and manifest["tokenizer_sha256"] != identity.get("tokenizer_sha256"):
        raise DecoderLoadError(f"{path}: the decoder was trained with another tokenizer than the "
                               f"one in {model.source}")
    if "special_ids" in manifest and manifest["special_ids"] != identity["special_ids"]:
        raise DecoderLoadError(f"{path}: the decoder's special ids {manifest['special_ids']} differ "
                               f"from the model's {identity['special_ids']}")
    sites = manifest.get("sites")
    if sites is not None:
        unknown = [name for name in sites if name not in identity["sites"]]
        if unknown or len(sites) != manifest["config"]["n_sites"]:
            raise DecoderLoadError(f"{path}: the decoder's sites ({echo(', '.join(sites))}) are not "
                                   f"sites of {model.source} or do not match its config")


def _decoder_config(path: Path, settings: dict[str, Any]) -> DecoderConfig:
    """The ``config`` object of decoder.json as a DecoderConfig, each field of its type."""
    fields = {field.name: field for field in dataclasses.fields(DecoderConfig)}
    types = typing.get_type_hints(DecoderConfig)
    unknown = sorted(set(settings) - set(fields))
    missing = [name for name, field in fields.items() if name not in settings
               and field.default is dataclasses.MISSING]
    if unknown or missing:
        problem = "; ".join([f"unknown field {', '.join(unknown)}"] * bool(unknown)
                            + [f"no {', '.join(missing)}"] * bool(missing))
        raise DecoderLoadError(f"{path}: config has {problem}; expected the fields "
                               f"{', '.join(fields)}")
    for name, value in settings.items():
        described, valid = _FIELD_TYPES[types[name]]
        if not valid(value):
            raise DecoderLoadError(f"{path}: config.{name} is {echo(value)}; expected {described}")
    try:
        config = DecoderConfig(**settings)
    except ValueError as error:  # an unknown condition_mode
        raise DecoderLoadError(f"{path}: {error}") from None
    if config.d_model % config.n_heads:
        raise DecoderLoadError(f"{path}: config.d_model {config.d_model} is not divisible by "
                               f"config.n_heads {config.n_heads}; expected a width the heads divide")
    return config


_FIELD_TYPES = {  # a DecoderConfig field's type -> (what it must be, check)
    int: ("a positive integer", positive_int),
    int | None: ("a positive integer or null", lambda v: v is None or positive_int(v)),
    float: ("a number from 0 to 1",
            lambda v: isinstance(v, int | float) and not isinstance(v, bool) and 0 <= v < 1),
    bool: ("true or false", lambda v: isinstance(v, bool)),
    str: ("a string", lambda v: isinstance(v, str)),
}


def _check_fits_model(config: DecoderConfig, model: Subject, path: Path) -> None:
    needed = {"vocab_size": model.task.vocab.size, "activation_dim": model.d_model}
    if model.task.sites is not None:  # a toy task's decoder reads exactly the task's sites
        needed["n_sites"] = len(model.task.sites)
    for name, value in needed.items():
        if getattr(config, name) != value:
            raise DecoderLoadError(f"{path}: config.{name} is {getattr(config, name)} but the "
                                   f"model {model.source} needs {value}")
    if model.task.sites is not None and config.n_ctx < model.task.n_ctx:
        raise DecoderLoadError(f"{path}: config.n_ctx is {config.n_ctx} but the {model.task.name} "
                               f"task needs {model.task.n_ctx} positions")


def shipped_decoders() -> dict[str, tuple[Path, dict[str, Any]]]:
    """name -> (directory, manifest) of the bundled decoders."""
    return {name: entry for name, entry in list_artifacts().items()
            if entry[1].get("kind") == "decoder"}


def find_decoder(model: Subject) -> Path | None:
    """The bundled decoder trained on ``model``'s weights, if there is one."""
    digest = model.weights_hash()
    for directory, manifest in shipped_decoders().values():
        if manifest.get("probed_weights_sha256") == digest:
            return directory
    return None


def decoder_for(model: Subject, name: str, directory: Path | None = None
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
