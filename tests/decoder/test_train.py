"""Decoder training: conditioning matters, resume is exact, the CLI runs."""

import json

import pytest
import torch
from typer.testing import CliRunner

from inversionview.cli import app
from inversionview.decoder import train as train_module
from inversionview.decoder.data import ActivationStream
from inversionview.decoder.train import DecoderTrainingConfig, build_decoder, decoder_loss, train_decoder
from inversionview.probed import build_probed

TINY_DECODER = dict(d_model=32, n_heads=2, d_mlp=64, n_condition_blocks=2, dropout=0.0)


def _probed():
    return build_probed("addition", seed=0, n_embd=16, n_head=4, n_inner=32)


def test_conditioning_matters():
    """A tiny decoder trained a few hundred steps reaches a lower loss with the true activation
    than with activations shuffled across the batch."""
    probed = _probed()
    stream = ActivationStream(probed, 64, torch.Generator().manual_seed(0))
    stream.set_site_probabilities(torch.eye(13)[0])  # x0.pre: the embedding, fully informative
    decoder = build_decoder(probed, seed=0, **TINY_DECODER)
    means, stds = stream.site_statistics(256)
    decoder.conditioning.init_site_embedding(means, stds, torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW(decoder.parameters(), lr=3e-3)
    pad = probed.task.vocab.pad_id
    for _ in range(600):
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


def _config(out, examples):
    return DecoderTrainingConfig(out=out, examples=examples, seed=2, batch_size=16,
                                 eval_every_seconds=0.0, eval_queries_per_site=1,
                                 eval_samples_per_query=2, checkpoint_every_seconds=0.0,
                                 rebalance=2.0, decoder_overrides=dict(TINY_DECODER))


def test_decoder_run_resumes_exactly(tmp_path, monkeypatch):
    probed = _probed()
    straight = train_decoder(probed, _config(tmp_path / "a", 16 * 6), show_progress=False)
    calls = {"n": 0}
    real = train_module.decoder_loss

    def dies(*args):
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


def test_train_decoder_cli(tmp_path):
    model_dir = tmp_path / "probed"
    _probed().save(model_dir)
    result = CliRunner().invoke(app, ["train-decoder", str(model_dir), "--out", str(tmp_path / "d"),
                                      "--examples", "512", "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["examples"] == 512 and 0.0 <= record["in_epsilon_mean"] <= 1.0
    bad = CliRunner().invoke(app, ["train-decoder", str(model_dir), "--out", str(tmp_path / "e"),
                                   "--examples", "10", "--preset", "slow"])
    assert bad.exit_code == 2 and "unknown preset 'slow'" in bad.stderr


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
