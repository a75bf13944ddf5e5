"""The probed model: build, load (offline), save, and read activations.

A probed model is a HuggingFace ``GPT2LMHeadModel`` (the form the authors released and the
form we train and save) together with its task. Activations are read with TransformerLens'
default weight processing, either through ``TransformerBridge`` in compatibility mode
(``ProbedModel.bridge()``, the reference) or through ``ProcessedGPT2`` (the fast path the
rest of the toolkit uses; tests pin the two together).

A MODEL argument is one of:
- the name of a bundled artifact (``counting``, ``addition``; see ``inversionview models``);
- a directory written by this project (it holds ``inversionview.json`` naming its task);
- a HuggingFace GPT-2 directory (config.json + model.safetensors or pytorch_model.bin),
  with the task given separately (``--task``);
- a hub name such as ``gpt2``, loaded from the user's local HuggingFace cache only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers import GPT2Config, GPT2LMHeadModel

from inversionview.artifacts import artifact_names, find_artifact
from inversionview.errors import UserError
from inversionview.probed.processed import ProcessedGPT2
from inversionview.probed.sites import Site, SiteError, check_site
from inversionview.tasks import Task, TaskInputError, get_task

MANIFEST = "inversionview.json"
_TIED_OR_BUFFERS = ("lm_head.weight", ".attn.bias", ".attn.masked_bias")


class ModelLoadError(UserError, ValueError):
    """A MODEL argument that cannot be resolved or a checkpoint that does not fit its task."""


@dataclass
class ProbedModel:
    task: Task
    hf_model: GPT2LMHeadModel
    source: str = "<memory>"
    manifest: dict[str, Any] = field(default_factory=dict)
    _processed: ProcessedGPT2 | None = field(default=None, repr=False)

    # ----- shape ------------------------------------------------------------------------

    @property
    def config(self) -> GPT2Config:
        return self.hf_model.config

    @property
    def n_layers(self) -> int:
        return self.config.n_layer

    @property
    def n_heads(self) -> int:
        return self.config.n_head

    @property
    def d_model(self) -> int:
        return self.config.n_embd

    @property
    def device(self) -> torch.device:
        return next(self.hf_model.parameters()).device

    @property
    def sites(self) -> list[Site]:
        """The task's ordered site list (index = site id)."""
        return [self.site(name) for name in self.task.sites]

    def site(self, name: str | Site) -> Site:
        """Parse and check a site name against this model (any existing site is allowed)."""
        return check_site(name, self.n_layers, self.n_heads)

    # ----- activations ------------------------------------------------------------------

    @property
    def processed(self) -> ProcessedGPT2:
        """The processed-weight forward; rebuilt by ``refresh()`` after the weights change."""
        if self._processed is None:
            self._processed = ProcessedGPT2.from_hf_state_dict(
                self.hf_model.state_dict(), self.n_layers, self.n_heads,
                self.config.layer_norm_epsilon).to(self.device)
        return self._processed

    def refresh(self) -> None:
        self._processed = None

    def tokens(self, texts: str | list[str]) -> torch.Tensor:
        """``[batch, n_ctx]`` right-padded token ids of one or more texts, on the model's device."""
        texts = [texts] if isinstance(texts, str) else texts
        return self.task.encode_batch(texts).to(self.device)

    def activations(self, tokens: torch.Tensor, site: str | Site,
                    positions: torch.Tensor | int | None = None) -> torch.Tensor:
        """The activation of ``site`` for a batch ``[batch, pos]`` of token ids.

        positions: None gives ``[batch, pos, d_model]``; an int or a ``[batch]`` tensor of
        indices gives ``[batch, d_model]``, one position per input.
        """
        site = self.site(site)
        values = self.processed.run(tokens.to(self.device), [site])[site]
        if positions is None:
            return values
        if isinstance(positions, int):
            return values[:, positions]
        rows = torch.arange(values.shape[0], device=values.device)
        return values[rows, positions.to(values.device)]

    def run_sites(self, tokens: torch.Tensor, sites: list[str | Site]) -> dict[Site, torch.Tensor]:
        """Activations ``[batch, pos, d_model]`` of several sites in one (early-stopped) run."""
        return self.processed.run(tokens.to(self.device), [self.site(s) for s in sites])

    def attention_pattern(self, text: str, layer: int) -> torch.Tensor:
        """``[head, query_pos, key_pos]`` attention weights of every head of ``layer`` for one
        text (its real positions only, BOS included)."""
        if not 0 <= layer < self.n_layers:
            raise SiteError(f"layer {layer} does not exist; the model has layers 0..{self.n_layers - 1}")
        tokens = self.tokens(self.task.normalize(text))
        length = len(self.task.normalize(text))
        return self.processed.attention_pattern(tokens[:, :length], layer)[0]

    @torch.no_grad()
    def logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[batch, pos, vocab]`` logits of the unprocessed HuggingFace model."""
        self.hf_model.eval()
        return self.hf_forward(tokens.to(self.device))

    def hf_forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits of the HuggingFace model (in its current train/eval mode). Masking the PAD
        keys changes nothing for the right-padded real positions and tells HF they are pads."""
        mask = (tokens != self.task.vocab.pad_id).long()
        return self.hf_model(tokens, attention_mask=mask).logits

    def bridge(self, dtype: torch.dtype | None = None):
        """A TransformerLens ``TransformerBridge`` over a copy of this model, in compatibility
        mode (default weight processing) with per-head results enabled. Never touches the hub."""
        from transformer_lens.model_bridge import TransformerBridge

        with tempfile.TemporaryDirectory() as directory:
            # The bridge reads a config (and looks for a tokenizer) under this name; give it a
            # local directory so nothing is ever looked up remotely.
            self.config.save_pretrained(directory)
            copy = GPT2LMHeadModel(self.config)
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
        digest = hashlib.sha256()
        for name, tensor in sorted(self.hf_model.state_dict().items()):
            if name.endswith(_TIED_OR_BUFFERS):
                continue
            digest.update(name.encode())
            digest.update(str(tuple(tensor.shape)).encode())
            digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()

    def weights(self) -> dict[str, torch.Tensor]:
        """The model's own weights (no tied copies, no buffers), on the CPU."""
        return {k: v.detach().cpu().contiguous() for k, v in self.hf_model.state_dict().items()
                if not k.endswith(_TIED_OR_BUFFERS)}

    def save(self, directory: str | Path, manifest: dict[str, Any] | None = None) -> Path:
        """Write config.json, model.safetensors and inversionview.json, each atomically."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with atomic_path(directory / "model.safetensors") as tmp:
            save_file(self.weights(), str(tmp), metadata={"format": "pt"})
        write_json_atomic(directory / "config.json", self.config.to_dict())
        record = {"kind": "probed-model", "task": self.task.name, **(manifest or self.manifest)}
        record["weights_sha256"] = self.weights_hash()
        write_json_atomic(directory / MANIFEST, record)
        return directory


# ----- building and loading ------------------------------------------------------------


def build_probed(task: Task | str, seed: int = 0, **overrides: Any) -> ProbedModel:
    """A probed model with random weights (GPT-2 init), its config from the task's defaults
    updated with ``overrides`` (GPT2Config keyword arguments)."""
    task = get_task(task) if isinstance(task, str) else task
    config = GPT2Config(**{**task.probed_config(), **overrides})
    config.tie_word_embeddings = True
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(config)
    return ProbedModel(task=task, hf_model=model, source="<random init>",
                       manifest={"seed": seed})


def load_probed(model: str | Path, task: str | None = None, device: str = "cpu") -> ProbedModel:
    """Resolve a MODEL argument (see the module docstring) and load it, fully offline."""
    directory = _resolve_directory(str(model))
    if directory is None:
        return _load_from_hub_cache(str(model), task, device)
    manifest = _read_json(directory / MANIFEST) if (directory / MANIFEST).exists() else {}
    task_name = task or manifest.get("task")
    if task_name is None:
        raise ModelLoadError(
            f"{directory} is a HuggingFace directory without {MANIFEST}; say which task it "
            f"was trained on with --task (counting or addition)")
    if manifest.get("task") and task and task != manifest["task"]:
        raise ModelLoadError(f"{directory} was trained on {manifest['task']!r}, not {task!r}")
    the_task = get_task(task_name)
    if not (directory / "config.json").exists():
        raise ModelLoadError(f"{directory} has no config.json; it is not a model directory")
    config = GPT2Config.from_json_file(str(directory / "config.json"))
    _check_fits_task(config, the_task, directory)
    hf_model = GPT2LMHeadModel(config)
    state = _read_state_dict(directory)
    _load_state(hf_model, state, directory)
    hf_model.to(device).eval()
    return ProbedModel(task=the_task, hf_model=hf_model, source=str(directory), manifest=manifest)


def _resolve_directory(model: str) -> Path | None:
    """The directory a MODEL argument names, or None for what can only be a hub name."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    artifact = find_artifact(model)
    if artifact is not None:
        return artifact
    looks_like_path = model.startswith((".", "/", "~")) or model.count("/") > 1 or path.exists()
    if looks_like_path:
        raise ModelLoadError(f"model directory {model!r} does not exist")
    return None


