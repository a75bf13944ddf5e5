"""The local search, the tasks' completion of edited inputs, and the size estimate, on cases
whose answer is known: a constructed distance whose ε-ball is a known set of inputs, and a
proposal distribution whose probabilities are known."""

import math

import pytest
import torch

from inversionview.decoder.train import build_decoder
from inversionview.preimage.colour import token_log_probabilities
from inversionview.preimage.estimate import importance_size
from inversionview.preimage.query import QueryConfig, run_query
from inversionview.preimage.result import PreimageResult
from inversionview.preimage.search import SearchConfig, edit_proposals, local_search, row_keys
from inversionview.probed import build_probed
from inversionview.tasks.addition import AdditionTask
from inversionview.tasks.counting import CountingTask

TINY_DECODER = dict(d_model=32, n_heads=2, d_mlp=64, n_condition_blocks=2)


@pytest.fixture(scope="module")
def addition():
    model = build_probed("addition", seed=0, n_embd=16, n_head=4, n_inner=32)
    return model, build_decoder(model, seed=3, **TINY_DECODER).eval()


# ----- Task.complete ------------------------------------------------------------------------


@pytest.mark.parametrize("task", [AdditionTask(), CountingTask()], ids=lambda t: t.name)
def test_complete_keeps_inputs_and_rewrites_a_wrong_answer(task):
    tokens = task.sample_tokens(500, torch.Generator().manual_seed(0))
    completed, ok = task.complete(tokens)
    assert ok.all() and torch.equal(completed, tokens)
    wrong = tokens.clone()
    answer = task.lengths(tokens) - 2  # the last token before E
    wrong[torch.arange(500), answer] = task.vocab.id_of("3")
    completed, ok = task.complete(wrong)
    assert ok.all() and torch.equal(completed, tokens)


@pytest.mark.parametrize("text, expected", [
    ("B123+456=1E", "B123+456=579E"), ("B999+999=5E", "B999+999=1998E"),
    ("B023+456=1E", None), ("B12+3456=1E", None), ("B1234+56=1E", None)])
def test_addition_completes_only_two_operands_of_three_digits(text, expected):
    task = AdditionTask()
    completed, ok = task.complete(task.encode_batch([text]))
    assert bool(ok[0]) == (expected is not None)
    if expected:
        assert task.decode(completed[0]) == expected


@pytest.mark.parametrize("text, expected", [
    ("Babcabc|a:9E", "Babcabc|a:2E"), ("Babc|aE", "Babc|a:1E"),
    ("Baab|a:1E", None),  # two letters
    ("Babcd|a:1E", None),  # four letters
    ("Babc|d:1E", None),  # the query letter is not in the context
    ("Baaaaaaaaaabc|a:1E", None)])  # a letter ten times
def test_counting_completes_only_inputs_of_its_distribution(text, expected):
    task = CountingTask()
    completed, ok = task.complete(task.encode_batch([text]))
    assert bool(ok[0]) == (expected is not None)
    if expected:
        assert task.decode(completed[0]) == expected


# ----- edits ---------------------------------------------------------------------------------


def test_every_proposal_is_one_substitution_insertion_deletion_or_transposition(addition):
    model, decoder = addition
    task = model.task
    rows = task.encode_batch(["B615+861=1476E", "B100+100=200E"])
    activation = torch.randn(model.d_model)
    edited, priority = edit_proposals(decoder, rows, activation, 0, task.vocab.bos_id,
                                      task.vocab.eos_id, task.vocab.pad_id, per_position=3)
    assert len(edited) == len(priority) > 0 and torch.isfinite(priority).all()
    originals = [task.decode(row) for row in rows]
    kinds = set()
    for row in edited:
        text = task.decode(row)
        assert text.startswith("B") and text.count("E") <= 1 and "P" not in text
        kind = min((_edit_kind(original, text) for original in originals), key=lambda k: k is None)
        assert kind is not None, text
        kinds.add(kind)
    assert kinds == {"substitute", "insert", "delete", "transpose"}
    # every transposition of two different tokens between BOS and EOS is there
    swapped = {task.decode(row) for row in edited}
    text = originals[0]
    body = len(text) - 1  # EOS stays where it is
    pairs = [(i, j) for i in range(1, body) for j in range(i + 1, body) if text[i] != text[j]]
    assert len(pairs) > 50
    for i, j in pairs:
        assert text[:i] + text[j] + text[i + 1:j] + text[i] + text[j + 1:] in swapped


