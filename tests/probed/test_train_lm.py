"""Training a small language model with its own BPE on a corpus: the loss falls, held-out
loss and perplexity are reported, a killed run resumes exactly, the directory is a
self-contained model (tokenizer included), float16 shipping, and the train-lm command's
errors are one line."""

from __future__ import annotations

import hashlib
import json
import math
import random

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from transformers import GPT2LMHeadModel

from cli_runner import invoke
from inversionview import cli
from inversionview.checkpoint import RunExistsError
from inversionview.errors import OptionError, UserError
from inversionview.probed import train_lm as train_lm_module
from inversionview.probed.train_lm import (LengthGroupedBatches, LMTrainingConfig, held_out_loss,
                                           held_out_tokens, ship_lm, train_lm)
from inversionview.tasks.base import next_token_targets
from inversionview.tasks.text import TextTask
from inversionview.text.sources import CorpusSource
from inversionview.text.tokenizer import HFTokenizer

TINY = dict(n_embd=32, n_head=2, n_layer=2, n_inner=64)
_NAMES = ["Moses", "Aaron", "Miriam", "Joshua", "Caleb", "Eleazar"]
_VERBS = ["spake unto", "went before", "blessed", "followed", "answered"]
_PLACES = ["the camp", "the mount", "the tabernacle", "the wilderness", "Egypt"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """400 short lines of a small grammar, written as a .txt corpus."""
    rng = random.Random(0)
    lines = []
    for _ in range(400):
        a, b = rng.sample(_NAMES, 2)
        lines.append(f"And {a} {rng.choice(_VERBS)} {b} in {rng.choice(_PLACES)}.")
    path = tmp_path_factory.mktemp("corpus") / "lines.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def _config(corpus, out, steps, **extra):
    """A tiny run that evaluates after every step and checkpoints after every step."""
    return LMTrainingConfig(**{**dict(
        corpus=corpus, out=out, steps=steps, seed=3, vocab_size=300, max_tokens=8,
        batch_size=16, lr=1e-2, warmup_steps=2, held_out_fraction=0.1, length_pool=4, eval_every_seconds=0.0,
        checkpoint_every_seconds=1e-9, model_overrides=dict(TINY)), **extra})


def _manifest(directory):
    return json.loads((directory / "inversionview.json").read_text())


def test_the_loss_falls_and_the_directory_is_a_self_contained_model(corpus, tmp_path, no_network):
    out = tmp_path / "run"
    model = train_lm(_config(corpus, out, steps=60, checkpoint_every_seconds=60.0),
                     show_progress=False)
    manifest = _manifest(out)
    history = manifest["history"]
    assert [entry["step"] for entry in history] == list(range(1, 61))
    assert history[0]["held_out_loss"] > 5.0  # about ln(300) at the start
    assert history[-1]["held_out_loss"] < history[0]["held_out_loss"] - 3.0
    assert manifest["held_out_loss"] == history[-1]["held_out_loss"]
    assert manifest["held_out_perplexity"] == pytest.approx(math.exp(manifest["held_out_loss"]))
    assert manifest["held_out"]["separate_from_training"] is True
    assert 0 < manifest["held_out"]["pieces"] == manifest["corpus"]["held_out_pieces"]
    assert (manifest["kind"], manifest["task"]) == ("probed-model", "text")
    assert manifest["corpus"]["sha256"] == hashlib.sha256(corpus.read_bytes()).hexdigest()
    assert manifest["tokens"] == history[-1]["tokens"] > 60 * 16
    assert manifest["steps"] == 60 and manifest["seed"] == 3 and manifest["commit"]
    assert manifest["command"] and manifest["machine"]["torch"] == torch.__version__

    # The directory holds everything a later stage needs, read offline.
    settings = json.loads((out / "config.json").read_text())
    assert settings["n_positions"] == 8 + 2 and settings["n_layer"] == 2
    tokenizer = HFTokenizer.from_directory(out, settings["vocab_size"])
    assert len(tokenizer.hf) == manifest["tokenizer"]["vocab_size"] == settings["vocab_size"]
    assert tokenizer.fingerprint() == manifest["tokenizer"]["fingerprint"]
    text = "And Moses spake"
    assert tokenizer.decode(tokenizer.encode(text)) == text
    loaded = GPT2LMHeadModel.from_pretrained(str(out), local_files_only=True).eval()
    ids = torch.tensor([[tokenizer.bos_id] + tokenizer.encode(text)])
    assert ids.shape[1] <= settings["n_positions"]
    # Without a corpus the task's batches still fit the model's 10 positions.
    assert TextTask(tokenizer, settings["n_positions"]).encode_batch([text]).shape[1] == 10
    model.hf_model.eval()
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model.hf_model(ids).logits)
    assert not no_network


