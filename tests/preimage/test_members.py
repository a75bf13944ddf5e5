"""Members are cut prefixes (issue 28): merging by cut prefix, the query's own context left
out, the search on text, the ε profile, the token reading, the completeness estimate's
usability, and the decoder evaluation beside its controls."""

from __future__ import annotations

import math

import pytest
import torch

from inversionview.decoder.evaluate import QuerySet, in_epsilon_rates
from inversionview.decoder.model import Decoder
from inversionview.decoder.store import load_decoder
from inversionview.decoder.train import build_decoder
from inversionview.preimage.estimate import SizeEstimate, why_not_estimable
from inversionview.preimage.members import cut_key, merge_by_cut
from inversionview.preimage.query import QueryConfig, run_query
from inversionview.preimage.reading import distinct_prefixes, epsilon_profile, token_reading
from inversionview.views.html import render_html
from inversionview.views.terminal import coloured_reading, reading_rgb, token_shade
from inversionview.preimage.result import Sample
from inversionview.preimage.search import edit_proposals
from inversionview.probed import build_probed
from inversionview.probed.model import load_probed
from tiny_lms import make_tiny_text_model

TEXT = "When Alice and Bob went to the park, Bob gave a key to Alice."
SHORT = "When Alice and Bob went to the park, Bob"  # 20 tokens: fits the decoder's 26


def _sample(text, distance, best, multiplicity=1, found_by="decoder", **attributes):
    return Sample(text=text, tokens=list(text), distance=distance, best_position=best,
                  best_position_label=str(best), in_epsilon=distance <= 0.1, valid=True,
                  correct=None, reason="", attributes=attributes, multiplicity=multiplicity,
                  position_distances=[], found_by=found_by)


def _key(text, best):
    return cut_key(torch.tensor([ord(c) for c in text]), best, 0.0)


def test_inputs_that_share_a_cut_prefix_are_one_member_and_the_querys_own_is_set_apart():
    query = _key("Bab|a:2E", 3)  # the query's own prefix "Bab|"
    samples = [_sample("Bab|a:2E", 0.0, 3, 5, count=2, letter="a"),     # the query's context
               _sample("Bab|b:1E", 0.0, 3, 2, count=1, letter="b"),     # another continuation
               _sample("Bba|a:1E", 0.05, 3, 1, count=1, letter="a"),
               _sample("Bba|b:1E", 0.05, 3, 0, "search 1", count=1, letter="b"),
               _sample("Bcc|c:2E", 0.3, 1, 4, count=2, letter="c")]
    rows = [torch.tensor([ord(c) for c in s.text]) for s in samples]
    keys = [_key(s.text, s.best_position) for s in samples]
    members, context = merge_by_cut(samples, keys, rows, query)
    assert (context.draws, context.continuations) == (7, 2)
    assert [m.sample.text for m in members] == ["Bba|a:1E", "Bcc|c:2E"]
    merged = members[0].sample
    # drawn once, found once more by the search: one member, drawn by the decoder, and only
    # the attribute both inputs share (the count) is what its evidence fixes
    assert (merged.multiplicity, merged.continuations, merged.found_by) == (1, 2, "decoder")
    assert merged.attributes == {"count": 1}
    assert samples[2].attributes == {"count": 1, "letter": "a"}  # the inputs are not changed
    assert members[1].sample.continuations == 1
    assert members[0].row is rows[2]


def test_a_row_without_a_scorable_position_is_its_own_member():
    samples = [_sample("BxE", math.inf, -1), _sample("BxE", math.inf, -1)]
    members, context = merge_by_cut(samples, [None, None], [torch.zeros(3)] * 2, b"")
    assert len(members) == 2 and context.continuations == 0


def test_edits_stay_inside_each_rows_cut_prefix():
    model = build_probed("counting", seed=1, n_embd=16, n_head=4, n_inner=32)
    decoder = build_decoder(model, seed=2, d_model=32, n_heads=2, d_mlp=64, n_condition_blocks=2).eval()
    vocab = model.task.vocab
    rows = model.task.encode_batch(["Bvvzccvczvvvzvcvc|v:8E", "Babcabcab|c:3E"])
    cut = torch.tensor([5, 3])  # best positions 4 and 2: tokens 0..4 and 0..2 are evidence
    activation = torch.randn(model.d_model)
    edited, _ = edit_proposals(decoder, rows, activation, 0, vocab.bos_id, vocab.eos_id,
                               vocab.pad_id, 4, cut=cut)
    assert len(edited)
    assert all(any(_only_inside(rows[i], row, int(cut[i])) for i in range(2)) for row in edited)
    free, _ = edit_proposals(decoder, rows, activation, 0, vocab.bos_id, vocab.eos_id, vocab.pad_id, 4)
    assert not all(any(_only_inside(rows[i], row, int(cut[i])) for i in range(2)) for row in free)


def _only_inside(parent: torch.Tensor, row: torch.Tensor, cut: int) -> bool:
    """``row`` is ``parent`` edited in its first ``cut`` tokens: substituted or transposed
    there (the rest equal), a token inserted at or before the cut (the rest shifted right),
    or one deleted before it (the rest shifted left)."""
    parent, row = parent.tolist(), row.tolist()
    return (row[cut:] == parent[cut:] or row[cut + 1:] == parent[cut:-1]
            or row[cut - 1:-1] == parent[cut:])


