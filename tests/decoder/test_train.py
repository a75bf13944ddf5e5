"""Decoder training: conditioning matters, resume is exact (also from a kill while the decoder
is saved), settings and devices are checked, the CLI runs, resumes with the run's budget or a
new one, and refuses bad options in one line."""

import json
import math

import pytest
import torch

from inversionview.checkpoint import RunExistsError
from inversionview.cli import run
from inversionview.decoder import store as store_module, train as train_module
from inversionview.decoder.data import ActivationStream
from inversionview.decoder.train import DecoderTrainingConfig, build_decoder, decoder_loss, train_decoder
from inversionview.errors import UserError
from inversionview.probed import build_probed

TINY_DECODER = dict(d_model=32, n_heads=2, d_mlp=64, n_condition_blocks=2, dropout=0.0)


def _probed():
    return build_probed("addition", seed=0, n_embd=16, n_head=4, n_inner=32)


def test_conditioning_matters():
    """A tiny decoder trained 1,000 steps reaches a lower loss with the true activation
    than with activations shuffled across the batch."""
    probed = _probed()
    stream = ActivationStream(probed, 64, torch.Generator().manual_seed(0))
    stream.set_site_probabilities(torch.eye(13)[0])  # x0.pre: the embedding, fully informative
    decoder = build_decoder(probed, seed=0, **TINY_DECODER)
    means, stds = stream.site_statistics(256)
    decoder.conditioning.init_site_embedding(means, stds, torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW(decoder.parameters(), lr=3e-3)
    pad = probed.task.vocab.pad_id
    for _ in range(1000):
        batch = stream.next_batch()
        loss = decoder_loss(decoder, batch.tokens, batch.activation, batch.site_id, pad)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    decoder.eval()
    held_out = ActivationStream(probed, 512, torch.Generator().manual_seed(1))
    held_out.set_site_probabilities(torch.eye(13)[0])
    batch = held_out.next_batch()
    with torch.no_grad():
        true = decoder_loss(decoder, batch.tokens, batch.activation, batch.site_id, pad)
        shuffled = decoder_loss(decoder, batch.tokens, batch.activation[torch.randperm(512, generator=torch.Generator().manual_seed(0))],
                                batch.site_id, pad)
    assert true < shuffled - 0.2, (true.item(), shuffled.item())


def _config(out, examples, **changes):
    """A tiny run that evaluates (and rebalances) before every step and checkpoints after
    every step."""
    return DecoderTrainingConfig(**{**dict(
        out=out, examples=examples, seed=2, batch_size=16, eval_every_seconds=0.0,
        eval_queries_per_site=1, eval_samples_per_query=2, checkpoint_every_seconds=1e-9,
        rebalance=2.0, decoder_overrides=dict(TINY_DECODER)), **changes})


def test_decoder_run_resumes_exactly(tmp_path, monkeypatch):
    probed = _probed()
    straight = train_decoder(probed, _config(tmp_path / "a", 16 * 6), show_progress=False)
    calls = {"n": 0}
    real = train_module.decoder_loss

    def dies(*args):
        if torch.is_grad_enabled():  # a training step (the held-out loss runs without grad)
            calls["n"] += 1
            if calls["n"] == 4:
                raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(train_module, "decoder_loss", dies)
    try:
        train_decoder(probed, _config(tmp_path / "b", 16 * 6), show_progress=False)
    except KeyboardInterrupt:
        pass
    monkeypatch.setattr(train_module, "decoder_loss", real)
    resumed = train_decoder(probed, _config(tmp_path / "b", 16 * 6), resume=True, show_progress=False)
    for name, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name
    steps = [json.loads(l)["step"] for l in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert (tmp_path / "b" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    manifest = json.loads((tmp_path / "b" / "decoder.json").read_text())
    assert manifest["probed_weights_sha256"] == probed.weights_hash()
    assert set(manifest["in_epsilon"]) == set(probed.task.sites)
    # rebalancing moved the site mix away from uniform after the first evaluation
    probabilities = json.loads((tmp_path / "b" / "metrics.jsonl").read_text().splitlines()[-1])["site_probabilities"]
    assert max(probabilities) > 1.05 / 13 or min(probabilities) < 0.95 / 13


def test_a_kill_while_the_decoder_is_saved_resumes(tmp_path, monkeypatch):
    """Killed after the final checkpoint, while decoder.safetensors is written: no manifest
    is left to describe other weights, and a resume (no budget given) writes the same decoder
    and keeps the final evaluation it had made."""
    monkeypatch.chdir(tmp_path)
    probed = _probed()
    fewer_evaluations = dict(rebalance=0.0, eval_every_seconds=3600.0)  # only the final one
    straight = train_decoder(probed, _config(tmp_path / "a", 16 * 3, **fewer_evaluations),
                             show_progress=False)
    real_save = train_module.save_decoder

    def dies(decoder, model, directory, manifest):
        (directory / "decoder.safetensors").write_bytes(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "save_decoder", dies)
    with pytest.raises(KeyboardInterrupt):
        train_decoder(probed, _config(tmp_path / "b", 16 * 3, **fewer_evaluations),
                      show_progress=False)
    assert not (tmp_path / "b" / "decoder.json").exists()
    monkeypatch.setattr(train_module, "save_decoder", real_save)
    # the statistics come back with the checkpoint's weights: not measured again
    monkeypatch.setattr(ActivationStream, "site_statistics", lambda *a, **k: pytest.fail(
        "a resumed run measured the site statistics again"))
    resumed_config = DecoderTrainingConfig.resumed(tmp_path / "b")
    assert resumed_config.examples == 16 * 3 and resumed_config.decoder_overrides == TINY_DECODER
    train_decoder(probed, resumed_config, resume=True, show_progress=False)
    loaded, manifest = store_module.load_decoder(tmp_path / "b", probed)
    for name, value in straight.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[name]), name
    first = json.loads((tmp_path / "a" / "decoder.json").read_text())
    assert manifest["in_epsilon"] == first["in_epsilon"]  # the final evaluation, kept
    metrics = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in metrics] == [3]
    assert [c["resumed_from_step"] for c in manifest["commands"]] == [None, 3]
    assert manifest["command"] == manifest["commands"][0]["command"]
    assert manifest["training"]["out"] == "b"
    with pytest.raises(RunExistsError, match="continue it with --resume"):
        train_decoder(probed, _config(tmp_path / "b", 16), show_progress=False)


@pytest.mark.parametrize("setting,message", [
    (dict(examples=None, minutes=0.0), "minutes must be a finite number greater than 0"),
    (dict(examples=None, minutes=-1.0), "minutes must be"),
    (dict(examples=None, minutes=math.nan), "minutes must be"),
    (dict(examples=0), "examples must be an integer from 1"),
    (dict(examples=None), "exactly one of minutes or examples"),
    (dict(minutes=1.0), "exactly one of minutes or examples"),
    (dict(checkpoint_every_seconds=0.0), "checkpoint-every must be"),
    (dict(checkpoint_every_seconds=-1.0), "checkpoint-every must be"),
    (dict(checkpoint_every_seconds=math.inf), "checkpoint-every must be"),
    (dict(batch_size=0), "batch-size must be"),
    (dict(lr=-1e-3), "lr must be"),
    (dict(rebalance=-1.0), "rebalance must be"),
    (dict(site_weights={"m1": -1.0}), "weight of site 'm1' must be a finite number >= 0"),
    (dict(site_weights={"m1": math.nan}), "weight of site 'm1' must be"),
    (dict(site_weights={"m1": "4"}), "weight of site 'm1' must be"),
    (dict(site_weights=["m1"]), "site weights must map site names to weights"),
    (dict(seed=-3), "seed must be"),
    (dict(eval_queries_per_site=0), "eval_queries_per_site must be"),
    (dict(preset="slow"), "unknown preset 'slow'"),
    (dict(precision="fp8"), "unknown precision 'fp8'"),
])
def test_settings_out_of_range_are_refused(setting, message):
    with pytest.raises(UserError, match=message) as error:
        DecoderTrainingConfig(**{**dict(out="x", examples=64), **setting})
    assert isinstance(error.value, ValueError)


def test_devices_that_are_not_here_are_user_errors(monkeypatch):
    assert train_module.resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(UserError, match="unknown device 'tpu'; use auto, cpu, cuda or cuda:N"):
        train_module.resolve_device("tpu")
    with pytest.raises(UserError, match="unknown device"):
        train_module.resolve_device("cuda:x")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="CUDA is not available on this machine"):
        train_module.resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(UserError, match="has 2 CUDA device"):
        train_module.resolve_device("cuda:2")
    assert train_module.resolve_device("cuda:1") == torch.device("cuda", 1)


