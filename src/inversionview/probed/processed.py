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
- ids outside the vocabulary (a task's padding) are read as id 0 (protocol.valid_tokens).

Every method runs one layer loop, ``ProcessedGPT2._forward``, with a hook at each point of a
layer (capture for ``run``, replace for ``run_patched``, leaves for ``head_output_gradients``).
It is one implementation of ``protocol.Backend``; ``backend.BridgeBackend`` is the other.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from inversionview.probed.protocol import Patches, check_sites, norm_direct_logits, valid_tokens
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


#: The points of one layer at which ``ProcessedGPT2._forward`` calls its hook, in forward
#: order. Each is a site kind, except "heads": the results of the layer's heads together,
#: ``[batch, pos, n_heads, d_model]`` (TransformerLens' ``blocks.L.attn.hook_result``).
POINTS = ("resid_pre", "heads", "attn_out", "resid_mid", "mlp_out", "resid_post")
#: Where a forward can end early (``_forward``'s ``until``): attn_out is computed with
#: resid_mid and mlp_out with resid_post, so the forward would not stop between them.
STOPS = ("resid_pre", "heads", "resid_mid", "resid_post")

#: ``hook(layer, point, activation) -> activation``: sees each point's activation as the
#: forward reaches it and returns what the forward goes on with (itself, or a replacement).
Hook = Callable[[int, str, torch.Tensor], torch.Tensor]


class ProcessedGPT2(nn.Module):
    """GPT-2 forward on processed weights, capturing activation sites. Inference only
    (the weights are buffers; ``head_output_gradients`` differentiates activations).

    Every public method runs the same layer loop, ``_forward``, and differs only in the hook
    it passes (capture, patch, make leaves for a gradient) and in where the loop starts and
    ends, as TransformerLens runs one hooked forward for caching and patching alike.
    """

    processed = True  # always TransformerLens-processed weights (protocol.Backend)

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
        normalized = self.normalize(resid_pre)
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

    def _mlp_out(self, resid_mid: torch.Tensor, layer: int) -> torch.Tensor:
        hidden = _gelu_new(self.normalize(resid_mid) @ self.W_in[layer] + self.b_in[layer])
        return hidden @ self.W_out[layer] + self.b_out[layer]

    # ----- the forward -----------------------------------------------------------------

    def _forward(self, tokens: torch.Tensor, hook: Hook | None = None, *,
                 start: tuple[int, torch.Tensor] | None = None,
                 until: tuple[int, str] | None = None,
                 heads: Sequence[int] | None = None) -> torch.Tensor:
        """The one layer loop. ``tokens`` ``[batch, pos]`` (unused when ``start`` is given).

        ``hook`` is called at every point of ``POINTS`` of every layer run (see ``Hook``).
        ``start = (layer, resid_pre)`` begins at block ``layer`` from that residual stream
        ``[batch, pos, d_model]`` instead of the embeddings. ``until = (layer, stop)``, stop
        in ``STOPS``, ends right after that point of that layer and returns its activation;
        when the stop is "heads", only the heads ``heads`` (all if None) are computed there,
        in that order along dim 2. Without ``until``, every layer runs and the result is the
        final residual stream normalised by the final LayerNorm (its weights are in W_U),
        ``[batch, pos, d_model]``.
        """
        def unchanged(layer: int, point: str, activation: torch.Tensor) -> torch.Tensor:
            return activation

        hook = hook or unchanged
        last, stop = (self.n_layers - 1, None) if until is None else until
        if stop is not None and stop not in STOPS:
            raise ValueError(f"a forward cannot stop at {stop!r}; use one of {', '.join(STOPS)}")
        first, resid = (0, self._embed(tokens)) if start is None else start
        for layer in range(first, last + 1):
            stop_here = stop if layer == last else None
            resid = hook(layer, "resid_pre", resid)
            if stop_here == "resid_pre":
                return resid
            results = hook(layer, "heads", self._head_outputs(
                resid, layer, heads if stop_here == "heads" else None))  # [b, p, h, d]
            if stop_here == "heads":
                return results
            attention_out = hook(layer, "attn_out", results.sum(dim=2) + self.b_O[layer])
            resid = hook(layer, "resid_mid", resid + attention_out)
            if stop_here == "resid_mid":
                return resid
            mlp_out = hook(layer, "mlp_out", self._mlp_out(resid, layer))
            resid = hook(layer, "resid_post", resid + mlp_out)
        return resid if stop is not None else self.normalize(resid)

    # ----- public API ------------------------------------------------------------------

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``[..., d_model]`` through a LayerNorm with its weights folded away (every
        LayerNorm of this model, the final one included: their weights are in the matrices
        that read from them)."""
        return _normalize(x, self.eps)

    @torch.no_grad()
    def run(self, tokens: torch.Tensor, sites: Sequence[Site]) -> dict[Site, torch.Tensor]:
        """Activations ``[batch, pos, d_model]`` of each site for ``tokens`` ``[batch, pos]``.

        Runs only as far as the deepest requested site needs, and computes single heads on
        their own when nothing else of their layer is needed.
        """
        if not sites:
            return {}
        check_sites(sites, self.n_layers, self.n_heads)
        wanted = set(sites)
        last = max(site.layer for site in wanted)
        kinds = {site.kind for site in wanted if site.layer == last}
        last_heads = sorted(site.head for site in wanted
                            if site.layer == last and site.kind == "head")
        if kinds & {"mlp_out", "resid_post"}:
            stop = "resid_post"
        elif kinds & {"attn_out", "resid_mid"}:
            stop = "resid_mid"
        else:  # only heads (computed alone) or only resid_pre at the last layer
            stop = "heads" if last_heads else "resid_pre"
        found: dict[Site, torch.Tensor] = {}

        def capture(layer: int, point: str, activation: torch.Tensor) -> torch.Tensor:
            if point != "heads":
                found[Site(layer, point)] = activation
                return activation
            # at the stop, dim 2 holds last_heads only; elsewhere every head
            columns = last_heads if (layer, point) == (last, stop) else range(self.n_heads)
            for column, head in enumerate(columns):
                found[Site(layer, "head", head)] = activation[:, :, column]
            return activation

        self._forward(tokens, capture, until=(last, stop), heads=last_heads)
        return {site: found[site] for site in sites}

    @torch.no_grad()
    def run_patched(self, tokens: torch.Tensor, patches: Patches) -> torch.Tensor:
        """``[batch, pos, vocab]`` logits with activations replaced (activation patching).

        ``patches`` maps a site to (``where`` ``[batch, pos]`` bool, ``values`` ``[batch, pos,
        d_model]``): at the marked positions the site's activation is ``values`` and
        everything downstream is computed from it. A head's result feeds the attention output
        (its sum with the other heads); a residual site replaces the stream itself.
        """
        return self.final_normalized(tokens, patches) @ self.W_U + self.b_U

    @torch.no_grad()
    def final_normalized(self, tokens: torch.Tensor, patches: Patches,
                         start: tuple[int, torch.Tensor] | None = None) -> torch.Tensor:
        """``[batch, pos, d_model]``: the final residual stream after the final LayerNorm's
        normalisation (its weights are folded into ``W_U``), with ``patches`` as in
        ``run_patched``. ``start = (layer, resid_pre)`` begins at ``layer`` from a given
        residual stream (an unpatched run's, reused across many patches of later layers)."""
        def replace(site: Site, activation: torch.Tensor) -> torch.Tensor:
            if site not in patches:
                return activation
            where, values = patches[site]
            return torch.where(where[..., None], values.to(activation.dtype), activation)

        def patch(layer: int, point: str, activation: torch.Tensor) -> torch.Tensor:
            if point != "heads":
                return replace(Site(layer, point), activation)
            if not any(Site(layer, "head", h) in patches for h in range(self.n_heads)):
                return activation
            return torch.stack([replace(Site(layer, "head", h), activation[:, :, h])
                                for h in range(self.n_heads)], dim=2)

        return self._forward(tokens, patch, start=start)

    def head_output_gradients(self, tokens: torch.Tensor,
                              objective: Callable[[torch.Tensor], torch.Tensor]
                              ) -> list[torch.Tensor]:
        """Per layer, ``[batch, pos, n_heads, d_model]``: the gradient of the scalar
        ``objective(final)`` with respect to every head's result, ``final`` being the
        normalised final residual stream ``[batch, pos, d_model]`` (as ``final_normalized``)
        of ``tokens``, for attribution patching.

        Every layer's head results are leaves of the graph (detached, then requiring grad):
        a head's gradient reaches it along the residual stream, through the MLPs and the
        final normalisation, but not through the attention of later layers.
        """
        leaves: list[torch.Tensor] = []

        def leaf(layer: int, point: str, activation: torch.Tensor) -> torch.Tensor:
            if point != "heads":
                return activation
            leaves.append(activation.detach().requires_grad_(True))
            return leaves[-1]

        with torch.enable_grad():
            final = self._forward(tokens, leaf)
            return list(torch.autograd.grad(objective(final), leaves))

    @torch.no_grad()
    def attention_pattern(self, tokens: torch.Tensor, layer: int) -> torch.Tensor:
        """``[batch, head, query_pos, key_pos]`` attention weights of every head of ``layer``
        (TransformerLens' ``blocks.L.attn.hook_pattern``); zero above the diagonal."""
        if not 0 <= layer < self.n_layers:
            raise ValueError(f"layer {layer} does not exist in a {self.n_layers}-layer model")
        # the forward uses a fused attention kernel that never forms the pattern: recompute it
        resid = self._forward(tokens, until=(layer, "resid_pre"))
        q, k = self._queries_keys(self.normalize(resid), layer, slice(None))
        scores = q @ k.transpose(-1, -2) / self.d_head ** 0.5
        length = tokens.shape[1]
        future = torch.ones(length, length, dtype=torch.bool, device=tokens.device).triu(1)
        return scores.masked_fill(future, float("-inf")).softmax(dim=-1)

    @torch.no_grad()
    def logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[batch, pos, vocab]`` logits (centred: log-softmax equals the unprocessed model's)."""
        return self._forward(tokens) @ self.W_U + self.b_U

    def direct_logits(self, piece: torch.Tensor, final_resid: torch.Tensor) -> torch.Tensor:
        """``[n, vocab]``: the direct effect on the logits of ``piece`` ``[n, d_model]``, one
        summand of the final residual stream ``final_resid`` ``[n, d_model]``: centred and
        divided by the final LayerNorm's scale of ``final_resid``, then through ``W_U`` (which
        holds the LayerNorm's folded weights). The summands' direct logits sum, with
        ``b_U``, to the logits."""
        return norm_direct_logits(piece, final_resid, self.W_U, self.eps)
