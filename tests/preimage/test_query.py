"""The query engine on tiny models built in the test: schedule, determinism, merging,
display selection, ΔP, the attribute agreement table and the exact preimage."""

import math

import pytest
import torch
from torch import nn

from inversionview.decoder.train import build_decoder
from inversionview.preimage import exact
from inversionview.preimage import query as query_module
from inversionview.preimage.agreement import attribute_agreement
from inversionview.preimage.colour import delta_p, token_log_probabilities
from inversionview.probed.distance import candidate_distances
from inversionview.preimage.query import QueryConfig, run_query, select_shown
from inversionview.preimage.result import PreimageResult, Sample
from inversionview.preimage.sample import Draws, make_schedule
from inversionview.probed import build_probed
from inversionview.probed.sites import SiteError
from inversionview.tasks import TaskInputError

TINY_DECODER = dict(d_model=32, n_heads=2, d_mlp=64, n_condition_blocks=2)


@pytest.fixture(scope="module")
def addition():
    model = build_probed("addition", seed=0, n_embd=16, n_head=4, n_inner=32)
    return model, build_decoder(model, seed=3, **TINY_DECODER).eval()


def test_default_schedule_is_the_papers():
    schedule = make_schedule()
    assert len(schedule) == 16 and sum(r.candidates for r in schedule) == 1024
    assert [(r.temperature, r.noise) for r in schedule[:4]] == [(0.5, 0.0), (1.0, 0.0), (2.0, 0.0), (2.0, 0.1)]
    assert schedule[4:8] == schedule[:4]
    short = make_schedule(100)
    assert [r.candidates for r in short] == [64, 36]
    with pytest.raises(ValueError, match="temperature"):
        make_schedule(64, ((0.0, 0.0),))


def test_same_seed_same_result_and_another_seed_differs(addition):
    model, decoder = addition
    config = QueryConfig(candidates=128)
    first = run_query(model, decoder, "B615+861=1476E", "x0.mid", "=", config, seed=5).to_record()
    again = run_query(model, decoder, "B615+861=1476E", "x0.mid", "=", config, seed=5).to_record()
    other = run_query(model, decoder, "B615+861=1476E", "x0.mid", "=", config, seed=6).to_record()
    for record in (first, again, other):
        record["stats"] = {k: v for k, v in record["stats"].items() if not k.startswith("seconds")}
    assert first == again
    assert [s["text"] for s in first["samples"]] != [s["text"] for s in other["samples"]]


def test_candidates_are_merged_scored_and_sorted(addition):
    model, decoder = addition
    # T 0.05 makes the decoder repeat itself: duplicates must merge into multiplicities.
    config = QueryConfig(candidates=64, settings=((0.05, 0.0),), all_samples=True)
    result = run_query(model, decoder, "B615+861=1476E", "a0.1", "A1", config, seed=0)
    texts = [s.text for s in result.samples]
    assert len(set(texts)) == len(texts)
    assert sum(s.multiplicity for s in result.samples) == result.stats.candidates == 64
    assert result.stats.distinct < 64
    distances = [s.distance for s in result.samples]
    assert distances == sorted(distances)
    # each sample's distance is the exact minimum of its own per-position distances
    site = model.site("a0.1")
    query = model.activations(model.tokens("B615+861=1476E"), site)[0, 9]
    tokens = model.tokens([s.text for s in result.samples])
    expected, best, _ = candidate_distances(model, site, query, tokens)
    assert torch.allclose(torch.tensor(distances), expected)
    assert [s.best_position for s in result.samples] == best.tolist()
    assert result.stats.in_epsilon == sum(s.multiplicity for s in result.samples if s.distance <= 0.1)


def test_fixed_position_reads_the_named_position_of_each_candidate(addition):
    model, decoder = addition
    config = QueryConfig(candidates=64, fixed_position=True, all_samples=True)
    result = run_query(model, decoder, "B615+861=1476E", "x0.post", "=", config, seed=1)
    # addition names positions by index: '=' is index 8 in every candidate long enough
    assert {s.best_position for s in result.samples} <= {8, -1}
    for sample in result.samples:
        index = 8 if len(sample.text) > 8 else -1
        if index < 0 or sample.position_distances[index] is None:
            assert math.isinf(sample.distance) and sample.best_position == -1
        else:
            assert sample.best_position == index
            assert sample.distance == pytest.approx(sample.position_distances[index], abs=1e-6)


