"""The decoder's training data, made on the fly from the probed model (method.md §2, §5, §6).

Each batch: draw inputs (from the task's sampler, or from a fixed list of texts), give each
example a site (uniformly, or rebalanced towards the sites the decoder reads worst) and a
position (uniformly among those a user may query; 1 % forced to position 0, the BOS), run
the probed model once for all the sites the batch needs, and keep each example's activation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from inversionview.probed.model import ProbedModel
from inversionview.probed.sites import Site


@dataclass
class DecoderBatch:
    tokens: torch.Tensor  # [batch, n_ctx] inputs, BOS ... EOS, right-padded
    activation: torch.Tensor  # [batch, d_model of the probed model]
    site_id: torch.Tensor  # [batch] index into the task's site list
    position: torch.Tensor  # [batch] where the activation was read

    def to(self, device: torch.device | str) -> "DecoderBatch":
        return DecoderBatch(*(t.to(device) for t in (self.tokens, self.activation, self.site_id,
                                                      self.position)))


def site_probabilities(in_epsilon_rates: torch.Tensor, rebalance: float) -> torch.Tensor:
    """Site-sampling distribution from per-site in-ε rates ``[n_sites]``: softmax of
    (mean rate - site rate) x rebalance, so worse-read sites are drawn more often.
    rebalance 0 gives the uniform distribution."""
    logits = (in_epsilon_rates.mean() - in_epsilon_rates) * rebalance
    return torch.softmax(logits, dim=0)


class ActivationStream:
    """An endless, seeded stream of ``DecoderBatch`` for one probed model."""

    def __init__(self, model: ProbedModel, batch_size: int, generator: torch.Generator,
                 bos_fraction: float = 0.01, texts: list[str] | None = None):
        self.model = model
        self.task = model.task
        self.sites: list[Site] = model.sites
        self.batch_size = batch_size
        self.generator = generator
        self.bos_fraction = bos_fraction
        self.site_probs = torch.full((len(self.sites),), 1.0 / len(self.sites))
        self._texts = None if texts is None else self.task.encode_batch(texts)
        self._order: torch.Tensor | None = None
        self._cursor = 0

    def set_site_probabilities(self, probabilities: torch.Tensor) -> None:
        if probabilities.shape != self.site_probs.shape or (probabilities < 0).any():
            raise ValueError(f"need {len(self.sites)} non-negative site probabilities")
        self.site_probs = probabilities / probabilities.sum()

    def _inputs(self) -> torch.Tensor:
        if self._texts is None:
            return self.task.sample_tokens(self.batch_size, self.generator)
        rows = []
        needed = self.batch_size
        while needed:
            if self._order is None or self._cursor == len(self._order):
                self._order = torch.randperm(len(self._texts), generator=self.generator)
                self._cursor = 0
            take = self._order[self._cursor:self._cursor + needed]
            self._cursor += len(take)
            needed -= len(take)
            rows.append(self._texts[take])
        return torch.cat(rows)

    def _positions(self, tokens: torch.Tensor) -> torch.Tensor:
        allowed = self.task.query_position_mask(tokens)
        scores = torch.rand(tokens.shape, generator=self.generator).masked_fill(~allowed, -1.0)
        positions = scores.argmax(dim=1)  # uniform among the allowed positions
        to_bos = torch.rand(tokens.shape[0], generator=self.generator) < self.bos_fraction
        return positions.masked_fill(to_bos, 0)

    @torch.no_grad()
    def next_batch(self) -> DecoderBatch:
        tokens = self._inputs()
        site_id = torch.multinomial(self.site_probs, tokens.shape[0], replacement=True,
                                    generator=self.generator)
        position = self._positions(tokens)
        needed = sorted(set(site_id.tolist()))
        activations = self.model.run_sites(tokens, [self.sites[i] for i in needed])
        rows = torch.arange(tokens.shape[0])
        activation = torch.empty(tokens.shape[0], self.model.d_model)
        for index in needed:
            chosen = site_id == index
            values = activations[self.sites[index]].cpu()
            activation[chosen] = values[rows[chosen], position[chosen]]
        return DecoderBatch(tokens, activation, site_id, position)

    @torch.no_grad()
    def site_statistics(self, n: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std over elements of each site's activations at query positions,
        ``[n_sites]`` each, from ``n`` inputs (for the site-embedding initialisation)."""
        tokens = self.task.sample_tokens(n, self.generator) if self._texts is None else self._texts[:n]
        allowed = self.task.query_position_mask(tokens)
        activations = self.model.run_sites(tokens, self.sites)
        means, stds = [], []
        for site in self.sites:
            values = activations[site].cpu()[allowed]
            means.append(values.mean())
            stds.append(values.std())
        return torch.stack(means), torch.stack(stds)
