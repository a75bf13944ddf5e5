"""The IOI prompt generator: templates, seeded prompts, named positions, contrasts, parsing."""

from __future__ import annotations

import random

import pytest

from inversionview.ioi.corpus import mixture_lines
from inversionview.ioi.prompts import LATE_PHRASES
from inversionview.ioi.prompts import (NAMES, TEMPLATES, IOIError, IOIGenerator, Template,
                                       check_template)


@pytest.fixture(scope="module")
def generator(ioi_tokenizer):
    return IOIGenerator(ioi_tokenizer)


def token_at(tokenizer, text, index):
    return tokenizer.token_strings([tokenizer.bos_id] + tokenizer.encode(text))[index]


def test_templates_are_split_and_own_both_orders():
    splits = {t.split for t in TEMPLATES}
    assert splits == {"train", "eval"}
    assert len({t.id for t in TEMPLATES}) == len(TEMPLATES)
    assert sum(t.split == "eval" for t in TEMPLATES) >= 3


def test_every_name_is_one_token_for_the_fixture_tokenizer(generator):
    assert generator.names == list(NAMES) and generator.split_names == []


def test_same_seed_same_prompts(generator):
    first = [p.to_dict() for p in generator.prompts(20, seed=4)]
    assert first == [p.to_dict() for p in generator.prompts(20, seed=4)]
    assert first != [p.to_dict() for p in generator.prompts(20, seed=5)]


@pytest.mark.parametrize("order", ["ABBA", "BABA"])
def test_named_positions_point_at_the_names(generator, ioi_tokenizer, order):
    rng = random.Random(0)
    for template in generator.template_ids():
        prompt = generator.prompt(rng, template=template, order=order)
        at = prompt.positions
        assert token_at(ioi_tokenizer, prompt.text, at["IO"]) == " " + prompt.io
        assert token_at(ioi_tokenizer, prompt.text, at["S1"]) == " " + prompt.s
        assert token_at(ioi_tokenizer, prompt.text, at["S2"]) == " " + prompt.s
        assert at["S1+1"] == at["S1"] + 1 and at["S1"] < at["S2"]
        assert at["END"] == len(ioi_tokenizer.encode(prompt.text))  # BOS is index 0
        assert (at["IO"] < at["S1"]) == (order == "ABBA")
        assert prompt.io != prompt.s and prompt.answer == " " + prompt.io


def test_abc_breaks_the_duplicate_and_swap_flips_the_answer(generator, ioi_tokenizer):
    for prompt in generator.prompts(30, seed=1):
        abc = generator.abc(prompt, seed=2)
        third = token_at(ioi_tokenizer, abc.text, abc.positions["S2"]).strip()
        assert third not in (prompt.io, prompt.s) and third in NAMES
        assert abc.text.replace(" " + third + " ", " " + prompt.s + " ") == prompt.text
        assert generator.parse_ids([0] + ioi_tokenizer.encode(abc.text)) is None  # no repeat
        swapped = generator.swap(prompt)
        assert (swapped.io, swapped.s) == (prompt.s, prompt.io)
        assert swapped.answer == prompt.wrong_answer and swapped.order == prompt.order
        assert swapped.positions == prompt.positions  # same template, same order


def test_parse_and_match_read_a_prompt_back(generator, ioi_tokenizer):
    for prompt in generator.prompts(30, seed=7):
        parsed = generator.parse_ids([ioi_tokenizer.bos_id] + ioi_tokenizer.encode(prompt.text))
        assert (parsed["io"], parsed["s"], parsed["order"]) == (prompt.io, prompt.s, prompt.order)
        assert parsed["positions"] == {k: v for k, v in prompt.positions.items() if k != "END"}
        matched = generator.match_template(prompt.text)
        assert matched["template"] == prompt.template
        assert (matched["PLACE"], matched["OBJECT"], matched["S"]) == (
            prompt.place, prompt.object, prompt.s)


def test_held_out_templates_never_reach_the_training_mixture(generator):
    held_out = [t.pattern() for t in TEMPLATES if t.split == "eval"]
    lines = mixture_lines(3_000, seed=0)
    for line in lines:
        prompt = line.rsplit(" ", 1)[0]  # drop the answer
        assert not any(p.match(prompt) for p in held_out), line
    assert all(generator.prompt(random.Random(i), split="eval").template in
               {t.id for t in TEMPLATES if t.split == "eval"} for i in range(20))


