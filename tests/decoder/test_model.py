"""The decoder model: masking, the activation slot, KV-cache generation, conditioning."""

import pytest
import torch

from inversionview.decoder import Decoder, DecoderConfig


def tiny_decoder(seed=0, **overrides):
    torch.manual_seed(seed)
    config = DecoderConfig(vocab_size=15, n_ctx=14, activation_dim=8, n_sites=3, d_model=32,
                           n_layers=2, n_heads=4, d_mlp=64, dropout=0.0, n_condition_blocks=2)
    for key, value in overrides.items():
        setattr(config, key, value)
    return Decoder(config).eval()


def _batch(b=3, p=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 15, (b, p), generator=g), torch.randn(b, 8, generator=g),
            torch.randint(0, 3, (b,), generator=g))


def test_shapes_and_size_of_the_paper_configuration():
    decoder = tiny_decoder()
    tokens, activation, site = _batch()
    assert decoder(tokens, activation, site).shape == (3, 10, 15)
    paper = Decoder(DecoderConfig(vocab_size=40, n_ctx=33, activation_dim=64, n_sites=9))
    # The paper's toy-task decoder has about 1.7 M parameters in its transformer.
    transformer = sum(p.numel() for name, p in paper.named_parameters()
                      if not name.startswith("conditioning"))
    assert 1.5e6 < transformer < 1.8e6


def test_a_token_never_sees_a_later_token():
    decoder = tiny_decoder()
    tokens, activation, site = _batch()
    logits = decoder(tokens, activation, site)
    changed = tokens.clone()
    changed[:, 6:] = (changed[:, 6:] + 1) % 15
    logits_changed = decoder(changed, activation, site)
    assert torch.allclose(logits[:, :6], logits_changed[:, :6], atol=1e-6)
    assert not torch.allclose(logits[:, 6:], logits_changed[:, 6:], atol=1e-3)


def test_the_activation_slot_is_visible_to_every_position():
    decoder = tiny_decoder()
    tokens, activation, site = _batch()
    logits = decoder(tokens, activation, site)
    other = decoder(tokens, activation + 1.0, site)
    per_position = (logits - other).abs().amax(dim=(0, 2))
    assert (per_position > 1e-4).all()  # position 0 included: only the slot can differ there


def test_kv_cache_generation_equals_full_recomputation():
    decoder = tiny_decoder()
    _, activation, site = _batch(b=5)
    generator = torch.Generator().manual_seed(3)
    sampled = decoder.sample(activation, site, bos_id=10, eos_id=13, pad_id=14,
                             temperature=1.0, generator=generator)
    # Recompute each step's distribution without a cache, for the whole batch, and replay
    # the draws (one uniform per row per step, inverted through the CDF).
    replay = torch.Generator().manual_seed(3)
    tokens = torch.full_like(sampled, 14)
    tokens[:, 0] = 10
    finished = torch.zeros(5, dtype=torch.bool)
    for position in range(1, sampled.shape[1]):
        logits = decoder(tokens[:, :position], activation, site)[:, -1]
        logits[:, 14] = float("-inf")  # PAD is never drawn
        cdf = torch.softmax(logits, -1).cumsum(-1)
        uniform = torch.rand(5, generator=replay)
        drawn = torch.searchsorted(cdf, (uniform * cdf[:, -1])[:, None], right=True).squeeze(1)
        tokens[:, position] = torch.where(finished, 14, drawn)
        finished |= drawn == 13
        if finished.all():
            break
    assert torch.equal(sampled, tokens)
    # PAD appears only after EOS
    after_eos = (sampled == 13).long().cumsum(1) - (sampled == 13).long() > 0
    assert torch.equal(sampled == 14, after_eos)


def test_sampling_is_seeded_and_temperature_per_sample():
    decoder = tiny_decoder()
    _, activation, site = _batch(b=4)
    def draw(seed, temperature):
        return decoder.sample(activation, site, 10, 13, 14, temperature,
                              torch.Generator().manual_seed(seed))
    assert torch.equal(draw(1, 1.0), draw(1, 1.0))
    assert not torch.equal(draw(1, 1.0), draw(2, 1.0))
    mixed = draw(1, torch.tensor([0.5, 1.0, 2.0, 1.0]))
    assert mixed.shape == (4, 14)
    cold = draw(5, 1e-4)
    assert torch.equal(cold, draw(6, 1e-4))  # temperature -> 0 is greedy


def test_site_embedding_initialised_from_statistics():
    means, stds = torch.tensor([0.0, 5.0, -2.0]), torch.tensor([1.0, 0.1, 3.0])
    noise = torch.randn((3, 8), generator=torch.Generator().manual_seed(0))
    paper = tiny_decoder(normalize_activation=False)
    paper.conditioning.init_site_embedding(means, stds, torch.Generator().manual_seed(0))
    assert torch.equal(paper.conditioning.site_embedding.weight, means[:, None] + stds[:, None] * noise)
    normalized = tiny_decoder()
    normalized.conditioning.init_site_embedding(means, stds, torch.Generator().manual_seed(0))
    assert torch.equal(normalized.conditioning.site_embedding.weight, (means / stds)[:, None] + noise)
    assert torch.equal(normalized.conditioning.activation_scale, stds)


