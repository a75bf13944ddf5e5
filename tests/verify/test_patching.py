"""Activation patching, mean ablation and DLA on tiny models built in the test (and, where
the checkpoint is present, the paper's counting finding on the authors' model)."""

from __future__ import annotations

import pytest
import torch

from inversionview.probed import build_probed
from inversionview.probed.sites import Site
from inversionview.tasks import TaskInputError
from inversionview.verify.dla import expected_token_rates, head_logit_attribution, logit_attribution
from inversionview.verify.patching import (Component, ContrastPairs, PatchingExperiment,
                                           contrast_pairs, mean_ablation, parse_components,
                                           parse_filter)
from tests.conftest import authors_model_dir


def pairs_of(originals, contrasts, target, kind="given"):
    return ContrastPairs(list(originals), list(contrasts), target, kind)


def test_patching_an_activation_with_itself_changes_nothing_exactly(tiny_model):
    texts = tiny_model.task.sample(16, seed=0)
    target = tiny_model.task.targets[0]
    experiment = PatchingExperiment(tiny_model, pairs_of(texts, texts, target))
    clean = tiny_model.processed.logits(experiment.original_tokens)
    every_site = [s for s in tiny_model.sites] + [Site(1, "resid_pre"), Site(0, "attn_out")]
    position = tiny_model.task.default_query[1]
    components = [Component(site, position) for site in every_site]
    patched = tiny_model.processed.run_patched(experiment.original_tokens, experiment.patches(components))
    assert torch.equal(patched, clean)


def test_patching_the_whole_residual_stream_gives_the_contrast_run(tiny_model):
    task = tiny_model.task
    originals = task.sample(8, seed=1)
    contrasts = task.sample(8, seed=2)
    tokens, contrast_tokens = tiny_model.tokens(originals), tiny_model.tokens(contrasts)
    last = Site(tiny_model.n_layers - 1, "resid_post")
    where = torch.ones(tokens.shape, dtype=torch.bool)
    values = tiny_model.run_sites(contrast_tokens, [last])[last]
    patched = tiny_model.processed.run_patched(tokens, {last: (where, values)})
    torch.testing.assert_close(patched, tiny_model.processed.logits(contrast_tokens), rtol=0, atol=1e-5)


def test_patching_every_head_of_a_layer_equals_patching_its_attention_output(tiny_model):
    task = tiny_model.task
    tokens = tiny_model.tokens(task.sample(8, seed=3))
    contrast_tokens = tiny_model.tokens(task.sample(8, seed=4))
    heads = [Site(0, "head", h) for h in range(tiny_model.n_heads)]
    found = tiny_model.run_sites(contrast_tokens, heads + [Site(0, "attn_out")])
    where = torch.ones(tokens.shape, dtype=torch.bool)
    by_heads = tiny_model.processed.run_patched(tokens, {h: (where, found[h]) for h in heads})
    by_output = tiny_model.processed.run_patched(tokens, {Site(0, "attn_out"): (where, found[Site(0, "attn_out")])})
    torch.testing.assert_close(by_heads, by_output, rtol=0, atol=1e-5)
    # and the patched layer's output is the contrast run's: the next layer sees it
    assert not torch.allclose(by_heads, tiny_model.processed.logits(tokens), atol=1e-3)


def test_logit_difference_is_original_minus_contrast_on_a_constructed_model():
    # Every block writes nothing and the final LayerNorm outputs its bias e_0, so the logit
    # of token t is wte[t, 0] at every position, whatever the input.
    model = build_probed("counting", seed=0, n_embd=8, n_head=1, n_inner=16)
    state = model.hf_model.state_dict()
    with torch.no_grad():
        for name, tensor in state.items():
            if name.endswith(("attn.c_proj.weight", "attn.c_proj.bias", "mlp.c_proj.weight", "mlp.c_proj.bias")):
                tensor.zero_()
        state["transformer.ln_f.weight"].zero_()
        state["transformer.ln_f.bias"].zero_()
        state["transformer.ln_f.bias"][0] = 1.0
        wte = state["transformer.wte.weight"]
        wte[:, 0] = 0.0
        wte[model.task.vocab.id_of("3"), 0] = 5.0
        wte[model.task.vocab.id_of("4"), 0] = 2.0
    model.refresh()
    experiment = PatchingExperiment(model, pairs_of(["Baaabbc|a:3E"], ["Baaaabc|a:4E"], "count"))
    assert experiment.original_ld.item() == pytest.approx(3.0, abs=1e-5)  # 5 - 2
    # the same LD read on the contrast run: this model ignores its input, so also 5 - 2
    assert experiment.contrast_ld.item() == pytest.approx(3.0, abs=1e-5)
    report = experiment.each([Component(model.site("a0.0"), "query")])
    assert report.steps[0].effect == pytest.approx(0.0, abs=1e-5)  # nothing flows


