"""The model backends on tiny random GPT-2, GPT-NeoX (Pythia layout) and Llama (grouped-query
attention) models built and saved in the test: every site pinned to TransformerBridge's own
hooks, the residual identities, patching, attention patterns, DLA, the raw mode against
HuggingFace, and the fast GPT-2 path against the bridge."""

from __future__ import annotations

import pytest
import torch
from tiny_lms import ARCHITECTURES, make_tiny_lm, sentences
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PretrainedConfig

from inversionview.probed.backend import (Backend, BackendError, BridgeBackend, make_backend,
                                          supported_architectures, valid_tokens)
from inversionview.probed.processed import ProcessedGPT2
from inversionview.probed.sites import Site, all_sites

PAD_OUTSIDE_VOCAB = 10_000  # a task's own padding id that the model's embedding lacks


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=ARCHITECTURES)
def architecture(request):
    return request.param


@pytest.fixture(scope="module")
def lm_dir(architecture, tmp_path_factory):
    return make_tiny_lm(architecture, tmp_path_factory.mktemp(architecture))


@pytest.fixture(scope="module")
def hf_model(lm_dir):
    """The saved model in float64, so that tolerances can be tight."""
    return AutoModelForCausalLM.from_pretrained(lm_dir, local_files_only=True).double().eval()


@pytest.fixture(scope="module")
def backends(hf_model):
    return {True: BridgeBackend(hf_model, processed=True),
            False: BridgeBackend(hf_model, processed=False)}


@pytest.fixture(scope="module")
def batch(lm_dir):
    """``(tokens [6, 20], lengths)``: texts of different lengths, right-padded with an id
    outside the vocabulary."""
    tokenizer = AutoTokenizer.from_pretrained(lm_dir, local_files_only=True)
    rows = [tokenizer(text).input_ids[:20 - i] for i, text in enumerate(sentences(6, seed=9))]
    tokens = torch.full((len(rows), 20), PAD_OUTSIDE_VOCAB)
    for i, row in enumerate(rows):
        tokens[i, :len(row)] = torch.tensor(row)
    return tokens, [len(row) for row in rows]


def contrast(tokens: torch.Tensor) -> torch.Tensor:
    """Other inputs of the same shape: the batch's rows in reverse order."""
    return tokens.flip(0)


def every_site(backend) -> list[Site]:
    return all_sites(backend.n_layers, backend.n_heads)


# ----- the tiny models ---------------------------------------------------------------------


def test_tiny_models_load_offline_with_their_tokenizers(architecture, lm_dir, hf_model, no_network):
    tokenizer = AutoTokenizer.from_pretrained(lm_dir, local_files_only=True)
    assert len(tokenizer) == hf_model.config.vocab_size
    special = ("<s>", "</s>") if architecture == "llama" else ("<|endoftext|>",) * 2
    assert (tokenizer.bos_token, tokenizer.eos_token) == special
    assert tokenizer.decode(tokenizer("Alice gave Bob a book.").input_ids,
                            skip_special_tokens=True) == "Alice gave Bob a book."
    if architecture == "llama":
        assert hf_model.config.num_key_value_heads < hf_model.config.num_attention_heads  # GQA
    assert sorted(path.name for path in lm_dir.iterdir()) == [
        "config.json", "generation_config.json", "model.safetensors", "special_tokens_map.json",
        "tokenizer.json", "tokenizer_config.json"]
    assert no_network == []


def test_backends_satisfy_the_protocol(hf_model, backends):
    for backend in [*backends.values(), make_backend(hf_model)]:
        assert isinstance(backend, Backend)
        assert (backend.n_layers, backend.n_heads, backend.d_model, backend.n_ctx,
                backend.vocab_size) == (2, 4, 32, 64, hf_model.config.vocab_size)
    assert backends[True].processed and not backends[False].processed


