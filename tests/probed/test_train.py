"""Training a probed model: it learns, checkpoints atomically, resumes exactly (also from a
kill while the model is saved), keeps its command history, and checks its settings; the
train-probed command's budgets on --resume and its option errors."""

import json
import math

import pytest
import torch

from inversionview.checkpoint import RunExistsError
from inversionview.cli import run
from inversionview.errors import UserError
from inversionview.probed import load_probed, train as train_module
from inversionview.probed.model import ProbedModel
from inversionview.probed.train import ProbedTrainingConfig, train_probed

TINY = dict(n_embd=16, n_head=2, n_inner=32)


def _config(out, steps, **extra):
    """A tiny run that evaluates after every step and checkpoints after every step."""
    return ProbedTrainingConfig(**{**dict(
        task="addition", out=out, steps=steps, seed=5, batch_size=32, warmup_steps=2,
        eval_every_seconds=0.0, eval_examples=64, final_eval_examples=128,
        checkpoint_every_seconds=1e-9, model_overrides=dict(TINY)), **extra})


def test_training_lowers_the_loss_and_writes_a_model_directory(tmp_path):
    model = train_probed(_config(tmp_path / "run", steps=60, lr=3e-3, checkpoint_every_seconds=60.0),
                         show_progress=False)
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert metrics[0]["step"] == 1 and metrics[-1]["step"] == 60
    assert metrics[-1]["loss"] < metrics[0]["loss"] - 0.3
    manifest = json.loads((tmp_path / "run" / "inversionview.json").read_text())
    for key in ("command", "seed", "commit", "wall_seconds", "accuracy", "steps", "history"):
        assert key in manifest
    assert manifest["seed"] == 5 and manifest["steps"] == 60
    loaded = load_probed(tmp_path / "run")
    assert loaded.weights_hash() == model.weights_hash()