def test_a_killed_run_resumes_exactly(corpus, tmp_path, monkeypatch):
    straight = train_lm(_config(corpus, tmp_path / "straight", steps=8), show_progress=False)

    calls = {"n": 0}
    real = train_lm_module.token_losses

    def dies_at_step_six(hf_model, task, tokens):
        calls["n"] += hf_model.training  # evaluations run in eval mode and do not count
        if calls["n"] == 6:
            raise KeyboardInterrupt("killed")
        return real(hf_model, task, tokens)

    monkeypatch.setattr(train_lm_module, "token_losses", dies_at_step_six)
    with pytest.raises(KeyboardInterrupt):
        train_lm(_config(corpus, tmp_path / "killed", steps=8), show_progress=False)
    state = json.loads((tmp_path / "killed" / "checkpoint" / "state.json").read_text())
    assert state["step"] == 5
    monkeypatch.setattr(train_lm_module, "token_losses", real)

    resumed = train_lm(LMTrainingConfig.resumed(tmp_path / "killed"), resume=True,
                       show_progress=False)
    for name, value in straight.weights().items():
        assert torch.equal(value, resumed.weights()[name]), name
    killed, whole = _manifest(tmp_path / "killed"), _manifest(tmp_path / "straight")
    assert [entry["step"] for entry in killed["history"]] == list(range(1, 9))
    for key in ("held_out_loss", "tokens"):
        assert killed[key] == whole[key], key
    for mine, theirs in zip(killed["history"], whole["history"]):
        assert {k: v for k, v in mine.items() if k != "seconds"} == \
            {k: v for k, v in theirs.items() if k != "seconds"}
    assert [c["resumed_from_step"] for c in killed["commands"]] == [None, 5]


def test_resume_refuses_another_corpus(corpus, tmp_path):
    train_lm(_config(corpus, tmp_path / "run", steps=2), show_progress=False)
    changed = tmp_path / "changed.txt"
    changed.write_text(corpus.read_text() + "And Caleb followed Joshua.\n")
    config = LMTrainingConfig.resumed(tmp_path / "run", steps=4)
    config.corpus = changed
    with pytest.raises(UserError, match="differs from the one the run .* was trained on"):
        train_lm(config, resume=True, show_progress=False)


def test_float16_weights_and_a_shipped_copy_without_checkpoint(corpus, tmp_path):
    model = train_lm(_config(corpus, tmp_path / "run", steps=3, save_dtype="float16"),
                     show_progress=False)
    with safe_open(str(tmp_path / "run" / "model.safetensors"), "pt") as weights:
        assert {weights.get_tensor(k).dtype for k in weights.keys()} == {torch.float16}
    shipped = ship_lm(tmp_path / "run", tmp_path / "ship")
    names = {path.name for path in shipped.iterdir()}
    assert names == {"config.json", "model.safetensors", "inversionview.json", "tokenizer.json",
                     "tokenizer_config.json", "token_counts.json"}
    counts = json.loads((shipped / "token_counts.json").read_text())
    vocab = model.task.vocab
    assert counts["kind"] == "token-counts" and len(counts["counts"]) == vocab.size
    assert sum(counts["counts"]) >= counts["texts"] > 0  # BOS and EOS of each text at least
    manifest = _manifest(shipped)
    assert manifest["weights_dtype"] == "float16" and manifest["task"] == "text"
    assert manifest["held_out_loss"] == _manifest(tmp_path / "run")["held_out_loss"]
    loaded = GPT2LMHeadModel.from_pretrained(str(shipped), local_files_only=True)
    for name, value in model.weights().items():
        torch.testing.assert_close(loaded.state_dict()[name].float(), value, atol=1e-3, rtol=1e-3)