def test_the_estimate_is_a_figure_only_where_it_counts_members_and_is_precise():
    good = SizeEstimate(size=100.0, stderr=20.0, draws=512, members_drawn=40)
    assert why_not_estimable(good, True, 0) is None
    assert "without a grammar" in why_not_estimable(good, False, 0)
    assert "3 members were seen with several continuations" in why_not_estimable(good, True, 3)
    assert "no noise-free draw" in why_not_estimable(SizeEstimate(None, None, 512, 0), True, 0)
    assert "only 2 noise-free draws" in why_not_estimable(SizeEstimate(1e6, 1e5, 512, 2), True, 0)
    loose = why_not_estimable(SizeEstimate(1.6e92, 1.6e92, 512, 10), True, 0)
    assert "standard error is 100% of the estimate" in loose


def test_a_token_is_shaded_by_its_contrast_and_marked_ignored_by_its_substitutions():
    kept, ignored = token_shade({"anywhere_inside": 0.9, "anywhere_outside": 0.3, "stays": 0.0})
    assert kept == pytest.approx(0.6) and not ignored
    assert token_shade({"anywhere_inside": 0.2, "anywhere_outside": 0.5, "stays": 0.75}) == (0.0, True)
    assert token_shade({"anywhere_inside": None, "anywhere_outside": 0.5, "stays": None}) == (0.0, False)
    assert reading_rgb(0.0) is None and reading_rgb(1.0)[1] == 255
    line = coloured_reading([{"token": "a", "anywhere_inside": 1.0, "anywhere_outside": 0.0,
                              "stays": 0.0},
                             {"token": "b", "anywhere_inside": 0.0, "anywhere_outside": 0.0,
                              "stays": 1.0}])
    assert "\x1b[48;2;" in line.split("a")[0] and line.index("\x1b[2m") < line.index("b")


def test_the_profile_and_the_token_reading_count_distinct_prefixes():
    # query B a b c, read at index 3 (c); members and outside inputs by cut prefix
    rows = torch.tensor([[9, 1, 2, 3, 8],    # the query's own prefix: left out
                         [9, 1, 2, 3, 7],    # the same prefix, another continuation: left out
                         [9, 5, 2, 3, 8],    # member at 0.04: keeps b, c aligned
                         [9, 5, 2, 3, 6],    # same prefix, farther copy: one member, closest kept
                         [9, 1, 4, 8, 8],    # best 1 ([9, 1]): member at 0.08, keeps a at offset 0
                         [9, 6, 6, 6, 8]])   # outside at 0.25 (best 3)
    best = torch.tensor([3, 3, 3, 3, 1, 3])
    distance = torch.tensor([0.0, 0.0, 0.04, 0.07, 0.08, 0.25])
    scored = distinct_prefixes(rows, best, distance, ["decoder"] * 6, [9, 1, 2, 3])
    assert scored.prefixes == [[9, 5, 2, 3], [9, 1], [9, 6, 6, 6]]
    assert scored.distance == pytest.approx([0.04, 0.08, 0.25])
    pieces = lambda ids: [str(i) for i in ids]  # noqa: E731
    profile = epsilon_profile(scored, 0.1, pieces, nearest=2)
    assert profile["radii"] == [0.05, 0.1, 0.15, 0.2, 0.3, 0.5]
    assert profile["members"] == [1, 2, 2, 2, 3, 3]
    assert [n["tokens"] for n in profile["nearest"]] == [["9", "5", "2", "3"], ["9", "1"]]
    rows_read = token_reading([9, 1, 2, 3], 3, scored, 0.1, pieces, {1: (1, 4), 3: (0, 2)})
    assert [(r["token"], r["offset"]) for r in rows_read] == [("1", -2), ("2", -1), ("3", 0)]
    first, second, third = rows_read
    # aligned back from the best position: [9,5,2,3] keeps 2 and 3; [9,1] keeps 1 at offset 0
    # only for the token read at offset 0 (3): no; token 1 at offset -2 in [9,1] falls on BOS
    assert (first["kept_inside"], first["anywhere_inside"]) == (0.0, 0.5)
    assert (second["kept_inside"], third["kept_inside"]) == (0.5, 0.5)
    assert (third["kept_outside"], third["anywhere_outside"]) == (0.0, 0.0)
    assert (first["stays"], first["substitutions"]) == (0.25, 4)
    assert second["stays"] is None and third["stays"] == 0.0
    assert first["n_inside"] == 2 and first["n_outside"] == 1


# ----- on a language model ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    directory, _, decoder_dir = make_tiny_text_model(tmp_path_factory.mktemp("members"), "gpt2")
    model = load_probed(directory)
    return model, load_decoder(decoder_dir, model)[0]


