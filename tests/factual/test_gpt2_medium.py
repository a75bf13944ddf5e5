"""The factual-recall path on a randomly initialised model of GPT-2 medium's exact
configuration (the paper's decoder started from GPT-2 medium; a user with the real weights
points the same commands at their directory; nothing is downloaded)."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from cli_runner import invoke
from inversionview.factual.knowledge import Knowledge
from inversionview.text.bpe import train_bpe

#: GPT-2 medium (355M), as in its config.json.
GPT2_MEDIUM = dict(vocab_size=50257, n_positions=1024, n_embd=1024, n_layer=24, n_head=16,
                   n_inner=None, activation_function="gelu_new", layer_norm_epsilon=1e-5,
                   bos_token_id=50256, eos_token_id=50256)


@pytest.fixture(scope="module")
def gpt2_medium_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("gpt2-medium")
    # GPT-2's tokenizer files cannot be fetched here: a BPE trained on the fact sentences
    # stands in (its ids fit inside the model's 50,257; <|endoftext|> is id 0 here)
    train_bpe(Knowledge.load().sentences("all"), 1_200, directory)
    torch.manual_seed(0)
    config = GPT2Config(**{**GPT2_MEDIUM, "bos_token_id": 0, "eos_token_id": 0})
    GPT2LMHeadModel(config).save_pretrained(directory)
    return directory


def test_factual_commands_run_on_gpt2_medium(gpt2_medium_dir, tmp_path):
    from inversionview.probed import load_probed

    model = load_probed(gpt2_medium_dir, task="factual")
    assert (model.n_layers, model.n_heads, model.d_model) == (24, 16, 1024)

    # 192 heads and 12 MLPs share a random model's update about evenly (~0.005 each): the
    # paper's 0.05 threshold keeps none, a lower one keeps the most active
    result = invoke(["factual", "heads", str(gpt2_medium_dir), "--relation", "capital",
                     "--keep", "5", "--threshold", "0.004", "--json"])
    assert result.exit_code == 0, result.stderr
    table = json.loads(result.stdout)
    assert table["layers"] == list(range(12, 24)) and len(table["heads"]) == 12 * 16
    assert 1 <= len(table["kept"]) <= 5

    # The paper's decoder recipe on this shape: the decoder takes GPT-2 medium's shape and
    # weights (--init-from), and reads each head at the last position or the one it attends
    # to least from BOS. (A training run's evaluation would sample from a 355M decoder for
    # each of the 409 sites: minutes here; the run itself is tested on tiny models.)
    from inversionview.decoder.positions import allowed_positions
    from inversionview.decoder.pretrained import initialise_from, start_from
    from inversionview.decoder.train import build_decoder

    lm, shape = start_from(gpt2_medium_dir, model, {})
    assert (shape["d_model"], shape["n_layers"], shape["n_heads"]) == (1024, 24, 16)
    decoder = build_decoder(model, 0, **shape)
    copied = initialise_from(decoder, lm)
    assert len(copied) > 24 * 4
    own, source = decoder.state_dict(), lm.state()
    assert torch.equal(own["token_embedding.weight"][:500], source["wte.weight"][:500].float())
    assert torch.equal(own["position_embedding.weight"], source["wpe.weight"][: model.task.n_ctx].float())

    tokens = model.tokens([p.text for p in Knowledge.load().prompts("eval")[:6]])
    head = torch.full((6,), [s.short for s in model.sites].index("a20.3"))
    chosen = allowed_positions(model, tokens, head, "last-or-least-bos")
    lengths = model.task.lengths(tokens)
    for row in range(6):
        picked = chosen[row].nonzero().flatten().tolist()
        assert 1 <= len(picked) <= 2 or not picked  # dropped when it attends only to BOS
        assert all(0 < index < lengths[row] for index in picked)