def test_length_grouped_batches_are_a_function_of_seed_and_step(corpus, tmp_path):
    tokenizer = HFTokenizer.from_directory(
        train_lm_module.train_bpe(corpus.read_text().splitlines(), 300, tmp_path), 300)
    source = CorpusSource.from_path(corpus, tokenizer, max_tokens=32)  # whole lines, 15-24 tokens
    batches = LengthGroupedBatches(source, batch_size=16, pool=4, seed=7)
    again = LengthGroupedBatches(source, batch_size=16, pool=4, seed=7)
    widths = []
    for step in (9, 0, 5, 3, 2, 1, 7):  # any order: nothing depends on the steps before
        batch = batches.get(step)
        assert torch.equal(batch, again.get(step))
        assert batch.shape[0] == 16 and (batch[:, 0] == tokenizer.bos_id).all()
        assert (batch[:, -1] != tokenizer.pad_id).any()  # trimmed to its longest row
        widths.append(batch.shape[1])
    assert min(widths) < max(widths) <= source.n_ctx
    other = LengthGroupedBatches(source, batch_size=16, pool=4, seed=8)
    assert any(batches.get(s).shape != other.get(s).shape
               or not torch.equal(batches.get(s), other.get(s)) for s in range(4))
    # A pool holds pool x batch_size draws; grouping only reorders them into batches.
    rows = torch.cat([F.pad(batches.get(s), (0, source.n_ctx - batches.get(s).shape[1]),
                            value=tokenizer.pad_id) for s in range(4)])
    generator = torch.Generator().manual_seed(train_lm_module._derived_seed(7, "pool", 0))
    drawn = source.sample_tokens(64, generator)
    assert sorted(map(tuple, rows.tolist())) == sorted(map(tuple, drawn.tolist()))


def test_the_held_out_loss_is_the_mean_over_every_predicted_token(corpus, tmp_path):
    model = train_lm(_config(corpus, tmp_path / "run", steps=2), show_progress=False)
    task: TextTask = model.task
    tokens = held_out_tokens(task.source, limit=10_000, seed=0)
    loss, predicted = held_out_loss(model.hf_model, task, tokens, chunk=3)
    # Directly: one padded batch, every position whose next token the mask keeps.
    ids = tokens.masked_fill(tokens >= model.hf_model.config.vocab_size, 0)
    with torch.no_grad():
        logits = model.hf_model.eval()(ids).logits
    mask = task.loss_mask(tokens)
    direct = F.cross_entropy(logits[mask], next_token_targets(tokens, task.vocab.pad_id)[mask])
    assert predicted == int(mask.sum()) > 0
    assert loss == pytest.approx(direct.item(), abs=1e-5)
    assert len(tokens) == len(task.source.held_out)


@pytest.mark.parametrize("settings,message", [
    (dict(minutes=1.0), "exactly one of minutes or steps"),
    (dict(model_overrides=dict(n_embd=30, n_head=4)), "not divisible by n-heads"),
    (dict(max_tokens=0), "max-tokens must be an integer from 1"),
    (dict(vocab_size=100), "vocab-size must be an integer from 258"),
    (dict(save_dtype="int8"), "save_dtype must be one of float32, float16"),
])
def test_bad_settings_are_one_line_errors(corpus, tmp_path, settings, message):
    with pytest.raises(OptionError, match=message) as error:
        _config(corpus, tmp_path, steps=2, **settings)
    assert "\n" not in str(error.value)


def test_a_new_run_does_not_overwrite_a_run(corpus, tmp_path):
    train_lm(_config(corpus, tmp_path / "run", steps=2), show_progress=False)
    with pytest.raises(RunExistsError, match="continue it with --resume"):
        train_lm(_config(corpus, tmp_path / "run", steps=3), show_progress=False)


# ----- the command ----------------------------------------------------------------------


@pytest.fixture
def command(monkeypatch):
    """``inversionview train-lm`` on the real app."""
    assert any(info.name == "train-lm" for info in cli.app.registered_commands)
    return lambda *args: invoke(["train-lm", *args])


def _one_line_error(result, *fragments):
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


