"""Contrast inputs for patching respect their constraints (property tests)."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from hypothesis import given, settings, strategies as st

from inversionview.tasks import TaskInputError, get_task

COUNTING, ADDITION = get_task("counting"), get_task("addition")
PLACES = ("F1", "F2", "F3", "S1", "S2", "S3")


@st.composite
def counting_inputs(draw):
    letters = draw(st.lists(st.sampled_from("abcdefghijklmnopqrstuvwxyz"), min_size=3, max_size=3, unique=True))
    counts = draw(st.lists(st.integers(1, 9), min_size=3, max_size=3))
    context = [letter for letter, count in zip(letters, counts) for _ in range(count)]
    context = draw(st.permutations(context))
    query = draw(st.sampled_from(letters))
    return f"B{''.join(context)}|{query}:{context.count(query)}E"


@settings(max_examples=300, deadline=None)
@given(text=counting_inputs(), seed=st.integers(0, 2**32))
def test_counting_flip(text, seed):
    flipped = COUNTING.flip(text, torch.Generator().manual_seed(seed))
    context, query = text[1:text.index("|")], text[text.index("|") + 1]
    counts = Counter(context)
    if flipped is None:  # only when every count is 1 or every count is 9 ... or no move keeps 1..9
        assert all(c == 1 for c in counts.values()) or all(c == 9 for c in counts.values()) \
            or not _has_move(counts, query)
        return
    new_context = flipped[1:flipped.index("|")]
    assert len(new_context) == len(context)
    assert sum(a != b for a, b in zip(context, new_context)) == 1  # one character changed
    assert set(new_context) <= set(context)  # to another context letter
    assert abs(new_context.count(query) - context.count(query)) == 1
    assert all(1 <= c <= 9 for c in Counter(new_context).values()) and len(set(new_context)) == 3
    validity = COUNTING.validate(flipped)
    assert validity.well_formed and validity.in_distribution and validity.correct
    assert flipped[COUNTING.target_index(flipped, "count")] != text[COUNTING.target_index(text, "count")]


def _has_move(counts, query):
    q = counts[query]
    return any((q > 1 and counts[o] < 9) or (q < 9 and counts[o] > 1) for o in counts if o != query)


def test_all_ones_and_all_nines_cannot_flip():
    generator = torch.Generator().manual_seed(0)
    assert COUNTING.flip("Babc|a:1E", generator) is None
    assert COUNTING.flip("B" + "a" * 9 + "b" * 9 + "c" * 9 + "|b:9E", generator) is None


@settings(max_examples=300, deadline=None)
@given(a=st.integers(100, 999), b=st.integers(100, 999),
       places=st.lists(st.sampled_from(PLACES), min_size=1, max_size=3, unique=True),
       target=st.sampled_from(("A1", "A2", "A3", "A4")), seed=st.integers(0, 2**32))
def test_addition_resample(a, b, places, target, seed):
    text = f"B{a}+{b}={a + b}E"
    contrast = ADDITION.resample(text, tuple(places), torch.Generator().manual_seed(seed), target)
    if contrast is None:  # these places cannot move that answer token (e.g. F3 and A1 rarely)
        return
    validity = ADDITION.validate(contrast)
    assert validity.in_distribution and validity.correct  # no leading zero, right sum
    old, new = ADDITION.attributes(text), ADDITION.attributes(contrast)
    assert all(old[p] == new[p] for p in PLACES if p not in places)  # only the chosen places
    index = ADDITION.target_index(text, target)
    assert contrast[index] != text[index]


def test_random_contrast_changes_the_answer():
    generator = torch.Generator().manual_seed(0)
    for task, text, target in ((COUNTING, COUNTING.example, "count"), (ADDITION, ADDITION.example, "A2")):
        for _ in range(20):
            contrast = task.make_contrast(text, "random", generator, target)
            assert contrast != text and task.validate(contrast).correct
            index = task.target_index(text, target)
            assert task.target_index(contrast, target) == index  # patching needs them aligned
            assert contrast[index] != text[index]


def test_bad_contrast_requests_say_what_is_allowed():
    generator = torch.Generator().manual_seed(0)
    with pytest.raises(TaskInputError, match="random, flip"):
        COUNTING.make_contrast(COUNTING.example, "resample", generator, "count")
    with pytest.raises(TaskInputError, match="operand places"):
        ADDITION.make_contrast(ADDITION.example, "resample", generator, "A1", ("A1",))
    with pytest.raises(TaskInputError, match="A1, A2, A3, A4"):
        ADDITION.target_index(ADDITION.example, "A5")
