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


#: The estimate is printed as a figure only when its standard error is at most this share of
#: it, and it rests on at least ``MIN_MEMBERS_DRAWN`` noise-free draws inside ε: a heavy-tailed
#: mean over fewer, or with a larger error, says nothing about the size (issue 28).
MAX_RELATIVE_ERROR = 0.5
MIN_MEMBERS_DRAWN = 5


def why_not_estimable(estimate: SizeEstimate, has_grammar: bool, members_with_continuations: int
                      ) -> str | None:
    """Why ``estimate`` says nothing about the number of members (distinct cut prefixes,
    preimage/members.py), or None where it does.

    The estimate counts whole inputs. That is the number of members only where a member's
    cut prefix fixes the rest of its input: a grammar must define the input space (free text
    continues a prefix in countless ways), and no member may have been seen with two
    continuations (addition read at ``+``, where the second operand is free)."""
    if not has_grammar:
        return ("the estimate counts whole inputs, and without a grammar every continuation "
                "of a member's cut prefix is another input")
    if members_with_continuations:
        return (f"{members_with_continuations:,} members were seen with several continuations, "
                f"and the estimate counts whole inputs, not cut prefixes")
    if estimate.size is None:
        return "no noise-free draw landed inside ε"
    if estimate.members_drawn < MIN_MEMBERS_DRAWN:
        return (f"only {estimate.members_drawn} noise-free draws landed inside ε "
                f"(at least {MIN_MEMBERS_DRAWN} are needed)")
    if estimate.stderr is None or estimate.stderr > MAX_RELATIVE_ERROR * estimate.size:
        share = "an unknown share" if estimate.stderr is None else f"{estimate.stderr / estimate.size:.0%}"
        return (f"its standard error is {share} of the estimate "
                f"(at most {MAX_RELATIVE_ERROR:.0%} is usable)")
    return None
