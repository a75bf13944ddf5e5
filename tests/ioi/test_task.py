"""IOITask: IOI prompts as a task of any language model (positions, attributes, validity,
inputs for the decoder, contrast pairs), and loading a model as IOI."""

from __future__ import annotations

import json

import pytest
import torch

from inversionview.probed import load_probed
from inversionview.probed.model import ModelLoadError
from inversionview.tasks.base import TaskInputError
from inversionview.ioi.task import IOITask

TEXT = "Yesterday Anna and Paul walked to the market, and Paul handed the key to"


@pytest.fixture(scope="module")
def model(ioi_lm_dir):
    return load_probed(ioi_lm_dir)


def test_the_manifest_makes_an_ioi_task(model):
    assert isinstance(model.task, IOITask) and model.task.free_text
    assert model.task.default_query == ("a0.0", "END")


def test_named_positions_and_attributes(model):
    task = model.task
    strings = task.text_tokens(TEXT)
    named = task.named_positions(TEXT)
    assert strings[named["IO"]] == " Anna" and strings[named["S1"]] == " Paul"
    assert strings[named["S2"]] == " Paul" and named["S1+1"] == named["S1"] + 1
    assert named["END"] == len(strings) - 1 and strings[-1] == " to"
    assert task.resolve_position(TEXT, "S2") == named["S2"]
    assert task.position_label(TEXT, named["IO"]) == "IO"
    assert task.attributes(TEXT) == {
        "io": "Anna", "s": "Paul", "order": "ABBA", "template": "walked-handed", "place": "market",
        "object": "key", "io_position": named["IO"], "s1_position": named["S1"],
        "s2_position": named["S2"]}


def test_validity_separates_prompts_from_other_text(model):
    task = model.task
    assert task.validate(TEXT).in_distribution
    odd = "So Anna and Paul sang, then Paul wrote to"  # names in place, no template
    assert task.validate(odd).well_formed and not task.validate(odd).in_distribution
    assert task.attributes(odd)["template"] is None and task.attributes(odd)["io"] == "Anna"
    assert not task.validate("In the beginning was the word").well_formed
    assert task.attributes("In the beginning was the word") == {}


def test_a_name_the_task_does_not_know_says_which_names_it_reads(model):
    text = "Yesterday Zephyrine and Paul walked to the market, and Paul handed the key to"
    assert len(model.task.vocab.encode(" Zephyrine")) > 1  # split: not one of the names
    with pytest.raises(TaskInputError, match=r"no IO: .* each one token with its leading "
                                             r"space \(Anna, Paul, .*40 names\)"):
        model.task.resolve_position(text, "IO")
    assert not model.task.validate(text).well_formed


def test_a_text_without_the_names_has_no_s2(model):
    with pytest.raises(TaskInputError, match="this text has no S2: IO, S1, S1\\+1 and S2 need"):
        model.task.resolve_position("In the beginning was the word", "S2")
    text = "In the beginning was the word"
    assert model.task.resolve_position(text, "END") == len(model.task.text_tokens(text)) - 1


def test_sampled_rows_are_prompts_and_held_out_ones_use_held_out_templates(model):
    task = model.task
    generator = torch.Generator().manual_seed(0)
    rows = task.sample_tokens(64, generator)
    assert rows.shape[1] == task.n_ctx and (rows[:, 0] == task.vocab.bos_id).all()
    ends = (rows == task.vocab.eos_id).float().argmax(dim=1)
    assert all((row[end + 1:] == task.vocab.pad_id).all() for row, end in zip(rows, ends))
    texts = task.decode_batch(rows)
    assert all(task.validate(text).in_distribution for text in texts)
    held_out = task.decode_batch(task.sample_tokens(64, generator, held_out=True))
    eval_ids = set(task.prompts.template_ids("eval"))
    assert {task.attributes(text)["template"] for text in held_out} <= eval_ids
    again = task.sample_tokens(64, torch.Generator().manual_seed(0))
    assert torch.equal(rows, again)


@pytest.mark.parametrize("kind", ["abc", "swap"])
def test_answer_pairs(model, kind):
    pairs = model.task.answer_pairs(10, kind, seed=3)
    assert pairs == model.task.answer_pairs(10, kind, seed=3)
    for original, contrast, answer, wrong in zip(*pairs.values()):
        attributes = model.task.attributes(original)
        assert answer == " " + attributes["io"] and wrong == " " + attributes["s"]
        assert contrast != original
        if kind == "swap":
            assert model.task.attributes(contrast)["io"] == attributes["s"]
        else:
            assert model.task.attributes(contrast) == {}  # no repeated name
            # the third name sits where S2 was: patching at S2 lines up
            assert (model.task.resolve_position(contrast, "S2")
                    == model.task.resolve_position(original, "S2"))
    with pytest.raises(TaskInputError, match="unknown contrast 'random' for IOI; use one of: abc, swap"):
        model.task.answer_pairs(1, "random")


def test_any_text_lm_can_be_read_as_ioi(tmp_path):
    from tiny_lms import make_ioi_lm

    directory = make_ioi_lm(tmp_path / "lm", task="text")
    assert load_probed(directory).task.name == "text"
    assert isinstance(load_probed(directory, task="ioi").task, IOITask)


def test_a_model_whose_tokenizer_splits_the_names_is_refused(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    from inversionview.text.bpe import train_bpe

    directory = train_bpe(["So Bob met Al."] * 40, 270, tmp_path / "lm")  # bytes, few merges
    GPT2LMHeadModel(GPT2Config(vocab_size=270, n_positions=32, n_embd=16, n_layer=1,
                               n_head=2)).save_pretrained(directory)
    with pytest.raises(TaskInputError, match=r"splits 40 of 40 names into several tokens "
                                             r"\(' Anna', .*\(" + str(tmp_path / "lm")):
        load_probed(directory, task="ioi")


def test_an_ioi_model_is_not_a_toy_task(ioi_lm_dir):
    with pytest.raises(ModelLoadError, match="trained on 'ioi', not 'counting'"):
        load_probed(ioi_lm_dir, task="counting")
    assert json.loads((ioi_lm_dir / "inversionview.json").read_text())["task"] == "ioi"
