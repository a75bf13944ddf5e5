"""The decoder: a small GPT-2-style language model over the probed model's vocabulary that
generates inputs conditioned on one activation (method.md §6).

Conditioning. The activation z (the probed model's d_model) is concatenated with a learned
embedding of its site; the vector passes through a stack of residual MLP blocks and a final
LayerNorm. Each decoder layer projects that vector to its width (then LayerNorm) and
prepends the result to its attention as one extra key/value slot: every token can attend to
the activation; the slot has no position embedding and asks no query. One decoder serves
every site of a probed model; it is not told the position.

``condition_mode="slot+add"`` (not in the paper) also adds a linear map of each layer's
conditioning vector to every token's residual stream before that layer, so the activation
reaches the MLPs without an attention hop.

Reads top to bottom: config, conditioning, attention, block, decoder, generation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

CONDITION_MODES = ("slot", "slot+add")


@dataclass
class DecoderConfig:
    vocab_size: int
    n_ctx: int
    activation_dim: int  # d_model of the probed model
    n_sites: int
    # The paper's toy-task decoder: 2 layers, d 256, 4 heads, MLP 1024, dropout 0.1.
    d_model: int = 256
    n_layers: int = 2
    n_heads: int = 4
    d_mlp: int = 1024
    dropout: float = 0.1
    n_condition_blocks: int = 6
    # Width and hidden size of the conditioning MLP blocks. None: the concatenation's width
    # (2 x activation_dim) and activation_dim. A wider stack costs little: it runs once per
    # example, not once per token.
    condition_width: int | None = None
    condition_hidden: int | None = None
    # Divide each activation by its site's std (measured at init) before conditioning.
    # Not in the paper; activation scales differ by 100x between sites and a tiny decoder
    # learned to use small-scale activations far more slowly without it.
    normalize_activation: bool = True
    # Feed the activation as its direction (scaled to norm sqrt(activation_dim)) plus the log
    # of its norm, instead of the vector itself. Not in the paper; a site whose norm varies
    # several-fold across inputs (counting's m1 at `:`: about 8 to 54) otherwise hands the
    # conditioning MLP small and large vectors that need the same relative precision, since
    # the distance a query uses is relative to the query's norm.
    per_example_norm: bool = False
    # Whiten each site's activations (subtract the site's mean vector, multiply by the
    # inverse square root of its covariance, both measured at init) before conditioning;
    # replaces the per-site std. Not in the paper; where a site's variance sits in a few
    # directions (counting's m1: the largest eigenvalue is 50x the mean), what tells two
    # inputs apart at ε 0.1 can lie in directions of far smaller variance, which the
    # conditioning MLP otherwise has to learn to amplify. Costs n_sites x d^2 numbers (counting: 37k).
    whiten_activation: bool = False
    # "slot": the paper's extra key/value slot; "slot+add": also added to every token.
    condition_mode: str = "slot"

    def __post_init__(self) -> None:
        if self.condition_mode not in CONDITION_MODES:
            raise ValueError(f"unknown condition_mode {self.condition_mode!r}; "
                             f"use one of {', '.join(CONDITION_MODES)}")

    def to_dict(self) -> dict:
        return asdict(self)


class ResidualMLP(nn.Module):
    """LayerNorm, linear down, ReLU, linear back up, residual add."""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.down = nn.Linear(width, hidden)
        self.up = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(F.relu(self.down(self.norm(x))))


class Conditioning(nn.Module):
    """(activation, site id) -> one vector per decoder layer, ``[batch, n_layers, d_model]``."""

    def __init__(self, config: DecoderConfig):
        super().__init__()
        # activation ++ site embedding (++ the activation's log-norm)
        concatenated = 2 * config.activation_dim + config.per_example_norm
        width = config.condition_width or concatenated
        self.normalize = config.normalize_activation
        self.per_example_norm = config.per_example_norm
        self.site_embedding = nn.Embedding(config.n_sites, config.activation_dim)
        self.register_buffer("activation_scale", torch.ones(config.n_sites))
        self.whiten = config.whiten_activation
        if self.whiten:
            d = config.activation_dim
            self.register_buffer("activation_mean", torch.zeros(config.n_sites, d))
            self.register_buffer("activation_whitener", torch.eye(d).repeat(config.n_sites, 1, 1))
        self.widen = nn.Identity() if width == concatenated else nn.Linear(concatenated, width)
        self.blocks = nn.Sequential(*[ResidualMLP(width, config.condition_hidden or config.activation_dim)
                                      for _ in range(config.n_condition_blocks)])
        self.norm = nn.LayerNorm(width)
        self.per_layer = nn.ModuleList(
            nn.Sequential(nn.Linear(width, config.d_model), nn.LayerNorm(config.d_model))
            for _ in range(config.n_layers))

    def forward(self, activation: torch.Tensor, site_id: torch.Tensor) -> torch.Tensor:
        if self.whiten:
            activation = torch.einsum("bd,bde->be", activation - self.activation_mean[site_id],
                                      self.activation_whitener[site_id])
        elif self.normalize:
            activation = activation / self.activation_scale[site_id][:, None]
        parts = [activation, self.site_embedding(site_id)]
        if self.per_example_norm:
            root_d = activation.shape[-1] ** 0.5
            norm = activation.norm(dim=-1, keepdim=True).clamp_min(1e-6)
            parts = [activation * (root_d / norm), parts[1], torch.log(norm / root_d)]
        x = torch.cat(parts, dim=-1)
        x = self.norm(self.blocks(self.widen(x)))
        return torch.stack([project(x) for project in self.per_layer], dim=1)

    @torch.no_grad()
    def init_site_embedding(self, site_means: torch.Tensor, site_stds: torch.Tensor,
                            generator: torch.Generator | None = None) -> None:
        """Draw each site's row to match that site's activation mean and std (scalars per
        site, ``[n_sites]``), so the embedding starts on the scale of the activations it sits
        beside; with normalisation on, both are measured after dividing by the site's std."""
        if self.whiten:  # whitened activations have mean 0 and std 1 at every site
            site_means, site_stds = torch.zeros_like(site_means), torch.ones_like(site_stds)
        elif self.normalize:
            self.activation_scale.copy_(site_stds)
            site_means, site_stds = site_means / site_stds, torch.ones_like(site_stds)
        noise = torch.randn(self.site_embedding.weight.shape, generator=generator)
        self.site_embedding.weight.copy_(site_means[:, None] + site_stds[:, None] * noise)

    @torch.no_grad()
    def init_whitening(self, means: torch.Tensor, covariances: torch.Tensor,
                       floor: float = 1e-3) -> None:
        """Each site's mean ``[n_sites, d]`` and whitening matrix from its covariance
        ``[n_sites, d, d]``: U diag((λ + δ)^-1/2) Uᵀ (ZCA), with δ = ``floor`` x the mean
        eigenvalue, so directions that never vary are not blown up to unit variance. Pass the
        covariances in float64: the smallest eigenvalues of a badly conditioned one do not
        survive a round trip through float32."""
        if covariances.dtype != torch.float64:
            raise ValueError("init_whitening needs float64 covariances (float32 loses the "
                             f"smallest eigenvalues of a badly conditioned one), got {covariances.dtype}")
        eigenvalues, vectors = torch.linalg.eigh(covariances)
        eigenvalues = eigenvalues.clamp_min(0)
        delta = floor * eigenvalues.mean(dim=-1, keepdim=True)
        inverse_root = (eigenvalues + delta).rsqrt()
        whitener = vectors @ torch.diag_embed(inverse_root) @ vectors.transpose(-1, -2)
        self.activation_mean.copy_(means)
        self.activation_whitener.copy_(whitener.float())


