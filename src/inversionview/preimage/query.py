"""One query: sample an activation's ε-preimage with the decoder, score it on the probed
model, colour the shown samples and summarise (method.md §7, issue 4).

    result = run_query(model, decoder, "Bvvzccvczvvvzvcvc|v:8E", "a1.0", ":")

The defaults reproduce the paper: 1,024 candidates in 16 rounds of 64 over (T, noise) in
[(0.5, 0), (1, 0), (2, 0), (2, 0.1)], normalised Euclidean distance minimised over positions
(PAD and EOS excluded, BOS included), ε 0.1, about 100 samples shown with 60-80 % inside ε.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from inversionview import options
from inversionview.decoder.model import Decoder
from inversionview.errors import echo
from inversionview.preimage.agreement import attribute_agreement
from inversionview.preimage.colour import delta_p, sequence_log_probability
from inversionview.preimage.config import QueryConfig, query_config  # noqa: F401 (re-exported)
from inversionview.probed.distance import candidate_distances
from inversionview.preimage.estimate import importance_size, why_not_estimable
from inversionview.preimage.members import cut_key, cut_keys, merge_by_cut, query_key
from inversionview.preimage.reading import (distinct_prefixes, epsilon_profile, substitution_rows,
                                            token_reading)
from inversionview.preimage.result import (Completeness, PreimageResult, QueryInput, QueryStats,
                                           Sample, _finite_or_none)
from inversionview.preimage.sample import Draws, sample_candidates
from inversionview.preimage.search import SearchConfig, SearchOutcome, local_search
from inversionview.probed.subject import Subject
from inversionview.probed.sites import Site, SiteError, check_site
from inversionview.tasks.abilities import Grammar
from inversionview.tasks.base import Task, TaskInputError


def decoder_site_id(model: Subject, decoder: Decoder, site: Site) -> int:
    """The decoder's index of ``site`` (its own site order); a clear error otherwise."""
    names = list(decoder.site_names) or [s.short for s in model.sites]
    if decoder.config.n_sites != len(names):
        raise SiteError(f"the decoder knows {decoder.config.n_sites} sites but the {model.task.name} "
                        f"task has {len(names)}; it was trained for another task")
    if site.short not in names:
        raise SiteError(f"the decoder was trained on the sites {echo(', '.join(names))}; "
                        f"{site.short} is not one of them")
    return names.index(site.short)


def _fixed_positions(task: Task, rows: torch.Tensor, position: str | int) -> torch.Tensor:
    """``[n]`` index of ``position`` in each row of ids (-1 where a row does not have it)."""
    indices = []
    for row in rows:
        try:
            indices.append(task.resolve_in_tokens(row, position))
        except TaskInputError:
            indices.append(-1)
    return torch.tensor(indices, dtype=torch.long)


def select_shown(distances: list[float], epsilon: float, shown: int,
                 inside_fraction: float, drawn: list[bool] | None = None) -> list[int]:
    """Indices (into ``distances``, sorted ascending) of the samples to display: about
    ``shown`` of them with about ``inside_fraction`` inside ε, each side spread evenly over
    its distance ranks, so the view spans the ball and what lies just beyond it.

    With ``drawn`` (True for the decoder's draws), the inside side takes the decoder's draws
    first and fills up with the search's finds, and the outside side is the decoder's: the
    search's members cluster around where it started, the draws do not."""
    drawn = drawn or [True] * len(distances)
    inside = [i for i, d in enumerate(distances) if d <= epsilon and drawn[i]]
    found = [i for i, d in enumerate(distances) if d <= epsilon and not drawn[i]]
    outside = [i for i, d in enumerate(distances) if d > epsilon and math.isfinite(d) and drawn[i]]
    n_members = len(inside) + len(found)
    n_inside = min(n_members, round(shown * inside_fraction))
    n_outside = min(len(outside), shown - n_inside)
    if n_inside > 0:  # keep about inside_fraction inside even when few are
        n_outside = min(n_outside, max(math.ceil(n_inside * (1 - inside_fraction) / inside_fraction), 10))
    n_inside = min(n_members, shown - n_outside)  # fill up from inside if outside ran out
    from_drawn = min(len(inside), n_inside)
    return sorted(_spread(inside, from_drawn) + _spread(found, n_inside - from_drawn)
                  + _spread(outside, n_outside))


