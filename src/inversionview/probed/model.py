"""The probed model: build, load (offline), save, and read activations.

A probed model is a HuggingFace causal LM, the tokenizer its inputs are written in and the
sites of its shape: a toy task's GPT-2 with the task's character vocabulary (the form the
authors released and the form we train and save), or any architecture that TransformerLens'
``TransformerBridge`` supports (GPT-2, GPT-NeoX/Pythia, Llama, ...) with its own tokenizer.
It carries no task: ``probed.subject.Subject`` pairs it with the task it is read as, and
``load_probed`` assembles that pair from a MODEL argument. Activations are read with
TransformerLens' default weight processing (``processing="processed"``, the paper's) or as
the raw HuggingFace activations (``"raw"``), through a ``Backend`` (``probed/backend.py``):
the fast ``ProcessedGPT2`` for a processed GPT-2, the bridge otherwise.

A MODEL argument is one of:
- the name of a bundled artifact (``counting``, ``addition``; see ``inversionview models``);
- a directory written by this project (it holds ``inversionview.json`` naming its task);
- a HuggingFace GPT-2 directory (config.json + model.safetensors or pytorch_model.bin)
  without a tokenizer: its task is the toy task whose vocabulary and context fit the config,
  or ``--task``;
- a HuggingFace causal-LM directory with its tokenizer (any supported architecture): read
  as free text;
- a hub name such as ``gpt2``, loaded from the user's local HuggingFace cache only.

A file that cannot be used (not JSON, wrong field types, truncated weights, weights that do
not fit the config) raises ``ModelLoadError`` naming the file.
"""

from __future__ import annotations

import hashlib
import pickle
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from huggingface_hub.errors import StrictDataclassError
from safetensors.torch import save_file
from transformers import GPT2Config, GPT2LMHeadModel, PretrainedConfig, PreTrainedModel
from transformers.activations import ACT2FN

from inversionview.artifacts import bundled_model_names, find_artifact
from inversionview.errors import UserError, echo
from inversionview.files import (atomic_path, first_line, positive_int, read_json_object,
                                read_safetensors, weights_mismatch, write_json_atomic)
from inversionview.probed.sites import Site, check_site
from inversionview.probed.subject import Subject
from inversionview.tasks import TASKS, TEXT_TASKS, Task, TaskInputError, get_task, text_task
from inversionview.tasks.base import Vocabulary
from inversionview.tasks.text import TextTask
from inversionview.text.tokenizer import TOKENIZER_FILES, HFTokenizer

TEXT = TextTask.name

MANIFEST = "inversionview.json"
_TIED_OR_BUFFERS = ("lm_head.weight", ".attn.bias", ".attn.masked_bias")


class ModelLoadError(UserError, ValueError):
    """A MODEL argument that cannot be resolved or a checkpoint that does not fit its task."""


PROCESSINGS = ("processed", "raw")