class Attention(nn.Module):
    """Causal self-attention with one extra key/value slot holding the activation."""

    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.n_heads = config.n_heads
        self.query = nn.Linear(config.d_model, config.d_model)
        self.key_value = nn.Linear(config.d_model, 2 * config.d_model)
        self.out = nn.Linear(config.d_model, config.d_model)
        self.dropout = config.dropout

    def _split(self, x: torch.Tensor) -> torch.Tensor:  # [b, p, d] -> [b, h, p, dh]
        b, p, d = x.shape
        return x.view(b, p, self.n_heads, d // self.n_heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, condition: torch.Tensor,
                cache: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """x ``[b, p, d]``, condition ``[b, d]``. With a cache (generation), keys and values of
        the slot and of earlier tokens are kept there and only the new tokens' are computed."""
        b, p, d = x.shape
        q = self._split(self.query(x))
        first_call = cache is None or "k" not in cache
        # The slot goes first, through the same key/value projection as a token.
        kv_input = torch.cat([condition[:, None], x], dim=1) if first_call else x
        k, v = (self._split(t) for t in self.key_value(kv_input).split(d, dim=-1))
        if not first_call:
            k, v = torch.cat([cache["k"], k], dim=2), torch.cat([cache["v"], v], dim=2)
        if cache is not None:
            cache["k"], cache["v"] = k, v
        past = k.shape[2] - p  # the slot and the tokens before these
        # New token i sees the slot and every token up to itself, never a later one.
        visible = torch.arange(k.shape[2], device=x.device)[None, :] <= (
            past + torch.arange(p, device=x.device)[:, None])
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=visible,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(b, p, d))