# ----- the command ----------------------------------------------------------------------


def _cli(capsys, monkeypatch, *args):
    """Run the command in-process, with sys.argv as a shell would set it (the manifest's
    command history records it)."""
    argv = ["train-decoder", *map(str, args)]
    monkeypatch.setattr("sys.argv", ["inversionview", *argv])
    code = run(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_train_decoder_cli(tmp_path, monkeypatch, capsys):
    model_dir = tmp_path / "probed"
    _probed().save(model_dir)
    code, stdout, err = _cli(capsys, monkeypatch, model_dir, "--out", tmp_path / "d",
                             "--examples", "512", "--json")
    assert code == 0, err
    record = json.loads(stdout)
    assert record["examples"] == 512 and 0.0 <= record["in_epsilon_mean"] <= 1.0
    code, _, err = _cli(capsys, monkeypatch, model_dir, "--out", tmp_path / "e", "--examples",
                        "10", "--preset", "slow")
    assert code == 2 and "unknown preset 'slow'" in err


def test_resume_takes_the_run_budget_unless_a_new_one_is_given(tmp_path, monkeypatch, capsys):
    """--resume needs no budget: the run's own is kept; a budget given replaces it; settings
    that shape the result cannot change; a new run does not overwrite the directory."""
    monkeypatch.chdir(tmp_path)
    probed = _probed()
    probed.save(tmp_path / "probed")
    train_decoder(probed, _config(tmp_path / "run", 32, rebalance=0.0, eval_every_seconds=3600.0,
                                  checkpoint_every_seconds=7.0), show_progress=False)
    started = []

    def fake_train(model, config, resume=False, show_progress=True):
        started.append((config, resume))
        raise SystemExit(0)  # stop before the command reads the manifest

    monkeypatch.setattr(train_module, "train_decoder", fake_train)
    with pytest.raises(SystemExit):
        _cli(capsys, monkeypatch, "probed", "--out", "run", "--resume")
    config, resume = started[-1]
    assert resume and (config.examples, config.minutes) == (32, None)
    assert config.checkpoint_every_seconds == 7.0 and config.decoder_overrides == TINY_DECODER
    assert (config.seed, config.batch_size, config.eval_queries_per_site) == (2, 16, 1)
    with pytest.raises(SystemExit):
        _cli(capsys, monkeypatch, "probed", "--out", "run", "--resume", "--minutes", "2.5",
             "--checkpoint-every", "30", "--device", "cpu", "--seed", "2")
    config, _ = started[-1]
    assert (config.examples, config.minutes, config.checkpoint_every_seconds) == (None, 2.5, 30.0)
    assert config.device == "cpu"
    code, _, err = _cli(capsys, monkeypatch, "probed", "--out", "run", "--resume", "--seed", "4")
    assert code == 2 and "--seed 4 differs from the 2" in err
    code, _, err = _cli(capsys, monkeypatch, "probed", "--out", "run", "--resume",
                        "--examples", "64", "--minutes", "1")
    assert code == 2 and "at most one of minutes or examples" in err
    code, _, err = _cli(capsys, monkeypatch, "probed", "--out", "run", "--examples", "64")
    assert code == 2 and "already holds a training run" in err and "--resume" in err


@pytest.mark.parametrize("args,message", [
    (["--minutes", "-1"], "--minutes"),
    (["--minutes", "0"], "--minutes"),
    (["--minutes", "inf"], "--minutes"),
    (["--examples", "0"], "--examples"),
    (["--examples", "64", "--checkpoint-every", "0"], "--checkpoint-every"),
    (["--examples", "64", "--checkpoint-every", "-1"], "--checkpoint-every"),
    (["--examples", "64", "--rebalance", "-1"], "--rebalance"),
    (["--examples", "64", "--site-weights", "m1"], "--site-weights takes SITE=WEIGHT pairs"),
    (["--examples", "64", "--site-weights", "a1.0=x"], "--site-weights takes SITE=WEIGHT"),
    (["--examples", "64", "--site-weights", "a1.0=-2"], "weight of 'a1.0' must be a finite"),
    (["--examples", "64", "--site-weights", "a1.0=1,a1.0=2"], "names 'a1.0' twice"),
    (["--examples", "64", "--site-weights", "m1=3"], "site 'm1' is not a site of this model"),
    (["--examples", "64", "--site-weights", "*=0"], "leave no site to train on"),
    (["--examples", "64", "--site-weights", "a1.1=2,blocks.1.attn.hook_result.1=3"],
     "name a1.1 twice"),
    (["--examples", "64", "--seed", "-1"], "--seed"),
    (["--examples", "64", "--threads", "0"], "--threads"),
    (["--examples", "64", "--device", "tpu"], "unknown device 'tpu'"),
    (["--examples", "64", "--precision", "fp8"], "unknown precision 'fp8'"),
    ([], "give exactly one of --minutes or --examples"),
    (["--resume"], "no checkpoint to resume from"),
])
def test_invalid_options_exit_2_with_one_line(tmp_path, monkeypatch, capsys, args, message):
    code, _, err = _cli(capsys, monkeypatch, "addition", "--out", tmp_path / "d", *args)
    assert code == 2, err
    assert message in err and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err and not (tmp_path / "d").exists()


def test_cuda_where_there_is_none_exits_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, _, err = _cli(capsys, monkeypatch, "addition", "--out", tmp_path / "d", "--examples",
                        "64", "--device", "cuda")
    assert code == 2 and "CUDA is not available" in err and len(err.strip().splitlines()) == 1


def test_presets_and_precision():
    paper = DecoderTrainingConfig(out="x", examples=1, preset="paper")
    fast = DecoderTrainingConfig(out="x", examples=1, preset="fast",
                                 decoder_overrides=dict(d_model=64))
    assert (paper.lr, paper.min_lr_fraction, paper.bucket_batches) == (1e-4, 1.0, 1)
    assert paper.decoder_overrides == {}  # the paper's dropout 0.1 stays
    assert fast.decoder_overrides == {"dropout": 0.0, "d_model": 64}
    assert train_module.autocast_dtype("fp32", torch.device("cpu")) is None
    assert train_module.autocast_dtype("auto", torch.device("cpu")) in (None, torch.bfloat16)
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        DecoderTrainingConfig(out="x", examples=1, precision="fp8")


def test_the_held_out_loss_in_chunks_is_the_loss_of_the_whole_batch():
    """Memory stays bounded on a large vocabulary (512 rows of 50k logits are 3.4 GB): the
    held-out loss is computed 64 rows at a time, weighted by target tokens."""
    from inversionview.decoder.train import chunked_loss

    probed = _probed()
    decoder = build_decoder(probed, seed=0, **TINY_DECODER).eval()
    batch = ActivationStream(probed, 300, torch.Generator().manual_seed(2)).next_batch()
    pad = probed.task.vocab.pad_id
    with torch.no_grad():
        whole = decoder_loss(decoder, batch.tokens, batch.activation, batch.site_id, pad).item()
        assert chunked_loss(decoder, batch, pad, rows=64) == pytest.approx(whole, rel=1e-5)
        assert chunked_loss(decoder, batch, pad, rows=7) == pytest.approx(whole, rel=1e-5)


def test_continue_from_a_trained_decoder(tmp_path, monkeypatch, capsys):
    """--continue-from starts a new run from a trained decoder of the same model: its shape
    and weights (the first evaluation reads the decoder it started from), a manifest that
    names it with the examples it had reached, totals over a chain; a decoder of another
    model, a directory that is no decoder and --init-from beside it are refused in one line."""
    monkeypatch.chdir(tmp_path)
    probed = _probed()
    probed.save(tmp_path / "probed")
    first = train_decoder(probed, _config(tmp_path / "first", 64, rebalance=0.0),
                          show_progress=False)
    code, stdout, err = _cli(capsys, monkeypatch, "probed", "--out", "second", "--examples",
                             "32", "--continue-from", "first", "--json")
    assert code == 0, err
    manifest = json.loads((tmp_path / "second" / "decoder.json").read_text())
    before = json.loads((tmp_path / "first" / "decoder.json").read_text())
    assert manifest["config"] == before["config"]  # the shape came from the decoder (tiny)
    continued = manifest["continued_from"]
    assert continued["path"] == "first" and continued["examples"] == 64
    assert len(continued["weights_sha256"]) == 64 and "total_examples" not in continued
    # its weights, not a fresh start: without any step the decoder is the one it continued
    config = _config(tmp_path / "zero", 16, rebalance=0.0, continue_from=tmp_path / "first",
                     lr=1e-12)
    again = train_decoder(probed, config, show_progress=False)
    for name, value in first.state_dict().items():
        assert torch.allclose(value, again.state_dict()[name], atol=1e-6), name
    code, _, err = _cli(capsys, monkeypatch, "probed", "--out", "third", "--examples", "16",
                        "--continue-from", "second")
    assert code == 0, err
    chained = json.loads((tmp_path / "third" / "decoder.json").read_text())["continued_from"]
    assert chained["total_examples"] == 64 + manifest["examples"]  # whole steps of 64

    other = build_probed("addition", seed=1, n_embd=16, n_head=4, n_inner=32)
    other.save(tmp_path / "other")
    for args, message in [
        (["other", "--out", "x", "--examples", "16", "--continue-from", "first"],
         "trained on other probed weights"),
        (["probed", "--out", "x", "--examples", "16", "--continue-from", "probed"],
         "is not a decoder directory"),
        (["probed", "--out", "x", "--examples", "16", "--continue-from", "first",
          "--init-from", "first"], "at most one of --init-from"),
    ]:
        code, _, err = _cli(capsys, monkeypatch, *args)
        assert code == 2 and message in err, err
        assert len(err.strip().splitlines()) == 1 and not (tmp_path / "x" / "decoder.json").exists()


def test_a_whitened_decoder_measures_each_sites_mean_and_covariance(tmp_path, monkeypatch):
    """With whiten_activation the run measures every site's mean vector and covariance before
    the first step, and the decoder it saves whitens with them; a run that continues it keeps
    them without measuring again."""
    probed = _probed()
    config = _config(tmp_path / "run", 32, rebalance=0.0,
                     decoder_overrides={**TINY_DECODER, "whiten_activation": True})
    decoder = train_decoder(probed, config, show_progress=False)
    conditioning = decoder.conditioning
    means, covariances = ActivationStream(probed, 1, torch.Generator().manual_seed(config.seed + 5)
                                          ).site_covariances()
    assert torch.allclose(conditioning.activation_mean, means)
    # the whitener undoes each site's covariance: whitened, a direction of variance λ has
    # λ / (λ + δ), δ the floor (1e-3 x the mean eigenvalue): 1 where λ >> δ, below 1 elsewhere
    for site in range(len(probed.sites)):
        whitener = conditioning.activation_whitener[site].double()
        variances = torch.linalg.eigvalsh(covariances[site].double()).clamp_min(0)
        delta = 1e-3 * variances.mean()
        whitened = torch.linalg.eigvalsh(whitener @ covariances[site].double() @ whitener)
        assert torch.allclose(whitened, variances / (variances + delta), atol=1e-3)
    loaded, _ = store_module.load_decoder(tmp_path / "run", probed)
    assert torch.equal(loaded.conditioning.activation_whitener, conditioning.activation_whitener)
    # a continued run takes the statistics with the weights and does not measure them again
    def measured_again(*args, **kwargs):
        raise AssertionError("a continued run measured the site statistics again")

    monkeypatch.setattr(ActivationStream, "site_statistics", measured_again)
    monkeypatch.setattr(ActivationStream, "site_covariances", measured_again)
    continued = train_decoder(probed, _config(tmp_path / "more", 16, rebalance=0.0, lr=1e-12,
                                              continue_from=tmp_path / "run"), show_progress=False)
    assert torch.allclose(continued.conditioning.activation_whitener,
                          conditioning.activation_whitener)
    assert torch.allclose(continued.conditioning.activation_mean, conditioning.activation_mean)


def test_site_weights_set_the_mix_of_training_sites(tmp_path, monkeypatch, capsys):
    """site_weights: x1.post alone ("*": 0) trains on x1.post's activations only, while every
    site is still evaluated; with rebalancing a site of weight 0 stays out. The setting is in
    the manifest, a resume keeps it, and the CLI takes it as SITE=W pairs."""
    probed = _probed()
    sites = [site.short for site in probed.sites]
    drawn = []
    real = train_module.decoder_loss

    def records(decoder, tokens, activation, site_id, pad_id):
        if torch.is_grad_enabled():  # a training step
            drawn.extend(site_id.tolist())
        return real(decoder, tokens, activation, site_id, pad_id)

    monkeypatch.setattr(train_module, "decoder_loss", records)
    alone = dict(site_weights={"x1.post": 2.0, "*": 0.0}, rebalance=0.0)
    train_decoder(probed, _config(tmp_path / "one", 16 * 3, **alone), show_progress=False)
    assert len(drawn) == 48 and set(drawn) == {sites.index("x1.post")}
    manifest = json.loads((tmp_path / "one" / "decoder.json").read_text())
    assert set(manifest["in_epsilon"]) == set(sites)
    assert manifest["training"]["site_weights"] == {"x1.post": 2.0, "*": 0.0}

    drawn.clear()
    # by its hook name; rebalancing (after every evaluation) never brings a1.1 back
    weights = {"blocks.1.attn.hook_result.1": 0.0}
    train_decoder(probed, _config(tmp_path / "mix", 16 * 4, site_weights=weights),
                  show_progress=False)
    assert sites.index("a1.1") not in drawn and len(set(drawn)) > 1
    for line in (tmp_path / "mix" / "metrics.jsonl").read_text().splitlines():
        probabilities = json.loads(line)["site_probabilities"]
        assert probabilities[sites.index("a1.1")] == 0.0 and sum(probabilities) == pytest.approx(1)
    assert DecoderTrainingConfig.resumed(tmp_path / "mix").site_weights == weights
    huge = train_module.site_weight_vector(probed, {"*": 1e308, "a0.0": 0.0})
    assert torch.isfinite(huge).all() and huge.sum().item() == pytest.approx(1)
    others = torch.ones(len(sites), dtype=torch.bool)
    others[sites.index("a0.0")] = False
    assert huge[sites.index("a0.0")] == 0 and huge[others].min() == huge.max()

    monkeypatch.setattr(train_module, "decoder_loss", real)
    model_dir = tmp_path / "probed"
    probed.save(model_dir)
    code, out, err = _cli(capsys, monkeypatch, model_dir, "--task", "addition", "--out",
                          tmp_path / "cli", "--examples", "32", "--site-weights",
                          "a0.0=3, x1.post=1,*=0", "--json")
    assert code == 0, err
    manifest = json.loads((tmp_path / "cli" / "decoder.json").read_text())
    assert manifest["training"]["site_weights"] == {"a0.0": 3.0, "x1.post": 1.0, "*": 0.0}
    code, _, err = _cli(capsys, monkeypatch, model_dir, "--task", "addition", "--out",
                        tmp_path / "cli", "--resume", "--site-weights", "a0.0=1")
    assert code == 2 and "--site-weights" in err and "differs" in err


def test_ball_noise_moves_each_activation_within_its_ball_and_is_seeded(tmp_path):
    """ball_noise r: each training activation z is conditioned on as a point at normalized
    distance at most r from z, in a random direction; the same seed and step give the same
    points, so a resumed run trains on the same noise; 0 leaves z alone; out of range is
    refused."""
    from inversionview.decoder.train import in_ball
    from inversionview.errors import OptionError

    z = torch.randn(512, 16, generator=torch.Generator().manual_seed(0)) * 5
    moved = in_ball(z, 0.1, torch.Generator().manual_seed(3))
    distance = (moved - z).norm(dim=-1) / z.norm(dim=-1)
    assert distance.max() <= 0.1 + 1e-6 and distance.min() >= 0 and distance.mean() > 0.03
    assert torch.equal(moved, in_ball(z, 0.1, torch.Generator().manual_seed(3)))
    directions = (moved - z) / (moved - z).norm(dim=-1, keepdim=True)
    assert directions.mean(0).norm() < 0.2  # no preferred direction
    with pytest.raises(OptionError, match="ball_noise"):
        _config(tmp_path / "bad", 16, ball_noise=1.5)
    # a run with ball noise trains, and two runs with one seed give the same decoder
    probed = _probed()
    first = train_decoder(probed, _config(tmp_path / "a", 48, ball_noise=0.1, rebalance=0.0),
                          show_progress=False)
    again = train_decoder(probed, _config(tmp_path / "b", 48, ball_noise=0.1, rebalance=0.0),
                          show_progress=False)
    plain = train_decoder(probed, _config(tmp_path / "c", 48, rebalance=0.0), show_progress=False)
    for name, value in first.state_dict().items():
        assert torch.equal(value, again.state_dict()[name]), name
    assert any(not torch.equal(value, plain.state_dict()[name])
               for name, value in first.state_dict().items())
