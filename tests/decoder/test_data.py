"""The on-the-fly training stream: activations, positions, sites, rebalancing."""

import torch

from inversionview.decoder.data import ActivationStream, site_probabilities
from inversionview.probed import build_probed


def _stream(task="counting", batch=512, seed=0, **kwargs):
    model = build_probed(task, seed=0, n_embd=16, n_head=1 if task == "counting" else 4, n_inner=32)
    return model, ActivationStream(model, batch, torch.Generator().manual_seed(seed), **kwargs)


def test_each_activation_is_its_site_at_its_position():
    model, stream = _stream("addition")
    batch = stream.next_batch()
    for row in range(0, 512, 37):
        site = model.sites[batch.site_id[row]]
        expected = model.activations(batch.tokens[row:row + 1], site)[0, batch.position[row]]
        assert torch.allclose(batch.activation[row], expected, atol=1e-6)


def test_positions_are_queryable_ones_or_bos():
    model, stream = _stream("counting", batch=4000)
    batch = stream.next_batch()
    allowed = model.task.query_position_mask(batch.tokens)
    at_bos = batch.position == 0
    assert allowed[torch.arange(4000), batch.position][~at_bos].all()
    assert 15 <= at_bos.sum() <= 70  # 1 % of 4000 = 40
    # counting: '|', query letter and ':' are each drawn about a third of the time
    labels = [model.task.position_label(model.task.decode(t), int(p))
              for t, p in zip(batch.tokens[~at_bos][:900], batch.position[~at_bos][:900])]
    for name in ("|", "query", ":"):
        assert 240 < labels.count(name) < 360


def test_stream_is_seeded():
    _, a = _stream(seed=4)
    _, b = _stream(seed=4)
    first, second = a.next_batch(), b.next_batch()
    assert torch.equal(first.tokens, second.tokens) and torch.equal(first.activation, second.activation)


def test_rebalancing_changes_the_site_mix():
    rates = torch.tensor([0.99, 0.9, 0.5, 0.1, 0.05, 0.8, 0.7, 0.6, 0.3])
    assert torch.allclose(site_probabilities(rates, 0.0), torch.full((9,), 1 / 9))
    probabilities = site_probabilities(rates, rebalance=5.0)
    assert probabilities.argmax() == 4 and probabilities.argmin() == 0
    _, stream = _stream(batch=20_000)
    stream.set_site_probabilities(probabilities)
    counts = torch.bincount(stream.next_batch().site_id, minlength=9).float() / 20_000
    assert torch.allclose(counts, probabilities, atol=0.015)
    assert counts[4] > 2 * counts[0]


def test_a_fixed_list_of_texts_is_cycled():
    texts = ["Baabbc|a:2E", "Bxyzz|z:2E", "Bmnop|m:1E"]
    _, stream = _stream(batch=5, texts=texts)
    seen = [stream.task.decode(t) for _ in range(3) for t in stream.next_batch().tokens]
    assert sorted(set(seen)) == sorted(texts)
    assert all(seen.count(text) == 5 for text in texts)  # 15 draws = 5 full passes


def test_site_statistics():
    model, stream = _stream("addition")
    means, stds = stream.site_statistics(256)
    assert means.shape == stds.shape == (13,)
    assert (stds > 0).all()


def test_site_statistics_read_in_pieces_equal_one_read_of_everything():
    """Memory stays bounded (GPT-2 small's 193 sites on 2,048 inputs would be 40 GB at once)
    and the figures are those of all activations at the query positions together."""
    model, stream = _stream("addition", seed=4)
    _, pieces = _stream("addition", seed=4)
    means, stds = pieces.site_statistics(256, budget_bytes=100_000)  # a few inputs x 1 site
    tokens = stream.task.sample_tokens(256, stream.generator)
    allowed = stream.task.query_position_mask(tokens)
    activations = model.run_sites(tokens, stream.sites)
    expected_means = torch.stack([activations[site][allowed].mean() for site in stream.sites])
    expected_stds = torch.stack([activations[site][allowed].std() for site in stream.sites])
    assert torch.allclose(means, expected_means, atol=1e-6)
    assert torch.allclose(stds, expected_stds, rtol=1e-5)


def test_length_buckets_cut_padding_and_keep_every_example():
    model, plain = _stream("counting", batch=64, seed=3)
    _, bucketed = _stream("counting", batch=64, seed=3, bucket_batches=8)
    pad = model.task.vocab.pad_id

    def padding(batches):
        lengths = [(b.tokens != pad).sum(1) for b in batches]
        return sum(int((l.max() - l).sum()) for l in lengths) / sum(int(l.sum()) for l in lengths)

    plain_batches = [plain.next_batch() for _ in range(8)]
    bucketed_batches = [bucketed.next_batch() for _ in range(8)]
    assert padding(bucketed_batches) < 0.25 * padding(plain_batches)
    assert all(b.tokens.shape[0] == 64 for b in bucketed_batches)
    for batch in bucketed_batches[:2]:  # activations still belong to their own rows
        for row in range(0, 64, 13):
            site = model.sites[batch.site_id[row]]
            expected = model.activations(batch.tokens[row:row + 1], site)[0, batch.position[row]]
            assert torch.allclose(batch.activation[row], expected, atol=1e-6)


def test_restored_stream_continues_exactly_mid_pool():
    _, stream = _stream("counting", batch=32, seed=5, bucket_batches=4)
    for _ in range(6):  # one pool and a half
        stream.next_batch()
    state, record = stream.state()
    stream.set_site_probabilities(torch.eye(9)[2])  # takes effect from the next pool
    expected = [stream.next_batch() for _ in range(5)]
    _, fresh = _stream("counting", batch=32, seed=99, bucket_batches=4)
    fresh.restore(state, {**record, "site_probabilities": torch.eye(9)[2].tolist()})
    for want in expected:
        got = fresh.next_batch()
        assert torch.equal(want.tokens, got.tokens) and torch.equal(want.site_id, got.site_id)
    assert (expected[-1].site_id == 2).all()  # the new pool used the new site mix


def test_a_pool_read_in_pieces_equals_one_read():
    """Memory stays bounded on large models: the rows of a pool are read a few at a time,
    with the same examples as one read of the whole pool."""
    _, whole = _stream("addition", batch=48, seed=6)
    _, pieces = _stream("addition", batch=48, seed=6)
    pieces._row_chunks = lambda tokens, n_sites: ActivationStream._row_chunks(
        pieces, tokens, n_sites, budget_bytes=1)  # one row at a time
    assert len(pieces._row_chunks(torch.zeros(48, 8, dtype=torch.long), 3)) == 48
    for _ in range(2):
        a, b = whole.next_batch(), pieces.next_batch()
        assert torch.equal(a.tokens, b.tokens) and torch.equal(a.site_id, b.site_id)
        assert torch.equal(a.position, b.position)
        assert torch.allclose(a.activation, b.activation, atol=1e-5)
