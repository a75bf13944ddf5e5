"""The paper's findings as claims: each criterion on constructed figures where the answer is
known, and the command end to end on the bundled counting model."""

import json

import pytest
from cli_runner import invoke

from inversionview.reproduce.case_studies import (judge_attributes_beyond_subject, judge_dla_gap,
                                                  judge_ioi_roles)
from inversionview.reproduce.claims import Claim, fraction
from inversionview.reproduce.toy import (judge_carry, judge_carry_whole_effect,
                                         judge_completeness, judge_count_not_letter, judge_fuzzy,
                                         judge_mlp_amplifies, judge_routing, judge_unordered_pair)


def row(inside, outside):
    return {"inside": inside, "outside": outside,
            "contrast": None if inside is None or outside is None else inside - outside}


def test_mlp_amplifies_when_the_exact_count_separates_more_after_it():
    assert judge_mlp_amplifies(row(0.6, 0.2), row(1.0, 0.2))[0]  # contrast 0.4 -> 0.8
    assert not judge_mlp_amplifies(row(0.9, 0.1), row(1.0, 0.1))[0]  # 0.8 -> 0.9: no
    passed, figure = judge_mlp_amplifies(row(None, None), row(1.0, 0.1))
    assert not passed and "no query" in figure


def test_count_kept_and_letter_dropped():
    assert judge_count_not_letter(row(0.95, 0.05), row(0.3, 0.28))[0]
    assert not judge_count_not_letter(row(0.95, 0.05), row(0.9, 0.1))[0]  # the letter is kept
    assert not judge_count_not_letter(row(0.4, 0.3), row(0.3, 0.3))[0]  # the count is not


def test_whole_effect_shares():
    passed, figure = judge_carry_whole_effect(-10.0, -9.8, -10.0, -10.0)
    assert passed and "98.0%" in figure
    assert not judge_carry_whole_effect(-10.0, -5.0, -10.0, -10.0)[0]
    assert not judge_carry_whole_effect(0.0, 0.0, 0.0, 0.0)[0]
    assert fraction(1.0, 0.0) is None and fraction(-3.0, -4.0) == 0.75


def test_routing_needs_one_tens_head_and_the_others_for_the_hundreds():
    tens = {"a0.0": 0.0, "a0.1": 0.01, "a0.2": 0.0, "a0.3": 0.98}
    passed, figure = judge_routing(tens, 0.0, 0.99)
    assert passed and figure.startswith("tens (F2,S2): a0.3")
    assert not judge_routing(tens, 0.5, 0.99)[0]  # the tens head routes hundreds too
    assert not judge_routing(tens, 0.0, 0.5)[0]  # the others do not carry the hundreds
    assert not judge_routing({**tens, "a0.3": 0.5}, 0.0, 0.99)[0]


def test_unordered_pair_carry_and_fuzziness():
    assert judge_unordered_pair(row(1.0, 0.6), row(0.5, 0.3), row(0.5, 0.4), "{F1,S1}")[0]
    assert not judge_unordered_pair(row(1.0, 0.6), row(1.0, 0.3), row(1.0, 0.4), "{F1,S1}")[0]
    assert judge_carry(row(1.0, 0.9), row(0.3, 0.2))[0]
    assert not judge_carry(row(1.0, 0.9), row(0.9, 0.2))[0]  # the digit itself is kept
    assert judge_fuzzy(row(0.5, 0.1), row(0.8, 0.4), "F2+S2")[0]
    assert not judge_fuzzy(row(0.75, 0.1), row(0.8, 0.4), "F2+S2")[0]  # kept exactly
    assert not judge_fuzzy(row(0.2, 0.1), row(0.5, 0.45), "F2+S2")[0]  # not kept at all


def test_completeness_median():
    passed, figure = judge_completeness([0.9, 0.1, 0.8], [20_000, 12, 900])
    assert passed and "median recall at budget 0.80" in figure and "0.10 of 12" in figure
    assert not judge_completeness([0.9, 0.1, 0.2])[0]
    assert not judge_completeness([])[0]


def test_ioi_roles_and_dla_gap():
    io_kept = {"io": row(0.9, 0.1), "s": row(0.2, 0.2)}
    readable = {"head": "a3.0", "expected": "io", "queries": 6, "queries_with_inside": 5,
                "attributes": io_kept}
    unread = {"head": "a2.3", "expected": "s", "queries": 6, "queries_with_inside": 0,
              "attributes": {}}
    thin = {**unread, "head": "a2.6", "queries_with_inside": 1}  # one query decides nothing
    passed, figure = judge_ioi_roles([readable, unread, thin])
    assert passed is True and "1 of 1 readable" in figure
    assert "a2.3 (0/6)" in figure and "a2.6 (1/6)" in figure
    wrong = {**readable, "expected": "s"}
    assert judge_ioi_roles([readable, wrong])[0] is False
    passed, figure = judge_ioi_roles([unread, thin])
    assert passed is None and "no head had members in ε where it acts" in figure
    # an unreadable head's edits say why: every name edit leaves ε
    edits = {"io": {"median": 0.8, "inside": 0.0}, "s": {"median": 0.5, "inside": 0.02}}
    passed, figure = judge_ioi_roles([{**unread, "edits": edits}])
    assert passed is None and "a2.3 (0/6; IO / S edits within ε 0.00 / 0.02)" in figure
    assert judge_dla_gap([{"head": "a1.2", "dla": 0.1, "inversionview": row(0.9, 0.2)}])[0]
    # a name read from a text query's members: the search's outside inputs keep it too (no
    # contrast), but every substitution of it leaves ε, so it is kept
    moved = {**row(1.0, 0.95), "stays": 0.0}
    assert judge_ioi_roles([{**readable, "expected": "s", "position": "S2",
                             "attributes": {"s": moved}}])[0] is True
    assert judge_ioi_roles([{**readable, "expected": "s",
                             "attributes": {"s": {**moved, "stays": 0.9}}}])[0] is False
    assert judge_dla_gap([{"head": "a1.2", "dla": 0.1, "inversionview": row(0.3, 0.2)}])[0] is False
    assert judge_dla_gap([{"head": "a1.2", "dla": 0.9, "inversionview": row(0.9, 0.2)}])[0] is None
    assert judge_dla_gap([{"head": "a1.2", "dla": 0.1, "inversionview": None}])[0] is None