class Block(nn.Module):
    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.d_model)
        self.attention = Attention(config)
        self.norm2 = nn.LayerNorm(config.d_model)
        self.mlp = nn.Sequential(nn.Linear(config.d_model, config.d_mlp), nn.GELU(approximate="tanh"),
                                 nn.Linear(config.d_mlp, config.d_model))
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x, condition, cache=None):
        x = x + self.dropout(self.attention(self.norm1(x), condition, cache))
        return x + self.dropout(self.mlp(self.norm2(x)))


class Decoder(nn.Module):
    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.config = config
        #: The probed model's sites in this decoder's order (index = site id); set when the
        #: decoder is built for a model or loaded with its manifest.
        self.site_names: tuple[str, ...] = ()
        self.token_embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.position_embedding = nn.Embedding(config.n_ctx, config.d_model)
        self.dropout = nn.Dropout(config.dropout)
        self.conditioning = Conditioning(config)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        if config.condition_mode == "slot+add":
            self.to_stream = nn.ModuleList(nn.Linear(config.d_model, config.d_model, bias=False)
                                           for _ in range(config.n_layers))
        self.norm = nn.LayerNorm(config.d_model)
        self.apply(self._init_weights)
        if config.condition_mode == "slot+add":
            # Start as the paper's decoder: a random added vector would drown the tokens.
            for projection in self.to_stream:
                nn.init.zeros_(projection.weight)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, tokens: torch.Tensor, activation: torch.Tensor, site_id: torch.Tensor,
                ) -> torch.Tensor:
        """Logits ``[b, p, vocab]`` of the next token at each position of ``tokens`` ``[b, p]``
        given the activation ``[b, activation_dim]`` of site ``site_id`` ``[b]``."""
        return self._logits(tokens, self.conditioning(activation, site_id), start=0)

    def _logits(self, tokens: torch.Tensor, conditions: torch.Tensor, start: int,
                caches: list[dict] | None = None) -> torch.Tensor:
        positions = torch.arange(start, start + tokens.shape[1], device=tokens.device)
        x = self.dropout(self.token_embedding(tokens) + self.position_embedding(positions))
        for layer, block in enumerate(self.blocks):
            if self.config.condition_mode == "slot+add":
                x = x + self.to_stream[layer](conditions[:, layer, None])
            x = block(x, conditions[:, layer], None if caches is None else caches[layer])
        return self.norm(x) @ self.token_embedding.weight.T  # LM head tied to the embedding

    @torch.no_grad()
    def sample(self, activation: torch.Tensor, site_id: torch.Tensor, bos_id: int, eos_id: int,
               pad_id: int, temperature: float | torch.Tensor = 1.0,
               generator: torch.Generator | None = None, max_length: int | None = None,
               on_step: Callable[[int, int], None] | None = None,
               log_probs_at: tuple[float, ...] | None = None,
               constraint: Callable[[torch.Tensor], torch.Tensor | None] | None = None,
               ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Ancestral sampling with a KV cache from BOS until EOS or ``max_length`` (default
        n_ctx): ``[b, max_length]`` tokens, PAD after each EOS (and nowhere else).
        ``temperature`` is a float or a ``[b]`` tensor (one per sample). ``on_step(position,
        max_length)`` is called after each position is drawn (progress; it may raise to stop).

        Finished rows leave the batch, so a long sample does not make the short ones pay.
        Each step draws one uniform number per row of the whole batch and inverts the CDF of
        the rows still running, so the result does not depend on when rows leave.

        With ``log_probs_at`` (temperatures), also returns ``[b, len(log_probs_at)]``: the
        log-probability of each drawn row under the decoder at each of those temperatures
        (the completeness estimate weighs draws by it; preimage/estimate.py).

        ``constraint(prefix [b, t]) -> [b, vocab]`` bool (``Task.next_token_mask``), if given,
        limits each step to the tokens it allows; the log-probabilities are then those of
        the constrained distribution, which is what was sampled from.
        """
        max_length = max_length or self.config.n_ctx
        batch = activation.shape[0]
        device = activation.device
        temperature = torch.as_tensor(temperature, dtype=torch.float32, device=device)
        temperature = temperature.expand(batch)[:, None]
        conditions = self.conditioning(activation, site_id)
        caches: list[dict] = [{} for _ in self.blocks]
        tokens = torch.full((batch, max_length), pad_id, dtype=torch.long, device=device)
        tokens[:, 0] = bos_id
        rows = torch.arange(batch, device=device)  # the rows still running
        scored_at = tuple(log_probs_at or ())
        log_probs = torch.zeros(batch, len(scored_at), device=device)
        for position in range(1, max_length):
            logits = self._logits(tokens[rows, position - 1:position], conditions, position - 1,
                                  caches)[:, -1].float()
            # PAD is never an input token (the decoder is not trained to emit it): drawing it
            # would make a candidate that no text can express.
            logits[:, pad_id] = float("-inf")
            if constraint is not None:
                allowed = constraint(tokens[rows, :position].cpu())
                if allowed is not None:
                    allowed = allowed.to(device)
                    # a row the grammar cannot continue (it cannot happen with a sound grammar)
                    # is left unconstrained rather than made NaN
                    allowed |= ~allowed.any(dim=1, keepdim=True)
                    logits = logits.masked_fill(~allowed, float("-inf"))
            cdf = torch.softmax(logits / temperature, dim=-1).cumsum(dim=-1)
            uniform = torch.rand(batch, generator=generator, device=device)[rows]
            drawn = torch.searchsorted(cdf, (uniform * cdf[:, -1])[:, None], right=True)
            drawn = drawn.squeeze(1).clamp(max=cdf.shape[1] - 1)
            tokens[rows, position] = drawn
            for column, scored_temperature in enumerate(scored_at):
                log_probs[rows, column] += torch.log_softmax(logits / scored_temperature, dim=-1
                                                             ).gather(1, drawn[:, None]).squeeze(1)
            running = drawn != eos_id
            if not running.all():
                rows, conditions, temperature = rows[running], conditions[running], temperature[running]
                for cache in caches:
                    cache["k"], cache["v"] = cache["k"][running], cache["v"][running]
                if rows.numel() == 0:
                    break
            if on_step is not None:
                on_step(position, max_length)
        return (tokens, log_probs) if log_probs_at is not None else tokens

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def random_like(decoder: Decoder, seed: int) -> Decoder:
    """A decoder of ``decoder``'s shape and site names with freshly initialised weights
    (seeded): the control a figure about the decoder is measured against (method.md §7). The
    global random state is left as it was."""
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        control = Decoder(decoder.config)
    finally:
        torch.random.set_rng_state(state)
    control.site_names = getattr(decoder, "site_names", ())
    return control.to(next(decoder.parameters()).device).eval()

