"""The authors' released probed models, loaded offline from ../shared (skipped when absent)."""


import pytest
import torch

from inversionview.probed import load_probed
from inversionview.probed.evaluate import accuracy
from tests.conftest import authors_model_dir


@pytest.mark.parametrize("task", ["counting", "addition"])
def test_loads_offline_into_transformerlens(task, no_network):
    model = load_probed(authors_model_dir(task), task=task)
    bridge = model.bridge()
    tokens = model.tokens(model.task.sample(4, seed=0))
    _, cache = bridge.run_with_cache(tokens, names_filter=lambda name: "hook_resid_post" in name)
    assert cache["blocks.1.hook_resid_post"].shape == (4, model.task.n_ctx, model.d_model)
    assert no_network == []


@pytest.mark.parametrize("task", ["counting", "addition"])
def test_log_probabilities_equal_the_plain_hf_model(task):
    """Loaded offline and read with TransformerLens' processing, the model gives the plain
    HuggingFace model's log-probabilities.

    Compared in float64 so that the implementations, not float32 rounding, are compared
    (in float32 every implementation, HF included, is ~3e-4 off the float64 values on the
    counting model, whose logits reach ~20). Our processed forward is exact to 1e-5 (in fact
    ~1e-12). TransformerBridge rounds its processed weights through float32 even for a
    float64 model (transformer_lens/weight_processing.py upcasts every dtype to float32),
    which costs it up to ~4e-5 on log-probabilities near -26; its probabilities agree to 1e-5."""
    from transformers import GPT2LMHeadModel

    directory = authors_model_dir(task)
    plain = GPT2LMHeadModel.from_pretrained(directory, local_files_only=True).double().eval()
    model = load_probed(directory, task=task)
    model.hf_model.double()
    model.refresh()
    tokens = model.tokens(model.task.sample(64, seed=1))
    real = tokens != model.task.vocab.pad_id
    reference = torch.log_softmax(plain(tokens).logits, dim=-1)[real]
    through_ours = torch.log_softmax(model.processed.logits(tokens), dim=-1)[real]
    assert (through_ours - reference).abs().max().item() < 1e-5
    through_bridge = torch.log_softmax(model.bridge()(tokens), dim=-1)[real]
    assert (through_bridge.exp() - reference.exp()).abs().max().item() < 1e-5
    assert (through_bridge - reference).abs().max().item() < 1e-4


def test_authors_counting_model_accuracy():
    model = load_probed(authors_model_dir("counting"), task="counting")
    assert accuracy(model, n=2000, seed=123) >= 0.99


def test_authors_model_task_is_inferred_or_checked():
    from inversionview.probed import ModelLoadError

    assert load_probed(authors_model_dir("counting")).task.name == "counting"  # only one fits
    with pytest.raises(ModelLoadError, match="vocabulary of 40 tokens but the addition task has 15"):
        load_probed(authors_model_dir("counting"), task="addition")