def test_span_deletions_remove_two_consecutive_tokens_inside_the_cut(addition):
    """``spans`` (used on free text) adds, for every j with j + 1 before the cut, the input
    without tokens j and j + 1; without it no proposal is two tokens shorter."""
    model, decoder = addition
    task = model.task
    rows = task.encode_batch(["B615+861=1476E"])
    activation = torch.randn(model.d_model)
    args = (decoder, rows, activation, 0, task.vocab.bos_id, task.vocab.eos_id, task.vocab.pad_id, 2)
    cut = torch.tensor([6])  # best position 5 ('8'): the evidence is "B615+8"
    plain, _ = edit_proposals(*args, transpositions=False, cut=cut)
    spans, priority = edit_proposals(*args, transpositions=False, cut=cut, spans=True)
    text = "B615+861=1476E"
    assert not {task.decode(r) for r in plain} & {text[:j] + text[j + 2:] for j in range(1, 13)}
    shorter = {task.decode(r) for r in spans if len(task.decode(r)) == len(text) - 2}
    assert shorter == {text[:j] + text[j + 2:] for j in range(1, 5)}  # j + 1 < 6
    assert len(spans) == len(plain) + 4 and len(priority) == len(spans)


def _edit_kind(original: str, edited: str) -> str | None:
    if len(edited) == len(original):
        differ = [i for i, (a, b) in enumerate(zip(original, edited)) if a != b]
        if len(differ) == 1:
            return "substitute"
        if len(differ) == 2 and (original[differ[0]], original[differ[1]]) == (edited[differ[1]], edited[differ[0]]):
            return "transpose"
        return None
    if len(edited) == len(original) + 1:
        return "insert" if any(edited[:i] + edited[i + 1:] == original for i in range(len(edited))) else None
    if len(edited) == len(original) - 1:
        return "delete" if any(original[:i] + original[i + 1:] == edited for i in range(len(original))) else None
    return None


# ----- the search on a constructed distance --------------------------------------------------


def _digit_distance(task, target: dict[int, int]):
    """A score whose ε-ball (ε 0.1) is the inputs with the digits ``target`` (position ->
    digit): 0.05 inside, plus 0.1 per mismatching position."""

    def score(rows: torch.Tensor):
        mismatches = sum((rows[:, position] != digit).long() for position, digit in target.items())
        distance = 0.05 + 0.1 * mismatches.float()
        return distance, torch.zeros(len(rows), dtype=torch.long), distance[:, None].expand(-1, rows.shape[1])

    return score


def test_search_finds_a_whole_small_ball_from_one_member(addition):
    model, decoder = addition
    task = model.task
    # F1 6, F2 1, S1 8, S2 6: 10 x 10 = 100 inputs (F3 and S3 free).
    score = _digit_distance(task, {1: 6, 2: 1, 5: 8, 6: 6})
    seed = task.encode_batch(["B613+864=1477E"])
    outcome = local_search(decoder, torch.randn(model.d_model), 0, task, score,
                           seed, score(seed)[0], 0.1, members_wanted=10_000,
                           config=SearchConfig(per_position=12, margin=1.0))
    inside = {task.decode(row) for row in outcome.tokens[outcome.distance <= 0.1]}
    assert len(inside) == 99  # every member but the seed
    assert all(t[1:3] == "61" and t[5:7] == "86" and task.validate(t).correct for t in inside)
    assert outcome.stop == "saturated"
    assert len(set(row_keys(outcome.tokens))) == len(outcome.tokens)  # nothing scored twice