TINY_ARGS = ["--d-model", "32", "--n-heads", "2", "--n-layers", "2", "--vocab-size", "300",
             "--max-tokens", "8", "--batch-size", "8", "--threads", "1"]


def test_the_command_trains_and_resumes(command, corpus, tmp_path):
    out = tmp_path / "run"
    result = command("--corpus", corpus, "--out", out, "--steps", "3", "--json", *TINY_ARGS)
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["steps"] == 3 and record["held_out_perplexity"] == pytest.approx(
        math.exp(record["held_out_loss"]))
    again = command("--corpus", corpus, "--out", out, "--steps", "3", *TINY_ARGS)
    _one_line_error(again, "already holds a training run", "--resume")
    more = command("--out", out, "--corpus", corpus, "--resume", "--steps", "5", "--json")
    assert more.exit_code == 0, more.output
    assert json.loads(more.stdout)["steps"] == 5
    changed = command("--out", out, "--corpus", corpus, "--resume", "--seed", "9")
    _one_line_error(changed, "--seed 9 differs from the 0")
    forced = command("--corpus", corpus, "--out", out, "--steps", "2", "--force", "--json",
                     *TINY_ARGS)
    assert forced.exit_code == 0, forced.output
    assert _manifest(out)["steps"] == 2 and len(_manifest(out)["commands"]) == 1


def test_a_bad_corpus_is_a_one_line_error(command, tmp_path):
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00text")
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n\n")
    table = tmp_path / "table.csv"
    table.write_text("a,b\n")
    jsonl = tmp_path / "lines.jsonl"
    jsonl.write_text('{"body": "In the beginning"}\n')
    cases = [(tmp_path / "missing.txt", ["does not exist"]), (binary, ["not UTF-8"]),
             (blank, ["holds no text"]), (table, ["suffix '.csv'"]),
             (jsonl, ["'text'", "--field"])]
    for path, fragments in cases:
        result = command("--corpus", path, "--out", tmp_path / "out", "--steps", "2")
        _one_line_error(result, str(path.name) if path != blank else "holds no text", *fragments)
        assert not (tmp_path / "out" / "checkpoint").exists()


def test_the_command_needs_one_budget(command, corpus, tmp_path):
    _one_line_error(command("--corpus", corpus, "--out", tmp_path / "o"), "exactly one of")
    _one_line_error(command("--corpus", corpus, "--out", tmp_path / "o", "--steps", "0"),
                    "--steps")
    _one_line_error(command("--corpus", corpus, "--out", tmp_path / "o", "--steps", "2",
                            "--vocab-size", "12"), "vocab-size")


def test_an_lm_trained_on_the_ioi_mixture_ships_as_ioi(tmp_path):
    from inversionview.ioi.corpus import mixture_lines
    from inversionview.probed import load_probed
    from inversionview.ioi.task import IOITask

    corpus = tmp_path / "mix.txt"
    corpus.write_text("\n".join(mixture_lines(1_500, seed=1)) + "\n")
    train_lm(LMTrainingConfig(corpus=corpus, out=tmp_path / "run", steps=2, vocab_size=700,
                              max_tokens=40, model_overrides=TINY), show_progress=False)
    query = {"site": "a1.0", "position": "END"}
    shipped = ship_lm(tmp_path / "run", tmp_path / "ship", task="ioi",
                      extra={"default_query": query})
    manifest = _manifest(shipped)
    assert manifest["task"] == "ioi" and manifest["default_query"] == query
    model = load_probed(shipped)
    assert isinstance(model.task, IOITask) and model.task.default_query == ("a1.0", "END")
    with pytest.raises(UserError, match="unknown task 'sorting' for a language model"):
        ship_lm(tmp_path / "run", tmp_path / "ship2", task="sorting")


