"""Model backends: how the activations of a probed causal LM are read.

Every backend answers the same five questions about a batch of token ids ``[batch, pos]``
(see ``Backend``, defined with the helpers both backends share in probed/protocol.py): the
activations of some sites (``run``), the logits with some sites replaced (``run_patched``),
one layer's attention weights (``attention_pattern``), the logits (``logits``) and the direct
effect of one summand of the final residual stream on the logits (``direct_logits``, for
DLA). Two implementations:

- ``ProcessedGPT2`` (probed/processed.py): GPT-2 only, a hand-written forward on
  TransformerLens-processed weights; fast, and pinned to the bridge by the tests.
- ``BridgeBackend``: any architecture that TransformerLens' ``TransformerBridge`` supports
  (GPT-2, GPT-NeoX/Pythia, Llama, Mistral, Qwen, Gemma, ...; ``supported_architectures()``),
  read through the bridge's hooks.

``make_backend(hf_model, processed)`` picks the fast path where it applies.

Processed and raw. ``processed=True`` is what the paper reads: TransformerLens' default
weight processing (``enable_compatibility_mode()``: fold each norm's scale (and shift) into
the weights that read from it, centre the weights that write to the residual stream (for
LayerNorm models), centre the unembedding, fold value biases into the output bias). The
residual stream is then the HF one minus its mean (LayerNorm models; RMSNorm models keep it),
and the logits differ from HF's by a constant per position (equal log-probabilities).
``processed=False`` ("raw") reads the HuggingFace weights as they are: the bridge's default
mode, without compatibility mode. Its residual stream is HF's ``hidden_states`` (up to float
rounding) and its logits are HF's logits. In both modes the attention output is computed as
the sum of the per-head results plus the output bias (``set_use_attn_result(True)``), which
equals HF's single output projection up to float rounding.

Inputs are right-padded: no attention mask is applied, so causal attention keeps every real
position exact and the padded positions' activations are meaningless. Decoder-only tasks may
put ids outside the model's vocabulary (their EOS/PAD) in padded positions; every backend
replaces any id outside ``[0, vocab_size)`` with 0 before the forward (``valid_tokens``), so
such ids only change padded positions.

Sites (probed/sites.py) map to the bridge's TransformerLens hook names, the same for every
architecture the bridge supports: ``blocks.L.hook_resid_pre``, ``blocks.L.attn.hook_result``
(one head's slice), ``blocks.L.hook_attn_out``, ``blocks.L.hook_resid_mid``,
``blocks.L.hook_mlp_out``, ``blocks.L.hook_resid_post``. Two cases need care:

- ``resid_mid`` in a parallel-residual block (GPT-NeoX/Pythia, GPT-J, Phi, ...): attention
  and MLP both read ``resid_pre`` and the block writes ``resid_pre + attn_out + mlp_out``, so
  there is no hook between them (HookedTransformer has none). Here ``resid_mid`` is defined
  as ``resid_pre + attn_out``, a sum the MLP does not read; patching it changes only what the
  block passes on (``resid_post = patched + mlp_out``).
- patching ``resid_mid`` in a sequential block: the bridge's ``hook_resid_mid`` is the input
  of the second norm, so replacing it changes only what the MLP reads, not the residual that
  the MLP's output is added to. ``run_patched`` therefore also rewrites ``resid_post`` as
  ``patched + mlp_out``, which makes a residual site replace the stream itself, as in
  ``ProcessedGPT2.run_patched``.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable, Sequence

import torch
from torch import nn

from inversionview.errors import UserError
from inversionview.probed.protocol import (Backend, Patches, check_sites, norm_direct_logits,
                                           valid_tokens)
from inversionview.probed.sites import Site


class BackendError(UserError, ValueError):
    """A model that no backend can read (an architecture TransformerBridge does not support)."""


# ----- which architectures ---------------------------------------------------------------


def supported_architectures() -> list[str]:
    """The causal-LM classes (``config.architectures`` names) TransformerBridge supports."""
    from transformer_lens.factories.architecture_adapter_factory import SUPPORTED_ARCHITECTURES

    return sorted(name for name in SUPPORTED_ARCHITECTURES
                  if name.endswith(("ForCausalLM", "LMHeadModel")))


def architecture_of(hf_model: nn.Module) -> str:
    """The model's class name, checked against the bridge's supported architectures."""
    from transformer_lens.factories.architecture_adapter_factory import SUPPORTED_ARCHITECTURES

    name = type(hf_model).__name__
    if name not in SUPPORTED_ARCHITECTURES:
        raise BackendError(f"architecture {name} is not supported by TransformerLens' "
                           f"TransformerBridge; supported causal LMs: "
                           f"{', '.join(supported_architectures())}")
    return name


def make_backend(hf_model: nn.Module, processed: bool = True) -> Backend:
    """The fast ``ProcessedGPT2`` for a processed GPT-2 it can compute exactly, otherwise a
    ``BridgeBackend`` (``processed=False``: raw HuggingFace activations)."""
    from transformers import GPT2LMHeadModel

    from inversionview.probed.processed import ProcessedGPT2

    config = hf_model.config
    if processed and isinstance(hf_model, GPT2LMHeadModel) and _fast_gpt2_fits(config):
        device = next(hf_model.parameters()).device
        return ProcessedGPT2.from_hf_state_dict(
            hf_model.state_dict(), config.n_layer, config.n_head,
            config.layer_norm_epsilon).to(device)
    return BridgeBackend(hf_model, processed=processed)


def _fast_gpt2_fits(config) -> bool:
    """Whether ``ProcessedGPT2`` computes this GPT-2 (tanh GELU, 1/sqrt(d_head) scores)."""
    return (config.activation_function in ("gelu_new", "gelu_pytorch_tanh")
            and config.scale_attn_weights
            and not config.scale_attn_by_inverse_layer_idx
            and not getattr(config, "add_cross_attention", False))


# ----- the bridge ------------------------------------------------------------------------


def _placeholder_tokenizer():
    """A one-token tokenizer for the bridge: backends take token ids, never text, and the
    bridge would otherwise load (and, for some tokenizers, re-load by name) a real one."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>")


