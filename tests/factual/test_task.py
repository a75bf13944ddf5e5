"""The factual-recall task on a model's own tokenizer: prompts, SUBJ and END, attributes,
contrasts, and a decoder trained on it (the pipeline, not the quality)."""

import pytest
import torch

from inversionview.probed import load_probed
from inversionview.tasks.base import TaskInputError


@pytest.fixture(scope="module")
def model(factual_lm_dir):
    return load_probed(factual_lm_dir)


def test_subj_is_the_subjects_last_token_and_end_the_prompts(model):
    task = model.task
    assert task.name == "factual"
    for text, subject in [("The capital of France is", "France"),
                          ("In São Tomé people speak", "São Tomé"),
                          ("The city of Buenos Aires is in", "Buenos Aires")]:
        ids = task.encode(text)
        strings = task.token_strings(ids)
        named = task.named_positions(text)
        assert named["END"] == len(ids) - 1
        upto = "".join(strings[1:named["SUBJ"] + 1])
        assert upto.endswith(subject) or upto.rstrip().endswith(subject.split()[-1])
        assert subject not in "".join(strings[1:named["SUBJ"]])  # not earlier
        assert task.resolve_position(text, "SUBJ") == named["SUBJ"]


def test_attributes_validity_and_a_text_without_a_subject(model):
    task = model.task
    attributes = task.attributes("People in Paris speak")
    assert attributes == {"subject": "Paris", "kind": "city", "relation": "language",
                          "country": "France", "capital": "Paris", "language": "French",
                          "currency": "Euro", "region": "Europe",
                          "template": "People in {subject} speak"}
    assert task.validate("People in Paris speak").in_distribution
    bad = task.validate("People in Atlantis speak")
    assert not bad.well_formed and "known subject" in bad.reason
    with pytest.raises(TaskInputError, match="this text has no SUBJ: it needs a known subject"):
        task.resolve_position("People in Atlantis speak", "SUBJ")
    assert task.resolve_position("People in Atlantis speak", "END") == len(task.encode("People in Atlantis speak")) - 1


def test_samples_are_prompts_and_held_out_ones_use_the_eval_templates(model):
    task = model.task
    held_out = task.sample_prompts(50, torch.Generator().manual_seed(0), held_out=True)
    assert {p.split for p in held_out} == {"eval"}
    tokens = task.sample_tokens(8, torch.Generator().manual_seed(1))
    assert tokens.shape[1] == task.n_ctx and (tokens[:, 0] == task.vocab.bos_id).all()
    again = task.sample_tokens(8, torch.Generator().manual_seed(1))
    assert torch.equal(tokens, again)
    special = (task.vocab.pad_id, task.vocab.eos_id, task.vocab.bos_id)
    for row in tokens:
        text = task.decode([int(t) for t in row if int(t) not in special])
        assert task.validate(text).in_distribution, text


def test_contrasts_keep_the_template_and_change_the_answers_first_token(model):
    pairs = model.task.answer_pairs(20, "subject", seed=3)
    for original, contrast, answer, other in zip(pairs["original"], pairs["contrast"],
                                                 pairs["answer"], pairs["contrast_answer"]):
        assert model.task.parse(original)[2] == model.task.parse(contrast)[2]
        assert answer != other and len(model.task.encode(answer)) == 2  # BOS + one token
    with pytest.raises(TaskInputError, match="unknown contrast 'abc' for factual recall"):
        model.task.answer_pairs(2, "abc")


def test_a_decoder_trains_and_a_query_runs_at_subj(model, tmp_path):
    from inversionview.decoder.train import DecoderTrainingConfig, train_decoder
    from inversionview.decoder.store import load_decoder
    from inversionview.preimage.query import QueryConfig, run_query

    train_decoder(model, DecoderTrainingConfig(out=tmp_path / "decoder", examples=64,
                                               eval_every_seconds=10_000, eval_queries_per_site=1,
                                               eval_samples_per_query=2), show_progress=False)
    decoder, _ = load_decoder(tmp_path / "decoder", model)
    assert "a1.3" in decoder.site_names and "m0" in decoder.site_names
    result = run_query(model, decoder, "The capital of France is", "a1.3", "SUBJ",
                       QueryConfig(candidates=32), seed=0)
    assert result.position_label == "SUBJ" and result.query.attributes["capital"] == "Paris"
    assert not result.constrained  # free text has no grammar


def test_readings_pool_the_agreement_per_head_position_and_relation(model, tmp_path):
    from inversionview.decoder.store import load_decoder
    from inversionview.decoder.train import DecoderTrainingConfig, train_decoder
    from inversionview.factual.readings import READ_ATTRIBUTES, read_factual

    train_decoder(model, DecoderTrainingConfig(out=tmp_path / "d", examples=64,
                                               eval_every_seconds=10_000, eval_queries_per_site=1,
                                               eval_samples_per_query=2), show_progress=False)
    decoder, _ = load_decoder(tmp_path / "d", model)
    rows = read_factual(model, decoder, ["a1.0"], relations=["capital", "language"], queries=2,
                        candidates=16, epsilon=2.0)  # everything is inside: counts to check
    assert [(r["site"], r["position"], r["relation"]) for r in rows] == [
        ("a1.0", "SUBJ", "capital"), ("a1.0", "END", "capital"),
        ("a1.0", "SUBJ", "language"), ("a1.0", "END", "language")]
    for row in rows:
        assert row["queries"] == 2 and set(row["attributes"]) == set(READ_ATTRIBUTES)
        # read at the query's named position in each sample: every sample has an END, and
        # an untrained decoder's samples seldom hold a known subject, so seldom a SUBJ
        if row["position"] == "END":
            assert row["queries_with_inside"] == 2 and row["distinct_in_epsilon"] > 0
    again = read_factual(model, decoder, ["a1.0"], relations=["capital", "language"], queries=2,
                         candidates=16, epsilon=2.0)
    assert again == rows