def test_init_from_starts_from_a_models_weights_and_tokenizer(tmp_path):
    """A second corpus trained from the first run's model: its tokenizer and shape are kept,
    the manifest names where it started, and a model that does not fit is refused."""
    from inversionview.checkpoint import CheckpointError
    from inversionview.ioi.corpus import mixture_lines

    corpus = tmp_path / "mix.txt"
    corpus.write_text("\n".join(mixture_lines(1_500, seed=1)) + "\n")
    first = train_lm(LMTrainingConfig(corpus=corpus, out=tmp_path / "first", steps=2,
                                      vocab_size=700, max_tokens=40, model_overrides=TINY),
                     show_progress=False)
    other = tmp_path / "other.txt"
    other.write_text("\n".join(mixture_lines(500, seed=2)) + "\n")
    second = train_lm(LMTrainingConfig(corpus=other, out=tmp_path / "second", steps=1, lr=1e-12,
                                       max_tokens=40, init_from=tmp_path / "first", warmup_steps=1),
                      show_progress=False)
    before, after = first.hf_model.state_dict(), second.hf_model.state_dict()
    assert all(torch.allclose(before[k], after[k], atol=1e-6) for k in before)  # lr ~ 0
    manifest = _manifest(tmp_path / "second")
    assert manifest["init_from"]["path"].endswith("first") and manifest["init_from"]["weights_sha256"]
    assert manifest["tokenizer"]["fingerprint"] == _manifest(tmp_path / "first")["tokenizer"]["fingerprint"]
    with pytest.raises(CheckpointError, match="reads 42 positions; pieces of --max-tokens 64 need 66"):
        train_lm(LMTrainingConfig(corpus=other, out=tmp_path / "third", steps=1,
                                  init_from=tmp_path / "first"), show_progress=False)
    with pytest.raises(CheckpointError, match="has no config.json"):
        train_lm(LMTrainingConfig(corpus=other, out=tmp_path / "fourth", steps=1,
                                  init_from=tmp_path, tokenizer=tmp_path / "first"),
                 show_progress=False)


def test_init_from_refuses_another_tokenizer_or_shape(command, corpus, tmp_path):
    """Issue 31: --init-from with another --tokenizer saved the source's embeddings with a
    tokenizer that does not index them, and --d-model and the like were silently ignored;
    each is now refused before anything is written, and the model's own tokenizer, wherever
    it is copied, is taken."""
    import shutil

    from inversionview.text.bpe import train_bpe

    source = tmp_path / "source"
    train_lm(_config(corpus, source, steps=1), show_progress=False)
    size = len(HFTokenizer.from_directory(source, 10**6).hf)
    smaller = train_bpe(corpus.read_text().splitlines(), size - 20, tmp_path / "smaller")
    swapped = tmp_path / "swapped"  # as many tokens, two of them with each other's ids
    swapped.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(source / name, swapped / name)
    spec = json.loads((swapped / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    vocab["!"], vocab['"'] = vocab['"'], vocab["!"]
    (swapped / "tokenizer.json").write_text(json.dumps(spec))
    same = tmp_path / "same"
    shutil.copytree(swapped, same)
    shutil.copy(source / "tokenizer.json", same / "tokenizer.json")

    out = tmp_path / "out"
    start = ["--corpus", corpus, "--out", out, "--init-from", source, "--steps", "1",
             "--max-tokens", "8", "--batch-size", "4", "--threads", "1"]
    cases = [(["--tokenizer", smaller], [f"{size - 20} tokens but", f"has {size} token embeddings"]),
             (["--tokenizer", swapped], ["is not the tokenizer of --init-from", "sha256"]),
             (["--d-model", "64"], ["--d-model 64 differs from the 32 of --init-from"]),
             (["--n-heads", "4"], ["--n-heads 4 differs from the 2 of --init-from"]),
             (["--n-layers", "1"], ["--n-layers 1 differs from the 2 of --init-from"])]
    for extra, fragments in cases:
        _one_line_error(command(*start, *extra), str(source), *fragments)
        assert not out.exists()
    # --vocab-size trains a tokenizer, which --init-from or --tokenizer replaces: refused, not
    # ignored
    for given in (["--init-from", source], ["--tokenizer", source]):
        plain = [arg for arg in start if arg not in ("--init-from", source)]
        _one_line_error(command(*plain, *given, "--vocab-size", "300"),
                        "--vocab-size trains a new tokenizer", f"with {given[0]}")
        assert not out.exists()
    taken = command(*start, "--tokenizer", same, "--d-model", "32", "--json")
    assert taken.exit_code == 0, taken.output
    assert _manifest(out)["tokenizer"]["fingerprint"] == _manifest(source)["tokenizer"]["fingerprint"]
