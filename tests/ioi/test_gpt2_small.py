"""The GPT-2 small path: the IOI commands on a randomly initialised model of GPT-2 small's
exact configuration saved as a local directory (a user with the real weights points the same
commands at their directory; nothing is downloaded)."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from cli_runner import invoke
from inversionview.ioi.corpus import mixture_lines
from inversionview.text.bpe import train_bpe

#: GPT-2 small (124M), as in its config.json.
GPT2_SMALL = dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12,
                  n_inner=None, activation_function="gelu_new", layer_norm_epsilon=1e-5,
                  bos_token_id=50256, eos_token_id=50256)


@pytest.fixture(scope="module")
def gpt2_small_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("gpt2-small")
    # GPT-2's own tokenizer files cannot be fetched here: a BPE trained on IOI text stands in
    # (its ids fit inside the model's 50,257; <|endoftext|> is id 0 here, not 50256)
    train_bpe(mixture_lines(1_500, seed=3), 1_000, directory)
    torch.manual_seed(0)
    config = GPT2Config(**{**GPT2_SMALL, "bos_token_id": 0, "eos_token_id": 0})
    GPT2LMHeadModel(config).save_pretrained(directory)
    return directory


def test_ioi_commands_run_on_gpt2_small(gpt2_small_dir):
    from inversionview.probed import load_probed

    model = load_probed(gpt2_small_dir, task="ioi")
    assert (model.n_layers, model.n_heads, model.d_model) == (12, 12, 768)
    assert len(model.sites) == 157  # x0.pre, 144 heads, 12 MLPs: the paper's IOI sites

    result = invoke(["ioi", "eval", str(gpt2_small_dir), "--n", "8", "--json"])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["n"] == 8 and 0 <= report["top1_accuracy"] <= 1

    # exact patching of 144 heads is minutes on this CPU; the estimate is one backward pass
    result = invoke(["ioi", "heads", str(gpt2_small_dir), "--n", "2", "--patching",
                     "attribution", "--json"])
    assert result.exit_code == 0, result.stderr
    record = json.loads(result.stdout)
    assert len(record["heads"]) == 144 and set(record["roles"]) >= {"name mover", "induction"}
    assert all(head["copying"] is not None for head in record["heads"])