def test_per_example_norm_hands_the_conditioning_direction_and_log_norm():
    decoder = tiny_decoder(per_example_norm=True)
    decoder.conditioning.activation_scale.copy_(torch.tensor([1.0, 2.0, 4.0]))
    seen = []
    decoder.conditioning.blocks.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    tokens, activation, _ = _batch(b=4)
    site = torch.tensor([0, 1, 2, 1])
    decoder.conditioning(activation, site)
    decoder.conditioning(3.0 * activation, site)
    first, tripled = seen
    assert first.shape == (4, 2 * 8 + 1)
    # The direction, scaled to norm sqrt(d), is the same for z and 3z; the site's part too.
    assert torch.allclose(first[:, :8].norm(dim=-1), torch.full((4,), 8 ** 0.5))
    assert torch.allclose(first[:, :16], tripled[:, :16], atol=1e-6)
    # The last input is log(||z / site scale|| / sqrt(d)): it moves by log 3.
    expected = torch.log((activation / decoder.conditioning.activation_scale[site][:, None]).norm(dim=-1) / 8 ** 0.5)
    assert torch.allclose(first[:, -1], expected, atol=1e-6)
    assert torch.allclose(tripled[:, -1] - first[:, -1], torch.full((4,), float(torch.log(torch.tensor(3.0)))), atol=1e-5)
    assert not torch.allclose(decoder(tokens, activation, site), decoder(tokens, 3.0 * activation, site))


def test_whitening_gives_each_site_identity_covariance():
    decoder = tiny_decoder(whiten_activation=True)
    g = torch.Generator().manual_seed(0)
    # Site 1's variance sits in one direction, 10,000x the others': whitened, all are equal.
    mixing = torch.randn(8, 8, generator=g) * torch.tensor([100.0] + [1.0] * 7)[:, None]
    values = torch.randn(20000, 8, generator=g) @ mixing + 5.0
    means = torch.stack([torch.zeros(8), values.mean(0), torch.zeros(8)])
    # The covariance in float64, as ActivationStream.site_covariances gives it: in float32 the
    # smallest eigenvalues (condition number 1.4e5) are off by up to 1.4 %, machine-dependent.
    covariances = torch.stack([torch.eye(8), torch.cov(values.double().T), torch.eye(8)]).double()
    with pytest.raises(ValueError, match="float64"):
        decoder.conditioning.init_whitening(means, covariances.float(), floor=1e-6)
    decoder.conditioning.init_whitening(means, covariances, floor=1e-6)
    seen = []
    decoder.conditioning.blocks.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    decoder.conditioning(values, torch.ones(len(values), dtype=torch.long))
    whitened = seen[0][:, :8]
    assert torch.allclose(whitened.mean(0), torch.zeros(8), atol=1e-3)
    # whitened, a direction of variance λ has λ / (λ + δ), δ the floor x the mean eigenvalue:
    # identity up to 1.7 % here (smallest λ 0.61, δ 0.011), and exactly this up to float32's
    # rounding in the forward pass
    variances, vectors = torch.linalg.eigh(covariances[1])
    shrunk = variances / (variances + 1e-6 * variances.mean())
    expected = vectors @ torch.diag(shrunk) @ vectors.T
    assert torch.allclose(torch.cov(whitened.double().T), expected, atol=1e-4)
    assert torch.allclose(expected, torch.eye(8, dtype=torch.float64), atol=2e-2)
    # The site embedding starts on the whitened scale, whatever the raw statistics.
    decoder.conditioning.init_site_embedding(torch.tensor([5.0, 5.0, 5.0]), torch.tensor([9.0, 9.0, 9.0]),
                                             torch.Generator().manual_seed(0))
    assert decoder.conditioning.site_embedding.weight.abs().mean() < 2.0


def test_constrained_sampling_draws_only_what_the_grammar_allows_and_scores_it():
    """Addition's vocabulary is the tiny decoder's (15 tokens): with the task's grammar every
    draw is an input of the task, even from an untrained decoder that writes noise, and the
    returned log-probability is that of the masked distribution it was drawn from."""
    from inversionview.tasks import get_task

    task = get_task("addition")
    decoder = tiny_decoder()
    n = 64
    activation = torch.randn(n, 8, generator=torch.Generator().manual_seed(3))
    site = torch.zeros(n, dtype=torch.long)
    vocab = task.vocab
    tokens, log_probs = decoder.sample(activation, site, vocab.bos_id, vocab.eos_id, vocab.pad_id,
                                       1.0, torch.Generator().manual_seed(4), log_probs_at=(1.0,),
                                       constraint=task.next_token_mask)
    assert task.in_space(tokens).all()
    free = decoder.sample(activation, site, vocab.bos_id, vocab.eos_id, vocab.pad_id, 1.0,
                          torch.Generator().manual_seed(4))
    assert not task.in_space(free).all()  # untrained: the constraint did the work
    logits = decoder(tokens[:, :-1], activation, site)
    expected = torch.zeros(n)
    for position in range(1, tokens.shape[1]):
        prefix = tokens[:, :position]
        running = (prefix != vocab.eos_id).all(dim=1) & (tokens[:, position] != vocab.pad_id)
        masked = logits[:, position - 1].masked_fill(~task.next_token_mask(prefix), float("-inf"))
        step = torch.log_softmax(masked, dim=-1).gather(1, tokens[:, position, None]).squeeze(1)
        expected += torch.where(running, step, torch.zeros(n))
    assert torch.allclose(log_probs[:, 0], expected, atol=1e-4)