def test_transpositions_reach_members_that_single_edits_cannot(addition):
    """The paper's addition finding as a ball: the digits at each place as an unordered pair.
    From B574+243=817E every other member trades digits between the operands, and every
    single edit lands far outside (no bridge), so only transpositions reach them."""
    model, decoder = addition
    task = model.task

    def score(rows: torch.Tensor):
        pairs = [((1, 5), {5, 2}), ((2, 6), {7, 4}), ((3, 7), {4, 3})]
        mismatches = sum(torch.tensor([{int(row[i]), int(row[j])} != {task.vocab.id_of(str(d)) for d in want}
                                       for row in rows]).long() for (i, j), want in pairs)
        distance = 0.05 + 1.0 * mismatches.float()
        return distance, torch.zeros(len(rows), dtype=torch.long), distance[:, None].expand(-1, rows.shape[1])

    seed = task.encode_batch(["B574+243=817E"])
    outcome = local_search(decoder, torch.randn(model.d_model), 0, task, score,
                           seed, score(seed)[0], 0.1, members_wanted=10_000)
    inside = {task.decode(row) for row in outcome.tokens[outcome.distance <= 0.1]}
    assert len(inside) == 7  # 2 x 2 x 2 orders of the three places, less the seed
    assert all(task.validate(t).correct and t.endswith("=817E") for t in inside)
    assert outcome.stop == "saturated"
    alone = local_search(decoder, torch.randn(model.d_model), 0, task, score, seed,
                         score(seed)[0], 0.1, members_wanted=10_000,
                         config=SearchConfig(transpositions=False))
    assert not bool((alone.distance <= 0.1).any()) and alone.stop == "saturated"


def test_search_climbs_to_the_ball_from_outside_and_stops_at_its_budgets(addition):
    model, decoder = addition
    task = model.task
    score = _digit_distance(task, {1: 6, 2: 1, 5: 8, 6: 6, 3: 2, 7: 0})  # one input: B612+860=1472E
    seed = task.encode_batch(["B100+100=200E"])  # six digits away
    outcome = local_search(decoder, torch.randn(model.d_model), 0, task, score,
                           seed, score(seed)[0], 0.1, members_wanted=1,
                           config=SearchConfig(per_position=12, beam=4))
    found = [task.decode(row) for row in outcome.tokens[outcome.distance <= 0.1]]
    assert found == ["B612+860=1472E"] and outcome.stop == "members"
    limited = local_search(decoder, torch.randn(model.d_model), 0, task, score,
                           seed, score(seed)[0], 0.1, members_wanted=1,
                           config=SearchConfig(per_position=12, beam=4, evaluations=50, round_size=20))
    assert limited.evaluations <= 50 and limited.stop in ("evaluations", "members")


# ----- the size estimate ---------------------------------------------------------------------


def test_importance_estimate_recovers_a_known_size():
    generator = torch.Generator().manual_seed(0)
    # 1,000 items; the proposal puts 90 % of its mass on items 0..99 (members 0..39 and
    # 500..539: 80 members, half of them rarely drawn).
    probabilities = torch.full((1000,), 0.1 / 900)
    probabilities[:100] = 0.9 / 100
    draws = torch.multinomial(probabilities, 20_000, replacement=True, generator=generator)
    member = ((draws < 40) | ((draws >= 500) & (draws < 540)))
    log_q = probabilities[draws].log()[:, None]
    estimate = importance_size(log_q, (1.0,), torch.ones(len(draws)), torch.ones(len(draws), dtype=torch.bool),
                               member)
    assert estimate.draws == 20_000 and estimate.members_drawn == int(member.sum())
    assert abs(estimate.size - 80) < 4 * estimate.stderr and estimate.stderr < 8
    none = importance_size(log_q, (1.0,), torch.ones(len(draws)), torch.ones(len(draws), dtype=torch.bool),
                           torch.zeros(len(draws), dtype=torch.bool))
    assert none.size is None and none.members_drawn == 0


