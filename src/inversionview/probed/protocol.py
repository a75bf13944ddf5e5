"""What every model backend is and shares: the ``Backend`` protocol and its small helpers.

The two backends (``ProcessedGPT2`` in probed/processed.py, ``BridgeBackend`` in
probed/backend.py) both import from here and neither imports the other at module level, so
there is no import cycle between them: backend.py's ``make_backend`` imports processed.py,
processed.py never imports backend.py. backend.py re-exports these names and its module
docstring describes the backends' shared conventions (processed vs raw, padding, sites).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch

from inversionview.probed.sites import Site

#: site -> (``where`` ``[batch, pos]`` bool, ``values`` ``[batch, pos, d_model]``): at the
#: marked positions the site's activation is replaced by ``values`` (activation patching).
Patches = dict[Site, tuple[torch.Tensor, torch.Tensor]]


@runtime_checkable
class Backend(Protocol):
    """What the toolkit asks of a probed model. Shapes: ``tokens`` ``[batch, pos]`` ids."""

    n_layers: int
    n_heads: int
    d_model: int
    n_ctx: int
    vocab_size: int
    processed: bool  # TransformerLens weight processing (the paper) or raw HF weights
    b_O: torch.Tensor  # [n_layers, d_model]: attn_out minus the sum of the heads' results
    b_U: torch.Tensor  # [vocab]: the logits' constant term (unembedding bias, final norm shift)

    def run(self, tokens: torch.Tensor, sites: Sequence[Site]) -> dict[Site, torch.Tensor]:
        """``[batch, pos, d_model]`` per site; runs no deeper than the deepest site needs."""

    def run_patched(self, tokens: torch.Tensor, patches: Patches) -> torch.Tensor:
        """``[batch, pos, vocab]`` logits with sites replaced at marked positions."""

    def attention_pattern(self, tokens: torch.Tensor, layer: int) -> torch.Tensor:
        """``[batch, head, query_pos, key_pos]`` attention weights of ``layer``."""

    def logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[batch, pos, vocab]`` logits."""

    def direct_logits(self, piece: torch.Tensor, final_resid: torch.Tensor) -> torch.Tensor:
        """``[n, vocab]``: the direct effect of ``piece`` ``[n, d_model]``, one summand of the
        final residual stream ``final_resid`` ``[n, d_model]``, sharing its final-norm scale.
        The summands' direct logits sum, with ``b_U``, to the logits."""


def check_sites(sites: Sequence[Site], n_layers: int, n_heads: int) -> None:
    """Raise ValueError for a site that a model of this shape does not have."""
    for site in sites:
        if site.layer >= n_layers or (site.head is not None and site.head >= n_heads):
            raise ValueError(f"site {site} does not exist in a {n_layers}-layer, "
                             f"{n_heads}-head model")


def valid_tokens(tokens: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """``tokens`` with every id outside ``[0, vocab_size)`` replaced by 0 (padding ids of a
    task's own vocabulary, e.g. a decoder-only EOS/PAD, that the model's embedding lacks)."""
    return tokens.where((tokens >= 0) & (tokens < vocab_size), 0)


def norm_direct_logits(piece: torch.Tensor, final_resid: torch.Tensor, W_U: torch.Tensor,
                       eps: float, rms_norm: bool = False) -> torch.Tensor:
    """``[n, vocab]``: ``piece`` ``[n, d]`` through a final norm whose scale is that of
    ``final_resid`` ``[n, d]`` (LayerNorm: variance, piece centred; RMSNorm: mean square),
    then ``W_U`` ``[d, vocab]`` (the norm's weight folded in)."""
    if rms_norm:
        scale = (final_resid.pow(2).mean(dim=-1, keepdim=True) + eps).sqrt()
        return (piece / scale) @ W_U
    scale = (final_resid.var(dim=-1, unbiased=False, keepdim=True) + eps).sqrt()
    return ((piece - piece.mean(dim=-1, keepdim=True)) / scale) @ W_U


__all__ = ["Backend", "Patches", "check_sites", "norm_direct_logits", "valid_tokens"]