def _spread(indices: list[int], k: int) -> list[int]:
    if k >= len(indices):
        return list(indices)
    if k <= 0:
        return []
    step = (len(indices) - 1) / max(k - 1, 1)
    return [indices[round(j * step)] for j in range(k)]


def distance_histogram(distances: torch.Tensor, counts: torch.Tensor, epsilon: float,
                       ) -> dict[str, list]:
    """Bins of width ε/2 from 0 to 10ε and one overflow bin (edge ``inf``), counts with
    repeats; candidates without a scorable position are left out."""
    edges = [round(epsilon / 2 * i, 6) for i in range(21)] + [math.inf]
    finite = torch.isfinite(distances)
    bins = torch.bucketize(distances[finite], torch.tensor(edges[1:-1]), right=True)
    histogram = torch.zeros(len(edges) - 1, dtype=torch.long)
    histogram.index_add_(0, bins, counts[finite])
    return {"edges": [None if math.isinf(e) else e for e in edges], "counts": histogram.tolist()}


@dataclass
class ResolvedQuery:
    """A query checked against the model and the decoder."""

    text: str  # normalised (leading BOS)
    site: Site
    site_id: int  # the decoder's index of the site
    position: int  # index in ``text``
    activations: torch.Tensor  # [pos, d] the site's activation at every position of ``text``

    @property
    def activation(self) -> torch.Tensor:
        """z_q ``[d]``."""
        return self.activations[self.position]


@torch.no_grad()
def resolve_query(model: Subject, decoder: Decoder, text: str, site: str | Site,
                  position: str | int) -> ResolvedQuery:
    """Parse and check the query; bad input raises TaskInputError or SiteError (an unknown
    site's message lists the sites the decoder reads)."""
    site = check_site(site, model.n_layers, model.n_heads, listed=tuple(s.short for s in model.sites))
    site_id = decoder_site_id(model, decoder, site)
    text = model.task.normalize(text)
    tokens = model.tokens(text)  # first: a character outside the vocabulary is the clearer error
    index = model.task.resolve_position(text, position)
    return ResolvedQuery(text, site, site_id, index, model.activations(tokens, site)[0])


