"""The whole pipeline on free text, for every tested architecture: a tiny random GPT-2,
GPT-NeoX (Pythia) and Llama saved with a tokenizer trained in the test, a decoder trained a
few steps on a corpus file, a query, and the errors a user can run into."""

from __future__ import annotations

import json

import pytest
import torch

from cli_runner import invoke
from inversionview.decoder.store import DecoderLoadError, load_decoder
from inversionview.errors import UserError
from inversionview.preimage.query import QueryConfig, run_query
from inversionview.probed.model import ModelLoadError, load_probed, model_sites
from inversionview.probed.sites import SiteError
from inversionview.tasks.base import TaskInputError
from tiny_lms import ARCHITECTURES, N_HEADS, N_LAYERS, make_tiny_lm, make_tiny_text_model

TEXT = "When Alice and Bob went to the park, Bob gave a key to Alice."


@pytest.fixture(scope="module", params=ARCHITECTURES)
def trained(request, tmp_path_factory):
    """(model directory, corpus, decoder directory) of one architecture."""
    return make_tiny_text_model(tmp_path_factory.mktemp(request.param), request.param)


def test_a_directory_with_a_tokenizer_is_read_as_text_with_every_site(trained):
    directory, _, _ = trained
    model = load_probed(directory)
    assert model.task.name == "text" and model.task.sites is None
    assert [s.short for s in model.sites] == [s.short for s in model_sites(N_LAYERS, N_HEADS)]
    assert len(model.sites) == 1 + N_LAYERS * (N_HEADS + 4)


def test_decoder_owns_its_sites_ids_and_processing(trained):
    directory, _, decoder_dir = trained
    model = load_probed(directory)
    manifest = json.loads((decoder_dir / "decoder.json").read_text())
    assert manifest["sites"] == [s.short for s in model.sites]
    assert manifest["processing"] == "processed" and manifest["task"] == "text"
    vocab = model.task.vocab
    assert manifest["special_ids"] == {"bos": vocab.bos_id, "eos": vocab.eos_id, "pad": vocab.pad_id}
    assert manifest["config"]["vocab_size"] == vocab.size > vocab.model_size
    assert manifest["config"]["n_ctx"] == 24 + 2
    decoder, _ = load_decoder(decoder_dir, model)
    assert decoder.site_names == tuple(manifest["sites"])


def test_query_on_text_is_seeded_and_scored_on_the_model(trained):
    directory, _, decoder_dir = trained
    model = load_probed(directory)
    decoder, _ = load_decoder(decoder_dir, model)
    config = QueryConfig(candidates=64)
    result = run_query(model, decoder, TEXT, "a1.1", "last ' Alice'", config, seed=4)
    again = run_query(model, decoder, TEXT, "a1.1", "last ' Alice'", config, seed=4)
    assert [s.tokens for s in result.samples] == [s.tokens for s in again.samples]
    assert result.query.tokens == model.task.text_tokens(TEXT)
    assert "".join(result.query.tokens[1:]) == TEXT
    assert result.query.tokens[result.position].strip() == "Alice"
    # the header names the query position by its token, not by its index (issue 31)
    assert result.position_label == result.query.tokens[result.position]
    assert result.stats.candidates == 64
    for sample in result.samples:
        assert sample.tokens[0] == model.task.vocab.token_string(model.task.vocab.bos_id)
        assert len(sample.position_distances) == len(sample.tokens)
        finite = [d for d in sample.position_distances if d is not None]
        assert min(finite) == pytest.approx(sample.distance, abs=1e-6)


def test_the_query_reads_its_own_activation_at_distance_zero(trained):
    """A candidate equal to the query (BOS + the text's ids) scores 0 at the query position."""
    from inversionview.probed.distance import candidate_distances

    directory, _, _ = trained
    model = load_probed(directory)
    ids = model.task.encode(TEXT)
    index = model.task.resolve_position(TEXT, "last ' Bob'")
    query = model.activations(model.tokens(TEXT), "m1", index)[0]
    tokens = torch.tensor([ids + [model.task.vocab.eos_id, model.task.vocab.pad_id]])
    distance, best, _ = candidate_distances(model, model.site("m1"), query, tokens)
    assert distance.item() == pytest.approx(0.0, abs=1e-6) and best.item() == index


