"""Candidate inputs for a query activation: ancestral sampling from the decoder (method.md §7).

A schedule is a list of rounds, each drawing ``candidates`` inputs at one temperature with one
noise level. Noise adds N(0, 1) x std(z_q) x noise to the query activation, independently per
candidate (std over z_q's elements). All rounds are drawn in one batched, KV-cached call.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from inversionview import options
from inversionview.decoder.model import Decoder
from inversionview.errors import OptionError
from inversionview.tasks.base import Vocabulary


@dataclass(frozen=True)
class SamplingRound:
    temperature: float
    noise: float
    candidates: int = 64

    def to_dict(self) -> dict:
        return asdict(self)


#: The paper's (temperature, noise) settings for the toy tasks, cycled in rounds of 64.
PAPER_SETTINGS: tuple[tuple[float, float], ...] = ((0.5, 0.0), (1.0, 0.0), (2.0, 0.0), (2.0, 0.1))
ROUND_SIZE = 64


def make_schedule(candidates: int = 1024,
                  settings: tuple[tuple[float, float], ...] = PAPER_SETTINGS,
                  round_size: int = ROUND_SIZE) -> tuple[SamplingRound, ...]:
    """Rounds of ``round_size`` cycling through ``settings`` until ``candidates`` are drawn
    (the last round is shorter when ``candidates`` is not a multiple). The defaults are the
    paper's 16 rounds: [(0.5, 0), (1, 0), (2, 0), (2, 0.1)] x 4 = 1,024 candidates."""
    options.CANDIDATES.check(candidates)
    if not settings:
        raise OptionError("a schedule needs at least one (temperature, noise) setting")
    for temperature, noise in settings:
        options.TEMPERATURE.check(temperature)
        options.NOISE.check(noise)
    rounds = []
    for index in range(math.ceil(candidates / round_size)):
        temperature, noise = settings[index % len(settings)]
        size = min(round_size, candidates - index * round_size)
        rounds.append(SamplingRound(float(temperature), float(noise), size))
    return tuple(rounds)


@dataclass
class Draws:
    """A schedule's candidates and how they were drawn."""

    tokens: torch.Tensor  # [n, n_ctx] on the CPU, BOS ... EOS then PAD
    round_index: torch.Tensor  # [n] the schedule round of each
    temperature: torch.Tensor  # [n]
    noise: torch.Tensor  # [n]
    # [n] the cosine of each candidate's conditioning activation to the query (1: the query
    # itself or Gaussian noise; below 1: cosine noise, ``noise_cosine``)
    cosine: torch.Tensor
    # [n, len(scored_temperatures)] log-probability of each candidate under the decoder at
    # each of the schedule's noise-free temperatures (given the query activation)
    log_probs: torch.Tensor
    scored_temperatures: tuple[float, ...]


@torch.no_grad()
def sample_candidates(decoder: Decoder, query_activation: torch.Tensor, site_id: int,
                      schedule: tuple[SamplingRound, ...], vocab: Vocabulary,
                      generator: torch.Generator,
                      on_step: Callable[[int, int], None] | None = None,
                      constraint: Callable[[torch.Tensor], torch.Tensor | None] | None = None,
                      noise_cosine: tuple[float, float] | None = None,
                      banned: tuple[int, ...] = (),
                      ) -> Draws:
    """Draw every round's candidates for ``query_activation`` ``[d]`` of site ``site_id``.

    ``generator`` must live on the decoder's device; the same seed gives the same tokens.
    ``on_step`` is passed to ``Decoder.sample`` (progress over positions), and so is
    ``constraint`` (``Task.next_token_mask``: draw only tokens that can lead to an input).

    ``noise_cosine`` (low, high) replaces the Gaussian noise of every candidate by the paper's
    factual-recall noise: the decoder is conditioned on a vector of the query's norm whose
    cosine to the query is drawn uniformly from [low, high], in a random direction. ``banned``
    token ids are never drawn (rare tokens, say; ``rare_tokens``).
    """
    device = next(decoder.parameters()).device
    query = query_activation.to(device, torch.float32)
    round_index = torch.cat([torch.full((r.candidates,), i) for i, r in enumerate(schedule)])
    temperature = torch.tensor([schedule[i].temperature for i in round_index.tolist()])
    noise = torch.tensor([schedule[i].noise for i in round_index.tolist()])
    n = round_index.numel()
    scale = query.std() * noise.to(device)  # [n]
    draws = torch.randn(n, query.numel(), generator=generator, device=device)
    activation = query.expand(n, -1) + draws * scale[:, None]
    cosine = torch.ones(n)
    if noise_cosine is not None:
        low, high = noise_cosine
        cosine = low + (high - low) * torch.rand(n, generator=generator, device=device).cpu()
        activation = at_cosine(query, draws, cosine.to(device))
        noise = torch.zeros(n)
    site_ids = torch.full((n,), site_id, dtype=torch.long, device=device)
    scored = tuple(sorted({r.temperature for r in schedule if r.noise == 0}))
    if banned:
        constraint = _banning(constraint, banned, vocab)
    tokens, log_probs = decoder.sample(activation, site_ids, vocab.bos_id, vocab.eos_id,
                                       vocab.pad_id, temperature.to(device), generator,
                                       on_step=on_step, log_probs_at=scored,
                                       constraint=constraint)
    return Draws(tokens.cpu(), round_index, temperature, noise, cosine, log_probs.cpu(), scored)


def at_cosine(query: torch.Tensor, directions: torch.Tensor, cosine: torch.Tensor) -> torch.Tensor:
    """``[n, d]`` vectors of ``query``'s norm at ``cosine`` ``[n]`` to it: each row of
    ``directions`` ``[n, d]`` made orthogonal to the query sets where it turns."""
    unit = query / query.norm().clamp_min(1e-12)
    orthogonal = directions - (directions @ unit)[:, None] * unit
    orthogonal = orthogonal / orthogonal.norm(dim=1, keepdim=True).clamp_min(1e-12)
    sine = (1 - cosine.square()).clamp_min(0).sqrt()
    return query.norm() * (cosine[:, None] * unit + sine[:, None] * orthogonal)


def _banning(constraint, banned: tuple[int, ...], vocab: Vocabulary):
    """``constraint`` that also never allows ``banned`` (EOS stays allowed)."""
    ids = torch.tensor(sorted(set(banned) - {vocab.eos_id}), dtype=torch.long)

    def allowed(prefix: torch.Tensor) -> torch.Tensor:
        mask = constraint(prefix) if constraint is not None else None
        if mask is None:
            mask = torch.ones(prefix.shape[0], vocab.size, dtype=torch.bool)
        mask = mask.clone()
        mask[:, ids[ids < mask.shape[1]]] = False
        return mask

    return allowed