def test_cumulative_report_has_both_orders(tiny_model):
    task = tiny_model.task
    kind = task.contrast_kinds[0]
    places = ("F1", "S1") if task.name == "addition" else ()
    pairs = contrast_pairs(task, 12, kind, seed=0, places=places)
    experiment = PatchingExperiment(tiny_model, pairs)
    components = parse_components(tiny_model, "a0.0@=,x1.mid@=" if task.name == "addition"
                                  else "a0.0@query,a1.0@:")
    report = experiment.cumulative(components)
    assert [s.components for s in report.steps] == [[components[0].name], [c.name for c in components]]
    assert [s.components for s in report.steps_right_to_left] == [[components[1].name], [c.name for c in components[::-1]]]
    # both orders end with every component patched: the same LD
    assert report.steps[-1].patched_ld == pytest.approx(report.steps_right_to_left[-1].patched_ld, abs=1e-4)
    for step in report.steps:
        assert step.effect == pytest.approx(step.patched_ld - report.original_ld, abs=1e-5)


def test_counting_finding_on_the_authors_model():
    """method.md §9: a0.0 at the query letter and a1.0 at ':' carry the whole effect, and
    a1.0 at ':' depends only on a0.0 at the query letter."""
    from inversionview.probed import load_probed

    model = load_probed(authors_model_dir("counting"), "counting")
    experiment = PatchingExperiment(model, contrast_pairs(model.task, 200, "flip", seed=0))
    report = experiment.cumulative(parse_components(model, "a0.0@query,a1.0@:"))
    full = report.contrast_ld - report.original_ld
    assert report.original_ld > 10 and report.contrast_ld < -10
    assert report.steps[0].effect / full > 0.9  # a0.0 alone flips LD
    assert report.steps_right_to_left[0].effect / full > 0.95  # so does a1.0 alone
    after = report.steps_right_to_left[1].effect - report.steps_right_to_left[0].effect
    assert abs(after / full) < 0.01  # a0.0 adds nothing once a1.0 is patched


def test_components_and_filters_are_checked(tiny_model):
    task = tiny_model.task
    with pytest.raises(TaskInputError, match="SITE@POSITION"):
        parse_components(tiny_model, "a0.0")
    with pytest.raises(TaskInputError, match="unknown position"):
        parse_components(tiny_model, "a0.0@nowhere")
    with pytest.raises(Exception, match="a9.0|site"):
        parse_components(tiny_model, "a9.0@" + task.position_names[0])
    with pytest.raises(TaskInputError, match="ATTRIBUTE OP INTEGER"):
        parse_filter(task, "count = 3")
    name = task.attribute_names[0]
    keep = parse_filter(task, f"{name}>=2 and {name}<4")
    assert keep({name: 3}) and not keep({name: 4}) and not keep({})


def test_filter_selects_the_originals():
    from inversionview.tasks import get_task

    task = get_task("addition")
    pairs = contrast_pairs(task, 50, "resample", target="A2", seed=0, places=("F2", "S2"), filter="A1==1")
    assert all(task.attributes(t)["A1"] == 1 for t in pairs.originals)
    assert pairs.filtered_out > 0


def test_mean_ablation_of_a_component(tiny_model):
    task = tiny_model.task
    texts, reference = task.sample(32, seed=5), task.sample(64, seed=6)
    position = task.default_query[1]
    rows = mean_ablation(tiny_model, texts, Component(Site(0, "resid_post"), position), task.targets[:1], reference)
    assert rows[0]["n"] == 32 and rows[0]["kl"] >= 0
    # ablating with the mean of the inputs themselves at BOS (always the same) changes nothing
    same = mean_ablation(tiny_model, texts, Component(Site(0, "resid_post"), 0), task.targets[:1], reference)
    assert same[0]["kl"] == pytest.approx(0.0, abs=1e-6) and same[0]["logit_drop"] == pytest.approx(0.0, abs=1e-5)


def test_logit_attributions_of_the_residual_pieces_sum_to_the_logits(tiny_model):
    task = tiny_model.task
    texts = task.sample(4, seed=7)
    tokens = tiny_model.tokens(texts)
    layers = tiny_model.n_layers
    sites = [Site(0, "resid_pre"), Site(layers - 1, "resid_post")]
    for layer in range(layers):
        sites += [Site(layer, "head", h) for h in range(tiny_model.n_heads)] + [Site(layer, "mlp_out")]
    found = tiny_model.run_sites(tokens, sites)
    final = found[Site(layers - 1, "resid_post")][:, 3]
    pieces = [found[Site(0, "resid_pre")][:, 3]]
    for layer in range(layers):
        pieces += [found[Site(layer, "head", h)][:, 3] for h in range(tiny_model.n_heads)]
        pieces += [tiny_model.processed.b_O[layer].expand(len(texts), -1), found[Site(layer, "mlp_out")][:, 3]]
    total = sum(logit_attribution(tiny_model, piece, final) for piece in pieces) + tiny_model.processed.b_U
    torch.testing.assert_close(total, tiny_model.processed.logits(tokens)[:, 3], rtol=1e-4, atol=1e-4)
    head = Component(Site(0, "head", 0), 3)
    torch.testing.assert_close(head_logit_attribution(tiny_model, texts, head),
                               logit_attribution(tiny_model, found[Site(0, "head", 0)][:, 3], final))
    with pytest.raises(Exception, match="not a head"):
        head_logit_attribution(tiny_model, texts, Component(Site(0, "mlp_out"), 3))
    rates = expected_token_rates(tiny_model, texts, head, [t[1] for t in texts], k=tiny_model.task.vocab.size)
    assert rates["top_k_promoted_rate"] == 1.0  # k = the whole vocabulary
