"""Position policies of the decoder's training data: uniform (unchanged), last and
low-bos-attention give the positions they say, keep the 1 % BOS, are seeded, are checked,
and are recorded with the run and kept on resume."""

import json
import math

import pytest
import torch
from tiny_lms import make_tiny_lm, sentences

from inversionview.decoder.data import ActivationStream
from inversionview.decoder.evaluate import held_out_queries
from inversionview.decoder.positions import allowed_positions, lowest_half
from inversionview.decoder.train import DecoderTrainingConfig, attach_corpus, train_decoder
from inversionview.errors import OptionError
from inversionview.options import POSITIONS
from inversionview.probed.model import load_probed

TEXTS = sentences(60, seed=11)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A tiny random GPT-2 read as free text (2 layers of 4 heads)."""
    return load_probed(make_tiny_lm("gpt2", tmp_path_factory.mktemp("positions")))


def stream(model, policy, batch=2000, seed=0):
    return ActivationStream(model, batch, torch.Generator().manual_seed(seed), texts=TEXTS,
                            positions=policy)


def last_real_index(model, tokens):
    """BOS is index 0, the text's tokens follow, then the decoder-only EOS and PADs."""
    return (tokens < model.task.vocab.model_size).sum(dim=1) - 1


def test_uniform_is_the_draw_it_always_was(model):
    """The default draws exactly as before the policies: after the inputs and the sites, a
    uniform score per position, argmax over the queryable ones, then 1 % to BOS, all from
    the stream's generator (so runs started before the policies continue identically)."""
    batch = ActivationStream(model, 500, torch.Generator().manual_seed(3), texts=TEXTS).next_batch()
    again = stream(model, "uniform", batch=500, seed=3)
    tokens = again._inputs(500)
    torch.multinomial(again.site_probs, 500, replacement=True, generator=again.generator)
    allowed = model.task.query_position_mask(tokens)
    scores = torch.rand(tokens.shape, generator=again.generator).masked_fill(~allowed, -1.0)
    to_bos = torch.rand(500, generator=again.generator) < 0.01
    assert torch.equal(batch.position, scores.argmax(dim=1).masked_fill(to_bos, 0))


def test_last_reads_each_input_at_its_last_token(model):
    batch = stream(model, "last").next_batch()
    at_bos = batch.position == 0
    expected = last_real_index(model, batch.tokens)
    assert torch.equal(batch.position[~at_bos], expected[~at_bos])
    assert 5 <= int(at_bos.sum()) <= 40  # 1 % of 2,000
    assert (expected > 0).all()


def test_low_bos_attention_keeps_the_half_of_positions_a_head_attends_least_to_bos(model):
    """The mask, checked row by row against each head's attention pattern computed directly
    on the text: ceil(n / 2) of the n real tokens, none of them attending to BOS more than
    any position left out; the argmin always among them. Other sites: every real token."""
    sites = model.sites
    tokens = model.task.encode_batch(TEXTS[:40])
    site_id = torch.arange(40) % len(sites)
    allowed = allowed_positions(model, tokens, site_id, "low-bos-attention")
    lengths = last_real_index(model, tokens)
    for row in range(40):
        site, n = sites[site_id[row]], int(lengths[row])
        kept = torch.nonzero(allowed[row]).flatten()
        if site.kind != "head":
            assert kept.tolist() == list(range(1, n + 1)), site
            continue
        pattern = model.attention_pattern(TEXTS[row], site.layer)  # [head, q, k]
        to_bos = pattern[site.head, 1:n + 1, 0]  # real tokens 1..n
        inside = torch.zeros(n, dtype=torch.bool)
        inside[kept - 1] = True
        assert len(kept) == math.ceil(n / 2) and kept.min() >= 1 and kept.max() <= n
        assert to_bos[inside].max() <= to_bos[~inside].min() + 1e-6, site
        assert inside[to_bos.argmin()]


def test_low_bos_attention_in_the_stream(model):
    """Every head example not sent to BOS is read where the head attends to BOS no more
    than at the median real token; a residual site's examples are spread over all of them."""
    batch = stream(model, "low-bos-attention", batch=400, seed=5).next_batch()
    sites = model.sites
    lower, upper = 0, 0
    for row in range(400):
        site, position = sites[batch.site_id[row]], int(batch.position[row])
        if position == 0:
            continue
        text = model.task.decode(batch.tokens[row])
        n = int(last_real_index(model, batch.tokens[row:row + 1]))
        assert 1 <= position <= n
        head = site.head if site.kind == "head" else 0
        to_bos = model.attention_pattern(text, site.layer)[head, 1:n + 1, 0]
        median = to_bos.sort().values[math.ceil(n / 2) - 1]
        in_lower_half = bool(to_bos[position - 1] <= median + 1e-6)
        if site.kind == "head":
            assert in_lower_half, (site, position)
        else:
            lower, upper = lower + in_lower_half, upper + (not in_lower_half)
    assert upper > 0.3 * (lower + upper)  # non-head sites: uniform, not the lower half


