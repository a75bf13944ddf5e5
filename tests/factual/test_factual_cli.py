"""``inversionview factual corpus`` and ``factual eval``."""

import json
import re

from cli_runner import invoke

from inversionview.factual.corpus import _sentence, mixture_lines
from inversionview.factual.knowledge import RELATIONS


def test_the_mixture_never_shows_a_held_out_template_and_is_seeded():
    lines = mixture_lines(3000, seed=1, text_lines=["In the beginning was the word."])
    assert lines == mixture_lines(3000, seed=1, text_lines=["In the beginning was the word."])
    held_out = [re.compile(re.escape(head) + "[^.]+" + re.escape(tail), re.IGNORECASE)
                for r in RELATIONS.values() for head, tail in (t.split("{subject}") for t in r.eval)]
    kinds = {"text": 0, "profile": 0, "fact": 0}
    for line in lines:
        assert not any(pattern.search(line) for pattern in held_out), line
        kinds["text" if line.startswith("In the beginning") else
              "profile" if line.count(". ") >= 1 else "fact"] += 1
    assert kinds["text"] > 1200 and kinds["profile"] > 300 and kinds["fact"] > 900
    assert _sentence("The capital of {subject} is", "France", "Paris", "We learned that ") == (
        "We learned that the capital of France is Paris.")
    assert _sentence("{subject} lies in", "Peru", "Americas", "Of course, ") == (
        "Of course, Peru lies in Americas.")


def test_corpus_and_eval_commands(factual_lm_dir, tmp_path):
    out = tmp_path / "facts.txt"
    result = invoke(["factual", "corpus", "--out", str(out), "--lines", "50", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["lines"] == 50 and len(out.read_text().splitlines()) == 50
    again = invoke(["factual", "corpus", "--out", str(out), "--lines", "50"])
    assert again.exit_code == 2 and "exists" in again.stderr

    result = invoke(["factual", "eval", str(factual_lm_dir), "--relation", "capital", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert set(report["by_relation"]) == {"capital"} and report["n"] == len(
        [s for s in report["by_template"]]) * report["n"] // len(report["by_template"])
    assert 0 <= report["top1_accuracy"] <= 1 and report["split"] == "eval"
    text = invoke(["factual", "eval", str(factual_lm_dir), "--split", "train"]).stdout
    assert "top-1" in text and "cities" in text and "countries" in text


def test_factual_commands_reject_bad_input(factual_lm_dir):
    for args, message in [
        (["factual", "eval", str(factual_lm_dir), "--relation", "birthplace"], "unknown relation 'birthplace'"),
        (["factual", "eval", str(factual_lm_dir), "--split", "test"], "unknown split 'test'"),
        (["factual", "eval", "counting"], "trained on 'counting', not 'factual'"),
        (["factual", "corpus", "--out", "/tmp/x.csv"], ".txt"),
        (["factual", "read", str(factual_lm_dir), "--heads", ","],  # as `ioi read` (issue 31)
         "--heads ',' names no head; give heads such as"),
    ]:
        result = invoke(args)
        assert result.exit_code == 2 and message in result.stderr, (args, result.output)
        assert "Traceback" not in result.output


def test_eval_refuses_a_tokenizer_that_spells_answers_from_a_bare_space(factual_lm_dir, tmp_path):
    """Issue 31: every answer's first token was the space alone, so factual eval graded one
    token for all answers (top-1 1.000 on a trained model, exit 0); `ioi eval` refused the
    same model (its names are not one token). Both refuse it now, and so do factual pairs."""
    import shutil

    from tiny_lms import keep_spaces_apart

    model = keep_spaces_apart(shutil.copytree(factual_lm_dir, tmp_path / "spaced"))
    result = invoke(["factual", "eval", str(model), "--relation", "region"])
    assert result.exit_code == 2, result.output
    assert ("the tokenizer begins 5 of 5 answers with a token that is only the space (' Asia'"
            in result.stderr) and result.stderr.count("\n") == 1
    assert "IOI needs" in invoke(["ioi", "eval", str(model)]).stderr
    pairs = invoke(["patch", str(model), "--components", "a1.0@END", "--contrast", "subject",
                    "--n", "4"])
    assert pairs.exit_code == 2 and "only the space" in pairs.stderr, pairs.output


def test_read_command_on_a_tiny_model(factual_lm_dir, tmp_path):
    from inversionview.decoder.train import DecoderTrainingConfig, train_decoder
    from inversionview.probed import load_probed

    train_decoder(load_probed(factual_lm_dir), DecoderTrainingConfig(
        out=tmp_path / "decoder", examples=32, eval_every_seconds=10_000,
        eval_queries_per_site=1, eval_samples_per_query=2), show_progress=False)
    args = ["factual", "read", str(factual_lm_dir), "--decoder", str(tmp_path / "decoder"),
            "--relation", "region", "--queries", "1", "--candidates", "8"]
    result = invoke([*args, "--heads", "a1.0,a0.3", "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["heads"] == ["a1.0", "a0.3"]
    assert [(r["site"], r["position"]) for r in record["readings"]] == [
        ("a1.0", "SUBJ"), ("a1.0", "END"), ("a0.3", "SUBJ"), ("a0.3", "END")]
    found = invoke([*args, "--keep", "1"])  # the heads attribution keeps
    assert found.exit_code == 0 and "region" in found.stdout, found.output
    bad = invoke([*args, "--heads", "m0"])
    assert bad.exit_code == 2 and "--heads takes heads such as a3.1" in bad.stderr


def test_query_bans_rare_tokens_from_the_models_stored_counts(factual_lm_dir, tmp_path):
    """--ban-rare without --ban-corpus reads the counts train-lm stores beside the weights;
    a model without them gets a clear error saying what to give instead."""
    import shutil

    from inversionview.decoder.train import DecoderTrainingConfig, train_decoder
    from inversionview.factual.knowledge import Knowledge
    from inversionview.text.counts import write_token_counts
    from inversionview.probed import load_probed

    model_dir = tmp_path / "model"
    shutil.copytree(factual_lm_dir, model_dir)
    train_decoder(load_probed(model_dir), DecoderTrainingConfig(
        out=tmp_path / "decoder", examples=32, eval_every_seconds=10_000,
        eval_queries_per_site=1, eval_samples_per_query=2), show_progress=False)
    args = ["query", str(model_dir), "--decoder", str(tmp_path / "decoder"), "--site", "a1.0",
            "--position", "END", "--candidates", "16", "--search", "0", "--ban-rare", "3"]
    missing = invoke(args)
    assert missing.exit_code == 2 and "token_counts.json" in missing.stderr
    assert "--ban-corpus" in missing.stderr
    model = load_probed(model_dir)
    write_token_counts(model_dir, model.task.vocab, Knowledge.load().sentences("train")[:200])
    result = invoke([*args, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["banned_tokens"] > 0
    (model_dir / "token_counts.json").write_text('{"kind": "token-counts", "counts": [1, 2]}')
    broken = invoke(args)
    assert broken.exit_code == 2 and "does not hold" in broken.stderr