def test_sampler_reports_each_draws_log_probability_at_each_temperature(addition):
    model, decoder = addition
    vocab = model.task.vocab
    activation = torch.randn(6, model.d_model)
    site = torch.zeros(6, dtype=torch.long)
    tokens, log_probs = decoder.sample(activation, site, vocab.bos_id, vocab.eos_id, vocab.pad_id,
                                       torch.tensor([0.5, 1, 2, 0.5, 1, 2]),
                                       torch.Generator().manual_seed(0), log_probs_at=(1.0, 2.0))
    with_pad_banned = token_log_probabilities(decoder, tokens, activation, 0, vocab.pad_id)
    # At T 1 the sampler's log-probability is the teacher-forced one, PAD banned (renormalised).
    logits = decoder(tokens[:, :-1], activation, site).float()
    logits[..., vocab.pad_id] = -math.inf
    for column, temperature in enumerate((1.0, 2.0)):
        steps = (logits / temperature).log_softmax(-1).gather(-1, tokens[:, 1:, None]).squeeze(-1)
        expected = steps.masked_fill(tokens[:, 1:] == vocab.pad_id, 0).sum(dim=1)
        assert torch.allclose(log_probs[:, column], expected, atol=1e-4)
    assert torch.isfinite(with_pad_banned[:, 1:][tokens[:, 1:] != vocab.pad_id]).all()


# ----- the query with the search -------------------------------------------------------------


def test_query_with_search_reports_rescored_members_how_found_and_completeness(addition):
    model, decoder = addition
    text, site, position = "B615+861=1476E", "a1.0", "A1"
    plain = run_query(model, decoder, text, site, position, QueryConfig(candidates=128, search=0,
                                                                         all_samples=True), seed=1)
    searched = run_query(model, decoder, text, site, position,
                         QueryConfig(candidates=128, search=2048, all_samples=True), seed=1)
    assert plain.completeness.search is None and plain.completeness.found_by_search == 0
    # The decoder's draws are the same; the search only adds members.
    assert searched.stats.candidates == plain.stats.candidates
    assert searched.stats.in_epsilon_distinct == plain.stats.in_epsilon_distinct
    by_search = [s for s in searched.samples if s.found_by != "decoder"]
    assert by_search and all(s.in_epsilon and s.multiplicity == 0 for s in by_search)
    assert searched.completeness.found == plain.completeness.found + searched.completeness.found_by_search
    # Every reported member really is inside ε: re-score it on the model.
    texts = [s.text for s in by_search]
    from inversionview.probed.distance import candidate_distances
    query = model.activations(model.tokens(text), site)[0, 9]
    distance, _, _ = candidate_distances(model, model.site(site), query, model.tokens(texts))
    assert (distance <= 0.1 + 1e-6).all()
    assert searched.completeness.search["evaluations"] <= 2048
    # The record carries it all and reads back.
    record = searched.to_record()
    assert record["completeness"]["description"].startswith(f"{searched.completeness.found:,} distinct")
    assert PreimageResult.from_record(record).completeness == searched.completeness
    assert "completeness:" in str(searched) and "Completeness:" in searched.to_html()


def test_query_with_search_is_deterministic(addition):
    model, decoder = addition
    config = QueryConfig(candidates=64, search=1024)
    first = run_query(model, decoder, "B615+861=1476E", "x1.post", "A2", config, seed=3).to_record()
    again = run_query(model, decoder, "B615+861=1476E", "x1.post", "A2", config, seed=3).to_record()
    for record in (first, again):
        record["stats"] = {k: v for k, v in record["stats"].items() if not k.startswith("seconds")}
    assert first == again


def test_shown_inside_takes_the_decoders_draws_first_then_the_searchs():
    from inversionview.preimage.query import select_shown

    distances = [0.01 * i for i in range(10)] + [0.5] * 50  # 10 inside, 50 outside
    drawn = [i % 2 == 0 for i in range(10)] + [True] * 50  # 5 inside drawn, 5 found
    shown = select_shown(distances, 0.1, 20, 0.7, drawn)
    inside = [i for i in shown if distances[i] <= 0.1]
    assert inside == list(range(10))  # 14 wanted: all 10
    few = select_shown(distances, 0.1, 8, 0.75, drawn)
    inside = [i for i in few if distances[i] <= 0.1]
    assert len(inside) == 6 and {0, 2, 4, 6, 8} <= set(inside)  # the 5 draws, then 1 found
    assert all(drawn[i] for i in few if distances[i] > 0.1)
