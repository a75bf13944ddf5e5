"""Distance maths on constructed activations, and PAD/EOS masking."""

import math

import torch

from inversionview.probed.distance import candidate_distances, position_distances
from inversionview.probed import build_probed


def test_euclidean_is_normalised_by_the_query_norm_only():
    query = torch.tensor([3.0, 4.0])  # norm 5
    candidates = torch.tensor([[[3.0, 4.0], [0.0, 0.0], [6.0, 8.0], [3.0, 5.0]]])
    assert torch.allclose(position_distances(query, candidates), torch.tensor([[0.0, 1.0, 1.0, 0.2]]))


def test_cosine_distance():
    query = torch.tensor([1.0, 0.0])
    candidates = torch.tensor([[[2.0, 0.0], [0.0, 3.0], [-1.0, 0.0], [1.0, 1.0]]])
    expected = torch.tensor([[0.0, 1.0, 2.0, 1.0 - 1.0 / math.sqrt(2.0)]])
    assert torch.allclose(position_distances(query, candidates, "cosine"), expected, atol=1e-7)


def test_pad_and_eos_are_excluded_and_bos_is_not():
    model = build_probed("addition", seed=0, n_embd=16, n_head=4, n_inner=32)
    tokens = model.tokens(["B123+456=579E", "B999+999=1998E"])
    site = model.site("x0.pre")
    # The query is candidate 0's own activation at its EOS: the exact match must not count.
    eos_activation = model.activations(tokens, site)[0, 12]
    distance, best, per_position = candidate_distances(model, site, eos_activation, tokens)
    assert torch.isinf(per_position[0, 12:]).all() and torch.isinf(per_position[1, 13:]).all()
    assert torch.isfinite(per_position[0, :12]).all()
    assert distance[0] > 0
    # Querying BOS's own activation finds it at position 0, distance 0.
    bos_activation = model.activations(tokens, site)[0, 0]
    distance, best, _ = candidate_distances(model, site, bos_activation, tokens)
    assert torch.equal(best, torch.tensor([0, 0])) and torch.allclose(distance, torch.zeros(2))


def test_fixed_position_mode():
    model = build_probed("addition", seed=0, n_embd=16, n_head=4, n_inner=32)
    tokens = model.tokens(["B123+456=579E", "B124+456=580E"])
    site = model.site("x0.mid")
    query = model.activations(tokens, site)[0, 3]
    distance, best, per_position = candidate_distances(model, site, query, tokens, fixed_position=3)
    assert torch.equal(best, torch.tensor([3, 3]))
    assert distance[0] == 0 and distance[1] > 0
    assert torch.equal(distance, per_position[:, 3])


def test_candidates_scored_in_pieces_score_as_one_batch(monkeypatch):
    """Memory stays bounded on large models: candidates go through the model a few at a time
    (1,024 through GPT-2 small at once peaked at 9 GB), with the same distances."""
    from inversionview.probed import distance as module
    from inversionview.probed import build_probed

    model = build_probed("counting", seed=0, n_embd=16, n_head=1, n_inner=32)
    tokens = model.task.sample_tokens(40, torch.Generator().manual_seed(0))
    query = model.activations(tokens[:1], "a1.0", 5)[0]
    whole = module.candidate_distances(model, model.site("a1.0"), query, tokens)
    monkeypatch.setattr(module, "_row_chunks", lambda model, tokens: [
        slice(start, start + 3) for start in range(0, tokens.shape[0], 3)])
    pieces = module.candidate_distances(model, model.site("a1.0"), query, tokens)
    for a, b in zip(whole, pieces):
        assert torch.allclose(a.float(), b.float(), atol=1e-6)
    assert len(module._row_chunks.__call__(model, tokens)) == 14