def test_booting_the_bridge_never_touches_the_network(hf_model, no_network):
    BridgeBackend(hf_model, processed=True)
    assert no_network == []


# ----- sites --------------------------------------------------------------------------------


@pytest.mark.parametrize("processed", [True, False])
def test_every_site_is_the_bridges_own_hook(backends, batch, processed):
    """run() with names filters and early stops equals a full run_with_cache of the bridge."""
    backend = backends[processed]
    tokens = valid_tokens(batch[0], backend.vocab_size)
    _, cache = backend.bridge.run_with_cache(tokens)
    ours = backend.run(tokens, every_site(backend))
    for site, value in ours.items():
        if site.kind == "resid_mid" and backend.parallel:
            # no hook exists between a parallel block's attention and MLP
            assert site.hook not in cache
            reference = cache[Site(site.layer, "resid_pre").hook] + cache[Site(site.layer, "attn_out").hook]
        else:
            reference = cache[site.tl_hook]
        if site.kind == "head":
            reference = reference[:, :, site.head]
        assert torch.equal(value, reference), site
    for site in every_site(backend):  # one site at a time: early stops change nothing
        assert torch.equal(backend.run(tokens, [site])[site], ours[site]), site


def test_parallel_blocks_are_the_gpt_neox_ones(architecture, backends):
    assert backends[True].parallel == (architecture == "gpt_neox")


@pytest.mark.parametrize("processed", [True, False])
def test_residual_identities(backends, batch, processed):
    backend = backends[processed]
    found = backend.run(batch[0], every_site(backend))
    for layer in range(backend.n_layers):
        pre, mid, post = (found[Site(layer, k)] for k in ("resid_pre", "resid_mid", "resid_post"))
        attention_out, mlp_out = found[Site(layer, "attn_out")], found[Site(layer, "mlp_out")]
        heads = sum(found[Site(layer, "head", h)] for h in range(backend.n_heads))
        torch.testing.assert_close(mid, pre + attention_out, atol=1e-13, rtol=0)
        torch.testing.assert_close(post, mid + mlp_out, atol=1e-13, rtol=0)
        torch.testing.assert_close(heads + backend.b_O[layer], attention_out, atol=1e-13, rtol=0)


def test_run_stops_after_the_deepest_sites_block(backends, batch):
    backend = backends[True]
    calls = [0] * backend.n_layers
    handles = [block.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
               for i, block in enumerate(backend.bridge.blocks)]
    unembedded = []
    handles.append(backend.bridge.unembed.register_forward_hook(lambda *_: unembedded.append(1)))
    try:
        backend.run(batch[0], [Site(0, "head", 1), Site(0, "resid_post")])
        assert calls == [1, 0]
        backend.run(batch[0], [Site(1, "resid_pre")])  # the input of block 1: block 0 only
        assert calls == [2, 0]
        backend.run(batch[0], [Site(1, "mlp_out")])
        assert calls == [3, 1]
        assert unembedded == []  # the final norm and the unembedding never run
        backend.logits(batch[0])
        assert calls == [4, 2] and unembedded == [1]
    finally:
        for handle in handles:
            handle.remove()


def test_padded_positions_change_no_real_position(backends, hf_model, batch):
    """Right padding (with ids outside the vocabulary) leaves every real position as it is
    when the text is run alone, unpadded."""
    tokens, lengths = batch
    for backend in [*backends.values(), make_backend(hf_model)]:
        batched = backend.run(tokens, every_site(backend))
        for row, length in enumerate(lengths[:3]):
            alone = backend.run(tokens[row:row + 1, :length], every_site(backend))
            for site in every_site(backend):
                torch.testing.assert_close(batched[site][row, :length], alone[site][0],
                                           atol=1e-12, rtol=0)


