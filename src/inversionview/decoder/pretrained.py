"""Start a decoder's transformer from a pretrained language model (``--init-from DIR``).

The paper's factual-recall decoder started from GPT-2 medium (method.md §6): a decoder over a
language model's vocabulary learns its inputs far sooner from a model that already knows the
language (on the bundled KJV model, 2,048 examples: held-out loss 3.40 nats/token started
from its weights, 7.51 fresh; docs/language-models.md). DIR is a local HuggingFace GPT-2
directory (config.json + model.safetensors, read offline, never pickle) whose vocabulary is
the probed model's: as many ids and, where DIR holds a tokenizer, the same tokenizer
(``HFTokenizer.fingerprint``).

Taken from it:

- the shape: d_model = n_embd, n_layers = n_layer, n_heads = n_head, d_mlp = n_inner (4 x
  n_embd when null). The decoder's n_ctx stays the task's (BOS + a corpus piece + EOS) and
  must fit in the LM's n_positions;
- the weights: the token embedding (the LM's ids; the decoder-only EOS/PAD rows beyond them
  stay freshly initialised), the first n_ctx position embeddings, every block (both
  LayerNorms, attention's query and key/value projections split from ``c_attn``, its output
  projection, the MLP) and the final LayerNorm. The output head is tied to the token
  embedding in both models, so it follows.

Fresh: the conditioning stack (site embedding, residual MLP blocks, each layer's projection
to the extra key/value slot, and with ``slot+add`` the projections into the stream). Until it
learns, the slot is one more key each token may attend to.

The run records the path as given and the sha256 of model.safetensors
(``DecoderTrainingConfig.init_from``, ``init_from_sha256``) so that the start can be redone.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from inversionview.decoder.model import Decoder
from inversionview.errors import UserError, echo
from inversionview.files import positive_int, read_json_object, read_safetensors, sha256_file
from inversionview.probed.subject import Subject
from inversionview.text.tokenizer import TOKENIZER_FILES, HFTokenizer

WEIGHTS = "model.safetensors"
_EXPECTED = "a HuggingFace GPT-2 directory (config.json + model.safetensors)"

#: GPT2Config's defaults for the settings read here (a config.json may leave them out).
_GPT2_DEFAULTS = {"n_embd": 768, "n_layer": 12, "n_head": 12, "n_inner": None,
                  "n_positions": 1024, "vocab_size": 50257, "activation_function": "gelu_new",
                  "layer_norm_epsilon": 1e-5, "scale_attn_weights": True,
                  "scale_attn_by_inverse_layer_idx": False}
#: GPT2Config settings that change what a block computes -> the value the decoder computes.
_DECODER_COMPUTES = {"activation_function": ("gelu_new", "gelu_pytorch_tanh"),
                     "layer_norm_epsilon": (1e-5,), "scale_attn_weights": (True,),
                     "scale_attn_by_inverse_layer_idx": (False,)}


class PretrainedInitError(UserError, ValueError):
    """An --init-from directory that is missing, not a GPT-2, or does not fit the decoder."""


@dataclass
class PretrainedLM:
    """A local GPT-2 directory: its settings (config.json) and, read when needed, weights."""

    directory: Path
    settings: dict[str, Any]

    @property
    def weights_path(self) -> Path:
        return self.directory / WEIGHTS

    @cached_property
    def weights_sha256(self) -> str:
        """sha256 of model.safetensors (what ``sha256sum`` prints)."""
        return sha256_file(self.weights_path)

    def state(self) -> dict[str, torch.Tensor]:
        """The weights under GPT2Model's names (``transformer.`` dropped where present)."""
        state = read_safetensors(self.weights_path, PretrainedInitError,
                                 f"the weights of {_EXPECTED}")
        return {name.removeprefix("transformer."): tensor for name, tensor in state.items()}


def read_pretrained(directory: str | Path) -> PretrainedLM:
    """``directory`` checked as a GPT-2 the decoder can start from (config only: the weights
    are read by ``initialise_from``); a PretrainedInitError in one line otherwise."""
    directory = Path(directory)
    where = f"--init-from {echo(str(directory))}"
    if not directory.is_dir():
        state = "is a file, not a directory" if directory.exists() else "does not exist"
        raise PretrainedInitError(f"{where} {state}; expected {_EXPECTED}")
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise PretrainedInitError(f"{where} has no config.json; expected {_EXPECTED}")
    settings = read_json_object(config_path, PretrainedInitError, "the settings of a GPT-2 "
                                                                  "as written by save_pretrained")
    if settings.get("model_type") != "gpt2":
        raise PretrainedInitError(f"{config_path} describes a {echo(settings.get('model_type'))} "
                                  f"model; --init-from takes a GPT-2 (model_type 'gpt2'), whose "
                                  f"blocks are the decoder's")
    if not (directory / WEIGHTS).is_file():
        raise PretrainedInitError(f"{where} has no {WEIGHTS} (pickled pytorch_model.bin is not "
                                  f"read); save the model with save_pretrained(directory)")
    settings = {**_GPT2_DEFAULTS, **settings}
    _check_settings(settings, config_path)
    return PretrainedLM(directory, settings)