def test_fixed_position_tensor_marks_missing_positions_inf():
    model = build_probed("addition", seed=0, n_embd=16, n_head=4, n_inner=32)
    tokens = model.tokens(["B123+456=579E", "B124+456=580E"])
    site = model.site("x0.mid")
    query = model.activations(tokens, site)[0, 5]
    distance, best, per_position = candidate_distances(model, site, query, tokens,
                                                       fixed_position=torch.tensor([5, -1]))
    assert distance[0] == 0 and math.isinf(distance[1]) and best.tolist() == [5, -1]


def test_display_selection_keeps_about_seventy_percent_inside():
    distances = [i / 1000 for i in range(1000)]  # 101 inside ε 0.1, 899 outside
    shown = select_shown(distances, 0.1, 100, 0.7)
    inside = sum(distances[i] <= 0.1 for i in shown)
    assert len(shown) == 100 and inside == 70 and shown == sorted(shown)
    assert distances[shown[0]] == 0.0  # spread over the ball, from its centre ...
    assert distances[max(i for i in shown if distances[i] <= 0.1)] == 0.1  # ... to its edge
    few = select_shown([0.01, 0.02] + [0.5] * 300, 0.1, 100, 0.7)
    assert len(few) == 12  # 2 inside, and at least 10 outside for contrast
    none_outside = select_shown([0.01] * 150, 0.1, 100, 0.7)
    assert len(none_outside) == 100


class _FakeDecoder(nn.Module):
    """Logits that favour token 5 when the activation's first element is positive."""

    def __init__(self, vocab_size):
        super().__init__()
        self.vocab_size = vocab_size
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, tokens, activation, site_id):
        logits = torch.zeros(*tokens.shape, self.vocab_size)
        logits[..., 5] = 3.0 * activation[:, 0, None]
        return logits


def test_delta_p_is_positive_for_tokens_the_query_favours():
    fake = _FakeDecoder(vocab_size=8)
    tokens = torch.tensor([[0, 5, 2, 7, 7]])  # BOS 5 2, then PAD (id 7)
    query, bos = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0])
    changes, with_query = delta_p(fake, tokens, query, bos, site_id=0, pad_id=7)
    changes = changes[0]
    p5 = math.exp(3) / (math.exp(3) + 7)
    assert math.isnan(changes[0]) and math.isnan(changes[3]) and math.isnan(changes[4])
    assert changes[1].item() == pytest.approx(p5 - 1 / 8)  # token 5: raised
    assert changes[2].item() == pytest.approx((1 - p5) / 7 - 1 / 8)  # token 2: lowered
    logs = token_log_probabilities(fake, tokens, query, 0, pad_id=7)[0]
    assert logs[1].item() == pytest.approx(math.log(p5))
    assert torch.equal(with_query[0].nan_to_num(), logs.nan_to_num())


def _sample(text, inside, **attributes):
    return Sample(text=text, tokens=list(text), distance=0.05 if inside else 0.5, best_position=1,
                  best_position_label="1", in_epsilon=inside, valid=bool(attributes), correct=None,
                  reason="", attributes=attributes, multiplicity=1, position_distances=[])


def test_attribute_agreement_on_a_constructed_result():
    samples = [_sample("a", True, count=3, letter="x"), _sample("b", True, count=3, letter="y"),
               _sample("c", True, count=3, letter="x"), _sample("d", True, count=2, letter="x"),
               _sample("e", False, count=1, letter="x"), _sample("f", False, count=1, letter="y"),
               _sample("g", False), _sample("h", True)]  # malformed: no attributes, left out
    rows = attribute_agreement(("letter", "count", "length"), {"count": 3, "letter": "x"}, samples)
    assert [row["attribute"] for row in rows] == ["count", "letter"]  # sorted by contrast
    count, letter = rows
    assert count["inside"] == 0.75 and count["outside"] == 0.0 and count["contrast"] == 0.75
    assert count["n_inside"] == 4 and count["n_outside"] == 2
    assert letter["inside"] == 0.75 and letter["outside"] == 0.5 and letter["contrast"] == 0.25
    lonely = attribute_agreement(("count",), {"count": 3}, [_sample("a", True, count=3)])
    assert lonely[0]["inside"] == 1.0 and lonely[0]["outside"] is None and lonely[0]["contrast"] is None


