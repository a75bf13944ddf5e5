from collections import Counter

import pytest
import torch

from inversionview.tasks import TASKS, TaskInputError, get_task
from inversionview.tasks.addition import INPUT_SPACE_SIZE


@pytest.fixture(params=sorted(TASKS))
def task(request):
    return get_task(request.param)


def test_unknown_task_lists_known_ones():
    with pytest.raises(TaskInputError, match="known tasks: addition, counting"):
        get_task("sorting")


def test_fixed_vocabulary_ids():
    counting, addition = get_task("counting"), get_task("addition")
    assert counting.vocab.size == 40 and addition.vocab.size == 15
    assert [counting.vocab.id_of(c) for c in "az19|:BEP"] == [0, 25, 26, 34, 35, 36, 37, 38, 39]
    assert [addition.vocab.id_of(c) for c in "09B+=EP"] == [0, 9, 10, 11, 12, 13, 14]


def test_encode_decode_round_trip(task):
    for text in task.sample(200, seed=5):
        ids = task.encode(text)
        assert task.decode(ids) == text
        assert task.encode(text[1:]) == ids  # the leading B is optional
    tokens = task.sample_tokens(50, torch.Generator().manual_seed(1))
    assert torch.equal(task.encode_batch(task.decode_batch(tokens)), tokens)


@pytest.mark.parametrize("task_name,text,bad", [
    ("counting", "Babcx0|a:1E", "'0' at index 5"),
    ("counting", "BabC|a:1E", "'C' at index 3"),
    ("addition", "B123-456=579E", "'-' at index 4"),
    ("addition", "B12a+456=579E", "'a' at index 3"),
])
def test_out_of_vocabulary_character_is_named(task_name, text, bad):
    task = get_task(task_name)
    with pytest.raises(TaskInputError, match="not in the .* vocabulary; allowed characters") as info:
        task.encode(text)
    assert bad in str(info.value)


def test_too_long_input_names_length_and_limit(task):
    text = task.vocab.bos + task.example[1:2] * task.n_ctx
    with pytest.raises(TaskInputError, match=rf"{task.n_ctx + 1} tokens long .* at most {task.n_ctx}"):
        task.encode(text)


def test_padding_in_input_is_refused(task):
    with pytest.raises(TaskInputError, match="padding token"):
        task.encode(task.example + "P")


def test_sampler_is_seeded(task):
    assert task.sample(20, seed=3) == task.sample(20, seed=3)
    assert task.sample(20, seed=3) != task.sample(20, seed=4)


def test_every_sample_is_valid_and_correct(task):
    for text in task.sample(2000, seed=11):
        validity = task.validate(text)
        assert validity.well_formed and validity.in_distribution and validity.correct, text


def test_counting_distribution():
    task = get_task("counting")
    texts = task.sample(20_000, seed=0)
    counts, lengths = Counter(), Counter()
    for text in texts:
        attributes = task.attributes(text)
        assert len(attributes["letters"]) == 3
        assert all(1 <= c <= 9 for c in attributes["letters"].values())
        assert attributes["query_letter"] in attributes["letters"]
        assert attributes["length"] == sum(attributes["letters"].values())
        counts.update(attributes["letters"].values())
        lengths[attributes["length"]] += 1
    # 60,000 counts uniform on 1..9: each about 6,667 (sd about 77).
    assert set(counts) == set(range(1, 10))
    assert all(abs(c - 60_000 / 9) < 400 for c in counts.values()), counts
    assert min(lengths) == 3 and max(lengths) == 27  # each has probability 1/729
    query_counts = Counter(task.attributes(t)["count"] for t in texts)
    assert all(abs(c - 20_000 / 9) < 250 for c in query_counts.values()), query_counts


def test_counting_context_is_shuffled():
    task = get_task("counting")
    # If the multiset were laid out in runs, every text would have at most 3 runs.
    runs = [sum(1 for a, b in zip(t[1:], t[2:]) if a != b and b != "|") for t in task.sample(500, seed=2)]
    assert sum(r > 3 for r in runs) > 400


def test_addition_distribution():
    task = get_task("addition")
    texts = task.sample(20_000, seed=0)
    a = torch.tensor([task.attributes(t)["a"] for t in texts])
    b = torch.tensor([task.attributes(t)["b"] for t in texts])
    assert a.min() >= 100 and a.max() <= 999 and b.min() >= 100 and b.max() <= 999
    assert a.min() < 110 and a.max() > 990
    assert abs(a.float().mean().item() - 549.5) < 5 and abs(b.float().mean().item() - 549.5) < 5


def test_addition_enumeration_is_the_whole_space():
    task = get_task("addition")
    tokens = task.enumerate_tokens()
    assert tokens.shape == (INPUT_SPACE_SIZE, task.n_ctx) == (810_000, 14)
    assert task.decode(tokens[0]) == "B100+100=200E"
    assert task.decode(tokens[-1]) == "B999+999=1998E"
    pairs = tokens[:, 1:8]
    assert torch.unique(pairs, dim=0).shape[0] == 810_000
    for row in tokens[torch.randint(0, 810_000, (300,), generator=torch.Generator().manual_seed(0))]:
        assert task.validate(task.decode(row)).correct


def test_counting_cannot_be_enumerated():
    with pytest.raises(TaskInputError, match="too large to enumerate"):
        get_task("counting").enumerate_tokens()