def _load_from_hub_cache(name: str, task: str | None, device: str) -> ProbedModel:
    """Load a pretrained model by hub name from the local HuggingFace cache, never the network."""
    if task is None:
        raise ModelLoadError(
            f"{name!r} is neither a bundled artifact ({', '.join(artifact_names()) or 'none'}) "
            f"nor a directory; to load a pretrained model from the local HuggingFace cache "
            f"give --task as well")
    try:
        hf_model = GPT2LMHeadModel.from_pretrained(name, local_files_only=True)
    except OSError as error:
        raise ModelLoadError(
            f"{name!r} is not a bundled artifact, not a directory, and not in the local "
            f"HuggingFace cache (nothing is downloaded): {error}") from None
    the_task = get_task(task)
    _check_fits_task(hf_model.config, the_task, Path(name))
    return ProbedModel(task=the_task, hf_model=hf_model.to(device).eval(), source=name)


def _check_fits_task(config: GPT2Config, task: Task, where: Path) -> None:
    if config.model_type != "gpt2":
        raise ModelLoadError(f"{where} holds a {config.model_type!r} model; only GPT-2 is supported")
    if config.vocab_size != task.vocab.size:
        raise ModelLoadError(
            f"{where} has a vocabulary of {config.vocab_size} tokens but the {task.name} task "
            f"has {task.vocab.size}; is it a model of another task?")
    if config.n_positions < task.n_ctx:
        raise ModelLoadError(
            f"{where} has a context of {config.n_positions} positions but the {task.name} "
            f"task needs {task.n_ctx}")