def test_last_or_least_bos_reads_a_head_at_the_end_or_where_it_attends_least_to_bos(model):
    """The paper's factual policy: a head's example is read at the last real token or at its
    argmin of attention to BOS (half and half over the stream); other sites anywhere."""
    from inversionview.decoder.positions import FILTER_BOS_ATTENTION

    batch = stream(model, "last-or-least-bos", batch=600, seed=9).next_batch()
    sites = model.sites
    at_last = at_least = 0
    for row in range(600):
        site, position = sites[batch.site_id[row]], int(batch.position[row])
        if position == 0 or site.kind != "head":
            continue
        text = model.task.decode(batch.tokens[row])
        n = int(last_real_index(model, batch.tokens[row:row + 1]))
        to_bos = model.attention_pattern(text, site.layer)[site.head, 1:n + 1, 0]
        least = int(to_bos.argmin()) + 1
        assert position in (n, least), (site, position, n, least)
        assert min(to_bos[n - 1], to_bos[least - 1]) <= FILTER_BOS_ATTENTION
        at_last += position == n and least != n
        at_least += position == least and least != n
    assert at_last > 0.35 * (at_last + at_least) and at_least > 0.35 * (at_last + at_least)


def test_last_or_least_bos_filters_inputs_where_the_head_only_attends_to_bos(model, monkeypatch):
    """With the filter at 0 every head row is dropped: the stream redraws, then reads BOS."""
    from inversionview.decoder import positions

    monkeypatch.setattr(positions, "FILTER_BOS_ATTENTION", -1.0)
    tokens = model.task.encode_batch(TEXTS[:8])
    heads = torch.tensor([i for i, site in enumerate(model.sites) if site.kind == "head"][:8])
    assert not allowed_positions(model, tokens, heads, "last-or-least-bos").any()
    batch = stream(model, "last-or-least-bos", batch=200, seed=2).next_batch()
    is_head = torch.tensor([model.sites[i].kind == "head" for i in batch.site_id.tolist()])
    assert (batch.position[is_head] == 0).all() and (batch.position[~is_head] > 0).any()


def test_lowest_half_ties_and_empty_rows():
    values = torch.tensor([[0.5, 0.1, 0.1, 0.9, 0.0], [0.3, 0.3, 0.3, 0.3, 0.3],
                           [0.0, 0.0, 0.0, 0.0, 0.0]])
    allowed = torch.tensor([[False, True, True, True, True], [True] * 5, [False] * 5])
    assert lowest_half(values, allowed).tolist() == [
        [False, True, False, False, True],  # 4 allowed: the 2 lowest (0.0 and the first 0.1)
        [True, True, True, False, False],  # 5 equal: ceil(5/2) = 3, the earliest
        [False] * 5]


@pytest.mark.parametrize("policy", POSITIONS.allowed)
def test_every_policy_is_seeded(model, policy):
    first = stream(model, policy, batch=300, seed=7).next_batch()
    again = stream(model, policy, batch=300, seed=7).next_batch()
    other = stream(model, policy, batch=300, seed=8).next_batch()
    assert torch.equal(first.position, again.position) and torch.equal(first.tokens, again.tokens)
    assert torch.equal(first.activation, again.activation)
    assert not torch.equal(first.position, other.position)


def test_held_out_queries_follow_the_policy(model, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(sentences(300, seed=5)))
    config = DecoderTrainingConfig(out=tmp_path / "unused", examples=1, corpus=str(corpus))
    text_model = load_probed(model.source)
    text_model = attach_corpus(text_model, config.corpus, config.max_tokens, config.field)
    queries = held_out_queries(text_model, 2, seed=0, policy="last")
    assert torch.equal(queries.position, last_real_index(text_model, queries.tokens))


def test_an_unknown_policy_is_refused_with_the_allowed_ones(model):
    message = ("positions must be one of uniform, last, low-bos-attention, last-or-least-bos; "
               "got 'median'")
    with pytest.raises(OptionError, match=message):
        stream(model, "median")
    with pytest.raises(OptionError, match=message):
        DecoderTrainingConfig(out="x", examples=1, positions="median")


def test_the_policy_is_recorded_and_kept_on_resume(model, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(sentences(200, seed=5)))
    config = DecoderTrainingConfig(out=tmp_path / "run", examples=16 * 2, batch_size=16,
                                   corpus=str(corpus), max_tokens=24,
                                   positions="low-bos-attention", eval_every_seconds=3600.0,
                                   eval_queries_per_site=1, eval_samples_per_query=2,
                                   decoder_overrides={"d_model": 32, "n_heads": 2, "d_mlp": 64,
                                                      "n_condition_blocks": 1})
    train_decoder(load_probed(model.source), config, show_progress=False)
    manifest = json.loads((tmp_path / "run" / "decoder.json").read_text())
    assert manifest["training"]["positions"] == "low-bos-attention"
    assert DecoderTrainingConfig.resumed(tmp_path / "run").positions == "low-bos-attention"