def test_counting_positions_and_attributes():
    task = get_task("counting")
    text = "Bvvzccvczvvvzvcvc|v:8E"
    assert task.named_positions(text) == {"|": 17, "query": 18, ":": 19}
    assert task.resolve_position(text[1:], "query") == 18
    assert task.resolve_position(text, 0) == 0 and task.resolve_position(text, "3") == 3
    assert task.attributes(text) == {"count": 8, "query_letter": "v",
                                     "letters": {"c": 5, "v": 8, "z": 3}, "length": 16}
    tokens = task.encode_batch([text])
    assert torch.nonzero(task.query_position_mask(tokens)[0]).flatten().tolist() == [17, 18, 19]
    assert torch.nonzero(task.answer_mask(tokens)[0]).flatten().tolist() == [19]


def test_addition_positions_and_attributes():
    task = get_task("addition")
    four, three = "B615+861=1476E", "B123+456=579E"
    assert task.named_positions(four) == {"F1": 1, "F2": 2, "F3": 3, "+": 4, "S1": 5, "S2": 6,
                                          "S3": 7, "=": 8, "A1": 9, "A2": 10, "A3": 11, "A4": 12}
    assert "A4" not in task.named_positions(three)
    with pytest.raises(TaskInputError, match="has no position 'A4'"):
        task.resolve_position(three, "A4")
    assert task.attributes(four) == {
        "F1": 6, "F2": 1, "F3": 5, "S1": 8, "S2": 6, "S3": 1, "A1": 1, "A2": 4, "A3": 7, "A4": 6,
        "C2": 0, "C3": 0, "a": 615, "b": 861, "sum": 1476}
    carries = task.attributes("B157+168=325E")
    assert (carries["C2"], carries["C3"], carries["A4"]) == (1, 1, None)
    tokens = task.encode_batch([four, three])
    assert torch.nonzero(task.answer_mask(tokens)[0]).flatten().tolist() == [8, 9, 10, 11, 12]
    assert torch.nonzero(task.answer_mask(tokens)[1]).flatten().tolist() == [8, 9, 10, 11]
    assert task.loss_mask(tokens)[1].sum() == 12  # predicts tokens 1..12 (through E)
    assert torch.nonzero(task.query_position_mask(tokens)[1]).flatten().tolist() == list(range(1, 12))


def test_bad_positions(task):
    with pytest.raises(TaskInputError, match="unknown position 'nowhere'.*one of"):
        task.resolve_position(task.example, "nowhere")
    with pytest.raises(TaskInputError, match="outside"):
        task.resolve_position(task.example, len(task.example))


@pytest.mark.parametrize("task_name,text,well_formed,in_distribution,correct", [
    ("counting", "Baabbc|a:2E", True, True, True),
    ("counting", "Baabbc|a:3E", True, True, False),
    ("counting", "Baabb|a:2E", True, False, True),  # two letters only
    ("counting", "Baabbc|d:1E", True, False, False),  # query letter absent
    ("counting", "Baabbc|a:2", False, False, None),
    ("counting", "Baa|bc|a:2E", False, False, None),
    ("addition", "B123+456=579E", True, True, True),
    ("addition", "B123+456=578E", True, True, False),
    ("addition", "B023+456=479E", True, False, True),
    ("addition", "B123+456=0579E", True, False, False),
    ("addition", "B123+456579E", False, False, None),
    ("addition", "B12+456=468E", False, False, None),
])
def test_validate(task_name, text, well_formed, in_distribution, correct):
    validity = get_task(task_name).validate(text)
    assert (validity.well_formed, validity.in_distribution, validity.correct) == (
        well_formed, in_distribution, correct)
    assert (validity.reason == "") == in_distribution
    if not well_formed:
        assert get_task(task_name).attributes(text) == {}


@pytest.mark.parametrize("name", ["counting", "addition"])
def test_the_grammar_allows_every_input_and_only_inputs(name):
    """``next_token_mask`` admits each token of sampled inputs at every step (no input is
    excluded), and a walk that draws uniformly among the allowed tokens always ends in an
    input of the task (nothing else is admitted)."""
    task = get_task(name)
    generator = torch.Generator().manual_seed(0)
    inputs = task.sample_tokens(500, generator)
    lengths = task.lengths(inputs)
    for position in range(1, inputs.shape[1]):
        rows = lengths > position
        if rows.any():
            allowed = task.next_token_mask(inputs[rows, :position])
            assert allowed.gather(1, inputs[rows, position, None]).all()
    n = 2000
    walk = torch.full((n, task.n_ctx), task.vocab.pad_id, dtype=torch.long)
    walk[:, 0] = task.vocab.bos_id
    running = torch.ones(n, dtype=torch.bool)
    for position in range(1, task.n_ctx):
        if not running.any():
            break
        allowed = task.next_token_mask(walk[running, :position]).float()
        assert (allowed.sum(dim=1) > 0).all()
        walk[running, position] = torch.multinomial(allowed, 1, generator=generator).squeeze(1)
        running = running & (walk[:, position] != task.vocab.eos_id)
    assert not running.any()
    assert task.in_space(walk).all()
    assert len(torch.unique(walk, dim=0)) > 1900  # and the walks do not stay in a corner


def test_free_text_has_no_grammar(ioi_tokenizer):
    from inversionview.tasks.text import TextTask

    task = TextTask(ioi_tokenizer, context=16)
    assert task.next_token_mask(torch.zeros(2, 3, dtype=torch.long)) is None


@pytest.mark.parametrize("model", ["counting", "addition", "lm-kjv", "lm-ioi", "lm-factual"])
def test_every_task_has_the_abilities_the_stages_take(model):
    """Every task the bundled models are read as (counting, addition, free text, IOI,
    factual) is a Grammar, an Annotator and Contrasts (tasks/abilities.py)."""
    from inversionview.probed import load_probed
    from inversionview.tasks.abilities import Annotator, Contrasts, Grammar

    task = load_probed(model).task
    for ability in (Grammar, Annotator, Contrasts):
        assert isinstance(task, ability), (task.name, ability.__name__)