def _read_state_dict(directory: Path) -> dict[str, torch.Tensor]:
    if (directory / "model.safetensors").exists():
        return load_file(str(directory / "model.safetensors"))
    if (directory / "pytorch_model.bin").exists():
        # Only the weights-only unpickler: it cannot execute code from the file.
        return torch.load(directory / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise ModelLoadError(f"{directory} has neither model.safetensors nor pytorch_model.bin")


def _load_state(hf_model: GPT2LMHeadModel, state: dict[str, torch.Tensor], where: Path) -> None:
    expected = hf_model.state_dict()
    problems = []
    for name, tensor in state.items():
        if name not in expected:
            if not name.endswith(_TIED_OR_BUFFERS):
                problems.append(f"unexpected weight {name}")
        elif tuple(tensor.shape) != tuple(expected[name].shape):
            problems.append(f"{name} has shape {tuple(tensor.shape)}, the config says "
                            f"{tuple(expected[name].shape)}")
    missing = [n for n in expected if n not in state and not n.endswith(_TIED_OR_BUFFERS)]
    problems += [f"missing weight {name}" for name in missing]
    if problems:
        raise ModelLoadError(f"the checkpoint in {where} does not match its config: "
                             + "; ".join(problems[:5]))
    hf_model.load_state_dict(state, strict=False)
    hf_model.tie_weights()


# ----- small file helpers ----------------------------------------------------------------


@contextlib.contextmanager
def atomic_path(path: Path):
    """Yield a temporary path beside ``path``; move it into place only if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json_atomic(path: Path, record: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(record, indent=2, sort_keys=False) + "\n")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ModelLoadError(f"{path} is not valid JSON: {error}") from None


__all__ = ["ModelLoadError", "ProbedModel", "TaskInputError", "build_probed", "load_probed"]