def _check_settings(settings: dict[str, Any], config_path: Path) -> None:
    """Sizes are positive integers, the heads divide the width, and every block computes what
    the decoder's does (GELU tanh, LayerNorm eps 1e-5, attention scaled by 1/sqrt(d_head))."""
    for name in ("n_embd", "n_layer", "n_head", "n_positions", "vocab_size"):
        if not positive_int(settings[name]):
            raise PretrainedInitError(f"{config_path}: {name} is {echo(settings[name])}; "
                                      f"expected a positive integer")
    if settings["n_inner"] is not None and not positive_int(settings["n_inner"]):
        raise PretrainedInitError(f"{config_path}: n_inner is {echo(settings['n_inner'])}; "
                                  f"expected a positive integer or null")
    if settings["n_embd"] % settings["n_head"]:
        raise PretrainedInitError(f"{config_path}: n_embd {settings['n_embd']} is not divisible "
                                  f"by n_head {settings['n_head']}")
    for name, computed in _DECODER_COMPUTES.items():
        if settings[name] not in computed:
            raise PretrainedInitError(f"{config_path}: {name} is {echo(settings[name])} but the "
                                      f"decoder's blocks compute {computed[0]!r}; its weights "
                                      f"cannot be mapped onto them")


def check_vocabulary(lm: PretrainedLM, vocab: Any) -> None:
    """The LM must have the probed model's ids: as many (``vocab.model_size``; a toy task's
    whole vocabulary) and, where its directory holds a tokenizer, the same tokenizer."""
    model_size = vocab.model_size
    where = f"--init-from {echo(str(lm.directory))}"
    if lm.settings["vocab_size"] != model_size:
        raise PretrainedInitError(f"{where} has a vocabulary of {lm.settings['vocab_size']:,} ids "
                                  f"but the probed model has {model_size:,}; the decoder must "
                                  f"start from an LM with the probed model's tokenizer")
    if not any((lm.directory / name).exists() for name in TOKENIZER_FILES):
        return
    theirs = HFTokenizer.from_directory(lm.directory, model_size).fingerprint()
    ours = vocab.fingerprint() or "a character vocabulary"
    if theirs != ours:
        raise PretrainedInitError(f"{where} has another tokenizer than the probed model "
                                  f"(sha256 {theirs[:12]} vs {ours[:12]}); the decoder must start "
                                  f"from an LM with the probed model's tokenizer")


def decoder_shape(lm: PretrainedLM, n_ctx: int) -> dict[str, int]:
    """DecoderConfig settings that give the decoder the LM's transformer shape."""
    settings = lm.settings
    if settings["n_positions"] < n_ctx:
        raise PretrainedInitError(f"--init-from {echo(str(lm.directory))} has "
                                  f"{settings['n_positions']} positions but the decoder needs "
                                  f"{n_ctx} (BOS, the longest piece, EOS); lower --max-tokens")
    return {"d_model": settings["n_embd"], "n_layers": settings["n_layer"],
            "n_heads": settings["n_head"], "d_mlp": settings["n_inner"] or 4 * settings["n_embd"]}


def start_from(directory: str | Path, model: Subject, overrides: dict[str, Any],
               expected_sha256: str | None = None) -> tuple[PretrainedLM, dict[str, int]]:
    """(the LM in ``directory``, the DecoderConfig settings of its shape) for a decoder of
    ``model``; a PretrainedInitError if it does not fit the model, if a decoder setting in
    ``overrides`` contradicts its shape, or if its weights are not ``expected_sha256``."""
    lm = read_pretrained(directory)
    check_vocabulary(lm, model.task.vocab)
    shape = decoder_shape(lm, model.task.n_ctx)
    for name, value in shape.items():
        if overrides.get(name, value) != value:
            raise PretrainedInitError(f"decoder setting {name} {overrides[name]} contradicts the "
                                      f"{value} of --init-from {echo(str(directory))}")
    if expected_sha256 not in (None, lm.weights_sha256):
        raise PretrainedInitError(f"the weights in --init-from {echo(str(directory))} (sha256 "
                                  f"{lm.weights_sha256[:12]}) are not the ones asked for "
                                  f"({expected_sha256[:12]})")
    return lm, shape


