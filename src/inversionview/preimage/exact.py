"""The exact ε-preimage of an activation over an enumerable input space, and the sampler's
recall and precision against it (method.md §8; issue 4, item 6).

For addition the space is all 810,000 inputs. Every input is scored at the site exactly as
the sampler's candidates are (min over positions, or the fixed position), so the true in-ε
set is what a perfect sampler would return. Recall and precision are measured inside that
space: recall = the fraction of true in-ε inputs that the sampler drew; precision = the
fraction of the sampler's distinct in-space candidates that are in ε. Candidates outside the
space (malformed, or out of distribution) are counted separately.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from inversionview.decoder.model import Decoder
from inversionview.preimage.colour import sequence_log_probability, token_log_probabilities
from inversionview.probed.distance import candidate_distances
from inversionview.preimage.estimate import importance_size
from inversionview.preimage.query import (QueryConfig, _fixed_positions, draw_candidates,
                                          resolve_query, score_rows, search_around)
from inversionview.probed.subject import Subject


@dataclass
class CompletenessReport:
    site: str
    position: int
    position_label: str
    query: str
    epsilon: float
    metric: str
    universe: int  # inputs enumerated
    true_in_epsilon: int  # of them, inside ε
    candidates: int  # drawn by the sampler, with repeats
    distinct: int
    outside_universe: int  # distinct candidates not in the enumerated space
    found_in_epsilon: int  # distinct candidates in the true in-ε set
    recall: float | None  # found_in_epsilon / true_in_epsilon (None when the set is empty)
    precision: float | None  # found_in_epsilon / distinct in-space candidates
    # found_in_epsilon / min(true_in_epsilon, candidates): recall against what this many
    # candidates could find at best (a 1,024-candidate query cannot find 20,000 inputs)
    recall_at_budget: float | None
    seed: int
    seconds: float
    found_by_decoder: int = 0  # true members among the decoder's draws
    found_by_search: int = 0  # true members only the search found
    reported_outside: int = 0  # inputs the search reported inside ε that are not (should be 0)
    search: dict | None = None  # evaluations, budget, rounds, stop; None without a search
    estimate: float | None = None  # the query's size estimate (decoder draws, importance sampling)
    estimate_ratio: float | None = None  # estimate / true_in_epsilon
    plot: str | None = None
    # Arrays for the plot (not in the JSON record): distance of every input, and the
    # decoder's log-probability of the plotted ones.
    distances: torch.Tensor = field(default=None, repr=False)
    found: torch.Tensor = field(default=None, repr=False)  # [universe] bool

    def to_record(self) -> dict:
        return {name: getattr(self, name) for name in (
            "site", "position", "position_label", "query", "epsilon", "metric", "universe",
            "true_in_epsilon", "found_in_epsilon", "found_by_decoder", "found_by_search",
            "reported_outside", "recall", "recall_at_budget", "precision", "estimate",
            "estimate_ratio", "candidates", "distinct", "outside_universe", "search", "seed",
            "seconds", "plot")}


@torch.no_grad()
def exact_distances(model: Subject, site, query_activation: torch.Tensor,
                    universe: torch.Tensor, metric: str = "euclidean",
                    fixed_position: torch.Tensor | None = None, chunk: int = 1024) -> torch.Tensor:
    """``[N]`` distance of every input of ``universe`` ``[N, n_ctx]`` to the query."""
    out = []
    for start in range(0, universe.shape[0], chunk):
        block = universe[start:start + chunk]
        fixed = None if fixed_position is None else fixed_position[start:start + chunk]
        distance, _, _ = candidate_distances(model, site, query_activation, block.to(model.device),
                                             metric, fixed)
        out.append(distance.cpu())
    return torch.cat(out)


def _row_keys(tokens: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """One int64 key per row (the row read as a base-``vocab_size`` number)."""
    if vocab_size ** tokens.shape[1] >= 2 ** 63:
        raise ValueError("inputs too long to key exactly; enumerate a smaller space")
    powers = vocab_size ** torch.arange(tokens.shape[1] - 1, -1, -1, dtype=torch.int64)
    return (tokens.to(torch.int64) * powers).sum(dim=1)


@torch.no_grad()
def completeness(model: Subject, decoder: Decoder, text: str, site, position: str | int,
                 config: QueryConfig | None = None, seed: int = 0,
                 universe: torch.Tensor | None = None, distances: torch.Tensor | None = None
                 ) -> CompletenessReport:
    """Run the query's sampler (its schedule, seed and search budget: ``config.search``, None
    for the task's default, 0 for the decoder alone) and compare what it finds with the true
    ε-preimage over ``universe`` (default: the task's enumeration); also the query's size
    estimate against the true size. ``distances``: every input's distance to the query, when
    already computed (``exact_distances``, the same config), to compare several decoders."""
    config = (config or QueryConfig()).for_task(model.task)
    started = time.perf_counter()
    task = model.task
    query = resolve_query(model, decoder, text, site, position)
    text, site, index, query_activation = query.text, query.site, query.position, query.activation
    universe = task.enumerate_tokens() if universe is None else universe
    if distances is None:
        fixed = (_fixed_positions(task, task.decode_batch(universe), position)
                 if config.fixed_position else None)
        distances = exact_distances(model, site, query_activation, universe, config.metric, fixed)
    true_in = distances <= config.epsilon
    locate = _Locator(universe, task.vocab.size, task.vocab.pad_id)

    draws = draw_candidates(decoder, query, config, task, seed)
    full, inverse = torch.unique(draws.tokens, dim=0, return_inverse=True)
    slot, in_space = locate(full)
    found = torch.zeros(universe.shape[0], dtype=torch.bool)
    found[slot[in_space]] = True
    # the draws that are true members (the exact distance of what the query would re-score)
    member = torch.zeros(len(full), dtype=torch.bool)
    member[in_space] = true_in[slot[in_space]]
    estimate = importance_size(draws.log_probs, draws.scored_temperatures, draws.temperature,
                               (draws.noise == 0) & (draws.cosine == 1), member[inverse])
    searched = torch.zeros_like(found)
    search, wrong = None, 0
    if config.search:
        rows = full[:, : int(task.lengths(full).max())]
        distance = score_rows(model, query, config, position, rows)[0]
        outcome, query_row, query_scored = search_around(model, decoder, query, config, position,
                                                         full, distance)
        reported = [outcome.tokens[outcome.distance <= config.epsilon]]
        if query_row is not None and query_scored[0][0] <= config.epsilon:
            reported.append(query_row)
        reported = torch.cat(reported)
        where, inside = locate(reported)
        searched[where[inside]] = True
        wrong = int((~true_in[where[inside]]).sum())
        search = {"evaluations": outcome.evaluations, "budget": config.search,
                  "rounds": outcome.rounds, "stop": outcome.stop}
    found_decoder = int((found & true_in).sum())
    found_in = int(((found | searched) & true_in).sum())
    n_true, n_space = int(true_in.sum()), int(in_space.sum())
    return CompletenessReport(
        site=site.short, position=index, position_label=task.position_label(text, index),
        query=text, epsilon=config.epsilon, metric=config.metric, universe=universe.shape[0],
        true_in_epsilon=n_true, candidates=draws.tokens.shape[0], distinct=full.shape[0],
        outside_universe=full.shape[0] - n_space, found_in_epsilon=found_in,
        recall=found_in / n_true if n_true else None,
        recall_at_budget=(min(found_in, config.candidates) / min(n_true, config.candidates)
                          if n_true else None),
        precision=found_decoder / n_space if n_space else None, seed=seed,
        seconds=round(time.perf_counter() - started, 3), distances=distances,
        found=found | searched, found_by_decoder=found_decoder,
        found_by_search=int((searched & ~found & true_in).sum()), reported_outside=wrong,
        search=search, estimate=estimate.size,
        estimate_ratio=estimate.size / n_true if estimate.size and n_true else None)


class _Locator:
    """Rows of the universe by content: ``locate(rows)`` gives each row's index in the
    universe and whether it is there at all (rows of another width are right-padded or cut;
    a cut row that had tokens beyond the universe's width is not there)."""

    def __init__(self, universe: torch.Tensor, vocab_size: int, pad_id: int):
        self.width, self.vocab_size, self.pad_id = universe.shape[1], vocab_size, pad_id
        keys = _row_keys(universe, vocab_size)
        self.order = torch.argsort(keys)
        self.sorted = keys[self.order]

    def __call__(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fits = (rows[:, self.width:] == self.pad_id).all(dim=1)
        rows = rows[:, : self.width]
        if rows.shape[1] < self.width:
            rows = torch.nn.functional.pad(rows, (0, self.width - rows.shape[1]), value=self.pad_id)
        keys = _row_keys(rows, self.vocab_size)
        slot = torch.searchsorted(self.sorted, keys).clamp(max=len(self.sorted) - 1)
        return self.order[slot], (self.sorted[slot] == keys) & fits


@dataclass
class Separation:
    """How the decoder's log-probability ranks the true ε-preimage (the paper's Fig. 11:
    "all inputs within the ε-preimage are assigned higher probability by the decoder than
    most other inputs"), on ``sample`` inputs drawn from each side of ε."""

    above_most: float  # share of in-ε inputs above the out-of-ε inputs' median log-probability
    auc: float  # chance that an in-ε input outranks an out-of-ε one
    inside: int  # in-ε inputs scored
    outside: int  # out-of-ε inputs scored
    distance: torch.Tensor = field(repr=False)  # of the scored inputs, in ε first
    log_prob: torch.Tensor = field(repr=False)

    def to_record(self) -> dict:
        return {"above_most": self.above_most, "auc": self.auc, "inside": self.inside,
                "outside": self.outside}


@torch.no_grad()
def separation(model: Subject, decoder: Decoder, text: str, site, position: str | int,
               distances: torch.Tensor, epsilon: float, universe: torch.Tensor,
               sample: int = 4096, seed: int = 0) -> Separation | None:
    """The decoder's log-probability (free: no grammar mask) of up to ``sample`` inputs of
    ``universe`` on each side of ε, drawn with ``seed``; None when one side is empty."""
    query = resolve_query(model, decoder, text, site, position)
    generator = torch.Generator().manual_seed(seed)
    sides = []
    for side in (distances <= epsilon, distances > epsilon):
        members = torch.nonzero(side).flatten()
        sides.append(members[torch.randperm(len(members), generator=generator)[:sample]])
    if not len(sides[0]) or not len(sides[1]):
        return None
    chosen = torch.cat(sides)
    log_prob = torch.cat([sequence_log_probability(token_log_probabilities(
        decoder, universe[block], query.activation, query.site_id, model.task.vocab.pad_id))
        for block in chosen.split(2048)])
    inside, outside = log_prob[: len(sides[0])], log_prob[len(sides[0]):]
    above = float((inside > outside.median()).float().mean())
    ranks = torch.cat([inside, outside]).argsort().argsort().float()  # 0-based, ties arbitrary
    n_in, n_out = len(inside), len(outside)
    auc = float((ranks[:n_in].sum() - n_in * (n_in - 1) / 2) / (n_in * n_out))
    return Separation(above, auc, n_in, n_out, distances[chosen], log_prob)


@torch.no_grad()
def plot_completeness(report: CompletenessReport, model: Subject, decoder: Decoder,
                      universe: torch.Tensor, path: Path, background: int = 20000,
                      seed: int = 0) -> Path:
    """The paper's completeness scatter: each input's distance against the decoder's
    log-probability of it given z_q, for the true in-ε inputs and ``background`` others,
    each side capped at ``background`` inputs drawn at random (seeded), plus every input
    the sampler found (marked); ε is a vertical line."""
    from inversionview.figures import pyplot, save_figure

    plt = pyplot()
    task = model.task
    query = resolve_query(model, decoder, report.query, report.site, report.position)
    generator = torch.Generator().manual_seed(seed)
    sides = []
    for side in (report.distances > report.epsilon, report.distances <= report.epsilon):
        members = torch.nonzero(side & ~report.found).flatten()
        sides.append(members[torch.randperm(len(members), generator=generator)[:background]])
    chosen = torch.cat(sides + [torch.nonzero(report.found).flatten()])
    log_probs = sequence_log_probability(token_log_probabilities(
        decoder, universe[chosen], query.activation, query.site_id, task.vocab.pad_id))
    distance = report.distances[chosen]
    found = report.found[chosen]
    figure, axes = plt.subplots(figsize=(7, 4.5))
    axes.scatter(distance[~found], log_probs[~found], s=3, alpha=0.35, c="#888",
                 label="input not drawn", rasterized=True)
    axes.scatter(distance[found], log_probs[found], s=9, c="#2563eb", label="drawn by the sampler")
    axes.axvline(report.epsilon, color="#c33", linestyle="--", label=f"ε = {report.epsilon:g}")
    axes.set_xlabel(f"distance to the query ({report.metric})")
    axes.set_ylabel("decoder log P(input | z_q)")
    recall = "-" if report.recall is None else f"{report.recall:.2f}"
    axes.set_title(f"{report.site} at {report.position_label!r} of {report.query}: "
                   f"{report.true_in_epsilon} in ε, recall {recall}", fontsize=10)
    axes.legend(loc="lower right", fontsize=8)
    return save_figure(figure, path)