def boot_bridge(hf_model: nn.Module, processed: bool = True, dtype: torch.dtype | None = None):
    """A ``TransformerBridge`` over a copy of ``hf_model`` (the bridge rewires and, processed,
    rewrites the model it wraps), with per-head results enabled. Never touches the hub."""
    from transformer_lens.model_bridge import TransformerBridge

    name = architecture_of(hf_model)
    model = copy.deepcopy(hf_model).eval()  # eval: no dropout
    model.config.architectures = [name]  # the adapter of the class really wrapped
    device = next(model.parameters()).device
    dtype = dtype or next(model.parameters()).dtype
    with tempfile.TemporaryDirectory() as directory:
        # The bridge reads a config under this name; a local directory means nothing is ever
        # looked up remotely (the placeholder tokenizer spares it looking for one).
        model.config.save_pretrained(directory)
        bridge = TransformerBridge.boot_transformers(
            directory, hf_model=model.to(dtype), device=str(device), dtype=dtype,
            tokenizer=_placeholder_tokenizer())
    if processed:
        bridge.enable_compatibility_mode(disable_warnings=True)
    bridge.set_use_attn_result(True)
    return bridge


class BridgeBackend:
    """Activations of any TransformerBridge-supported causal LM, read through its hooks."""

    def __init__(self, hf_model: nn.Module, processed: bool = True,
                 dtype: torch.dtype | None = None):
        self.processed = processed
        self.bridge = boot_bridge(hf_model, processed, dtype)
        cfg = self.bridge.cfg
        self.n_layers, self.n_heads, self.d_model = cfg.n_layers, cfg.n_heads, cfg.d_model
        self.n_ctx, self.vocab_size = cfg.n_ctx, cfg.d_vocab
        self.device = torch.device(cfg.device)
        self._check_hooks()
        # A parallel block (attn and MLP both read resid_pre) has no hook between them.
        self.parallel = "blocks.0.hook_resid_mid" not in self.bridge.hook_dict
        self._read_output_weights()

    @torch.no_grad()
    def _check_hooks(self) -> None:
        """Every hook a site or a pattern reads exists and fires (on a two-token input)."""
        wanted = [f"blocks.{self.n_layers - 1}.{name}" for name in (
            "hook_resid_pre", "attn.hook_result", "attn.hook_pattern", "hook_attn_out",
            "hook_mlp_out", "hook_resid_post")]
        missing = [name for name in wanted if name not in self.bridge.hook_dict]
        if not missing:
            fired = self._capture(torch.zeros((1, 2), dtype=torch.long), wanted, self.n_layers)
            missing = [name for name in wanted if name not in fired]
        if missing:
            raise BackendError(f"TransformerBridge's {type(self.bridge.adapter).__name__} has no "
                               f"hook {', '.join(missing)} that fires; this architecture cannot "
                               f"be read site by site")

    @torch.no_grad()
    def _read_output_weights(self) -> None:
        """b_O per layer, and the unembedding with the final norm's weight and shift folded
        in (processed, the norm already has weight 1 and shift 0), for ``direct_logits``."""
        blocks = self.bridge.blocks
        biases = [getattr(block.attn.o.original_component, "bias", None) for block in blocks]
        zeros = torch.zeros(self.d_model, dtype=self.bridge.W_U.dtype, device=self.bridge.W_U.device)
        self.b_O = torch.stack([zeros if b is None else b.detach() for b in biases])
        norm = self.bridge.ln_final
        module = norm.original_component
        weight = module.weight.detach()
        if getattr(norm, "uses_weight_offset", False):
            weight = 1 + weight  # Gemma-style RMSNorm stores the scale as an offset from 1
        shift = getattr(module, "bias", None)
        W_U = self.bridge.W_U.detach()
        b_U = getattr(self.bridge.unembed.original_component, "bias", None)
        b_U = torch.zeros(W_U.shape[1], dtype=W_U.dtype, device=W_U.device) if b_U is None else b_U.detach()
        self.rms_norm = bool(norm.uses_rms_norm)
        self.eps = float(getattr(module, "eps", None) or getattr(module, "variance_epsilon", None)
                         or self.bridge.cfg.eps)
        self.W_U = weight[:, None] * W_U
        self.b_U = b_U + (0 if shift is None or self.rms_norm else shift.detach() @ W_U)

    # ----- hooks -----------------------------------------------------------------------

    def _tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        return valid_tokens(tokens.to(self.device), self.vocab_size)

    def _check_sites(self, sites: Sequence[Site]) -> None:
        check_sites(sites, self.n_layers, self.n_heads)

    @staticmethod
    def _blocks_needed(site: Site) -> int:
        """How many blocks run before ``site`` is known (``resid_pre``: its block's input)."""
        return site.layer if site.kind == "resid_pre" else site.layer + 1

    def _stopping_hook(self, blocks: int) -> list[tuple[str, Callable]]:
        """A hook that ends the forward at the input of block ``blocks`` (after the other
        hooks there have fired), or of the final norm when every block is needed, so that
        only blocks ``0..blocks-1`` run; the bridge's forward returns when it catches
        StopAtLayerException, as it does for its own ``stop_at_layer``."""
        from transformer_lens.model_bridge.exceptions import StopAtLayerException

        name = f"blocks.{blocks}.hook_in" if blocks < self.n_layers else "ln_final.hook_in"
        if name not in self.bridge.hook_dict:
            return []

        def stop(activation: torch.Tensor, hook) -> None:
            raise StopAtLayerException(activation)
        return [(name, stop)]

    def _hooks_of(self, site: Site) -> list[str]:
        if site.kind == "resid_mid" and self.parallel:
            return [Site(site.layer, "resid_pre").hook, Site(site.layer, "attn_out").hook]
        return [site.tl_hook]

    # ----- public API ------------------------------------------------------------------

    def _capture(self, tokens: torch.Tensor, names: Sequence[str], blocks: int
                 ) -> dict[str, torch.Tensor]:
        """The activations at the hooks ``names`` of a forward that runs blocks
        ``0..blocks-1`` only; hooks are added to those names and nowhere else."""
        cache: dict[str, torch.Tensor] = {}

        def keeping(name: str) -> tuple[str, Callable]:
            return name, lambda activation, hook: cache.__setitem__(name, activation)

        hooks = [keeping(name) for name in names] + self._stopping_hook(blocks)
        # HF asked for the attention weights, as the bridge's run_with_cache does
        options = {"output_attentions": True} if self.bridge.adapter.supports_hf_output_attentions else {}
        self.bridge.run_with_hooks(self._tokens(tokens), fwd_hooks=hooks, return_type=None,
                                   **options)
        return cache

    @torch.no_grad()
    def run(self, tokens: torch.Tensor, sites: Sequence[Site]) -> dict[Site, torch.Tensor]:
        """Activations ``[batch, pos, d_model]`` of each site: hooks on the sites' hook names
        only, and a forward that ends after the last block a site needs (``resid_pre`` of
        block L: after block L-1)."""
        if not sites:
            return {}
        self._check_sites(sites)
        names = sorted({name for site in sites for name in self._hooks_of(site)})
        cache = self._capture(tokens, names, max(self._blocks_needed(site) for site in sites))
        found = {}
        for site in sites:
            if site.kind == "head":
                found[site] = cache[site.tl_hook][:, :, site.head]
            elif site.kind == "resid_mid" and self.parallel:
                pre, attention_out = (cache[name] for name in self._hooks_of(site))
                found[site] = pre + attention_out
            else:
                found[site] = cache[site.tl_hook]
        return found

    @torch.no_grad()
    def run_patched(self, tokens: torch.Tensor, patches: Patches) -> torch.Tensor:
        """``[batch, pos, vocab]`` logits with activations replaced, as
        ``ProcessedGPT2.run_patched``: ``patches`` maps a site to (``where`` ``[batch, pos]``
        bool, ``values`` ``[batch, pos, d_model]``); a head's result feeds the attention
        output (the bridge sums the hooked per-head results), a residual site replaces the
        stream itself (see the module docstring for ``resid_mid``)."""
        self._check_sites(list(patches))
        hooks: list[tuple[str, Callable]] = []
        for layer in range(self.n_layers):
            hooks += self._layer_patch_hooks(layer, patches)
        return self.bridge.run_with_hooks(self._tokens(tokens),
                                          fwd_hooks=hooks, return_type="logits")

    def _layer_patch_hooks(self, layer: int, patches: Patches) -> list[tuple[str, Callable]]:
        """Forward hooks that apply ``patches`` to block ``layer`` (in firing order)."""
        def replace(site: Site, activation: torch.Tensor) -> torch.Tensor:
            where, values = patches[site]
            return torch.where(where[..., None].to(activation.device),
                               values.to(activation), activation)

        def replacing(site: Site) -> tuple[str, Callable]:
            return site.hook, lambda activation, hook: replace(site, activation)

        heads = [Site(layer, "head", h) for h in range(self.n_heads) if Site(layer, "head", h) in patches]
        mid, post, mlp = Site(layer, "resid_mid"), Site(layer, "resid_post"), Site(layer, "mlp_out")
        hooks = [replacing(Site(layer, "resid_pre"))] if Site(layer, "resid_pre") in patches else []
        if heads:
            def patch_heads(result: torch.Tensor, hook) -> torch.Tensor:  # [b, p, h, d]
                result = result.clone()
                for site in heads:
                    result[:, :, site.head] = replace(site, result[:, :, site.head])
                return result
            hooks.append((heads[0].tl_hook, patch_heads))
        if Site(layer, "attn_out") in patches:
            hooks.append(replacing(Site(layer, "attn_out")))
        if mid not in patches:
            hooks += [replacing(site) for site in (mlp, post) if site in patches]
            return hooks
        # resid_mid: the MLP reads the patched stream (sequential blocks), and the block
        # passes on patched + mlp_out (the residual HF adds the MLP's output to is unhooked).
        seen: dict[str, torch.Tensor] = {}

        def keep_mlp_out(activation: torch.Tensor, hook) -> torch.Tensor:
            seen["mlp_out"] = replace(mlp, activation) if mlp in patches else activation
            return seen["mlp_out"]

        def rewrite_post(activation: torch.Tensor, hook) -> torch.Tensor:
            where, values = patches[mid]
            activation = torch.where(where[..., None].to(activation.device),
                                     values.to(activation) + seen["mlp_out"], activation)
            return replace(post, activation) if post in patches else activation

        if not self.parallel:
            hooks.append(replacing(mid))
        return hooks + [(mlp.hook, keep_mlp_out), (post.hook, rewrite_post)]

    @torch.no_grad()
    def attention_pattern(self, tokens: torch.Tensor, layer: int) -> torch.Tensor:
        """``[batch, head, query_pos, key_pos]`` attention weights of every (query) head of
        ``layer`` (``blocks.L.attn.hook_pattern``); zero above the diagonal."""
        if not 0 <= layer < self.n_layers:
            raise ValueError(f"layer {layer} does not exist in a {self.n_layers}-layer model")
        name = f"blocks.{layer}.attn.hook_pattern"
        return self._capture(tokens, [name], layer + 1)[name]

    @torch.no_grad()
    def logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[batch, pos, vocab]`` logits (processed: centred, the same log-softmax as HF's)."""
        return self.bridge(self._tokens(tokens), return_type="logits")

    def direct_logits(self, piece: torch.Tensor, final_resid: torch.Tensor) -> torch.Tensor:
        """``[n, vocab]``: ``piece`` divided by the final norm's scale of ``final_resid``
        (LayerNorm: centred first), through the final norm's weight and the unembedding."""
        return norm_direct_logits(piece, final_resid, self.W_U, self.eps, self.rms_norm)


# Backend, Patches, norm_direct_logits and valid_tokens live in probed/protocol.py (shared with
# processed.py without an import cycle) and are re-exported here.
__all__ = ["Backend", "BackendError", "BridgeBackend", "Patches", "architecture_of",
           "boot_bridge", "make_backend", "norm_direct_logits", "supported_architectures",
           "valid_tokens"]
