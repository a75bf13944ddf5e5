"""A fast, inference-only GPT-2 forward on TransformerLens-processed weights.

TransformerLens' default weight processing (method.md §4) is applied here to a HuggingFace
GPT-2 state dict: fold each LayerNorm's scale and shift into the weights that read from it,
centre every weight that writes to the residual stream (embeddings, W_O, W_out and their
biases), centre the unembedding, and fold the value biases into the attention output bias.
The activations of this forward equal those of ``TransformerBridge`` in compatibility mode
(pinned by tests/probed/test_processed.py); it exists because the bridge fires ~100 hooks
per forward and always computes every head, while the query engine and the decoder's data
stream need a few sites of thousands of inputs, fast:

- ``run(tokens, sites)`` stops after the last layer a requested site needs;
- a single head's output is computed from that head's q, k, v alone;
- inputs are right-padded, so causal attention keeps every real position exact;
- ids outside the vocabulary (a task's padding) are read as id 0 (backend.valid_tokens).

It is one implementation of ``backend.Backend``; ``backend.BridgeBackend`` is the other.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from inversionview.probed.backend import norm_direct_logits, valid_tokens
from inversionview.probed.sites import Site


def process_gpt2_state_dict(state: dict[str, torch.Tensor], n_layers: int, n_heads: int
                            ) -> dict[str, torch.Tensor]:
    """TransformerLens-processed weights from a HuggingFace GPT-2 state dict.

    Returns W_E [V,d], W_pos [n_ctx,d], per-layer stacks W_Q/W_K/W_V [L,H,d,dh],
    b_Q/b_K [L,H,dh], W_O [L,H,dh,d], b_O [L,d], W_in [L,d,d_mlp], b_in [L,d_mlp],
    W_out [L,d_mlp,d], b_out [L,d], and W_U [d,V], b_U [V].
    """
    state = {k.removeprefix("transformer."): v.detach() for k, v in state.items()}
    d_model = state["wte.weight"].shape[1]
    d_head = d_model // n_heads

    def centre(w: torch.Tensor) -> torch.Tensor:  # centre what is written to the residual
        return w - w.mean(dim=-1, keepdim=True)

    out: dict[str, list[torch.Tensor]] = {k: [] for k in (
        "W_Q", "b_Q", "W_K", "b_K", "W_V", "W_O", "b_O", "W_in", "b_in", "W_out", "b_out")}
    for layer in range(n_layers):
        p = f"h.{layer}."
        g1, b1 = state[p + "ln_1.weight"], state[p + "ln_1.bias"]
        qkv_w, qkv_b = state[p + "attn.c_attn.weight"], state[p + "attn.c_attn.bias"]  # [d,3d]
        projections = []
        for part in range(3):
            w = qkv_w[:, part * d_model:(part + 1) * d_model]
            b = qkv_b[part * d_model:(part + 1) * d_model]
            folded_w = g1[:, None] * w  # fold the LayerNorm scale
            folded_b = b + b1 @ w  # fold the LayerNorm shift
            projections.append((folded_w.reshape(d_model, n_heads, d_head).permute(1, 0, 2),
                                folded_b.reshape(n_heads, d_head)))
        (W_Q, b_Q), (W_K, b_K), (W_V, b_V) = projections
        W_O = centre(state[p + "attn.c_proj.weight"].reshape(n_heads, d_head, d_model))
        b_O = centre(state[p + "attn.c_proj.bias"])
        b_O = b_O + torch.einsum("hk,hkd->d", b_V, W_O)  # fold value biases
        g2, b2 = state[p + "ln_2.weight"], state[p + "ln_2.bias"]
        W_in = state[p + "mlp.c_fc.weight"]
        b_in = state[p + "mlp.c_fc.bias"] + b2 @ W_in
        W_in = g2[:, None] * W_in
        for key, value in (("W_Q", W_Q), ("b_Q", b_Q), ("W_K", W_K), ("b_K", b_K),
                           ("W_V", W_V), ("W_O", W_O), ("b_O", b_O), ("W_in", W_in),
                           ("b_in", b_in), ("W_out", centre(state[p + "mlp.c_proj.weight"])),
                           ("b_out", centre(state[p + "mlp.c_proj.bias"]))):
            out[key].append(value)
    weights = {k: torch.stack(v) for k, v in out.items()}

    unembed = state.get("lm_head.weight", state["wte.weight"]).T  # tied by default, [d, V]
    W_U = state["ln_f.weight"][:, None] * unembed
    b_U = state["ln_f.bias"] @ unembed
    weights.update(
        W_E=centre(state["wte.weight"]),
        W_pos=centre(state["wpe.weight"]),
        W_U=W_U - W_U.mean(dim=-1, keepdim=True),
        b_U=b_U - b_U.mean(),
    )
    return weights


def _normalize(x: torch.Tensor, eps: float) -> torch.Tensor:
    """LayerNorm with its weights folded away (TransformerLens' LNPre); the fused kernel."""
    return F.layer_norm(x, x.shape[-1:], eps=eps)


def _gelu_new(x: torch.Tensor) -> torch.Tensor:
    """GPT-2's tanh approximation of GELU (the fused kernel computes the same formula)."""
    return F.gelu(x, approximate="tanh")


class ProcessedGPT2(nn.Module):
    """GPT-2 forward on processed weights, capturing activation sites. Inference only."""

    processed = True  # always TransformerLens-processed weights (backend.Backend)

    def __init__(self, weights: dict[str, torch.Tensor], layer_norm_eps: float = 1e-5):
        super().__init__()
        for name, tensor in weights.items():
            self.register_buffer(name, tensor.contiguous())
        self.eps = layer_norm_eps
        self.n_layers, self.n_heads, self.d_model, self.d_head = self.W_Q.shape
        self.n_ctx = self.W_pos.shape[0]
        self.vocab_size = self.W_U.shape[1]

    @classmethod
    def from_hf_state_dict(cls, state: dict[str, torch.Tensor], n_layers: int, n_heads: int,
                           layer_norm_eps: float = 1e-5) -> "ProcessedGPT2":
        return cls(process_gpt2_state_dict(state, n_layers, n_heads), layer_norm_eps)

    # ----- pieces ----------------------------------------------------------------------

    def _embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.W_E[valid_tokens(tokens, self.vocab_size)] + self.W_pos[: tokens.shape[1]]

    def _head_outputs(self, resid_pre: torch.Tensor, layer: int, heads: Sequence[int] | None
                      ) -> torch.Tensor:
        """``[batch, pos, n_selected_heads, d_model]``: the selected heads' results (all if None)."""
        index = slice(None) if heads is None else list(heads)
        normalized = _normalize(resid_pre, self.eps)
        q, k = self._queries_keys(normalized, layer, index)
        v = torch.einsum("bpd,hdk->bhpk", normalized, self.W_V[layer, index])  # biases in b_O
        z = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # [b, h, p, dh]
        return torch.einsum("bhpk,hkd->bphd", z, self.W_O[layer, index])

    def _queries_keys(self, normalized: torch.Tensor, layer: int, index: slice | list[int]
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """``[batch, heads, pos, d_head]`` queries and keys of the selected heads."""
        q = torch.einsum("bpd,hdk->bhpk", normalized, self.W_Q[layer, index]) + self.b_Q[layer, index][:, None]
        k = torch.einsum("bpd,hdk->bhpk", normalized, self.W_K[layer, index]) + self.b_K[layer, index][:, None]
        return q, k

    def _attention_out(self, resid_pre: torch.Tensor, layer: int) -> torch.Tensor:
        return self._head_outputs(resid_pre, layer, None).sum(dim=2) + self.b_O[layer]

    def _mlp_out(self, resid_mid: torch.Tensor, layer: int) -> torch.Tensor:
        hidden = _gelu_new(_normalize(resid_mid, self.eps) @ self.W_in[layer] + self.b_in[layer])
        return hidden @ self.W_out[layer] + self.b_out[layer]

    # ----- public API ------------------------------------------------------------------

    @torch.no_grad()
    def run(self, tokens: torch.Tensor, sites: Sequence[Site]) -> dict[Site, torch.Tensor]:
        """Activations ``[batch, pos, d_model]`` of each site for ``tokens`` ``[batch, pos]``.

        Runs only as far as the deepest requested site needs, and computes single heads on
        their own when nothing else of their layer is needed.
        """
        if not sites:
            return {}
        for site in sites:
            if site.layer >= self.n_layers or (site.head is not None and site.head >= self.n_heads):
                raise ValueError(f"site {site} does not exist in a {self.n_layers}-layer, "
                                 f"{self.n_heads}-head model")
        wanted = set(sites)
        last_layer = max(site.layer for site in wanted)
        found: dict[Site, torch.Tensor] = {}
        resid = self._embed(tokens)
        for layer in range(last_layer + 1):
            here = {site for site in wanted if site.layer == layer}
            if Site(layer, "resid_pre") in here:
                found[Site(layer, "resid_pre")] = resid
            is_last = layer == last_layer
            needs_full_attention = not is_last or any(
                site.kind in ("attn_out", "resid_mid", "mlp_out", "resid_post") for site in here)
            heads = sorted(site.head for site in here if site.kind == "head")
            if not needs_full_attention:
                if heads:
                    results = self._head_outputs(resid, layer, heads)
                    for i, head in enumerate(heads):
                        found[Site(layer, "head", head)] = results[:, :, i]
                break
            results = self._head_outputs(resid, layer, None)
            for head in heads:
                found[Site(layer, "head", head)] = results[:, :, head]
            attention_out = results.sum(dim=2) + self.b_O[layer]
            resid = resid + attention_out
            found[Site(layer, "attn_out")] = attention_out
            found[Site(layer, "resid_mid")] = resid
            if is_last and not any(site.needs_mlp for site in here):
                break
            mlp_out = self._mlp_out(resid, layer)
            resid = resid + mlp_out
            found[Site(layer, "mlp_out")] = mlp_out
            found[Site(layer, "resid_post")] = resid
        return {site: found[site] for site in sites}

    @torch.no_grad()
    def run_patched(self, tokens: torch.Tensor, patches: dict[Site, tuple[torch.Tensor, torch.Tensor]],
                    ) -> torch.Tensor:
        """``[batch, pos, vocab]`` logits with activations replaced (activation patching).

        ``patches`` maps a site to (``where`` ``[batch, pos]`` bool, ``values`` ``[batch, pos,
        d_model]``): at the marked positions the site's activation is ``values`` and
        everything downstream is computed from it. A head's result feeds the attention output
        (its sum with the other heads); a residual site replaces the stream itself.
        """
        return self.final_normalized(tokens, patches) @ self.W_U + self.b_U

    @torch.no_grad()
    def final_normalized(self, tokens: torch.Tensor,
                         patches: dict[Site, tuple[torch.Tensor, torch.Tensor]],
                         start: tuple[int, torch.Tensor] | None = None) -> torch.Tensor:
        """``[batch, pos, d_model]``: the final residual stream after the final LayerNorm's
        normalisation (its weights are folded into ``W_U``), with ``patches`` as in
        ``run_patched``. ``start = (layer, resid_pre)`` begins at ``layer`` from a given
        residual stream (an unpatched run's, reused across many patches of later layers)."""
        def patch(site: Site, activation: torch.Tensor) -> torch.Tensor:
            if site not in patches:
                return activation
            where, values = patches[site]
            return torch.where(where[..., None], values.to(activation.dtype), activation)

        first, resid = (0, self._embed(tokens)) if start is None else start
        for layer in range(first, self.n_layers):
            resid = patch(Site(layer, "resid_pre"), resid)
            heads = self._head_outputs(resid, layer, None)  # [b, p, h, d]
            if any(Site(layer, "head", h) in patches for h in range(self.n_heads)):
                heads = torch.stack([patch(Site(layer, "head", h), heads[:, :, h])
                                     for h in range(self.n_heads)], dim=2)
            attention_out = patch(Site(layer, "attn_out"), heads.sum(dim=2) + self.b_O[layer])
            resid = patch(Site(layer, "resid_mid"), resid + attention_out)
            mlp_out = patch(Site(layer, "mlp_out"), self._mlp_out(resid, layer))
            resid = patch(Site(layer, "resid_post"), resid + mlp_out)
        return _normalize(resid, self.eps)

    @torch.no_grad()
    def attention_pattern(self, tokens: torch.Tensor, layer: int) -> torch.Tensor:
        """``[batch, head, query_pos, key_pos]`` attention weights of every head of ``layer``
        (TransformerLens' ``blocks.L.attn.hook_pattern``); zero above the diagonal."""
        if not 0 <= layer < self.n_layers:
            raise ValueError(f"layer {layer} does not exist in a {self.n_layers}-layer model")
        resid = self._embed(tokens)
        for earlier in range(layer):
            resid = resid + self._attention_out(resid, earlier)
            resid = resid + self._mlp_out(resid, earlier)
        q, k = self._queries_keys(_normalize(resid, self.eps), layer, slice(None))
        scores = q @ k.transpose(-1, -2) / self.d_head ** 0.5
        length = tokens.shape[1]
        future = torch.ones(length, length, dtype=torch.bool, device=tokens.device).triu(1)
        return scores.masked_fill(future, float("-inf")).softmax(dim=-1)

    @torch.no_grad()
    def logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[batch, pos, vocab]`` logits (centred: log-softmax equals the unprocessed model's)."""
        resid = self._embed(tokens)
        for layer in range(self.n_layers):
            resid = resid + self._attention_out(resid, layer)
            resid = resid + self._mlp_out(resid, layer)
        return _normalize(resid, self.eps) @ self.W_U + self.b_U

    def direct_logits(self, piece: torch.Tensor, final_resid: torch.Tensor) -> torch.Tensor:
        """``[n, vocab]``: the direct effect on the logits of ``piece`` ``[n, d_model]``, one
        summand of the final residual stream ``final_resid`` ``[n, d_model]``: centred and
        divided by the final LayerNorm's scale of ``final_resid``, then through ``W_U`` (which
        holds the LayerNorm's folded weights). The summands' direct logits sum, with
        ``b_U``, to the logits."""
        return norm_direct_logits(piece, final_resid, self.W_U, self.eps)