def test_record_round_trips_through_json(addition):
    import json

    model, decoder = addition
    result = run_query(model, decoder, "B615+861=1476E", "x0.pre", "F1", QueryConfig(candidates=64))
    record = json.loads(json.dumps(result.to_record(), allow_nan=False))
    assert PreimageResult.from_record(record).to_record() == record
    assert record["query"]["attributes"]["sum"] == 1476
    shown = record["samples"]
    assert shown and all(len(s["delta_p"]) == len(s["tokens"]) and s["delta_p"][0] is None for s in shown)


def test_bad_queries_say_what_is_allowed(addition):
    model, decoder = addition
    with pytest.raises(SiteError, match="not one of them"):
        run_query(model, decoder, "B615+861=1476E", "a0", "=")  # a site, but not the decoder's
    with pytest.raises(SiteError, match="valid sites"):
        run_query(model, decoder, "B615+861=1476E", "a7.0", "=")
    with pytest.raises(TaskInputError, match="unknown position"):
        run_query(model, decoder, "B615+861=1476E", "x0.pre", "Q")
    with pytest.raises(TaskInputError, match="not in the addition vocabulary"):
        run_query(model, decoder, "B615+86x=1476E", "x0.pre", "=")


def test_recall_and_precision_on_a_small_enumerated_case(addition, monkeypatch):
    model, decoder = addition
    task = model.task
    universe = task.encode_batch(["B100+100=200E", "B100+101=201E", "B100+102=202E",
                                  "B500+500=1000E", "B999+999=1998E", "B123+456=579E"])
    site = model.site("x0.post")
    query_text = "B100+100=200E"
    query = model.activations(model.tokens(query_text), site)[0, 8]
    distances = exact.exact_distances(model, site, query, universe)
    epsilon = float(distances.sort().values[2]) + 1e-6  # exactly three inputs inside
    true_in = {i for i in range(6) if distances[i] <= epsilon}
    assert len(true_in) == 3
    outside_in_space = next(i for i in range(6) if i not in true_in)
    found_inside = sorted(true_in)[:2]
    drawn = torch.cat([universe[found_inside + [found_inside[0], outside_in_space]],
                       task.encode_batch(["B1+1=2E"])])  # a repeat, one outside the space
    n = len(drawn)  # drawn at T 1 without noise, each with probability 1 (log 0)
    monkeypatch.setattr(query_module, "sample_candidates", lambda *args, **kwargs: Draws(
        drawn, torch.zeros(n, dtype=torch.long), torch.ones(n), torch.zeros(n), torch.ones(n),
        torch.zeros(n, 1), (1.0,)))
    report = exact.completeness(model, decoder, query_text, "x0.post", "=",
                                QueryConfig(epsilon=epsilon, search=0), universe=universe)
    assert report.true_in_epsilon == 3 and report.found_in_epsilon == 2
    assert report.found_by_decoder == 2 and report.found_by_search == 0 and report.search is None
    # the size estimate: the mean of 1/P over the draws that are members (3 of 5, P = 1)
    assert report.estimate == pytest.approx(3 / 5)
    assert report.estimate_ratio == pytest.approx(3 / 5 / 3)
    assert report.candidates == 5 and report.distinct == 4 and report.outside_universe == 1
    assert report.recall == pytest.approx(2 / 3) and report.precision == pytest.approx(2 / 3)
    assert report.recall_at_budget == pytest.approx(2 / 3)  # 5 candidates could find all 3
    assert report.found.tolist() == [i in found_inside + [outside_in_space] for i in range(6)]