def test_decoder_refuses_another_processing(trained):
    directory, _, decoder_dir = trained
    with pytest.raises(DecoderLoadError, match="processed activations but the model is read raw"):
        load_decoder(decoder_dir, load_probed(directory, processing="raw"))


def test_cli_query_and_errors_on_text(trained):
    directory, _, decoder_dir = trained
    ok = invoke(["query", str(directory), "--decoder", str(decoder_dir), "--input", TEXT,
                 "--site", "a0.3", "--position", "-2", "--candidates", "64", "--json"])
    assert ok.exit_code == 0, ok.output
    record = json.loads(ok.stdout)
    assert record["site"] == "a0.3" and record["position"] == len(record["query"]["tokens"]) - 2
    for args, message in [
        (["--site", "a7.0"], "not a site of this model"),
        (["--position", "' Zed'"], "no token ' Zed'"),
        (["--input", "word " * 80], "context holds at most 64"),
        (["--raw"], "load the model without --raw"),
    ]:
        failed = invoke(["query", str(directory), "--decoder", str(decoder_dir), "--candidates",
                         "64", *(["--input", TEXT] if "--input" not in args else []), *args])
        assert failed.exit_code == 2 and message in failed.stderr, failed.output
        assert len(failed.stderr.strip().splitlines()) == 1


def test_training_a_text_model_needs_a_corpus(trained, tmp_path):
    directory, _, _ = trained
    result = invoke(["train-decoder", str(directory), "--out", str(tmp_path / "run"),
                     "--examples", "64"])
    assert result.exit_code == 2 and "--corpus" in result.stderr


