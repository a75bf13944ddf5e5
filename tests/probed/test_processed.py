"""The processed-weight forward against TransformerLens' bridge, and the residual identities."""

import torch

from inversionview.probed.sites import Site, all_sites


def _inputs(model, n=6, seed=0):
    return model.task.sample_tokens(n, torch.Generator().manual_seed(seed))


def test_matches_transformer_bridge_at_every_site(tiny_model):
    """Our forward equals TransformerLens (TransformerBridge, compatibility mode) everywhere."""
    tiny_model.hf_model.double()
    tiny_model.refresh()
    tokens = _inputs(tiny_model)
    bridge = tiny_model.bridge()
    _, cache = bridge.run_with_cache(tokens)
    ours = tiny_model.run_sites(tokens, all_sites(tiny_model.n_layers, tiny_model.n_heads))
    for site, value in ours.items():
        reference = cache[site.tl_hook]
        if site.kind == "head":
            reference = reference[:, :, site.head]
        # float64 on both sides; the bridge rounds its processed weights through float32
        # (errors of ~4e-8 relative), so the tolerance is a few float32 ulps.
        torch.testing.assert_close(value, reference.to(value.dtype), atol=1e-7, rtol=1e-6,
                                   msg=f"site {site}")


def test_residual_sites_are_centred_hf_hidden_states(tiny_model):
    tokens = _inputs(tiny_model)
    tiny_model.hf_model.eval()
    hidden = tiny_model.hf_model(tokens, output_hidden_states=True).hidden_states
    ours = tiny_model.run_sites(tokens, ["x0.pre", "x0.post"])
    for layer, site in enumerate(["x0.pre", "x0.post"]):
        expected = hidden[layer] - hidden[layer].mean(dim=-1, keepdim=True)
        torch.testing.assert_close(ours[tiny_model.site(site)], expected, atol=1e-5, rtol=1e-5)


def test_residual_identities(tiny_model):
    tokens = _inputs(tiny_model)
    n_layers, n_heads = tiny_model.n_layers, tiny_model.n_heads
    acts = tiny_model.run_sites(tokens, all_sites(n_layers, n_heads))
    for layer in range(n_layers):
        pre, mid, post = (acts[Site(layer, k)] for k in ("resid_pre", "resid_mid", "resid_post"))
        attention_out, mlp_out = acts[Site(layer, "attn_out")], acts[Site(layer, "mlp_out")]
        torch.testing.assert_close(mid, pre + attention_out, atol=1e-6, rtol=0)
        torch.testing.assert_close(post, mid + mlp_out, atol=1e-6, rtol=0)
        heads = sum(acts[Site(layer, "head", h)] for h in range(n_heads))
        b_O = tiny_model.processed.b_O[layer]
        torch.testing.assert_close(heads + b_O, attention_out, atol=1e-6, rtol=0)
        if layer + 1 < n_layers:
            assert torch.equal(acts[Site(layer + 1, "resid_pre")], post)


def test_early_stopping_equals_a_full_run(tiny_model):
    tokens = _inputs(tiny_model)
    every = all_sites(tiny_model.n_layers, tiny_model.n_heads)
    full = tiny_model.run_sites(tokens, every)
    for site in every:
        alone = tiny_model.run_sites(tokens, [site])[site]
        assert torch.allclose(alone, full[site], atol=1e-6), site


def test_single_head_is_computed_without_the_others(tiny_model, monkeypatch):
    """A lone head site at the deepest layer asks the attention for that head only."""
    processed = tiny_model.processed
    asked = []
    original = processed._head_outputs

    def spy(resid, layer, heads):
        asked.append((layer, None if heads is None else list(heads)))
        return original(resid, layer, heads)

    monkeypatch.setattr(processed, "_head_outputs", spy)
    tiny_model.run_sites(_inputs(tiny_model), ["a1.2"])
    assert asked == [(0, None), (1, [2])]
    asked.clear()
    tiny_model.run_sites(_inputs(tiny_model), ["a0.3"])
    assert asked == [(0, [3])]


def test_padded_batches_equal_single_runs(tiny_model):
    task = tiny_model.task
    texts = task.sample(8, seed=4)
    batch = tiny_model.tokens(texts)
    every = all_sites(tiny_model.n_layers, tiny_model.n_heads)
    batched = tiny_model.run_sites(batch, every)
    for row, text in enumerate(texts):
        single = task.encode_batch([text], length=len(text))  # no padding at all
        alone = tiny_model.run_sites(single, every)
        for site in every:
            torch.testing.assert_close(batched[site][row, : len(text)], alone[site][0],
                                       atol=1e-5, rtol=1e-5)


def test_activation_at_positions(tiny_model):
    tokens = _inputs(tiny_model)
    full = tiny_model.activations(tokens, "x0.mid")
    positions = torch.tensor([0, 1, 2, 3, 4, 5])
    picked = tiny_model.activations(tokens, "blocks.0.hook_resid_mid", positions)
    assert picked.shape == (6, tiny_model.d_model)
    assert torch.equal(picked, full[torch.arange(6), positions])
    assert torch.equal(tiny_model.activations(tokens, "x0.mid", 2), full[:, 2])


def test_processed_logits_give_the_hf_log_probabilities(tiny_model):
    tiny_model.hf_model.double()
    tiny_model.refresh()
    tokens = _inputs(tiny_model)
    ours = torch.log_softmax(tiny_model.processed.logits(tokens), dim=-1)
    reference = torch.log_softmax(tiny_model.logits(tokens), dim=-1)
    real = tokens != tiny_model.task.vocab.pad_id
    torch.testing.assert_close(ours[real], reference[real], atol=1e-10, rtol=0)