def test_a_killed_run_resumes_exactly(tmp_path, monkeypatch):
    straight = train_probed(_config(tmp_path / "straight", steps=8), show_progress=False)

    calls = {"n": 0}
    real_loss = train_module.loss_on

    def dies_at_step_six(model, tokens, objective):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt("killed")
        return real_loss(model, tokens, objective)

    monkeypatch.setattr(train_module, "loss_on", dies_at_step_six)
    with pytest.raises(KeyboardInterrupt):
        train_probed(_config(tmp_path / "killed", steps=8), show_progress=False)
    state = json.loads((tmp_path / "killed" / "checkpoint" / "state.json").read_text())
    assert state["step"] == 5
    monkeypatch.setattr(train_module, "loss_on", real_loss)

    resumed = train_probed(_config(tmp_path / "killed", steps=8), resume=True, show_progress=False)
    steps = [json.loads(line)["step"] for line in
             (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6, 7, 8]  # per-step evals; the final one is step 8's
    for name, value in straight.weights().items():
        assert torch.equal(value, resumed.weights()[name]), name
    manifest = json.loads((tmp_path / "killed" / "inversionview.json").read_text())
    first, again = manifest["commands"]
    assert manifest["command"] == first["command"]
    assert (first["resumed_from_step"], again["resumed_from_step"]) == (None, 5)
    assert first["started"] <= again["started"] and again["commit"]
    assert not manifest["training"]["out"].startswith("/")  # relative to the current directory


def test_a_kill_while_the_model_is_saved_resumes(tmp_path, monkeypatch):
    """Killed after the final checkpoint, while model.safetensors is written: the directory is
    no model yet (its manifest is gone), and --resume finishes with the same weights."""
    straight = train_probed(_config(tmp_path / "straight", steps=4), show_progress=False)
    real_save = ProbedModel.save

    def dies(self, directory, manifest=None, dtype=None):
        (directory / "model.safetensors").write_bytes(b"half a file")
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(ProbedModel, "save", dies)
    with pytest.raises(KeyboardInterrupt):
        train_probed(_config(tmp_path / "killed", steps=4), show_progress=False)
    assert not (tmp_path / "killed" / "inversionview.json").exists()
    monkeypatch.setattr(ProbedModel, "save", real_save)
    resumed = train_probed(ProbedTrainingConfig.resumed(tmp_path / "killed"), resume=True,
                           show_progress=False)
    for name, value in straight.weights().items():
        assert torch.equal(value, resumed.weights()[name]), name
    assert load_probed(tmp_path / "killed").weights_hash() == straight.weights_hash()
    manifest = json.loads((tmp_path / "killed" / "inversionview.json").read_text())
    straight_manifest = json.loads((tmp_path / "straight" / "inversionview.json").read_text())
    assert manifest["accuracy"] == straight_manifest["accuracy"]
    assert [e["step"] for e in manifest["history"]] == [1, 2, 3, 4]


def test_a_new_run_does_not_overwrite_a_run(tmp_path):
    train_probed(_config(tmp_path / "run", steps=2), show_progress=False)
    before = (tmp_path / "run" / "checkpoint" / "model.safetensors").read_bytes()
    with pytest.raises(RunExistsError, match="continue it with --resume"):
        train_probed(_config(tmp_path / "run", steps=3), show_progress=False)
    assert (tmp_path / "run" / "checkpoint" / "model.safetensors").read_bytes() == before


def test_resume_without_checkpoint_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train_probed(_config(tmp_path / "none", steps=2), resume=True, show_progress=False)


def test_budget_must_be_steps_or_minutes(tmp_path):
    with pytest.raises(ValueError, match="exactly one"):
        ProbedTrainingConfig(task="addition", out=tmp_path, steps=3, minutes=1.0)


@pytest.mark.parametrize("setting,message", [
    (dict(minutes=0.0, steps=None), "minutes must be a finite number greater than 0"),
    (dict(minutes=-1.0, steps=None), "minutes must be"),
    (dict(minutes=math.inf, steps=None), "minutes must be"),
    (dict(minutes=math.nan, steps=None), "minutes must be"),
    (dict(steps=0), "steps must be an integer from 1"),
    (dict(batch_size=0), "batch-size must be"),
    (dict(lr=0.0), "lr must be"),
    (dict(seed=-1), "seed must be"),
    (dict(checkpoint_every_seconds=0.0), "checkpoint-every must be"),
    (dict(checkpoint_every_seconds=-5.0), "checkpoint-every must be"),
    (dict(first_checkpoint_steps=0), "first_checkpoint_steps must be"),
    (dict(model_overrides=dict(n_embd=7, n_head=2)), "d-model 7 is not divisible by n-heads 2"),
    (dict(model_overrides=dict(n_layer=0)), "n-layers must be"),
    (dict(task="sorting"), "unknown task 'sorting'"),
])
def test_settings_out_of_range_are_refused(tmp_path, setting, message):
    valid = dict(task="addition", out=tmp_path, steps=3, model_overrides=dict(TINY))
    with pytest.raises(UserError, match=message) as error:
        ProbedTrainingConfig(**{**valid, **setting})
    assert isinstance(error.value, ValueError)


# ----- the command ----------------------------------------------------------------------

CLI_TINY = ["--batch-size", "16", "--d-model", "16", "--n-heads", "2", "--n-layers", "1",
            "--threads", "1", "--json"]


def _cli(capsys, monkeypatch, *args):
    """Run the command in-process, with sys.argv as a shell would set it (the manifest's
    command history records it)."""
    argv = ["train-probed", *map(str, args)]
    monkeypatch.setattr("sys.argv", ["inversionview", *argv])
    code = run(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


class Killed(BaseException):
    """Stands for SIGKILL: nothing catches it, the process just stops."""


def test_resume_continues_the_original_budget_unless_a_new_one_is_given(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # paths in the manifest are relative to it
    out = tmp_path / "r"
    real_loss, calls = train_module.loss_on, {"n": 0}

    def dies_at_step_four(model, tokens, objective):
        calls["n"] += 1
        if calls["n"] == 4:
            raise Killed
        return real_loss(model, tokens, objective)

    monkeypatch.setattr(train_module, "loss_on", dies_at_step_four)
    with pytest.raises(Killed):
        _cli(capsys, monkeypatch, "addition", "--out", out, "--steps", 6, "--seed", 1,
             "--checkpoint-every", 1e-6, *CLI_TINY)
    monkeypatch.setattr(train_module, "loss_on", real_loss)
    code, stdout, err = _cli(capsys, monkeypatch, "addition", "--out", out, "--resume", "--json")
    assert code == 0, err
    assert json.loads(stdout)["steps"] == 6  # the budget the run was started with
    manifest = json.loads((out / "inversionview.json").read_text())
    assert manifest["training"]["checkpoint_every_seconds"] == 1e-6  # kept as well
    commands = manifest["commands"]
    assert [c["resumed_from_step"] for c in commands] == [None, 3]
    assert commands[0]["command"].startswith("inversionview train-probed addition --out ")
    assert "--steps 6 --seed 1" in commands[0]["command"]
    assert commands[1]["command"].endswith(" --resume --json")
    assert manifest["command"] == commands[0]["command"]
    assert str(tmp_path) not in json.dumps(manifest)  # no absolute path of this machine
    assert manifest["training"]["out"] == "r" and " --out r " in manifest["command"]

    code, stdout, err = _cli(capsys, monkeypatch, "addition", "--out", out, "--resume", "--steps", 9,
                             "--checkpoint-every", 30, "--json")
    assert code == 0, err
    assert json.loads(stdout)["steps"] == 9  # a new budget replaces the run's
    manifest = json.loads((out / "inversionview.json").read_text())
    assert manifest["training"]["steps"] == 9
    assert manifest["training"]["checkpoint_every_seconds"] == 30.0
    assert [c["resumed_from_step"] for c in manifest["commands"]] == [None, 3, 6]

    code, _, err = _cli(capsys, monkeypatch, "addition", "--out", out, "--resume", "--seed", 2)
    assert code == 2 and "--seed 2 differs from the 1" in err
    code, _, err = _cli(capsys, monkeypatch, "addition", "--out", out, "--resume", "--seed", 1, "--steps", 9,
                        "--d-model", 16, "--json")
    assert code == 0, err  # giving the run's own settings again is fine
    code, _, err = _cli(capsys, monkeypatch, "addition", "--out", out, "--steps", 3)
    assert code == 2 and "already holds a training run" in err and "--resume" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("args,message", [
    (["--minutes", "-1"], "--minutes"),
    (["--minutes", "0"], "--minutes"),
    (["--minutes", "nan"], "--minutes"),
    (["--minutes", "inf"], "--minutes"),
    (["--steps", "0"], "--steps"),
    (["--steps", "5", "--checkpoint-every", "0"], "--checkpoint-every"),
    (["--steps", "5", "--checkpoint-every", "-3"], "--checkpoint-every"),
    (["--steps", "5", "--batch-size", "0"], "--batch-size"),
    (["--steps", "5", "--lr", "0"], "--lr"),
    (["--steps", "5", "--seed", "-1"], "--seed"),
    (["--steps", "5", "--threads", "0"], "--threads"),
    (["--steps", "5", "--d-model", "7", "--n-heads", "2"], "d-model 7 is not divisible by n-heads 2"),
    (["--steps", "5", "--n-layers", "0"], "--n-layers"),
    ([], "give exactly one of --minutes or --steps"),
    (["--steps", "5", "--minutes", "1"], "give exactly one of --minutes or --steps"),
    (["--resume"], "no checkpoint to resume from"),
])
def test_invalid_options_exit_2_with_one_line(tmp_path, capsys, monkeypatch, args, message):
    code, stdout, err = _cli(capsys, monkeypatch, "addition", "--out", tmp_path / "r", *args)
    assert code == 2, err
    assert message in err and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err and not (tmp_path / "r" / "checkpoint").exists()


def test_objectives_choose_the_trained_positions():
    import torch.nn.functional as F

    from inversionview.probed import build_probed
    from inversionview.tasks.base import next_token_targets

    model = build_probed("counting", seed=0, **TINY)
    model.hf_model.eval()
    tokens = model.task.encode_batch(["Baabbc|a:2E", "Bxyzz|z:2E"])
    logits = model.hf_forward(tokens)
    targets = next_token_targets(tokens, model.task.vocab.pad_id)
    colon = tokens == model.task.vocab.id_of(":")
    expected_task = F.cross_entropy(logits[colon], targets[colon])
    real = targets != model.task.vocab.pad_id
    expected_lm = F.cross_entropy(logits[real], targets[real])
    assert torch.allclose(train_module.loss_on(model, tokens, "task"), expected_task)
    assert torch.allclose(train_module.loss_on(model, tokens, "lm"), expected_lm)
    assert real.sum() == 10 + 9  # every token after B is predicted, through E