def test_ids_outside_the_vocabulary_read_as_id_zero(backends, hf_model, batch):
    tokens = batch[0]
    assert (tokens >= hf_model.config.vocab_size).any()
    zeroed = torch.where(tokens == PAD_OUTSIDE_VOCAB, 0, tokens)
    for backend in [*backends.values(), make_backend(hf_model)]:
        assert torch.equal(backend.logits(tokens), backend.logits(zeroed))
    assert torch.equal(valid_tokens(torch.tensor([-1, 0, 5, 6, 10_000]), 6), torch.tensor([0, 0, 5, 0, 0]))


# ----- patching ------------------------------------------------------------------------------


@pytest.mark.parametrize("processed", [True, False])
def test_patching_an_activation_with_itself_changes_nothing(backends, batch, processed):
    backend = backends[processed]
    tokens = batch[0]
    clean = backend.logits(tokens)
    found = backend.run(tokens, every_site(backend))
    where = torch.rand(tokens.shape, generator=torch.Generator().manual_seed(0)) < 0.5
    for site in every_site(backend):
        patched = backend.run_patched(tokens, {site: (where, found[site])})
        if site.kind == "resid_mid" and backend.parallel:
            # written as (resid_pre + attn_out) + mlp_out; the block adds them in another order
            torch.testing.assert_close(patched, clean, atol=1e-12, rtol=0, msg=str(site))
        else:
            assert torch.equal(patched, clean), site
    everything = backend.run_patched(tokens, {site: (where, found[site]) for site in every_site(backend)})
    torch.testing.assert_close(everything, clean, atol=1e-12, rtol=0)


@pytest.mark.parametrize("processed", [True, False])
def test_patching_the_whole_residual_stream_gives_the_contrast_run(backends, batch, processed):
    backend = backends[processed]
    tokens, other = batch[0], contrast(batch[0])
    last = backend.n_layers - 1
    residuals = [Site(last, "resid_pre"), Site(last, "resid_post")]
    if not backend.parallel:
        residuals.append(Site(last, "resid_mid"))
    found = backend.run(other, residuals)
    where = torch.ones(tokens.shape, dtype=torch.bool)
    expected = backend.logits(other)
    for site in residuals:
        torch.testing.assert_close(backend.run_patched(tokens, {site: (where, found[site])}),
                                   expected, atol=1e-12, rtol=0, msg=str(site))
    assert not torch.allclose(backend.logits(tokens), expected, atol=1e-3)


def test_patching_a_parallel_blocks_resid_mid_replaces_what_it_passes_on(architecture, backends, batch):
    """In a parallel block the MLP reads resid_pre, so a patched resid_mid reaches the next
    block as patched + mlp_out."""
    if architecture != "gpt_neox":
        pytest.skip("sequential blocks: resid_mid is the MLP's input, covered above")
    backend = backends[True]
    tokens, other = batch[0], contrast(batch[0])
    mid, post, mlp = (Site(0, kind) for kind in ("resid_mid", "resid_post", "mlp_out"))
    values = backend.run(other, [mid])[mid]
    where = torch.rand(tokens.shape, generator=torch.Generator().manual_seed(1)) < 0.5
    by_mid = backend.run_patched(tokens, {mid: (where, values)})
    by_post = backend.run_patched(tokens, {post: (where, values + backend.run(tokens, [mlp])[mlp])})
    torch.testing.assert_close(by_mid, by_post, atol=1e-12, rtol=0)


@pytest.mark.parametrize("processed", [True, False])
def test_patching_every_head_equals_patching_the_attention_output(backends, batch, processed):
    backend = backends[processed]
    tokens, other = batch[0], contrast(batch[0])
    heads = [Site(0, "head", h) for h in range(backend.n_heads)]
    found = backend.run(other, heads + [Site(0, "attn_out")])
    where = torch.ones(tokens.shape, dtype=torch.bool)
    by_heads = backend.run_patched(tokens, {h: (where, found[h]) for h in heads})
    by_output = backend.run_patched(tokens, {Site(0, "attn_out"): (where, found[Site(0, "attn_out")])})
    torch.testing.assert_close(by_heads, by_output, atol=1e-12, rtol=0)
    assert not torch.allclose(by_heads, backend.logits(tokens), atol=1e-3)  # the heads matter
    one = backend.run_patched(tokens, {heads[1]: (where, found[heads[1]])})
    assert not torch.allclose(one, backend.logits(tokens), atol=1e-3)


