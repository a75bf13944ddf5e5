"""How large is an ε-preimage? An importance-sampling estimate from the decoder's own draws.

The decoder is a proposal distribution whose probability of every input it draws is known:
at temperature T, q_T(x) = prod_t softmax(logits_t / T)[x_t] (PAD never drawn), recorded as
the candidates are drawn (``Decoder.sample(log_probs_at=...)``). The noise-free rounds of a
query's schedule draw n_T inputs at each temperature T, so together they are draws from the
mixture q(x) = sum_T (n_T / n) q_T(x), and for any set P of inputs

    |P| = E_{x ~ q}[ 1{x in P} / q(x) ]

(every input has q(x) > 0). The estimate is that mean over the n noise-free draws, with its
standard error; P is the inputs of the task's space (what its sampler could draw) inside ε.
It is unbiased but heavy-tailed: a member the decoder finds unlikely weighs a lot when it is
drawn, and members it never draws are invisible until then. The benchmark (bench/completeness.py)
measures its error against the exact sizes on addition. Noisy rounds draw from the decoder
conditioned on other activations, whose probabilities are not known in closed form; they are
left out of the estimate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class SizeEstimate:
    size: float | None  # estimated number of inputs inside ε (None: no noise-free draw inside)
    stderr: float | None
    draws: int  # the noise-free draws it rests on
    members_drawn: int  # of them, inside ε and inputs of the task


def importance_size(log_probs: torch.Tensor, temperatures: tuple[float, ...],
                    draw_temperature: torch.Tensor, noise_free: torch.Tensor,
                    member: torch.Tensor) -> SizeEstimate:
    """The estimate from draws: ``log_probs`` ``[n, len(temperatures)]`` (each draw's
    log-probability at each temperature), ``draw_temperature`` ``[n]`` (the temperature it was
    drawn at), ``noise_free`` ``[n]`` bool, ``member`` ``[n]`` bool (inside ε and an input)."""
    rows = torch.nonzero(noise_free).flatten()
    n = len(rows)
    if n == 0 or not temperatures:
        return SizeEstimate(None, None, 0, 0)
    drawn_at = draw_temperature[rows]
    shares = torch.tensor([float((drawn_at == t).sum()) / n for t in temperatures], dtype=torch.float64)
    used = shares > 0
    log_mixture = torch.logsumexp(log_probs[rows][:, used].double() + shares[used].log(), dim=1)
    weights = torch.where(member[rows], torch.exp(-log_mixture), torch.zeros((), dtype=torch.float64))
    if not bool(member[rows].any()):  # nothing drawn inside: no evidence of the size at all
        return SizeEstimate(None, None, n, 0)
    size = float(weights.mean())
    stderr = float(weights.std(unbiased=True) / math.sqrt(n)) if n > 1 else math.inf
    return SizeEstimate(size if math.isfinite(size) else None,
                        stderr if math.isfinite(stderr) else None, n, int(member[rows].sum()))
