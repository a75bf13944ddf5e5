"""The decoder's training data, made on the fly from the probed model (method.md §2, §5, §6).

Each batch: draw inputs (from the task's sampler, or from a fixed list of texts), give each
example a site (uniformly, or rebalanced towards the sites the decoder reads worst) and a
position (uniformly among those its position policy allows, by default every position a
user may query, see ``positions.py``; 1 % forced to position 0, the BOS), run the probed
model once for all the sites the batch needs, and keep each example's activation.

Length bucketing: with ``bucket_batches`` k > 1 the stream draws a pool of k batches at once,
sorts it by length and hands the k slices out in random order, so a batch holds inputs of
similar length and the decoder computes little padding (about 1.4x more examples/s on the
counting task, whose lengths run from 9 to 33 tokens). The pool is redrawn exactly on resume
from the generator state at its start (``state`` / ``restore``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from inversionview.decoder.positions import allowed_positions
from inversionview.options import POSITIONS
from inversionview.probed.subject import Subject
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
    """An endless, seeded stream of ``DecoderBatch`` for one probed model; ``positions`` is
    the position policy (``positions.py``: uniform, last, low-bos-attention)."""

    def __init__(self, model: Subject, batch_size: int, generator: torch.Generator,
                 bos_fraction: float = 0.01, texts: list[str] | None = None,
                 bucket_batches: int = 1, positions: str = "uniform"):
        self.model = model
        self.positions = POSITIONS.check(positions)
        self.task = model.task
        self.sites: list[Site] = model.sites
        self.batch_size = batch_size
        self.generator = generator
        self.bos_fraction = bos_fraction
        self.site_probs = torch.full((len(self.sites),), 1.0 / len(self.sites))
        self._texts = None if texts is None else self.task.encode_batch(texts)
        self._order: torch.Tensor | None = None
        self._cursor = 0
        if bucket_batches < 1:
            raise ValueError(f"bucket_batches must be >= 1, got {bucket_batches}")
        self.bucket_batches = bucket_batches
        self._pool: list[DecoderBatch] = []
        self._pool_start_state = generator.get_state()
        self._pool_site_probs = self.site_probs
        self._pool_cursor = 0

    def set_site_probabilities(self, probabilities: torch.Tensor) -> None:
        """Site mix for the batches drawn from now on (with bucketing: from the next pool)."""
        if probabilities.shape != self.site_probs.shape or (probabilities < 0).any():
            raise ValueError(f"need {len(self.sites)} non-negative site probabilities")
        self.site_probs = probabilities / probabilities.sum()

    def _inputs(self, n: int) -> torch.Tensor:
        if self._texts is None:
            return self.task.sample_tokens(n, self.generator)
        rows = []
        needed = n
        while needed:
            if self._order is None or self._cursor == len(self._order):
                self._order = torch.randperm(len(self._texts), generator=self.generator)
                self._cursor = 0
            take = self._order[self._cursor:self._cursor + needed]
            self._cursor += len(take)
            needed -= len(take)
            rows.append(self._texts[take])
        return torch.cat(rows)

    def _positions(self, tokens: torch.Tensor, site_id: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each example's position, and which rows the policy allowed none in (read at BOS)."""
        allowed = allowed_positions(self.model, tokens, site_id, self.positions)
        scores = torch.rand(tokens.shape, generator=self.generator).masked_fill(~allowed, -1.0)
        positions = scores.argmax(dim=1)  # uniform among the allowed positions (BOS if none)
        to_bos = torch.rand(tokens.shape[0], generator=self.generator) < self.bos_fraction
        return positions.masked_fill(to_bos, 0), ~allowed.any(dim=1).cpu()

    def _redraw_filtered(self, tokens: torch.Tensor, site_id: torch.Tensor,
                         position: torch.Tensor, dropped: torch.Tensor, tries: int = 4
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows the policy allows no position in (``dropped``, filtered out) get fresh inputs,
        up to ``tries`` times; what is still filtered then is read at BOS, as any such row.
        Only the redrawn rows are read again."""
        rows = torch.nonzero(dropped).flatten()
        for _ in range(tries):
            if not len(rows):
                break
            fresh = self._inputs(len(rows))
            width = max(tokens.shape[1], fresh.shape[1])
            tokens = _widen(tokens, width, self.task.vocab.pad_id)
            tokens[rows] = _widen(fresh, width, self.task.vocab.pad_id)
            position[rows], still = self._positions(tokens[rows], site_id[rows])
            rows = rows[still]
        return tokens, position

    def next_batch(self) -> DecoderBatch:
        if self._pool_cursor == len(self._pool):
            self._draw_pool()
        batch = self._pool[self._pool_cursor]
        self._pool_cursor += 1
        return batch

    def state(self) -> tuple[torch.Tensor, dict]:
        """What ``restore`` needs to continue this stream exactly: the generator state at the
        start of the current pool, and (JSON) how far into the pool we are and its site mix."""
        return self._pool_start_state, {"pool_cursor": self._pool_cursor,
                                        "pool_site_probabilities": self._pool_site_probs.tolist(),
                                        "site_probabilities": self.site_probs.tolist()}

    def restore(self, pool_start_state: torch.Tensor, record: dict) -> None:
        self.generator.set_state(pool_start_state)
        self.site_probs = torch.tensor(record["pool_site_probabilities"])
        self._draw_pool()
        self._pool_cursor = record["pool_cursor"]
        self.site_probs = torch.tensor(record["site_probabilities"])

    def _draw_pool(self) -> None:
        self._pool_start_state = self.generator.get_state()
        self._pool_site_probs = self.site_probs
        pool = self._examples(self.batch_size * self.bucket_batches)
        if self.bucket_batches == 1:
            self._pool, self._pool_cursor = [pool], 0
            return
        lengths = (pool.tokens != self.task.vocab.pad_id).sum(dim=1)
        # random tie-break so that equal lengths are not grouped by draw order
        order = torch.argsort(lengths.double() + torch.rand(len(lengths), generator=self.generator))
        slices = order.split(self.batch_size)
        shuffled = torch.randperm(len(slices), generator=self.generator).tolist()
        self._pool = [DecoderBatch(*(t[slices[i]] for t in (pool.tokens, pool.activation,
                                                             pool.site_id, pool.position)))
                      for i in shuffled]
        self._pool_cursor = 0

    @torch.no_grad()
    def _examples(self, n: int) -> DecoderBatch:
        tokens = self._inputs(n)
        site_id = torch.multinomial(self.site_probs, tokens.shape[0], replacement=True,
                                    generator=self.generator)
        position, dropped = self._positions(tokens, site_id)
        if self.positions == "last-or-least-bos":  # a filtering policy: redraw what it drops
            tokens, position = self._redraw_filtered(tokens, site_id, position, dropped)
        activation = torch.empty(tokens.shape[0], self.model.d_model)
        for rows in self._row_chunks(tokens, len(set(site_id.tolist()))):
            ids, chunk_sites, at = tokens[rows], site_id[rows], position[rows]
            needed = sorted(set(chunk_sites.tolist()))
            activations = self.model.run_sites(ids, [self.sites[i] for i in needed])
            values = torch.empty(len(ids), self.model.d_model)
            for index in needed:
                chosen = torch.nonzero(chunk_sites == index).flatten()
                values[chosen] = activations[self.sites[index]][chosen.to(self.model.device),
                                                                at[chosen].to(self.model.device)].cpu()
            activation[rows] = values
        return DecoderBatch(tokens, activation, site_id, position)

    def _row_chunks(self, tokens: torch.Tensor, n_sites: int, budget_bytes: int = 256 * 2**20
                    ) -> list[slice]:
        """Rows read together: the activations of their sites (and a layer's head results)
        fit in about ``budget_bytes`` (a pool of 2,048 inputs over GPT-2 small's 193 sites
        would be 40 GB in one read)."""
        per_row = tokens.shape[1] * self.model.d_model * 4 * (n_sites + self.model.n_heads + 4)
        size = max(1, budget_bytes // per_row)
        return [slice(start, start + size) for start in range(0, tokens.shape[0], size)]

    @torch.no_grad()
    def site_statistics(self, n: int = 2048, budget_bytes: int = 256 * 2**20
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std over elements of each site's activations at query positions,
        ``[n_sites]`` each, from ``n`` inputs (for the site-embedding initialisation).

        Read in pieces of at most about ``budget_bytes`` of activations (inputs x sites):
        every site of GPT-2 small on 2,048 inputs at once would be 40 GB."""
        tokens = self.task.sample_tokens(n, self.generator) if self._texts is None else self._texts[:n]
        allowed = self.task.query_position_mask(tokens)
        per_input_site = tokens.shape[1] * self.model.d_model * 4
        # every site in one pass over fewer inputs (one forward in all); split the sites only
        # when a single input's activations exceed the budget
        sites_at_once = max(1, min(len(self.sites), budget_bytes // per_input_site))
        inputs = max(1, min(len(tokens), budget_bytes // (sites_at_once * per_input_site)))
        sums = torch.zeros(len(self.sites), 3, dtype=torch.float64)  # count, sum, sum of squares
        for start in range(0, len(tokens), inputs):
            chunk, mask = tokens[start: start + inputs], allowed[start: start + inputs]
            for first in range(0, len(self.sites), sites_at_once):
                group = self.sites[first: first + sites_at_once]
                activations = self.model.run_sites(chunk, group)
                for offset, site in enumerate(group):
                    values = activations[site].cpu()[mask].double()
                    sums[first + offset] += torch.stack([
                        torch.tensor(values.numel(), dtype=torch.float64), values.sum(),
                        values.square().sum()])
        count, total, squares = sums.unbind(dim=1)
        means = total / count
        stds = ((squares - count * means.square()) / (count - 1)).clamp_min(0).sqrt()
        return means.float(), stds.float()

    def site_covariances(self, n: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean vector ``[n_sites, d]`` and covariance ``[n_sites, d, d]`` of each site's
        activations at query positions, from ``n`` inputs (for whitening), one site at a time. The
        covariance stays float64: stored as float32, a covariance whose condition number is
        10^5 (common in a residual stream) loses about 1 % of its smallest eigenvalues, and the
        whitening with them (issue 31)."""
        tokens = self.task.sample_tokens(n, self.generator) if self._texts is None else self._texts[:n]
        allowed = self.task.query_position_mask(tokens)
        d = self.model.d_model
        means = torch.zeros(len(self.sites), d)
        covariances = torch.zeros(len(self.sites), d, d, dtype=torch.float64)
        for index, site in enumerate(self.sites):
            count, total, outer = 0, torch.zeros(d, dtype=torch.float64), torch.zeros(d, d, dtype=torch.float64)
            shift = None  # sums of (x - shift), shift the first chunk's mean: no cancellation
            for start in range(0, len(tokens), 512):
                chunk, mask = tokens[start: start + 512], allowed[start: start + 512]
                values = self.model.run_sites(chunk, [site])[site].cpu()[mask].double()
                if shift is None:
                    shift = values.mean(0)
                values = values - shift
                count, total, outer = count + len(values), total + values.sum(0), outer + values.T @ values
            centred_mean = total / count
            means[index] = (shift + centred_mean).float()
            covariances[index] = (outer - count * torch.outer(centred_mean, centred_mean)) / (count - 1)
        return means, covariances


def _widen(tokens: torch.Tensor, width: int, pad_id: int) -> torch.Tensor:
    """``tokens`` padded on the right to ``width`` columns."""
    if tokens.shape[1] >= width:
        return tokens
    padding = torch.full((tokens.shape[0], width - tokens.shape[1]), pad_id, dtype=tokens.dtype)
    return torch.cat([tokens, padding], dim=1)