@pytest.mark.parametrize("site,position", [("a0.1", "' Alice'"), ("x1.post", "last ' Bob'")])
def test_a_text_query_counts_cut_prefixes_and_leaves_its_own_context_out(text_model, site, position):
    model, decoder = text_model
    config = QueryConfig(candidates=128, search=512, all_samples=True)
    result = run_query(model, decoder, SHORT, site, position, config, seed=1)
    own = tuple(model.task.encode(SHORT)[: result.position + 1])
    keys = [tuple(s.ids[: s.best_position + 1]) for s in result.samples if s.best_position >= 0]
    assert all(len(s.ids) == len(s.tokens) for s in result.samples)
    assert own not in keys  # the query's own prefix is in no sample
    assert len(keys) == len(set(keys))  # one sample per cut prefix
    # the query's context counts the decoder's draws of it; the query itself is not one
    assert result.query_context["draws"] == result.stats.query_context
    assert result.query_context["continuations"] <= result.stats.query_context + (
        result.completeness.search or {}).get("evaluations", 0)
    stats = result.stats
    assert stats.in_epsilon_distinct == sum(s.in_epsilon and s.found_by == "decoder"
                                            for s in result.samples)
    assert stats.in_epsilon + stats.query_context >= stats.in_epsilon_distinct
    assert stats.distinct <= stats.distinct_inputs and stats.in_epsilon_distinct <= stats.in_epsilon_inputs
    completeness = result.completeness
    assert completeness.found == sum(s.in_epsilon for s in result.samples)
    assert completeness.estimated_size is None and "without a grammar" in completeness.not_estimable
    assert "not estimable" in completeness.describe()
    profile = result.epsilon_profile
    assert profile["members"] == sorted(profile["members"])  # counts grow with the radius
    at_epsilon = profile["members"][profile["radii"].index(0.1)]
    assert at_epsilon >= completeness.found  # the profile also counts the substitutions
    assert [n["distance"] for n in profile["nearest"]] == sorted(n["distance"] for n in profile["nearest"])
    assert len(result.token_reading) == result.position
    assert all(row["substitutions"] <= 8 for row in result.token_reading)
    text = str(result)
    assert "left out: the query's own prefix" in text and "ε profile" in text
    assert "token reading" in text and "the query as read" in text
    page = render_html(result)
    assert "class='input reading'" in page and page.count("kept by") == len(result.token_reading)


def test_the_search_on_text_is_the_default_and_finds_no_copy_of_the_query(text_model):
    model, decoder = text_model
    result = run_query(model, decoder, SHORT, "a0.1", "' Alice'",
                       QueryConfig(candidates=64, all_samples=True), seed=0)
    search = result.completeness.search
    assert search is not None and search["budget"] == model.task.default_search == 4096
    query_prefix = model.task.encode(SHORT)[: result.position + 1]
    assert any(s.found_by.startswith("search") for s in result.samples)
    for sample in result.samples:
        if sample.found_by.startswith("search"):
            assert sample.ids[: sample.best_position + 1] != query_prefix


# ----- decoder evaluation ----------------------------------------------------------------------


class _CopyingDecoder(Decoder):
    """A real decoder whose samples are forced to be given rows: here, copies of each query's
    own input, which are members at distance 0 that say nothing."""

    rows: torch.Tensor

    def sample(self, activation, site_id, *args, **kwargs):
        return self.rows.to(activation.device)


def test_copies_of_the_querys_context_do_not_count_and_the_site_is_flagged(text_model):
    model, decoder = text_model
    sites = list(model.sites)
    tokens = model.task.encode_batch([SHORT, "When Carol and Dave went to the store"], 26)
    positions = [5, 7]
    rows, site_ids, position, activations = [], [], [], []
    for index, site in enumerate(sites):
        for q in range(2):
            rows.append(tokens[q])
            site_ids.append(index)
            position.append(positions[q])
            activations.append(model.activations(tokens[q:q + 1], site, positions[q])[0])
    queries = QuerySet(torch.stack(rows), torch.tensor(site_ids), torch.tensor(position),
                       torch.stack(activations))
    copying = _CopyingDecoder(decoder.config)
    copying.site_names = decoder.site_names
    copying.rows = tokens.repeat_interleave(3, dim=0)  # 3 samples per query, copies of it
    quality = in_epsilon_rates(copying, model, queries, 3, 0.1, torch.Generator().manual_seed(0))
    assert all(rate == 1.0 for rate in quality["in_epsilon_raw"].values())
    assert all(rate == 0.0 for rate in quality["in_epsilon"].values())
    assert quality["flagged"] == [s.short for s in sites]
    assert set(quality["controls"]) == {"other_activation", "random_decoder"}


def test_the_completeness_line_counts_rounds_in_english():
    """Issue 31: "1 rounds" read wrong."""
    from dataclasses import replace

    from inversionview.preimage.result import Completeness

    search = {"evaluations": 64, "budget": 4096, "rounds": 1, "stop": "saturated", "members_wanted": 0}
    one = Completeness(found=3, found_by_decoder=1, found_by_search=2, estimate=None,
                       estimate_stderr=None, estimate_draws=0, estimated_size=None, coverage=None,
                       search=search, not_estimable="no grammar")
    assert "in 1 round," in one.describe()
    assert "in 2 rounds," in replace(one, search={**search, "rounds": 2}).describe()