def decoder_names(lm_state: dict[str, torch.Tensor], n_layers: int) -> dict[str, torch.Tensor]:
    """The LM's weights under the decoder's names. GPT-2's Conv1D weights are ``[in, out]``:
    transposed to a Linear's ``[out, in]``; ``c_attn`` is split into the query and the
    key/value projections (its columns are q, k, v). A KeyError names a missing weight."""
    def weight(name: str) -> torch.Tensor:
        return lm_state[name]

    state = {"token_embedding.weight": weight("wte.weight"),
             "position_embedding.weight": weight("wpe.weight"),
             "norm.weight": weight("ln_f.weight"), "norm.bias": weight("ln_f.bias")}
    for layer in range(n_layers):
        lm, ours = f"h.{layer}.", f"blocks.{layer}."
        attn_weight, attn_bias = weight(lm + "attn.c_attn.weight"), weight(lm + "attn.c_attn.bias")
        width = attn_weight.shape[0]
        state.update({
            ours + "norm1.weight": weight(lm + "ln_1.weight"),
            ours + "norm1.bias": weight(lm + "ln_1.bias"),
            ours + "attention.query.weight": attn_weight[:, :width].T,
            ours + "attention.query.bias": attn_bias[:width],
            ours + "attention.key_value.weight": attn_weight[:, width:].T,
            ours + "attention.key_value.bias": attn_bias[width:],
            ours + "attention.out.weight": weight(lm + "attn.c_proj.weight").T,
            ours + "attention.out.bias": weight(lm + "attn.c_proj.bias"),
            ours + "norm2.weight": weight(lm + "ln_2.weight"),
            ours + "norm2.bias": weight(lm + "ln_2.bias"),
            ours + "mlp.0.weight": weight(lm + "mlp.c_fc.weight").T,
            ours + "mlp.0.bias": weight(lm + "mlp.c_fc.bias"),
            ours + "mlp.2.weight": weight(lm + "mlp.c_proj.weight").T,
            ours + "mlp.2.bias": weight(lm + "mlp.c_proj.bias")})
    return state


@torch.no_grad()
def initialise_from(decoder: Decoder, lm: PretrainedLM) -> list[str]:
    """Copy the LM's weights into ``decoder`` (built with ``decoder_shape``); returns the
    decoder's weights that were set. Shapes are all checked before anything is copied."""
    lm_state = lm.state()
    _check_tied(lm_state, lm)
    try:
        state = decoder_names(lm_state, decoder.config.n_layers)
    except KeyError as missing:
        raise PretrainedInitError(f"{lm.weights_path} has no weight {missing.args[0]}; expected the "
                                  f"weights its config.json describes") from None
    own = decoder.state_dict()
    pairs = [_pair(name, own[name], source, lm) for name, source in state.items()]
    for target, source in pairs:
        target.copy_(source)
    return list(state)


def _check_tied(lm_state: dict[str, torch.Tensor], lm: PretrainedLM) -> None:
    """The decoder's output head is its token embedding: an LM with a head of its own would
    lose one of the two."""
    head, embedding = lm_state.get("lm_head.weight"), lm_state.get("wte.weight")
    if head is not None and embedding is not None and not torch.equal(head, embedding):
        raise PretrainedInitError(f"{lm.weights_path} has an output head apart from its token "
                                  f"embedding; the decoder's head is tied to its embedding, so "
                                  f"it can start only from an LM whose head is too")


def _pair(name: str, parameter: torch.Tensor, source: torch.Tensor, lm: PretrainedLM
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """(the part of the decoder's ``parameter`` to fill, the LM's weight for it): the LM's
    ids of the token embedding, the first n_ctx of its positions, else the whole weight; a
    PretrainedInitError where the shapes differ."""
    target = parameter
    if name == "token_embedding.weight":
        target = parameter[:source.shape[0]]
    elif name == "position_embedding.weight":
        source = source[:parameter.shape[0]]
    if source.shape != target.shape:
        raise PretrainedInitError(f"{lm.weights_path}: the weight for the decoder's {name} has "
                                  f"shape {tuple(source.shape)}, the decoder {tuple(target.shape)}; "
                                  f"its weights do not match its config.json")
    return target, source