def test_separation_ranks_the_exact_preimage_by_the_decoders_log_probability(addition):
    """The AUC and the share above the median agree with a brute-force count over the
    decoder's own log-probabilities of every input (few enough to score them all)."""
    from inversionview.preimage import exact
    from inversionview.preimage.colour import sequence_log_probability, token_log_probabilities
    from inversionview.preimage.query import resolve_query

    model, decoder = addition
    task = model.task
    universe = task.enumerate_tokens()[::4001][:40]
    query_text = task.decode_batch(universe[:1])[0]
    query = resolve_query(model, decoder, query_text, "x0.post", "=")
    distances = exact.exact_distances(model, query.site, query.activation, universe)
    epsilon = float(distances.sort().values[9]) + 1e-6  # ten inside, thirty outside
    ranked = exact.separation(model, decoder, query_text, "x0.post", "=", distances, epsilon,
                              universe)
    log_prob = sequence_log_probability(token_log_probabilities(
        decoder, universe, query.activation, query.site_id, task.vocab.pad_id))
    inside, outside = log_prob[distances <= epsilon], log_prob[distances > epsilon]
    pairs = (inside[:, None] > outside[None, :]).float().mean()
    assert (ranked.inside, ranked.outside) == (10, 30)
    assert ranked.auc == pytest.approx(float(pairs), abs=1e-6)
    assert ranked.above_most == pytest.approx(float((inside > outside.median()).float().mean()))
    assert exact.separation(model, decoder, query_text, "x0.post", "=", distances, -1.0,
                            universe) is None  # nothing inside ε: nothing to rank


def test_fixed_position_follows_a_named_position_that_moves():
    model = build_probed("counting", seed=0, n_embd=16, n_head=1, n_inner=32)
    decoder = build_decoder(model, seed=3, **TINY_DECODER).eval()
    config = QueryConfig(candidates=64, fixed_position=True, all_samples=True)
    result = run_query(model, decoder, "Baab|a:2E", "x0.pre", ":", config, seed=0)
    for sample in result.samples:
        named = model.task.named_positions(sample.text)
        assert sample.best_position == named.get(":", -1)


def test_cosine_noise_turns_the_query_to_the_drawn_cosine_and_keeps_its_norm():
    from inversionview.preimage.sample import at_cosine

    generator = torch.Generator().manual_seed(0)
    query = torch.randn(64, generator=generator)
    cosine = torch.tensor([1.0, 0.9, 0.75, 0.0])
    turned = at_cosine(query, torch.randn(4, 64, generator=generator), cosine)
    assert torch.allclose(turned.norm(dim=1), query.norm().expand(4), atol=1e-4)
    measured = torch.nn.functional.cosine_similarity(turned, query[None], dim=1)
    assert torch.allclose(measured, cosine, atol=1e-5)
    assert not torch.allclose(turned[1], turned[2])


def test_a_query_with_cosine_noise_and_banned_tokens(ioi_lm_dir, tmp_path):
    """On a language model: every candidate is drawn at a cosine in the range and no banned
    token is ever drawn; the size estimate has no noise-free draw to rest on."""
    from inversionview.decoder.train import DecoderTrainingConfig, train_decoder
    from inversionview.decoder.store import load_decoder
    from inversionview.preimage.query import QueryConfig, draw_candidates, resolve_query, run_query
    from inversionview.text.counts import rare_tokens
    from inversionview.probed import load_probed

    model = load_probed(ioi_lm_dir)
    train_decoder(model, DecoderTrainingConfig(out=tmp_path / "d", examples=32, eval_every_seconds=10_000,
                                               eval_queries_per_site=1, eval_samples_per_query=2),
                  show_progress=False)
    decoder, _ = load_decoder(tmp_path / "d", model)
    texts = [p.text for p in model.task.prompts.prompts(50, seed=0)]
    banned = rare_tokens(model.task.vocab, texts, 1)  # everything the prompts never use
    assert 0 < len(banned) < model.task.vocab.size and model.task.vocab.eos_id not in banned
    config = QueryConfig(candidates=64, noise_cosine=(0.75, 0.9), banned=banned, search=0)
    query = resolve_query(model, decoder, texts[0], "a1.0", "END")
    draws = draw_candidates(decoder, query, config, model.task, seed=1)
    assert ((draws.cosine >= 0.75) & (draws.cosine <= 0.9)).all() and (draws.noise == 0).all()
    assert not torch.isin(draws.tokens, torch.tensor(banned)).any()
    result = run_query(model, decoder, texts[0], "a1.0", "END", config, seed=1)
    assert result.noise_cosine == [0.75, 0.9] and result.banned_tokens == len(banned)
    assert result.completeness.estimate_draws == 0 and result.completeness.estimate is None
    with pytest.raises(Exception, match="is empty; give LOW:HIGH"):
        QueryConfig(noise_cosine=(0.9, 0.5))