# ----- attention, logits, DLA -------------------------------------------------------------


def test_attention_patterns_sum_to_one_and_are_causal(backends, batch):
    tokens = batch[0]
    for backend in backends.values():
        for layer in range(backend.n_layers):
            pattern = backend.attention_pattern(tokens, layer)
            assert pattern.shape == (tokens.shape[0], backend.n_heads, tokens.shape[1], tokens.shape[1])
            torch.testing.assert_close(pattern.sum(dim=-1), torch.ones(pattern.shape[:-1], dtype=pattern.dtype))
            assert torch.all(pattern.triu(1) == 0)
    with pytest.raises(ValueError, match="layer 2 does not exist"):
        backends[True].attention_pattern(tokens, 2)


@pytest.mark.parametrize("processed", [True, False])
def test_direct_logits_of_the_residual_summands_sum_to_the_logits(architecture, backends, batch, processed):
    backend = backends[processed]
    tokens = batch[0]
    last = Site(backend.n_layers - 1, "resid_post")
    found = backend.run(tokens, every_site(backend))
    final = found[last].flatten(0, 1)
    pieces = [found[Site(0, "resid_pre")]]  # token (and, for GPT-2, position) embeddings
    for layer in range(backend.n_layers):
        pieces += [found[Site(layer, "head", h)] for h in range(backend.n_heads)]
        pieces += [backend.b_O[layer].expand_as(found[last]), found[Site(layer, "mlp_out")]]
    total = sum(backend.direct_logits(piece.flatten(0, 1), final) for piece in pieces) + backend.b_U
    # HF's LlamaRMSNorm normalizes in float32 even in a float64 model
    tolerance = 1e-6 if architecture == "llama" else 1e-12
    torch.testing.assert_close(total, backend.logits(tokens).flatten(0, 1), atol=tolerance, rtol=0)


def test_processed_logits_give_the_hf_log_probabilities(architecture, backends, hf_model, batch):
    tokens = valid_tokens(batch[0], hf_model.config.vocab_size)
    reference = torch.log_softmax(hf_model(tokens).logits, dim=-1)
    ours = torch.log_softmax(backends[True].logits(tokens), dim=-1)
    # the bridge processes the weights in float32 (relative errors ~1e-7)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)
    assert not torch.allclose(backends[True].logits(tokens), hf_model(tokens).logits, atol=1e-3)


def test_raw_mode_is_the_hf_model(architecture, backends, hf_model, batch):
    """Raw: the residual stream entering each block is HF's hidden_states, the logits HF's."""
    backend = backends[False]
    tokens = valid_tokens(batch[0], hf_model.config.vocab_size)
    output = hf_model(tokens, output_hidden_states=True)
    found = backend.run(tokens, [Site(layer, "resid_pre") for layer in range(backend.n_layers)])
    tolerance = 1e-5 if architecture == "llama" else 1e-12  # float32 RMSNorm inside HF Llama
    for layer in range(backend.n_layers):
        torch.testing.assert_close(found[Site(layer, "resid_pre")], output.hidden_states[layer],
                                   atol=tolerance, rtol=0)
    torch.testing.assert_close(backend.logits(tokens), output.logits, atol=tolerance, rtol=0)


def test_processed_residual_is_the_raw_one_centred_for_layernorm_models(architecture, backends, batch):
    """Processing centres what LayerNorm models write to the residual stream; RMSNorm is not
    invariant to a shift, so Llama's residual stream stays as it is."""
    site = Site(1, "resid_pre")
    processed, raw = (backends[p].run(batch[0], [site])[site] for p in (True, False))
    expected = raw if architecture == "llama" else raw - raw.mean(dim=-1, keepdim=True)
    torch.testing.assert_close(processed, expected, atol=1e-5, rtol=0)