@dataclass
class ProbedModel:
    hf_model: PreTrainedModel
    #: What its inputs are written in: a toy task's character vocabulary, or the language
    #: model's own tokenizer. Both give ``size``, the special ids, ``encode`` and ``decode``.
    tokenizer: Vocabulary | HFTokenizer
    source: str = "<memory>"
    manifest: dict[str, Any] = field(default_factory=dict)
    #: "processed": TransformerLens' default weight processing (the paper's); "raw": the
    #: HuggingFace model's own activations.
    processing: str = "processed"
    _backend: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.processing not in PROCESSINGS:
            raise ModelLoadError(f"unknown processing {echo(self.processing)}; use processed "
                                 f"(TransformerLens' default, as the paper) or raw")

    # ----- shape ------------------------------------------------------------------------

    @property
    def config(self) -> PretrainedConfig:
        return self.hf_model.config

    @property
    def architecture(self) -> str:
        """The HuggingFace model type (``gpt2``, ``gpt_neox``, ``llama``, ...)."""
        return self.config.model_type

    @property
    def n_layers(self) -> int:
        return self.config.num_hidden_layers

    @property
    def n_heads(self) -> int:
        return self.config.num_attention_heads

    @property
    def d_model(self) -> int:
        return self.config.hidden_size

    @property
    def device(self) -> torch.device:
        return next(self.hf_model.parameters()).device

    @property
    def sites(self) -> list[Site]:
        """Every distinct site of the model's shape, in forward order (``model_sites``); a
        task may read a subset (``Subject.sites``)."""
        return model_sites(self.n_layers, self.n_heads)

    def site(self, name: str | Site) -> Site:
        """Parse and check a site name against this model (any existing site is allowed)."""
        return check_site(name, self.n_layers, self.n_heads)

    def site_width(self, site: str | Site) -> int:
        """The width of a site's activation (every site writes to the residual stream)."""
        self.site(site)
        return self.d_model

    # ----- activations ------------------------------------------------------------------

    @property
    def processed(self):
        """The ``Backend`` that reads activations (the fast processed GPT-2 forward, or the
        bridge); rebuilt by ``refresh()`` after the weights change."""
        if self._backend is None:
            self._backend = _make_backend(self)
        return self._backend

    def refresh(self) -> None:
        self._backend = None

    def model_ids(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens`` with decoder-only ids (EOS/PAD beyond the model's vocabulary) read as 0.
        They only ever follow a text's last token, so no real position's activation changes."""
        tokens = tokens.to(self.device)
        return tokens.masked_fill(tokens >= self.config.vocab_size, 0)

    def activations(self, tokens: torch.Tensor, site: str | Site,
                    positions: torch.Tensor | int | None = None) -> torch.Tensor:
        """The activation of ``site`` for a batch ``[batch, pos]`` of token ids.

        positions: None gives ``[batch, pos, d_model]``; an int or a ``[batch]`` tensor of
        indices gives ``[batch, d_model]``, one position per input.
        """
        site = self.site(site)
        values = self.processed.run(self.model_ids(tokens), [site])[site]
        if positions is None:
            return values
        if isinstance(positions, int):
            return values[:, positions]
        rows = torch.arange(values.shape[0], device=values.device)
        return values[rows, positions.to(values.device)]

    def run_sites(self, tokens: torch.Tensor, sites: list[str | Site]) -> dict[Site, torch.Tensor]:
        """Activations ``[batch, pos, d_model]`` of several sites in one (early-stopped) run."""
        return self.processed.run(self.model_ids(tokens), [self.site(s) for s in sites])

    def run_patched(self, tokens: torch.Tensor,
                    patches: dict[Site, tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """``[batch, pos, vocab]`` logits with activations replaced (``Backend.run_patched``)."""
        return self.processed.run_patched(self.model_ids(tokens), patches)

    def processed_logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[batch, pos, vocab]`` logits of the backend (centred when processed)."""
        return self.processed.logits(self.model_ids(tokens))

    def direct_logits(self, piece: torch.Tensor, final_resid: torch.Tensor) -> torch.Tensor:
        """``[n, vocab]``: the direct effect on the logits of ``piece``, one summand of the
        final residual stream ``final_resid`` (whose final-norm scale it shares)."""
        return self.processed.direct_logits(piece, final_resid)

    def attention_patterns(self, tokens: torch.Tensor, layer: int) -> torch.Tensor:
        """``[batch, head, query_pos, key_pos]`` attention weights of every head of ``layer``
        for a batch of token ids (right padding changes no real position's weights)."""
        return self.processed.attention_pattern(self.model_ids(tokens), layer)

    @torch.no_grad()
    def logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[batch, pos, vocab]`` logits of the unprocessed HuggingFace model."""
        self.hf_model.eval()
        return self.hf_forward(tokens.to(self.device))

    def hf_forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits of the HuggingFace model (in its current train/eval mode). Masking the PAD
        keys changes nothing for the right-padded real positions and tells HF they are pads."""
        mask = (tokens != self.tokenizer.pad_id).long()
        return self.hf_model(self.model_ids(tokens), attention_mask=mask).logits

    def bridge(self, dtype: torch.dtype | None = None):
        """A TransformerLens ``TransformerBridge`` over a copy of this model, in compatibility
        mode (default weight processing) with per-head results enabled. Never touches the hub."""
        from transformer_lens.model_bridge import TransformerBridge

        with tempfile.TemporaryDirectory() as directory:
            # The bridge reads a config (and looks for a tokenizer) under this name; give it a
            # local directory so nothing is ever looked up remotely.
            self.config.save_pretrained(directory)
            copy = type(self.hf_model)(self.config)
            copy.load_state_dict(self.hf_model.state_dict())
            copy.eval()  # no dropout
            dtype = dtype or next(self.hf_model.parameters()).dtype
            bridge = TransformerBridge.boot_transformers(
                directory, hf_model=copy.to(dtype), device=str(self.device), dtype=dtype)
        bridge.enable_compatibility_mode(disable_warnings=True)
        bridge.set_use_attn_result(True)
        return bridge

    # ----- identity and persistence ----------------------------------------------------

    def weights_hash(self) -> str:
        """sha256 of the weights (names, shapes and float32 values), for matching decoders."""
        cached = self.__dict__.get("_hash")
        if cached is not None and cached[0] == self._version():
            return cached[1]
        digest = hashlib.sha256()
        for name, tensor in sorted(self.hf_model.state_dict().items()):
            if name.endswith(_TIED_OR_BUFFERS):
                continue
            digest.update(name.encode())
            digest.update(str(tuple(tensor.shape)).encode())
            digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
        self.__dict__["_hash"] = (self._version(), digest.hexdigest())
        return digest.hexdigest()

    def _version(self) -> tuple:
        # In-place updates (training) bump a parameter's version: the cached hash is then stale.
        return tuple(p._version for p in self.hf_model.parameters())

    def weights(self) -> dict[str, torch.Tensor]:
        """The model's own weights (no tied copies, no buffers), on the CPU."""
        return {k: v.detach().cpu().contiguous() for k, v in self.hf_model.state_dict().items()
                if not k.endswith(_TIED_OR_BUFFERS)}

    def save(self, directory: str | Path, manifest: dict[str, Any] | None = None,
             dtype: torch.dtype | None = None) -> Path:
        """Write config.json, model.safetensors (in ``dtype``, default as trained), the
        tokenizer of a language model and inversionview.json (``manifest``, which names the
        task the model is read as: ``Subject.save`` fills it in), each atomically."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        weights = self.weights()
        if dtype is not None:
            weights = {k: v.to(dtype) if v.is_floating_point() else v for k, v in weights.items()}
        with atomic_path(directory / "model.safetensors") as tmp:
            save_file(weights, str(tmp), metadata={"format": "pt"})
        write_json_atomic(directory / "config.json", self.config.to_dict())
        tokenizer = getattr(self.tokenizer, "hf", None)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(directory))
        record = {"kind": "probed-model", **(manifest or self.manifest)}
        record["weights_sha256"] = self.weights_hash()
        write_json_atomic(directory / MANIFEST, record)
        return directory


def model_sites(n_layers: int, n_heads: int) -> list[Site]:
    """Every distinct site of a model's shape, in forward order: the embeddings (x0.pre),
    then per layer each head, the attention output, xL.mid, the MLP output and xL.post
    (xL.pre of a later layer is the same vector as x(L-1).post, so it is not repeated)."""
    sites = [Site(0, "resid_pre")]
    for layer in range(n_layers):
        sites.extend(Site(layer, "head", head) for head in range(n_heads))
        sites.extend([Site(layer, "attn_out"), Site(layer, "resid_mid"), Site(layer, "mlp_out"),
                      Site(layer, "resid_post")])
    return sites


def _make_backend(model: ProbedModel):
    from inversionview.probed.backend import make_backend

    return make_backend(model.hf_model, processed=model.processing == "processed")


# ----- building and loading ------------------------------------------------------------


def build_probed(task: Task | str, seed: int = 0, **overrides: Any) -> Subject:
    """A probed model with random weights (GPT-2 init), its config from the task's defaults
    updated with ``overrides`` (GPT2Config keyword arguments), read as ``task``."""
    task = get_task(task) if isinstance(task, str) else task
    config = GPT2Config(**{**task.probed_config(), **overrides})
    config.tie_word_embeddings = True
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(config)
    return Subject(ProbedModel(hf_model=model, tokenizer=task.vocab, source="<random init>",
                               manifest={"seed": seed}), task)


def load_probed(model: str | Path, task: str | None = None, device: str = "cpu",
                processing: str = "processed") -> Subject:
    """Resolve a MODEL argument (see the module docstring) and load it, fully offline, read
    as its task: the probed model and the task, assembled once for every later stage.

    Without ``task`` the task is the one named in inversionview.json; else a directory with a
    tokenizer is read as free text (``text``), and a plain GPT-2 directory as the one toy
    task whose vocabulary and context fit its config. A file that cannot be used raises
    ModelLoadError naming it."""
    if processing not in PROCESSINGS:
        raise ModelLoadError(f"unknown processing {echo(processing)}; use processed or raw")
    directory = _resolve_directory(str(model))
    if directory is None:
        return _load_from_hub_cache(str(model), task, device)
    manifest_path, config_path = directory / MANIFEST, directory / "config.json"
    manifest = _read_manifest(manifest_path, task) if manifest_path.exists() else {}
    if manifest.get("task") and task and task != manifest["task"] and not (
            task in TEXT_TASKS and manifest["task"] in TEXT_TASKS):
        raise ModelLoadError(f"{directory} was trained on {echo(manifest['task'])}, not {echo(task)}")
    if not config_path.exists():
        decoder = (directory / "decoder.json").exists()
        raise ModelLoadError(f"{directory} has no config.json; it is not a model directory"
                             + " (it holds a decoder: pass it with --decoder)" * decoder)
    wanted = task or manifest.get("task")
    has_tokenizer = any((directory / name).exists() for name in TOKENIZER_FILES)
    if wanted in TEXT_TASKS or (wanted is None and (has_tokenizer or not _is_gpt2(config_path))):
        return _load_language_model(directory, manifest, device, processing, wanted or TEXT)
    settings = _read_config(config_path)
    the_task = _choose_task(settings["vocab_size"], settings["n_positions"], config_path, wanted)
    hf_model = _build_model(settings, config_path)
    state, weights_path = _read_state_dict(directory)
    _load_state(hf_model, state, weights_path, config_path)
    hf_model.to(device).eval()
    return Subject(ProbedModel(hf_model=hf_model, tokenizer=the_task.vocab, source=str(directory),
                               manifest=manifest, processing=processing), the_task)


def _is_gpt2(config_path: Path) -> bool:
    settings = read_json_object(config_path, ModelLoadError, "a JSON object of model settings")
    return settings.get("model_type", "gpt2") == "gpt2"


def _load_language_model(directory: Path, manifest: dict[str, Any], device: str,
                         processing: str, task_name: str = TEXT) -> Subject:
    """A causal LM of any supported architecture with the tokenizer in its directory."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.utils import logging as transformers_logging

    # Loading a model is not news: no progress bar, no warnings about generation settings.
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    config_path = directory / "config.json"
    settings = read_json_object(config_path, ModelLoadError, "a JSON object of model settings "
                                                             "as written by save_pretrained")
    model_type = settings.get("model_type")
    if not isinstance(model_type, str):
        raise ModelLoadError(f"{config_path} has no model_type; expected the settings of a "
                             f"HuggingFace causal LM (model_type gpt2, gpt_neox, llama, ...)")
    check_architecture(model_type, settings.get("architectures"), config_path)
    try:
        config = AutoConfig.from_pretrained(str(directory), local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, NotImplementedError,
            StrictDataclassError) as error:
        raise ModelLoadError(f"{config_path} is not a config transformers can read "
                             f"({first_line(error)})") from None
    tokenizer = HFTokenizer.from_directory(directory, config.vocab_size)
    if not any((directory / name).exists() for name in _WEIGHT_FILES):
        raise ModelLoadError(f"{directory} has no weights ({', '.join(_WEIGHT_FILES)})")
    try:
        hf_model = AutoModelForCausalLM.from_pretrained(
            str(directory), local_files_only=True, dtype=torch.float32, use_safetensors=None)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as error:
        raise ModelLoadError(f"the weights in {directory} cannot be loaded with its config "
                             f"({first_line(error)})") from None
    context = _context_length(config)
    settings = manifest.get("default_query") or {}
    task_type = text_task(task_name)
    task = task_type(tokenizer, context, example=settings.get("input", task_type.example_text),
                     default_query=(settings.get("site", "a0.0"),
                                    str(settings.get("position", task_type.position_names[-1]))))
    return Subject(ProbedModel(hf_model=hf_model.to(device).eval(), tokenizer=tokenizer,
                               source=str(directory), manifest=manifest, processing=processing),
                   task)


_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")


def _context_length(config: PretrainedConfig) -> int:
    for name in ("n_positions", "max_position_embeddings", "n_ctx", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return 2048


def check_architecture(model_type: str, architectures: Any, where: str | Path) -> None:
    """A ModelLoadError unless the toolkit can read this architecture (the bridge's list)."""
    if model_type == "gpt2":
        return
    from inversionview.probed.backend import supported_architectures

    supported = supported_architectures()
    names = [name for name in architectures or [] if isinstance(name, str)]
    if any(name in supported for name in names):
        return
    raise ModelLoadError(f"{where} describes a {echo(names[0] if names else model_type)} "
                         f"model, which TransformerBridge cannot read; supported: "
                         f"{', '.join(sorted(supported))}")


def _resolve_directory(model: str) -> Path | None:
    """The directory a MODEL argument names, or None for what can only be a hub name."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ModelLoadError(f"{path} is a file, not a model directory; expected a directory "
                             f"holding config.json and model.safetensors")
    artifact = find_artifact(model)  # a broken manifest is reported when it is read
    if artifact is not None and not (artifact / MANIFEST).exists():
        raise ModelLoadError(f"{echo(model)} is a bundled decoder, not a probed model; pass it "
                             f"with --decoder and give a probed model ({', '.join(bundled_model_names()) or 'none'})")
    if artifact is not None:
        return artifact
    if model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise ModelLoadError(f"model directory {model!r} does not exist")
    return None


def _load_from_hub_cache(name: str, task: str | None, device: str) -> Subject:
    """Load a pretrained model by hub name from the local HuggingFace cache, never the network."""
    try:
        config = GPT2Config.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError):
        raise ModelLoadError(
            f"{echo(name)} is neither a bundled artifact nor a directory, nor a model in the "
            f"local HuggingFace cache; give a bundled model ({', '.join(bundled_model_names()) or 'none'}) or a model "
            f"directory (config.json with model.safetensors or pytorch_model.bin)") from None
    where = f"the cached model {echo(name)}"
    if config.model_type != "gpt2":
        raise ModelLoadError(f"{where} is a {config.model_type!r} model; only GPT-2 is supported")
    the_task = _choose_task(config.vocab_size, config.n_positions, where, task)
    try:
        hf_model = GPT2LMHeadModel.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError, RuntimeError) as error:
        raise ModelLoadError(f"{where} cannot be loaded ({first_line(error)})") from None
    return Subject(ProbedModel(hf_model=hf_model.to(device).eval(), tokenizer=the_task.vocab,
                               source=name), the_task)


def _read_manifest(path: Path, task: str | None) -> dict[str, Any]:
    """inversionview.json: a JSON object whose ``task`` names a known task."""
    manifest = read_json_object(path, ModelLoadError, 'a JSON object naming the model\'s task, '
                                                      'e.g. {"kind": "probed-model", "task": "counting"}')
    known = ", ".join([*TASKS, *TEXT_TASKS])
    if manifest.get("kind", "probed-model") != "probed-model":
        raise ModelLoadError(f"{path} is not a probed-model manifest: kind is "
                             f"{echo(manifest['kind'])}; expected 'probed-model'")
    if "task" not in manifest and task is None:
        raise ModelLoadError(f"{path} has no task field; expected the task the model was trained "
                             f"on ({known}), or give it with --task")
    if "task" in manifest and not (isinstance(manifest["task"], str) and manifest["task"] in (*TASKS, *TEXT_TASKS)):
        raise ModelLoadError(f"{path}: task is {echo(manifest['task'])}; expected one of {known}")
    return manifest


def _read_config(path: Path) -> dict[str, Any]:
    """config.json: GPT-2 settings whose sizes are positive integers (the vocabulary and
    context filled in with GPT-2's defaults where absent)."""
    settings = read_json_object(path, ModelLoadError, "a JSON object of GPT-2 settings as "
                                                      "written by save_pretrained")
    if settings.get("model_type", "gpt2") != "gpt2":
        raise ModelLoadError(f"{path} describes a {echo(settings['model_type'])} model; expected "
                             f"a GPT-2 config (model_type 'gpt2')")
    for name in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "n_inner"):
        value = settings.get(name, 1)
        if not (positive_int(value) or (name == "n_inner" and value is None)):
            null = " or null" if name == "n_inner" else ""
            raise ModelLoadError(f"{path}: {name} is {echo(value)}; expected a positive integer{null}")
    activation = settings.get("activation_function", "gelu_new")
    if not (isinstance(activation, str) and activation in ACT2FN):
        raise ModelLoadError(f"{path}: activation_function is {echo(activation)}; expected a "
                             f"HuggingFace activation such as 'gelu_new'")
    return {"vocab_size": GPT2Config.vocab_size, "n_positions": GPT2Config.n_positions, **settings}


def _choose_task(vocab_size: int, n_positions: int, where: str | Path, task: str | None) -> Task:
    """``task`` checked against the model's sizes, or the one task they fit when none is named."""
    if task is not None:
        the_task = get_task(task)
        problem = _misfit(vocab_size, n_positions, the_task)
        if problem is not None:
            raise ModelLoadError(f"{where} {problem}")
        return the_task
    tasks = [get_task(name) for name in TASKS]
    fitting = [candidate for candidate in tasks if _misfit(vocab_size, n_positions, candidate) is None]
    if len(fitting) == 1:
        return fitting[0]
    if fitting:
        raise ModelLoadError(f"{where} fits several tasks ({', '.join(t.name for t in fitting)}) "
                             f"and names none; say which with --task")
    needs = ", ".join(f"{t.name} has {t.vocab.size} tokens and {t.n_ctx} positions" for t in tasks)
    raise ModelLoadError(f"{where} fits no task: it has a vocabulary of {vocab_size} tokens and a "
                         f"context of {n_positions} positions, where {needs}; is it a model of "
                         f"another task?")


def _misfit(vocab_size: int, n_positions: int, task: Task) -> str | None:
    if vocab_size != task.vocab.size:
        return (f"has a vocabulary of {vocab_size} tokens but the {task.name} task has "
                f"{task.vocab.size}; is it a model of another task?")
    if n_positions < task.n_ctx:
        return f"has a context of {n_positions} positions but the {task.name} task needs {task.n_ctx}"
    return None


def _build_model(settings: dict[str, Any], config_path: Path) -> GPT2LMHeadModel:
    try:
        config = GPT2Config(**settings)
    except (StrictDataclassError, TypeError, ValueError, KeyError) as error:
        raise ModelLoadError(f"{config_path} is not a valid GPT-2 config "
                             f"({first_line(error)})") from None
    if config.n_embd % config.n_head:
        raise ModelLoadError(f"{config_path}: n_embd {config.n_embd} is not divisible by n_head "
                             f"{config.n_head}; expected a width that the heads divide")
    try:
        return GPT2LMHeadModel(config)
    except (ValueError, TypeError, KeyError, RuntimeError) as error:
        raise ModelLoadError(f"{config_path} does not describe a GPT-2 model that can be built "
                             f"({first_line(error)})") from None


def _read_state_dict(directory: Path) -> tuple[dict[str, torch.Tensor], Path]:
    """(weights, the file they came from)."""
    path = directory / "model.safetensors"
    if path.exists():
        return read_safetensors(path, ModelLoadError, "the model's weights as written by "
                                                      "save_pretrained or train-probed"), path
    path = directory / "pytorch_model.bin"
    if path.exists():
        return _read_pickled_state_dict(path), path
    raise ModelLoadError(f"{directory} has neither model.safetensors nor pytorch_model.bin")


def _read_pickled_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        # Only the weights-only unpickler: it cannot execute code from the file.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        reason = "not a zip or weights-only pickle of tensors"
    except (EOFError, RuntimeError, OSError, ValueError) as error:
        reason = "it is empty" if path.stat().st_size == 0 else first_line(error)
    else:
        if isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values()):
            return state
        reason = "it holds no state dict of tensors"
    raise ModelLoadError(f"{path} is not a readable PyTorch checkpoint ({reason}); expected the "
                         f"state dict written by save_pretrained")


def _load_state(hf_model: GPT2LMHeadModel, state: dict[str, torch.Tensor], weights_path: Path,
                config_path: Path) -> None:
    problems = weights_mismatch(hf_model.state_dict(), state, _TIED_OR_BUFFERS)
    if problems is not None:
        raise ModelLoadError(f"{weights_path} does not match its config {config_path}: {problems}")
    try:
        hf_model.load_state_dict(state, strict=False)
    except RuntimeError as error:
        raise ModelLoadError(f"{weights_path} cannot be loaded with its config {config_path} "
                             f"({first_line(error)})") from None
    hf_model.tie_weights()


__all__ = ["ModelLoadError", "ProbedModel", "Subject", "TaskInputError", "build_probed",
           "load_probed"]
