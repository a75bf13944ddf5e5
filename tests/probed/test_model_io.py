"""Saving, loading and resolving MODEL arguments, and the errors for what does not fit."""

import json
import re

import pytest
import torch

from inversionview.artifacts import bundled_model_names
from inversionview.probed import ModelLoadError, build_probed, load_probed


def test_save_and_load_round_trip(tmp_path):
    model = build_probed("addition", seed=3, n_embd=16, n_head=2, n_inner=32)
    model.save(tmp_path / "m", {"note": "test"})
    manifest = json.loads((tmp_path / "m" / "inversionview.json").read_text())
    assert manifest["task"] == "addition" and manifest["note"] == "test"
    assert manifest["weights_sha256"] == model.weights_hash()
    loaded = load_probed(tmp_path / "m")  # the task comes from the manifest
    assert loaded.task.name == "addition"
    assert loaded.weights_hash() == model.weights_hash()
    tokens = model.tokens(model.task.sample(4, seed=0))
    assert torch.equal(loaded.logits(tokens), model.logits(tokens))
    assert not list((tmp_path / "m").glob("*.tmp"))  # atomic writes left nothing behind


def test_build_is_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    a = build_probed("counting", seed=7)
    after = torch.rand(1)
    assert torch.equal(before, after)
    assert a.weights_hash() == build_probed("counting", seed=7).weights_hash()
    assert a.weights_hash() != build_probed("counting", seed=8).weights_hash()


def test_hf_directory_task_is_the_one_that_fits(tmp_path):
    model = build_probed("counting", seed=0, n_embd=16, n_head=1, n_inner=32)
    model.hf_model.save_pretrained(tmp_path / "hf")
    inferred = load_probed(tmp_path / "hf")  # no inversionview.json: the vocabulary decides
    assert inferred.task.name == "counting" and inferred.weights_hash() == model.weights_hash()
    assert load_probed(tmp_path / "hf", task="counting").weights_hash() == model.weights_hash()
    with pytest.raises(ModelLoadError, match="vocabulary of 40 tokens but the addition task has 15"):
        load_probed(tmp_path / "hf", task="addition")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**config, "vocab_size": 41}))
    with pytest.raises(ModelLoadError, match=r"hf/config.json fits no task: it has a vocabulary of "
                                             r"41 tokens .* counting has 40 tokens"):
        load_probed(tmp_path / "hf")


def test_checkpoint_that_does_not_match(tmp_path):
    model = build_probed("counting", seed=0, n_embd=16, n_head=1, n_inner=32)
    model.save(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["n_embd"] = 32
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=r"m/model.safetensors does not match its config "
                                             r".*m/config.json: .*shape"):
        load_probed(tmp_path / "m")


def test_model_of_another_task(tmp_path):
    build_probed("counting", seed=0, n_embd=16, n_head=1, n_inner=32).save(tmp_path / "m")
    with pytest.raises(ModelLoadError, match="trained on 'counting', not 'addition'"):
        load_probed(tmp_path / "m", task="addition")
    with pytest.raises(ModelLoadError) as raised:  # a long task name is not echoed whole
        load_probed(tmp_path / "m", task="x" * 5000)
    assert len(str(raised.value)) < 300 and "5,000 characters" in str(raised.value)


def test_missing_things(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_probed(tmp_path / "nowhere")
    for task in (None, "counting"):  # looked up in the local HuggingFace cache, never fetched
        bundled = re.escape(", ".join(bundled_model_names()))
        with pytest.raises(ModelLoadError, match=r"^'no-such-model' is neither a bundled artifact "
                                                 r"nor a directory, nor a model in the local "
                                                 r"HuggingFace cache; give a bundled model "
                                                 rf"\({bundled}\) or a model directory"):
            load_probed("no-such-model", task=task)
    (tmp_path / "empty").mkdir()
    for task in (None, "counting"):
        with pytest.raises(ModelLoadError, match="empty has no config.json"):
            load_probed(tmp_path / "empty", task=task)