def test_factual_attribute_moved_beyond_the_subject_for_an_other_relation():
    def reading(relation, region_inside, subject_inside):
        return {"site": "a3.2", "position": "END", "relation": relation, "queries": 4,
                "queries_with_inside": 3,
                "attributes": {"subject": row(subject_inside, 0.0), "kind": row(1.0, 1.0),
                               "region": row(region_inside, 0.1)}}

    asked = {"capital": "capital", "region": "region"}
    passed, figure, found = judge_attributes_beyond_subject([reading("capital", 0.9, 0.2)], asked)
    assert passed and "keeps region when asked capital" in figure and not found[0]["asked"]
    # Asked for the region: kept, but that is the relation's own attribute.
    assert not judge_attributes_beyond_subject([reading("region", 0.9, 0.2)], asked)[0]
    # Kept only as much as the subject itself: it comes with the subject.
    assert not judge_attributes_beyond_subject([reading("capital", 0.9, 0.85)], asked)[0]
    thin = {**reading("capital", 0.9, 0.2), "queries_with_inside": 1}  # 1 of 4 queries
    assert judge_attributes_beyond_subject([thin], asked)[0] is None


def test_claim_record():
    claim = Claim("x.y", "counting", "s", "c", "m").decide(True, "f", {"a": 1})
    assert claim.to_dict()["status"] == "pass"
    undecided = Claim("x.y", "ioi", "s", "c", "m").decide(None, "too weak", {})
    assert undecided.status == "not measured" and undecided.reason == "too weak"
    assert Claim("x", "ioi", "s", "c", "m").skip("why").to_dict()["reason"] == "why"


def test_reproduce_quick_on_the_bundled_counting_model(tmp_path, ioi_lm_dir):
    out = tmp_path / "report"
    result = invoke(["reproduce", "--quick", "--studies", "counting,ioi", "--ioi-model",
                     str(ioi_lm_dir), "--out", str(out), "--json", "--threads", "1"])
    assert result.exit_code == 0, result.stderr
    record = json.loads(result.stdout)
    ids = [c["id"] for c in record["claims"]]
    assert ids == ["counting.mlp-amplifies-count", "counting.a1.0-keeps-count-drops-letter",
                   "counting.patching-a0.0-a1.0"]
    for claim in record["claims"]:
        assert claim["status"] in ("pass", "fail") and claim["figure"] and claim["criterion"]
        assert "bundled counting model" in claim["model"]
    assert "ioi" in record["not_run"] and "decoder" in record["not_run"]["ioi"]
    page = (out / "report.html").read_text()
    assert "data:image/png;base64," in page and "counting.patching-a0.0-a1.0" in page
    assert "<script" not in page and "http://" not in page and "https://" not in page
    assert json.loads((out / "report.json").read_text())["counts"] == record["counts"]
    again = invoke(["reproduce", "--quick", "--studies", "counting", "--out", str(out)])
    assert again.exit_code == 2 and "--force" in again.stderr


@pytest.mark.parametrize("argv, message", [
    (["--studies", "countin"], "unknown study 'countin'"),
    (["--studies", ","], "--studies is empty"),
    (["--authors", "/no/such/folder", "--studies", "counting"], "no counting/ folder"),
])
def test_reproduce_bad_input(tmp_path, argv, message):
    result = invoke(["reproduce", "--out", str(tmp_path / "r"), *argv])
    assert result.exit_code in (0, 2)
    assert message in (result.stderr + result.stdout)


def test_case_study_claims_run_on_tiny_models(ioi_lm_dir, factual_lm_dir, tmp_path):
    """The IOI and factual claims end to end on tiny random models with untrained decoders:
    every claim comes back decided or not measured, with its figure or its reason."""
    from inversionview.decoder.train import build_decoder
    from inversionview.probed import load_probed
    from inversionview.reproduce.case_studies import factual_claims, ioi_claims

    tiny = dict(d_model=32, n_heads=2, d_mlp=64, n_condition_blocks=2)
    ioi = load_probed(ioi_lm_dir)
    claims = ioi_claims(ioi, build_decoder(ioi, 0, **tiny).eval(), "tiny ioi", "untrained",
                        quick=True, seed=0, candidates=16, out=tmp_path, search=128)
    assert (tmp_path / "ioi-heads.png").read_bytes()[:4] == b"\x89PNG"
    assert [c.id for c in claims] == ["ioi.heads-read-their-names",
                                      "ioi.dla-misses-inversionview-reads"]
    for claim in claims:
        assert claim.status in ("pass", "fail", "not measured")
        assert claim.figure or claim.reason

    factual = load_probed(factual_lm_dir)
    decoder = build_decoder(factual, 0, **tiny).eval()
    [claim] = factual_claims(factual, decoder, "tiny factual", "untrained", quick=True, seed=0,
                             heads=["a1.0"], candidates=16, out=tmp_path)
    assert claim.id == "factual.heads-move-attributes"
    assert claim.status in ("pass", "fail", "not measured")
    readings = claim.measured["readings"]
    assert {(r["site"], r["position"]) for r in readings} == {("a1.0", "SUBJ"), ("a1.0", "END")}
    assert len({r["relation"] for r in readings}) == 5
