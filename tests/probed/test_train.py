"""Training a probed model: it learns, checkpoints atomically, and resumes exactly."""

import json

import pytest
import torch

from inversionview.probed import load_probed, train as train_module
from inversionview.probed.train import ProbedTrainingConfig, train_probed

TINY = dict(n_embd=16, n_head=2, n_inner=32)


def _config(out, steps, **extra):
    return ProbedTrainingConfig(task="addition", out=out, steps=steps, seed=5, batch_size=32,
                                warmup_steps=2, eval_every_seconds=0.0, eval_examples=64,
                                final_eval_examples=128, checkpoint_every_seconds=0.0,
                                model_overrides=dict(TINY), **extra)


def test_training_lowers_the_loss_and_writes_a_model_directory(tmp_path):
    model = train_probed(_config(tmp_path / "run", steps=60, lr=3e-3), show_progress=False)
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
    assert steps == [1, 2, 3, 4, 5, 6, 7, 8, 8]  # per-step evals, then the final one
    for name, value in straight.weights().items():
        assert torch.equal(value, resumed.weights()[name]), name


def test_resume_without_checkpoint_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train_probed(_config(tmp_path / "none", steps=2), resume=True, show_progress=False)


def test_budget_must_be_steps_or_minutes(tmp_path):
    with pytest.raises(ValueError, match="exactly one"):
        ProbedTrainingConfig(task="addition", out=tmp_path, steps=3, minutes=1.0)


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