# ----- the fast GPT-2 path, the factory, the errors ------------------------------------------


def test_make_backend_takes_the_fast_path_for_processed_gpt2_only(architecture, hf_model):
    fast = make_backend(hf_model, processed=True)
    assert isinstance(fast, ProcessedGPT2 if architecture == "gpt2" else BridgeBackend)
    raw = make_backend(hf_model, processed=False)
    assert isinstance(raw, BridgeBackend) and not raw.processed


def test_fast_gpt2_equals_the_bridge_everywhere(architecture, hf_model, backends, batch):
    if architecture != "gpt2":
        pytest.skip("the fast path is GPT-2 only")
    fast, bridge = make_backend(hf_model), backends[True]
    tokens, other = batch[0], contrast(batch[0])
    # float64 on both sides; the bridge rounds its processed weights through float32
    # (relative errors ~1e-7: ~1e-6 on activations of order 1, ~1e-5 on logits of order 30)
    close, close_logits = dict(atol=1e-6, rtol=1e-6), dict(atol=1e-5, rtol=1e-6)
    ours, reference = fast.run(tokens, every_site(bridge)), bridge.run(tokens, every_site(bridge))
    for site in every_site(bridge):
        torch.testing.assert_close(ours[site], reference[site], **close, msg=str(site))
    for layer in range(bridge.n_layers):
        torch.testing.assert_close(fast.attention_pattern(tokens, layer),
                                   bridge.attention_pattern(tokens, layer), **close)
    torch.testing.assert_close(fast.logits(tokens), bridge.logits(tokens), **close_logits)
    torch.testing.assert_close(fast.b_O, bridge.b_O, **close)
    torch.testing.assert_close(fast.b_U, bridge.b_U, **close_logits)
    last, head = Site(1, "resid_post"), Site(1, "head", 2)
    torch.testing.assert_close(fast.direct_logits(ours[head][:, 3], ours[last][:, 3]),
                               bridge.direct_logits(reference[head][:, 3], reference[last][:, 3]),
                               **close_logits)
    where = torch.rand(tokens.shape, generator=torch.Generator().manual_seed(2)) < 0.5
    for site in [Site(0, "head", 1), Site(0, "resid_mid"), Site(1, "resid_pre"), Site(0, "mlp_out")]:
        values = bridge.run(other, [site])[site]
        torch.testing.assert_close(fast.run_patched(tokens, {site: (where, values)}),
                                   bridge.run_patched(tokens, {site: (where, values)}), **close_logits,
                                   msg=str(site))


class _UnknownConfig(PretrainedConfig):
    model_type = "unknown_lm"


class UnknownForCausalLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.config = _UnknownConfig()
        self.linear = nn.Linear(2, 2)


def test_an_architecture_whose_hooks_do_not_fire_is_refused(hf_model, monkeypatch):
    monkeypatch.setattr(BridgeBackend, "_capture", lambda self, tokens, names, blocks: {})
    with pytest.raises(BackendError, match="blocks.1.attn.hook_result.* that fires"):
        BridgeBackend(hf_model)


def test_an_unsupported_architecture_is_a_one_line_error():
    with pytest.raises(BackendError) as caught:
        make_backend(UnknownForCausalLM())
    message = str(caught.value)
    assert "\n" not in message and "UnknownForCausalLM" in message
    assert "GPT2LMHeadModel" in message and "GPTNeoXForCausalLM" in message and "LlamaForCausalLM" in message
    assert {"GPT2LMHeadModel", "GPTNeoXForCausalLM", "LlamaForCausalLM"} <= set(supported_architectures())
    assert isinstance(caught.value, ValueError)