def test_a_toy_task_refuses_a_corpus(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("hello\n")
    result = invoke(["train-decoder", "counting", "--out", str(tmp_path / "run"), "--examples",
                     "64", "--corpus", str(corpus)])
    assert result.exit_code == 2 and "draws its own inputs" in result.stderr


def test_model_directory_errors_are_one_line(tmp_path):
    directory = make_tiny_lm("gpt_neox", tmp_path / "neox")
    (directory / "tokenizer.json").unlink()
    with pytest.raises(UserError, match="has no tokenizer"):
        load_probed(directory)  # not GPT-2, so no toy task: it needs its tokenizer
    config = json.loads((directory / "config.json").read_text())
    config["architectures"] = ["XLNetLMHeadModel"]
    config["model_type"] = "xlnet"
    other = tmp_path / "mamba"
    other.mkdir()
    (other / "config.json").write_text(json.dumps(config))
    (other / "tokenizer.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="XLNetLMHeadModel.*cannot read; supported: .*"
                       "GPTNeoXForCausalLM.*LlamaForCausalLM") as error:
        load_probed(other)
    assert "\n" not in str(error.value)


def test_text_longer_than_the_context_and_empty_text_are_refused(trained):
    directory, _, _ = trained
    model = load_probed(directory)
    with pytest.raises(TaskInputError, match="context holds at most 64"):
        model.tokens("word " * 80)
    with pytest.raises(TaskInputError, match="empty"):
        model.tokens("")
    with pytest.raises(SiteError):
        model.site("a2.0")


PAIRS = [{"original": "When Alice and Bob went to the park, Bob gave a key to",
          "contrast": "When Alice and Bob went to the park, Alice gave a key to",
          "answer": " the", "contrast_answer": " a"},
         {"original": "When Carol and Dave went to the store, Dave sent a map to",
          "contrast": "When Carol and Dave went to the store, Carol sent a map to",
          "answer": " the", "contrast_answer": " a"}]


def test_patching_with_the_users_text_pairs(trained):
    """LD is read after each text's last token with the user's answer tokens; a component
    before the texts differ changes nothing, the last residual stream at the end carries all."""
    from inversionview.verify.patching import PatchingExperiment, given_pairs, parse_components

    directory, _, _ = trained
    model = load_probed(directory)
    pairs = given_pairs(model.task, PAIRS)
    task = model.task
    assert pairs.answers == [task.encode(" the")[1]] * 2
    experiment = PatchingExperiment(model, pairs)
    logits = model.processed_logits(model.tokens([p["original"] for p in PAIRS]))
    last = [len(task.encode(p["original"])) - 1 for p in PAIRS]
    the, a = task.encode(" the")[1], task.encode(" a")[1]
    expected = [logits[i, last[i], the] - logits[i, last[i], a] for i in range(2)]
    assert experiment.original_ld.tolist() == pytest.approx([e.item() for e in expected], abs=1e-5)
    final = f"x{N_LAYERS - 1}.post"
    report = experiment.each(parse_components(
        model, f'a0.1@first " went",{final}@last,a0.0@-1,x0.mid@"When"'))
    effects = {step.components[0]: step for step in report.steps[:4]}
    assert effects['a0.1@first " went"'].effect == pytest.approx(0.0, abs=1e-6)
    assert effects['x0.mid@"When"'].effect == pytest.approx(0.0, abs=1e-6)
    assert effects[f"{final}@last"].patched_ld == pytest.approx(report.contrast_ld, abs=1e-4)
    assert effects["a0.0@-1"].effect != 0.0  # attends to the name that differs


def test_text_pair_errors_are_one_line(trained, tmp_path):
    from inversionview.verify.patching import given_pairs

    directory, _, _ = trained
    model = load_probed(directory)
    task = model.task
    for rows, message in [
        ([{"original": "a", "contrast": "b"}], "has no answer and contrast_answer"),
        ([{**PAIRS[0], "answer": " Alice and"}], "needs one token"),
        ([{**PAIRS[0], "extra": 1}], "unknown: extra"),
        ([{**PAIRS[0], "contrast": "word " * 80}], "context holds at most 64"),
        ([], "no pairs given"),
    ]:
        with pytest.raises(TaskInputError, match=message):
            given_pairs(task, rows)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps(PAIRS[0]) + "\n\n" + json.dumps(PAIRS[1]) + "\n")
    ok = invoke(["patch", str(directory), "--components", "a1.0@last,x0.post@-2", "--pairs",
                 str(pairs), "--json"])
    assert ok.exit_code == 0, ok.output
    record = json.loads(ok.stdout)
    assert record["n"] == 2 and [s["components"] for s in record["steps"]] == [
        ["a1.0@last"], ["x0.post@-2"], ["a1.0@last", "x0.post@-2"]]
    pairs.write_text(json.dumps(PAIRS[0]) + "\n{not json\n")
    for args, message in [([], "needs your contrast pairs: --pairs FILE.jsonl"),
                          (["--pairs", str(pairs)], "line 2 is not JSON"),
                          (["--pairs", str(tmp_path / "none.jsonl")], "does not exist"),
                          (["--pairs", str(pairs), "--components", "a1.0"], "is not SITE@POSITION")]:
        failed = invoke(["patch", str(directory), *(["--components", "a1.0@last"]
                                                    if "--components" not in args else []), *args])
        assert failed.exit_code == 2 and message in failed.stderr, failed.output
        assert len(failed.stderr.strip().splitlines()) == 1


def test_components_on_text_take_any_query_position(trained):
    from inversionview.verify.patching import parse_components

    directory, _, _ = trained
    model = load_probed(directory)
    parsed = parse_components(model, 'a0.0@",", a1.0@last, m1@-3,x0.pre@first " Bob"')
    assert [c.position for c in parsed] == ['","', "last", -3, 'first " Bob"']
    tokens = model.task.text_tokens(PAIRS[0]["original"])
    assert [model.task.resolve_position(PAIRS[0]["original"], c.position) for c in parsed[:3]] \
        == [tokens.index(","), len(tokens) - 1, len(tokens) - 3]


def test_export_re_measures_on_the_training_corpus_and_says_when_it_is_gone(trained, tmp_path):
    directory, corpus, decoder_dir = trained
    ok = invoke(["export-decoder", str(decoder_dir), "--out", str(tmp_path / "exported")])
    assert ok.exit_code == 0, ok.output
    manifest = json.loads((tmp_path / "exported" / "decoder.json").read_text())
    assert 0 <= manifest["exported_in_epsilon_mean"] <= 1
    moved = corpus.with_name("moved.txt")
    corpus.rename(moved)
    try:
        failed = invoke(["export-decoder", str(decoder_dir), "--out", str(tmp_path / "again")])
    finally:
        moved.rename(corpus)
    assert failed.exit_code == 2 and "which is not there" in failed.stderr, failed.output