def draw_candidates(decoder: Decoder, query: ResolvedQuery, config: QueryConfig, task: Task,
                    seed: int, on_step: Callable[[int, int], None] | None = None) -> Draws:
    """The candidates of ``config``'s schedule (``Draws``), constrained to the task's grammar
    with ``config.constrain``; the same seed, the same tokens."""
    device = next(decoder.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    return sample_candidates(decoder, query.activation, query.site_id, config.schedule,
                             task.vocab, generator, on_step,
                             task.next_token_mask if constrained(task, config) else None,
                             config.noise_cosine, config.banned)


def constrained(task: Task, config: QueryConfig) -> bool:
    """Whether ``config`` constrains the draws and ``task`` has a grammar to do it with."""
    return config.constrain and has_grammar(task)


def has_grammar(task: Grammar) -> bool:
    """Whether ``task`` says which tokens can lead to an input (``Task.next_token_mask``)."""
    return task.next_token_mask(torch.tensor([[task.vocab.bos_id]])) is not None


def score_rows(model: Subject, query: ResolvedQuery, config: QueryConfig, position: str | int,
               rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``candidate_distances`` of ``rows`` to the query as ``config`` reads them (at the
    query's named position in each row with ``fixed_position``), on the CPU."""
    fixed = _fixed_positions(model.task, rows, position) if config.fixed_position else None
    scored = candidate_distances(model, query.site, query.activation, rows.to(model.device),
                                 config.metric, fixed)
    return tuple(t.cpu() for t in scored)


def search_preimage(model: Subject, decoder: Decoder, query: ResolvedQuery, config: QueryConfig,
                    position: str | int, seeds: torch.Tensor, seed_distance: torch.Tensor,
                    on_round: Callable[[int, int], None] | None = None,
                    seed_best: torch.Tensor | None = None) -> SearchOutcome:
    """The local search (preimage/search.py) around the decoder's distinct candidates; with
    ``seed_best`` (their best positions) its members are cut prefixes, the query's own left
    out (preimage/members.py)."""
    exclude = None
    if seed_best is not None:
        exclude = query_key(model.tokens(query.text)[0].cpu(), query.position)
    return local_search(decoder, query.activation, query.site_id, model.task,
                        lambda rows: score_rows(model, query, config, position, rows),
                        seeds, seed_distance, config.epsilon, config.candidates,
                        replace(config.search_settings or SearchConfig(), evaluations=config.search),
                        on_round, seed_best=seed_best, exclude=exclude,
                        truncate=seed_best is not None and not has_grammar(model.task))


def search_around(model: Subject, decoder: Decoder, query: ResolvedQuery, config: QueryConfig,
                  position: str | int, candidates: torch.Tensor, distance: torch.Tensor,
                  on_round: Callable[[int, int], None] | None = None,
                  best: torch.Tensor | None = None,
                  ) -> tuple[SearchOutcome, torch.Tensor | None, tuple | None]:
    """The search seeded by the decoder's distinct ``candidates`` (scored: ``distance``, and
    ``best`` positions where members are cut prefixes) and by the query itself, the first
    member of its own preimage. Returns the outcome, and the query's row and ``score_rows``
    triple when it was added as a seed (not among the candidates, and short enough for the
    decoder's inputs), else None twice."""
    task = model.task
    seeds, seed_distance, seed_best = candidates, distance, best
    query_row = query_scored = None
    query_ids = model.tokens(query.text).cpu()
    if int(task.lengths(query_ids)[0]) <= candidates.shape[1]:
        row = _padded(query_ids, candidates.shape[1], task.vocab.pad_id)
        if not (candidates == row).all(dim=1).any():
            query_row, query_scored = row, score_rows(model, query, config, position, row)
            seeds = torch.cat([candidates, query_row])
            seed_distance = torch.cat([distance, query_scored[0]])
            if best is not None:
                seed_best = torch.cat([best, query_scored[1]])
    outcome = search_preimage(model, decoder, query, config, position, seeds, seed_distance,
                              on_round, seed_best)
    return outcome, query_row, query_scored


#: ``progress(stage, fraction)``: stage is "sampling", "scoring" or "colouring", fraction the
#: share of the whole query done (0..1). It may raise (e.g. QueryCancelled) to stop the query.
Progress = Callable[[str, float], None]

# Rough shares of a query's time (bench/query.py: sampling dominates).
_SAMPLING_SHARE, _SCORING_SHARE = 0.8, 0.1


class QueryCancelled(Exception):
    """Raised by a progress callback to stop a running query."""


@torch.no_grad()
def run_query(model: Subject, decoder: Decoder, text: str, site: str | Site,
              position: str | int, config: QueryConfig | None = None, seed: int = 0,
              decoder_name: str = "<memory>", progress: Progress | None = None) -> PreimageResult:
    """Sample, score and colour the ε-preimage of ``site``'s activation at ``position`` of
    ``text``. Bad input (characters, site, position) raises TaskInputError or SiteError.
    ``progress`` is told how far the query is (see ``Progress``)."""
    config = (config or QueryConfig()).for_task(model.task)
    seed = options.SEED.check(seed)
    report = progress or (lambda stage, fraction: None)
    started = time.perf_counter()
    task = model.task
    vocab = task.vocab
    resolved = resolve_query(model, decoder, text, site, position)
    text, site, site_id, index = resolved.text, resolved.site, resolved.site_id, resolved.position
    query_activation, bos_activation = resolved.activation, resolved.activations[0]

    # 1. Sample.
    schedule = config.schedule
    sampling_share = _SAMPLING_SHARE * (0.5 if config.search else 1.0)
    report("sampling", 0.0)
    draws = draw_candidates(decoder, resolved, config, task, seed,
                            lambda step, steps: report("sampling", sampling_share * step / steps))
    sampled = time.perf_counter()
    report("scoring", sampling_share)

    # 2. Merge identical candidates, then score each distinct one once.
    full, inverse, multiplicity = torch.unique(draws.tokens, dim=0, return_inverse=True,
                                               return_counts=True)
    # Columns that are PAD in every candidate change nothing (causal, and PAD is excluded).
    distinct = full[:, : int(task.lengths(full).max())]
    distance, best, per_position = score_rows(model, resolved, config, position, distinct)
    in_space = task.in_space(full)
    searched = decoder_scored = time.perf_counter()

    # 3. Search the ball around them for the members the decoder missed.
    outcome = query_row = query_scored = None
    if config.search:
        report("searching", sampling_share)
        outcome, query_row, query_scored = search_around(
            model, decoder, resolved, config, position, full, distance,
            lambda done, budget: report("searching", sampling_share + (_SAMPLING_SHARE - sampling_share)
                                        * min(done / budget, 1.0)), best=best)
        searched = time.perf_counter()
        report("scoring", _SAMPLING_SHARE)
    pool = [(full[i], distance[i].item(), int(best[i]), per_position[i], int(multiplicity[i]),
             "decoder") for i in range(len(distinct))]
    # The query itself (scored to seed the search) is no sample: its cut prefix is its own.
    if outcome is not None:
        for i in torch.nonzero(outcome.distance <= config.epsilon).flatten().tolist():
            pool.append((outcome.tokens[i], outcome.distance[i].item(), int(outcome.best_position[i]),
                         outcome.per_position[i], 0, f"search {int(outcome.round[i])}"))
    texts = task.decode_batch(torch.stack([row[0] for row in pool]))
    order = sorted(range(len(pool)), key=lambda i: (pool[i][1], texts[i]))
    scored_inputs = [_sample(task, texts[i], *pool[i][:-1], config.epsilon, found_by=pool[i][-1])
                     for i in order]
    valid_count = sum(s.multiplicity for s in scored_inputs if s.valid)
    # A member is its cut prefix: merge inputs that share one, set the query's own apart.
    own = query_key(model.tokens(text)[0].cpu(), index)
    merged, context = merge_by_cut(scored_inputs, [cut_key(pool[i][0], pool[i][2], pool[i][1]) for i in order],
                                   [pool[i][0] for i in order], own)
    samples = [member.sample for member in merged]
    scored = time.perf_counter()
    report("colouring", _SAMPLING_SHARE + _SCORING_SHARE)

    # 4. Choose what to show and colour it.
    if config.all_samples:
        shown_indices = [i for i, s in enumerate(samples) if math.isfinite(s.distance)]
    else:
        shown_indices = select_shown([s.distance for s in samples], config.epsilon, config.shown,
                                     config.shown_inside_fraction,
                                     [s.found_by == "decoder" for s in samples])
    shown = [samples[i] for i in shown_indices]
    if shown:
        shown_tokens = torch.stack([merged[i].row for i in shown_indices])
        shown_tokens = shown_tokens[:, : int(task.lengths(shown_tokens).max())]
        changes, with_query = delta_p(decoder, shown_tokens, query_activation, bos_activation,
                                      site_id, vocab.pad_id)
        log_probs = sequence_log_probability(with_query)
        for sample, row, log_prob in zip(shown, changes, log_probs.tolist()):
            sample.delta_p = _finite_or_none(row[: len(sample.tokens)].tolist())
            sample.log_probability = round(log_prob, 6)
    coloured = time.perf_counter()

    # The decoder's draws, counted by cut prefix with the query's own left out.
    keys = cut_keys(full, best, distance)
    context_row = torch.tensor([key == own for key in keys], dtype=torch.bool)
    inside = distance <= config.epsilon
    members = inside & in_space & ~context_row
    counted = int(multiplicity.sum())
    in_count = int(multiplicity[inside & ~context_row].sum())
    stats = QueryStats(
        candidates=counted, distinct=len({key or i for i, key in enumerate(keys)}),
        in_epsilon=in_count, in_epsilon_rate=in_count / counted,
        in_epsilon_distinct=len({k for k, ok in zip(keys, (inside & ~context_row).tolist()) if ok}),
        valid_rate=valid_count / counted, shown=len(shown),
        shown_in_epsilon=sum(s.in_epsilon for s in shown),
        seconds=round(coloured - started, 4), seconds_sampling=round(sampled - started, 4),
        seconds_scoring=round(decoder_scored - sampled + scored - searched, 4),
        seconds_colouring=round(coloured - scored, 4),
        seconds_search=round(searched - decoder_scored, 4),
        distinct_inputs=len(distinct), in_epsilon_inputs=int(inside.sum()),
        query_context=int(multiplicity[context_row].sum()))
    estimate = importance_size(draws.log_probs, draws.scored_temperatures, draws.temperature,
                               (draws.noise == 0) & (draws.cosine == 1), members[inverse])
    found = [m for m in merged if m.sample.in_epsilon and bool(task.in_space(m.row[None])[0])]
    drawn = {key for key, member in zip(keys, members.tolist()) if member}
    completeness = Completeness.of(
        found_by_decoder=len(drawn), found_by_search=sum(m.key not in drawn for m in found),
        estimate=estimate,
        search=None if outcome is None else {
            "evaluations": outcome.evaluations, "budget": config.search, "rounds": outcome.rounds,
            "stop": outcome.stop, "members_wanted": config.candidates},
        not_estimable=why_not_estimable(estimate, has_grammar(task),
                                        sum(m.sample.continuations > 1 for m in found)))
    profile, tokens_read = read_tokens(model, decoder, resolved, config, position, full, distance, best,
                                       outcome, query_row, query_scored)
    query_validity = task.validate(text)
    query_attributes = task.attributes(text)
    return PreimageResult(
        model=model.source, task=task.name, decoder=decoder_name, site=site.short, hook=site.hook,
        position=index, position_label=_query_label(task, text, index), metric=config.metric,
        epsilon=config.epsilon, fixed_position=config.fixed_position, seed=seed,
        schedule=[r.to_dict() for r in schedule],
        query=QueryInput(text=text, tokens=task.text_tokens(text), attributes=query_attributes,
                         valid=query_validity.well_formed and query_validity.in_distribution,
                         reason=query_validity.reason),
        stats=stats,
        histogram=distance_histogram(distance[~context_row], multiplicity[~context_row], config.epsilon),
        # Over the decoder's draws, as the paper: the search's finds are neighbours of where it
        # started and would overstate what inputs inside ε share.
        attribute_agreement=attribute_agreement(task.attribute_names, query_attributes,
                                                [s for s in samples if s.found_by == "decoder"]),
        samples=shown, all_samples=config.all_samples, completeness=completeness,
        query_context=context.to_dict(), epsilon_profile=profile, token_reading=tokens_read,
        constrained=constrained(task, config),
        noise_cosine=None if config.noise_cosine is None else list(config.noise_cosine),
        banned_tokens=len(config.banned))


#: Substitutions tried at each token of the query's prefix for the token reading's invariance.
SUBSTITUTIONS_PER_TOKEN = 8


def read_tokens(model: Subject, decoder: Decoder, query: ResolvedQuery, config: QueryConfig,
                position: str | int, drawn: torch.Tensor, distance: torch.Tensor, best: torch.Tensor,
                outcome: SearchOutcome | None, query_row: torch.Tensor | None,
                query_scored: tuple | None) -> tuple[dict, list[dict]]:
    """The ε profile and the token reading (preimage/reading.py) from everything the query
    scored: the decoder's distinct draws, every input the search scored, and the query's
    prefix with each of its tokens substituted (scored here)."""
    task = model.task
    vocab = task.vocab
    query_ids = model.tokens(query.text)[0].cpu()
    # The prefix and EOS, in no more columns than the decoder reads (a query past them has
    # no substitutions: the decoder cannot propose tokens there)
    width = min(query.position + 2, decoder.config.n_ctx)
    substituted = torch.zeros((0, width), dtype=torch.long)
    where = torch.zeros(0, dtype=torch.long)
    if query.position < width:
        substituted, where = substitution_rows(decoder, query_ids[:width].clone(), query.position,
                                               query.activation, query.site_id, vocab.bos_id,
                                               vocab.eos_id, vocab.pad_id, SUBSTITUTIONS_PER_TOKEN)
    sub_distance, sub_best = torch.zeros(0), torch.zeros(0, dtype=torch.long)
    if len(substituted):
        sub_distance, sub_best, _ = score_rows(model, query, config, position, substituted)
    tried = {}
    for index, value in zip(where.tolist(), sub_distance.tolist()):
        inside, total = tried.get(index, (0, 0))
        tried[index] = (inside + (value <= config.epsilon), total + 1)
    parts = [(drawn, best, distance, ["decoder"] * len(drawn)),
             (substituted, sub_best, sub_distance, ["substitution"] * len(substituted))]
    if outcome is not None and len(outcome.tokens):
        parts.append((outcome.tokens, outcome.best_position, outcome.distance,
                      [f"search {int(r)}" for r in outcome.round]))
    widest = max(p[0].shape[1] for p in parts)
    rows = torch.cat([_widened(p[0], widest, vocab.pad_id) for p in parts])
    scored = distinct_prefixes(rows, torch.cat([p[1].long() for p in parts]),
                               torch.cat([p[2].float() for p in parts]),
                               [source for p in parts for source in p[3]],
                               query_ids[: query.position + 1].tolist())
    return (epsilon_profile(scored, config.epsilon, task.token_strings),
            token_reading(query_ids.tolist(), query.position, scored, config.epsilon,
                          task.token_strings, tried))


def _widened(rows: torch.Tensor, width: int, pad_id: int) -> torch.Tensor:
    """``rows`` ``[n, w]`` right-padded to ``width`` columns (or cut to them)."""
    out = torch.full((rows.shape[0], width), pad_id, dtype=torch.long)
    out[:, : min(width, rows.shape[1])] = rows[:, :width]
    return out


def _padded(tokens: torch.Tensor, width: int, pad_id: int) -> torch.Tensor:
    """``tokens`` ``[1, n]`` right-padded (or cut) to ``width``."""
    row = torch.full((1, width), pad_id, dtype=torch.long)
    row[0, :min(width, tokens.shape[1])] = tokens[0, :width]
    return row


def _sample(task: Task, text: str, ids: torch.Tensor, distance: float, best: int,
            per_position: torch.Tensor, multiplicity: int, epsilon: float,
            found_by: str = "decoder") -> Sample:
    validity = task.validate(text)
    tokens = task.token_strings(ids)
    return Sample(
        text=text, tokens=tokens, distance=distance, best_position=best,
        best_position_label=_label(task, text, best), in_epsilon=distance <= epsilon,
        valid=validity.well_formed and validity.in_distribution, correct=validity.correct,
        reason=validity.reason, attributes=task.attributes(text), multiplicity=multiplicity,
        position_distances=_finite_or_none(per_position[:len(tokens)].tolist()),
        found_by=found_by, ids=ids[:len(tokens)].tolist())


def _query_label(task: Task, text: str, index: int) -> str:
    """The query position's name (``:``, END), or on free text its token (``' Aaron'``
    reads better than index 5, which the header gives beside it)."""
    label = task.position_label(text, index)
    if label == str(index) and task.free_text:
        return task.text_tokens(text)[index]
    return label


def _label(task: Task, text: str, index: int) -> str:
    if index < 0:
        return "-"
    try:
        return task.position_label(text, index)
    except TaskInputError:
        return str(index)

