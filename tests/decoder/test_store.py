"""Decoders on disk: exact round trip, fp16 shipping, the hash match, clear errors."""

import json

import pytest
import torch

from inversionview.decoder.export import export_decoder
from inversionview.decoder.store import (DecoderLoadError, find_decoder, load_decoder,
                                         save_decoder, shipped_decoders)
from inversionview.decoder.train import build_decoder
from inversionview.probed import build_probed

TINY = dict(d_model=32, n_heads=2, d_mlp=64, n_condition_blocks=2)


def _probed(seed=0):
    return build_probed("addition", seed=seed, n_embd=16, n_head=4, n_inner=32)


@pytest.mark.parametrize("shape", [{}, {"per_example_norm": True}, {"whiten_activation": True}],
                         ids=["default", "per-example-norm", "whiten"])
def test_round_trip_is_bit_exact(tmp_path, shape):
    probed = _probed()
    decoder = build_decoder(probed, seed=1, **TINY, **shape)
    save_decoder(decoder, probed, tmp_path, {"seed": 1})
    loaded, manifest = load_decoder(tmp_path, probed)
    assert manifest["probed_weights_sha256"] == probed.weights_hash() and manifest["seed"] == 1
    assert loaded.config == decoder.config
    for name, value in decoder.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[name]), name


def test_fp16_decoder_loads_as_float32_and_samples(tmp_path):
    probed = _probed()
    decoder = build_decoder(probed, seed=1, **TINY)
    save_decoder(decoder, probed, tmp_path, {}, dtype=torch.float16)
    loaded, _ = load_decoder(tmp_path, probed)
    weight = loaded.state_dict()["blocks.0.mlp.0.weight"]
    assert weight.dtype == torch.float32
    assert torch.allclose(weight, decoder.state_dict()["blocks.0.mlp.0.weight"], atol=1e-3)
    vocab = probed.task.vocab
    samples = loaded.sample(torch.randn(4, 16), torch.zeros(4, dtype=torch.long), vocab.bos_id,
                            vocab.eos_id, vocab.pad_id, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (4, probed.task.n_ctx) and (samples[:, 0] == vocab.bos_id).all()


def test_decoder_of_another_model_is_refused(tmp_path):
    save_decoder(build_decoder(_probed(0), seed=1, **TINY), _probed(0), tmp_path, {})
    with pytest.raises(DecoderLoadError, match="trained on other probed weights"):
        load_decoder(tmp_path, _probed(seed=5))


def test_missing_and_malformed_directories_say_what_is_wrong(tmp_path):
    with pytest.raises(DecoderLoadError, match="no decoder.json"):
        load_decoder(tmp_path)
    (tmp_path / "decoder.json").write_text("{not json")
    with pytest.raises(DecoderLoadError, match="not valid JSON"):
        load_decoder(tmp_path)
    (tmp_path / "decoder.json").write_text(json.dumps({"kind": "probed"}))
    with pytest.raises(DecoderLoadError, match="not a decoder manifest: kind is 'probed'; "
                                               "expected 'decoder'"):
        load_decoder(tmp_path)
    with pytest.raises(DecoderLoadError, match="decoder directory .*nowhere does not exist"):
        load_decoder(tmp_path / "nowhere")


def test_config_that_does_not_fit_its_weights_or_model(tmp_path):
    probed = _probed()
    save_decoder(build_decoder(probed, seed=1, **TINY), probed, tmp_path, {})
    manifest = json.loads((tmp_path / "decoder.json").read_text())
    manifest["config"]["d_mlp"] = 32
    (tmp_path / "decoder.json").write_text(json.dumps(manifest))
    with pytest.raises(DecoderLoadError, match=r"decoder.safetensors does not match the config in "
                                               r".*decoder.json: .* has shape \(64, 32\), the "
                                               r"config says \(32, 32\)"):
        load_decoder(tmp_path, probed)
    manifest["config"].update(d_mlp=64, activation_dim=8)
    (tmp_path / "decoder.json").write_text(json.dumps(manifest))
    with pytest.raises(DecoderLoadError, match=r"decoder.json: config.activation_dim is 8 but the "
                                               r"model <random init> needs 16"):
        load_decoder(tmp_path, probed)


def test_shipped_decoder_is_found_by_the_probed_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("INVERSIONVIEW_ARTIFACTS", str(tmp_path))
    mine, other = _probed(0), _probed(3)
    save_decoder(build_decoder(mine, seed=1, **TINY), mine, tmp_path / "decoder-mine", {})
    save_decoder(build_decoder(other, seed=1, **TINY), other, tmp_path / "decoder-other", {})
    assert {"decoder-mine", "decoder-other"} <= set(shipped_decoders())
    assert find_decoder(mine) == tmp_path / "decoder-mine"
    assert find_decoder(other) == tmp_path / "decoder-other"
    assert find_decoder(_probed(7)) is None


def test_export_writes_fp16_and_remeasures(tmp_path):
    probed = _probed()
    decoder = build_decoder(probed, seed=1, **TINY)
    save_decoder(decoder, probed, tmp_path / "run", {"seed": 4, "in_epsilon_mean": 0.0,
                                                     "training": {"seed": 4, "eval_queries_per_site": 1,
                                                                  "eval_samples_per_query": 2}})
    manifest = export_decoder(tmp_path / "run", tmp_path / "shipped", probed)
    assert manifest["weights_dtype"] == "float16" and manifest["seed"] == 4
    assert set(manifest["exported_in_epsilon"]) == set(probed.task.sites)
    assert manifest["probed_weights_sha256"] == probed.weights_hash()
    from safetensors.torch import load_file
    assert load_file(str(tmp_path / "shipped" / "decoder.safetensors"))["blocks.0.mlp.0.weight"].dtype == torch.float16