def test_free_prompts_vary_the_wording_and_never_use_held_out_words():
    from inversionview.ioi.corpus import held_out_words

    unseen = held_out_words()
    assert {"wrote", "bought", "noon"} <= unseen and "gave" not in unseen
    text = ["Then all the people went by the way and found water near the well at noon."] * 5
    lines = mixture_lines(2_000, seed=3, text_lines=text, shares={"free": 1.0})
    for line in lines:
        words = {w.strip(",.;").lower() for w in line.split()}
        assert not words & unseen, line
        answer = line.rsplit(" ", 1)[1].rstrip(".")
        assert line.count(" " + answer + " ") == 1  # IO is named once before the answer
    assert len({line.split(" ", 1)[0] for line in lines}) > 5  # the wording varies


def test_mixture_is_seeded_and_has_every_kind():
    lines = mixture_lines(2_000, seed=1, text_lines=["In the beginning was the word."])
    assert lines == mixture_lines(2_000, seed=1, text_lines=["In the beginning was the word."])
    assert any(", who gave it back to" in line for line in lines)
    late = [line for line in lines if any(f" {phrase} " in line for phrase in LATE_PHRASES)]
    assert late  # a third name just before the end, the answer still IO
    for line in late:
        words = [w.strip(",.;") for w in line.split()]
        answer, third = words[-1], words[-3]
        assert words.count(answer) == 2 and words.count(third) == 1 and third != answer
    assert "In the beginning was the word." in lines
    repeats = [line.split() for line in lines if not line.endswith(".")]
    assert repeats and all(words[: len(words) // 2] == words[len(words) // 2:] for words in repeats)


@pytest.mark.parametrize("text, message", [
    ("Then {N1} went to the {PLACE}, and {S} gave it to", "no indirect object"),
    ("Then {N1} and {N2} met {N1}, and {S} gave it to", "{N1} 2 times"),
    ("Then {N1} and {N2} met,{S} gave it to", "must follow a space"),
    ("Then {N1} and {N2} met {WHO}, {S} gave it to", "unknown slot {WHO}"),
    ("Then {S} saw {N1} and {N2} and gave it to", "must come after"),
    ("Then {N1} and {N2} met, and {S} gave it to ", "must end with a word"),
])
def test_bad_templates_say_what_is_wrong(text, message):
    with pytest.raises(IOIError, match=message.replace("{", r"\{").replace("}", r"\}")):
        check_template(text, "my template")
    with pytest.raises(IOIError):
        Template("x", text)


def test_a_tokenizer_that_splits_names_is_refused_with_the_names(tmp_path):
    from inversionview.text.bpe import train_bpe
    from inversionview.text.tokenizer import HFTokenizer

    # bytes and a few merges: every name but the ones in its training text is split
    tokenizer = HFTokenizer.from_directory(
        train_bpe(["So Bob met Al."] * 40, 270, tmp_path), 10**6)
    with pytest.raises(IOIError, match=r"splits 40 of 40 names into several tokens \(' Anna', "
                                       r"' Paul', .*, \.\.\.\); IOI needs at least 3 names"):
        IOIGenerator(tokenizer)
    with pytest.raises(IOIError, match=r"splits 1 of 3 names into several tokens \(' Carol'\)"):
        IOIGenerator(tokenizer, names=["Bob", "Al", "Carol"])


def test_unknown_template_order_and_split_are_refused(generator):
    rng = random.Random(0)
    with pytest.raises(IOIError, match="unknown template 'nope'; known: walked-handed"):
        generator.prompt(rng, template="nope")
    with pytest.raises(IOIError, match="unknown order 'AABB'"):
        generator.prompt(rng, order="AABB")
    with pytest.raises(IOIError, match="unknown template split"):
        generator.prompts(1, split="test")


def test_late_prompts_add_a_third_name_before_the_end(generator):
    prompt = generator.prompts(1, seed=4)[0]
    late = generator.late(prompt, seed=1)
    assert late.kind == "late" and late.io == prompt.io and late.s == prompt.s
    third = late.text.rsplit(" ", 2)[1]
    assert third in generator.names and third not in (prompt.io, prompt.s)
    assert late.positions["S2"] == prompt.positions["S2"]
    assert late.positions["END"] > prompt.positions["END"]
    assert generator.late(prompt, seed=1) == late
