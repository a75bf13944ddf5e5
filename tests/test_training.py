"""The training skeleton (``inversionview.training``) with a one-parameter model and fake
trainer parts: the budget stops at the right step, the learning rate follows the warm-up and
the decay, evaluations and checkpoints come at their cadence, a resumed run goes on at the
saved step to the same weights, and the manifest's shared fields come in order."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import pytest
import torch

from inversionview.checkpoint import RunLog
from inversionview.training import (LoopSettings, Trainer, evaluation_entry, run_manifest,
                                    run_training)

NEVER = 1e12  # seconds: an evaluation or checkpoint interval that never comes during a test


def _settings(steps: int | None = 5, **changes) -> LoopSettings:
    return LoopSettings(**{**dict(
        steps=steps, minutes=None, lr=0.1, warmup_steps=0, min_lr_fraction=1.0, grad_clip=1e9,
        eval_every_seconds=NEVER, checkpoint_every_seconds=NEVER,
        first_checkpoint_seconds=NEVER, first_checkpoint_steps=10**9), **changes})


@dataclass
class Fake:
    """A trainer of one weight w towards 3 on a loss (w - 3)^2, that records what the loop
    asks of it."""

    run: RunLog
    model: torch.nn.Linear = field(default_factory=lambda: torch.nn.Linear(1, 1, bias=False))
    steps: list[int] = field(default_factory=list)  # the step each batch_loss was asked for
    lrs: list[float] = field(default_factory=list)  # the learning rate each step ran at
    evaluated: list[int] = field(default_factory=list)
    finals: list[int] = field(default_factory=list)
    checkpointed: list[int] = field(default_factory=list)
    die_at: int | None = None  # raise KeyboardInterrupt when asked for this step's batch

    def __post_init__(self):
        with torch.no_grad():
            self.model.weight.fill_(0.0)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1)

    def batch_loss(self, step):
        if step == self.die_at:
            raise KeyboardInterrupt("killed")
        self.steps.append(step)
        self.lrs.append(self.optimizer.param_groups[0]["lr"])
        return ((self.model.weight - 3.0) ** 2).sum(), 4

    def evaluate(self):
        self.evaluated.append(self.run.step)
        self.run.log(evaluation_entry(self.run, weight=self.model.weight.item()))

    def final(self):
        self.finals.append(self.run.step)
        self.evaluate()

    def checkpoint(self):
        self.checkpointed.append(self.run.step)
        self.run.checkpoint(self.model.state_dict(), self.optimizer)

    def trainer(self, **changes) -> Trainer:
        return Trainer(**{**dict(
            name="fake", model=self.model, optimizer=self.optimizer, batch_loss=self.batch_loss,
            evaluate=self.evaluate, checkpoint=self.checkpoint, final_evaluation=self.final,
            postfix=lambda loss, rate, lr: dict(loss=f"{loss.item():.3f}")), **changes})


def _start(out) -> Fake:
    out.mkdir(parents=True, exist_ok=True)
    run = RunLog(out, {})
    run.start(dropout_seed=0)
    return Fake(run)


def _resume(out) -> Fake:
    run = RunLog(out, {})
    fake = Fake(run)
    state, _ = run.resume(fake.optimizer)
    fake.model.load_state_dict(state)
    return fake


def test_a_budget_of_steps_trains_that_many_then_evaluates_and_checkpoints_once(tmp_path):
    fake = _start(tmp_path)
    run_training(fake.run, fake.trainer(), _settings(steps=5), show_progress=False)
    assert fake.steps == [0, 1, 2, 3, 4] and fake.run.step == 5
    # no evaluation or checkpoint was due: only the final ones, at the last step
    assert (fake.evaluated, fake.finals, fake.checkpointed) == ([5], [5], [5])
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    metrics = [json.loads(line) for line in lines]
    assert [entry["step"] for entry in metrics] == [5] and list(metrics[0]) == [
        "step", "seconds", "weight"]
    assert fake.run.elapsed > 0.0


def test_a_budget_of_minutes_stops_on_the_training_time(tmp_path, monkeypatch):
    """A fake clock: each step takes 10 s, so a budget of one minute trains 6 steps."""
    clock = {"now": 0.0}
    monkeypatch.setattr("inversionview.training.time.perf_counter", lambda: clock["now"])
    fake = _start(tmp_path)
    real = fake.batch_loss

    def slow(step):
        clock["now"] += 10.0
        return real(step)

    fake.batch_loss = slow
    run_training(fake.run, fake.trainer(), _settings(steps=None, minutes=1.0),
                 show_progress=False)
    assert fake.run.step == 6 and fake.run.elapsed == pytest.approx(60.0)


def test_evaluations_and_checkpoints_count_towards_a_budget_of_minutes(tmp_path, monkeypatch):
    """Issue 31: a budget of minutes bounds the wall time a user waits. Steps of 10 s,
    evaluations of 10 s and checkpoints of 5 s after every step: a one-minute budget trains 3
    steps (10 + 2 x 25 s; the budget is checked before each evaluation), where counting
    training alone it trained 6 and ran 2:30."""
    clock = {"now": 0.0}
    monkeypatch.setattr("inversionview.training.time.perf_counter", lambda: clock["now"])
    fake = _start(tmp_path)
    real_loss, real_evaluate, real_checkpoint = fake.batch_loss, fake.evaluate, fake.checkpoint

    def timed(function, seconds):
        def run(*args):
            clock["now"] += seconds
            return function(*args)
        return run

    fake.batch_loss = timed(real_loss, 10.0)
    trainer = fake.trainer(evaluate=timed(real_evaluate, 10.0), checkpoint=timed(real_checkpoint, 5.0))
    settings = _settings(steps=None, minutes=1.0, eval_every_seconds=0.0,
                         checkpoint_every_seconds=1e-9, first_checkpoint_seconds=1e-9)
    run_training(fake.run, trainer, settings, show_progress=False)
    assert fake.run.step == 3 and fake.run.elapsed == pytest.approx(60.0)


def test_the_warm_up_ends_by_a_tenth_of_the_budget():
    """Issue 31: `train-decoder --minutes 2` (400 warm-up steps at about one a second) ended
    still warming up. The warm-up now ends by 10 % of the budget at the latest."""
    settings = _settings(steps=None, minutes=2.0, warmup_steps=400, min_lr_fraction=0.0)
    peak = settings.lr
    assert settings.learning_rate(5, 0.05) == pytest.approx(peak / 2)  # half of 10 %: half
    # 12 s of 120: warm, and on the cosine of the whole budget
    assert settings.learning_rate(12, 0.1) == pytest.approx(peak * 0.5 * (1 + math.cos(0.1 * math.pi)))
    assert settings.learning_rate(119, 0.99) < 0.01 * peak  # the cosine has decayed
    # where the warm-up steps end first, they set the pace, as before
    assert settings.learning_rate(199, 0.001) == pytest.approx(peak / 2)


def test_a_budget_of_minutes_shows_time_on_the_bar(tmp_path, capsys):
    from inversionview.training import _TimeBar

    bar = _TimeBar(total=120, initial=114, desc="decoder ioi",
                   file=__import__("sys").stderr, dynamic_ncols=False, ncols=80)
    bar.refresh()
    bar.close()
    shown = capsys.readouterr().err
    assert "01:54 of 02:00" in shown and "s/s" not in shown


def test_evaluations_and_checkpoints_come_before_each_step_after_the_first(tmp_path):
    fake = _start(tmp_path)
    every_step = _settings(steps=4, eval_every_seconds=0.0, checkpoint_every_seconds=1e-9,
                           first_checkpoint_seconds=1e-9)
    run_training(fake.run, fake.trainer(), every_step, show_progress=False)
    assert fake.evaluated == [1, 2, 3, 4] and fake.finals == [4]
    assert fake.checkpointed == [1, 2, 3, 4]


def test_the_first_checkpoint_comes_after_first_checkpoint_steps(tmp_path):
    fake = _start(tmp_path)
    run_training(fake.run, fake.trainer(), _settings(steps=8, first_checkpoint_steps=3),
          show_progress=False)
    assert fake.checkpointed == [3, 8] and fake.evaluated == [8]


def test_the_learning_rate_warms_up_then_decays_over_the_budget(tmp_path):
    fake = _start(tmp_path)
    run_training(fake.run, fake.trainer(), _settings(steps=40, lr=1.0, warmup_steps=2,
                                              min_lr_fraction=0.0), show_progress=False)
    settings = _settings(steps=40, lr=1.0, warmup_steps=2, min_lr_fraction=0.0)
    expected = [settings.learning_rate(step, step / 40) for step in range(40)]
    assert fake.lrs == pytest.approx(expected)
    assert fake.lrs[:2] == pytest.approx([0.5, 1.0]) and fake.lrs[-1] < fake.lrs[2] < 1.0


def test_gradients_are_clipped(tmp_path):
    fake = _start(tmp_path)  # the first gradient of (w - 3)^2 at w = 0 is -6
    run_training(fake.run, fake.trainer(), _settings(steps=1, lr=1.0, grad_clip=0.5),
          show_progress=False)
    assert fake.model.weight.item() == pytest.approx(0.5)


def test_a_resumed_run_goes_on_at_the_saved_step_to_the_same_weights(tmp_path):
    every_step = _settings(steps=6, lr=0.05, warmup_steps=2, min_lr_fraction=0.1,
                           eval_every_seconds=0.0, checkpoint_every_seconds=1e-9,
                           first_checkpoint_seconds=1e-9)
    straight = _start(tmp_path / "straight")
    run_training(straight.run, straight.trainer(), every_step, show_progress=False)

    killed = _start(tmp_path / "killed")
    killed.die_at = 4  # the checkpoint at step 4 is written before step 4's batch is drawn
    with pytest.raises(KeyboardInterrupt):
        run_training(killed.run, killed.trainer(), every_step, show_progress=False)
    resumed = _resume(tmp_path / "killed")
    assert resumed.run.step == 4
    run_training(resumed.run, resumed.trainer(), every_step, show_progress=False)
    assert resumed.steps == [4, 5] and resumed.lrs == straight.lrs[4:]
    # step 4 was evaluated before the kill: not again; the first checkpoint after the resume
    # comes after a step of this process
    assert resumed.evaluated == [5, 6] and resumed.checkpointed == [5, 6]
    assert torch.equal(resumed.model.weight, straight.model.weight)
    lines = (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3, 4, 5, 6]


def test_a_run_resumed_at_its_end_keeps_its_final_evaluation(tmp_path):
    fake = _start(tmp_path)
    run_training(fake.run, fake.trainer(), _settings(steps=3), show_progress=False)
    again = _resume(tmp_path)
    run_training(again.run, again.trainer(), _settings(steps=3), show_progress=False)
    assert again.steps == [] and again.evaluated == [] and again.checkpointed == [3]


def test_the_progress_bar_shows_the_trainers_figures(tmp_path, capsys):
    fake = _start(tmp_path)
    run_training(fake.run, fake.trainer(progress_every=2), _settings(steps=4),
                 show_progress=True)
    shown = capsys.readouterr().err
    assert "fake" in shown and "loss=" in shown and "4/4" in shown


def test_the_manifest_opens_with_the_shared_fields_in_order(tmp_path):
    fake = _start(tmp_path)
    run_training(fake.run, fake.trainer(), _settings(steps=2), show_progress=False)
    manifest = run_manifest(fake.run, 7, "abc", steps=2, examples=8)
    assert list(manifest) == ["command", "commands", "seed", "commit", "machine", "steps",
                              "examples", "wall_seconds"]
    assert (manifest["seed"], manifest["commit"], manifest["steps"]) == (7, "abc", 2)
    assert manifest["wall_seconds"] == round(fake.run.elapsed, 1)


def test_loop_settings_are_read_from_each_training_config(tmp_path):
    from inversionview.decoder.train import DecoderTrainingConfig
    from inversionview.probed.train import ProbedTrainingConfig
    from inversionview.probed.train_lm import LMTrainingConfig

    configs = [ProbedTrainingConfig(task="addition", out=tmp_path, minutes=2.0, lr=3e-3),
               DecoderTrainingConfig(out=tmp_path, minutes=2.0, lr=3e-3),
               LMTrainingConfig(corpus=tmp_path / "c.txt", out=tmp_path, minutes=2.0, lr=3e-3)]
    for config in configs:
        settings = LoopSettings.of(config, steps=None)
        assert (settings.steps, settings.minutes, settings.lr) == (None, 2.0, 3e-3)
        assert settings.first_checkpoint_steps == config.first_checkpoint_steps
        assert settings.warmup_steps == config.warmup_steps
