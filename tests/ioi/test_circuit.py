"""The IOI circuit finder on a GPT-2 built by hand, whose heads' roles are known, and the
evaluation and patching on a tiny random model."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from inversionview.ioi.circuit import (classify, copying_scores, evaluate_ioi, head_scores,
                                       patching_effects)
from inversionview.probed import load_probed
from inversionview.text.tokenizer import HFTokenizer

TOKEN, POSITION, PREVIOUS = slice(0, 64), 64, slice(112, 176)  # residual stream layout
D_MODEL, N_HEADS, D_HEAD, N_POSITIONS = 256, 4, 64, 48
SHARP = 2.0  # query/key weight: attention logits of ~20 on a match


def constructed_model(directory, tokenizer_dir, seed: int = 0):
    """Layer 0: head 0 attends to the previous token and writes its identity into PREVIOUS;
    head 1 attends to earlier copies of the current token (duplicate token). Layer 1: head 0
    attends to the token after an earlier copy of the current token (induction, through
    head 0.0's output); head 1 copies the tokens it reads to the logits (a copying OV).
    Heads 2 and 3 of each layer write nothing. MLPs write nothing; embeddings are tied."""
    import shutil

    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer_dir / name, directory / name)
    vocab = len(HFTokenizer.from_directory(tokenizer_dir, 10**6).hf)
    config = GPT2Config(vocab_size=vocab, n_positions=N_POSITIONS, n_embd=D_MODEL, n_layer=2,
                        n_head=N_HEADS, n_inner=4 * D_MODEL, bos_token_id=0, eos_token_id=0,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
        for block in model.transformer.h:
            block.ln_1.weight.fill_(1.0)
            block.ln_2.weight.fill_(1.0)
        model.transformer.ln_f.weight.fill_(1.0)
        tokens = torch.randn(vocab, 64, generator=generator)
        tokens -= tokens.mean(dim=1, keepdim=True)  # LayerNorm's centring then adds nothing
        model.transformer.wte.weight[:, TOKEN] = tokens / tokens.norm(dim=1, keepdim=True)
        model.transformer.wpe.weight[:, POSITION:POSITION + N_POSITIONS] = torch.eye(N_POSITIONS)
        eye = torch.eye(64)

        def qkv(layer: int, head: int):
            weight = model.transformer.h[layer].attn.c_attn.weight  # [d, 3d]: x @ W
            start = head * D_HEAD
            return (weight[:, start:start + D_HEAD],
                    weight[:, D_MODEL + start:D_MODEL + start + D_HEAD],
                    weight[:, 2 * D_MODEL + start:2 * D_MODEL + start + D_HEAD])

        def write(layer: int, head: int, into: slice, scale: float):
            out = model.transformer.h[layer].attn.c_proj.weight  # [d, d]: z @ W
            out[head * D_HEAD:head * D_HEAD + 64, into] = scale * eye

        # a0.0: previous token; writes the previous token's identity (about unit norm)
        q, k, v = qkv(0, 0)
        for p in range(N_POSITIONS - 1):
            q[POSITION + p + 1, p] = SHARP
            k[POSITION + p, p] = SHARP
        v[TOKEN, :64] = eye
        write(0, 0, PREVIOUS, 1 / 9.0)
        # a0.1: duplicate token (the same token earlier, or itself)
        q, k, _ = qkv(0, 1)
        q[TOKEN, :64] = SHARP * eye
        k[TOKEN, :64] = SHARP * eye
        # a1.0: induction: this token against each position's previous token
        q, k, _ = qkv(1, 0)
        q[TOKEN, :64] = SHARP * eye
        k[PREVIOUS, :64] = SHARP * eye
        # a1.1: copying: reads tokens, writes them to the token subspace (the unembedding)
        _, _, v = qkv(1, 1)
        v[TOKEN, :64] = eye
        write(1, 1, TOKEN, 1.0)
    model.save_pretrained(directory)
    (directory / "inversionview.json").write_text(json.dumps({"kind": "probed-model",
                                                              "task": "ioi"}))
    return directory


@pytest.fixture(scope="module")
def constructed(ioi_lm_dir, tmp_path_factory):
    return load_probed(constructed_model(tmp_path_factory.mktemp("constructed"), ioi_lm_dir))


@pytest.fixture(scope="module")
def constructed_scores(constructed):
    return head_scores(constructed, n=40, seed=1)


def score(scores, name):
    return next(h for h in scores["heads"] if h.name == name)


def test_the_finder_names_the_roles_built_in(constructed_scores):
    roles = classify(constructed_scores["heads"])
    assert roles["previous token"] == ["a0.0"]
    assert roles["duplicate token"] == ["a0.1"]
    assert roles["induction"] == ["a1.0"]
    previous, duplicate = score(constructed_scores, "a0.0"), score(constructed_scores, "a0.1")
    induction = score(constructed_scores, "a1.0")
    assert previous.previous > 0.95
    # a repeated token sees two copies of itself: its first copy and itself
    assert 0.45 < duplicate.duplicate < 0.55
    assert induction.induction > 0.9
    # on IOI prompts: at S2 the induction head reads S1+1, the duplicate head S1 (and S2)
    assert induction.attn_s2_s1_next > 0.9 and 0.45 < duplicate.attn_s2_s1 < 0.55
    # heads with no query/key weights attend uniformly: no role
    uniform = score(constructed_scores, "a0.2")
    assert uniform.previous < 0.3 and uniform.duplicate < 0.2 and uniform.induction < 0.2


def test_copying_score_finds_the_copying_head(constructed, constructed_scores):
    copying, negative = copying_scores(constructed, sorted(constructed.task.prompts.name_ids.values()))
    assert copying[1, 1] == 1.0 and negative[1, 1] == 0.0
    assert score(constructed_scores, "a1.1").copying == 1.0
    # heads that write nothing copy nothing (all logits equal: no name is singled out)
    assert copying[1, 2] < 0.2 and copying[0, 3] < 0.2


def test_patching_effects_follow_what_each_head_writes(constructed_scores):
    for name in ("a0.2", "a0.3", "a1.2", "a1.3", "a1.0"):  # they write nothing
        head = score(constructed_scores, name)
        assert head.patch_all == pytest.approx(0, abs=1e-6)
        assert head.patch_end == pytest.approx(0, abs=1e-6)
    # the copying head alone reaches the logits, and reads every name it sees: the repeated
    # S gets more of it than IO (LD < 0), and ABC's third name takes that away
    assert constructed_scores["clean_logit_difference"] < -1
    copying = score(constructed_scores, "a1.1")
    assert copying.patch_all == pytest.approx(1.0, abs=1e-4)
    assert copying.patch_end == pytest.approx(1.0, abs=1e-4)


def test_patching_fractions_on_a_tiny_model(ioi_lm_dir):
    model = load_probed(ioi_lm_dir)
    prompts = model.task.prompts.prompts(16, seed=2)
    first = patching_effects(model, prompts, seed=3)
    assert first["patch_all"].shape == (model.n_layers, model.n_heads)
    again = patching_effects(model, prompts, seed=3)
    assert torch.equal(first["patch_all"], again["patch_all"])
    assert math.isfinite(first["clean_logit_difference"])


def test_evaluation_reads_io_and_s_logits(ioi_lm_dir):
    model = load_probed(ioi_lm_dir)
    report = evaluate_ioi(model, n=40, seed=0, split="eval")
    assert report["n"] == 40 and set(report["by_order"]) <= {"ABBA", "BABA"}
    assert sum(row["n"] for row in report["by_template"].values()) == 40
    prompts = model.task.prompts.prompts(40, 0, "eval")
    logits = model.processed_logits(model.tokens([prompts[0].text]))[0]
    end = prompts[0].positions["END"]
    io, s = (model.task.prompts.name_ids[n] for n in (prompts[0].io, prompts[0].s))
    difference = float(logits[end, io] - logits[end, s])
    again = evaluate_ioi(model, n=1, seed=0, split="eval")
    assert again["logit_difference"] == pytest.approx(difference, abs=1e-5)


def test_the_fast_patching_path_equals_the_whole_patched_run(ioi_lm_dir):
    """Starting at the head's layer and reading two logits gives the full run's LD."""
    from inversionview.ioi.circuit import _patched_difference
    from inversionview.probed.sites import Site

    model = load_probed(ioi_lm_dir)
    prompts = model.task.prompts.prompts(6, seed=4)
    tokens = model.tokens([p.text for p in prompts])
    rows = torch.arange(6)
    ends = torch.tensor([p.positions["END"] for p in prompts])
    io = torch.tensor([model.task.prompts.name_ids[p.io] for p in prompts])
    s = torch.tensor([model.task.prompts.name_ids[p.s] for p in prompts])

    def difference(logits):
        at = logits[rows, ends]
        return float((at[rows, io] - at[rows, s]).mean())

    fast = _patched_difference(model, tokens, rows, ends, io, s, difference)
    noise = torch.randn(*tokens.shape, model.d_model, generator=torch.Generator().manual_seed(0))
    where = torch.rand(tokens.shape, generator=torch.Generator().manual_seed(1)) < 0.5
    for site in (Site(0, "head", 1), Site(1, "head", 3)):
        slow = difference(model.run_patched(tokens, {site: (where, noise)}))
        assert fast(site, where, noise) == pytest.approx(slow, abs=1e-4)


def test_attribution_patching_estimates_activation_patching(ioi_lm_dir):
    model = load_probed(ioi_lm_dir)
    prompts = model.task.prompts.prompts(12, seed=5)
    exact = patching_effects(model, prompts, seed=6)
    estimate = patching_effects(model, prompts, seed=6, method="attribution")
    assert estimate["clean_logit_difference"] == exact["clean_logit_difference"]
    for key in ("patch_all", "patch_end"):
        pair = torch.stack([exact[key].flatten(), estimate[key].flatten()])
        assert torch.corrcoef(pair)[0, 1] > 0.95, pair
    with pytest.raises(Exception, match="unknown patching method 'path'"):
        patching_effects(model, prompts, seed=6, method="path")


def test_dla_table_reads_what_the_copying_head_writes(constructed):
    """a1.1 copies every token it reads at END (uniform attention), so S, seen twice, is the
    name it promotes most, mostly: each token's logit also gets the dot products of its
    random 64-d embedding with the prompt's ~25 other tokens' (sd about 0.6, against S's 2
    and IO's 1), so another name wins now and then, and IO (1) is often not in the top 30
    of 700 tokens."""
    from inversionview.ioi.readings import dla_table

    rows = dla_table(constructed, [("a1.1", "END", "s"), ("a1.1", "END", "io"),
                                   ("a0.2", "END", "s")], n=60, seed=2)
    s_row, io_row, silent = rows
    assert s_row["top30_promoted"] >= 0.9 and s_row["top30_promoted_first_name"] >= 0.75
    assert io_row["top30_promoted_first_name"] <= 0.1
    assert io_row["top30_promoted"] < s_row["top30_promoted"]
    # the spaced S token gets +2 and is never suppressed; its bare form ("Mary" beside
    # " Mary"), which counts too, is not in the prompt and gets only the noise, so it falls
    # among the 30 most suppressed at about the chance rate 30 / vocabulary (4 %)
    chance = 30 / constructed.hf_model.config.vocab_size
    assert s_row["top30_suppressed"] <= 3 * chance
    assert silent["top30_promoted_first_name"] < 0.2  # writes nothing: no name stands out


def test_edit_table_finds_what_the_previous_token_head_writes(constructed):
    """a0.0 writes the identity of the token before its position: at S1+1 that is S (S1), so
    an edit of S moves its output there (two random unit tokens: distance about 1.4) and an
    edit of IO, the object or the place does not."""
    from inversionview.ioi.readings import EDITS, edit_table

    rows = edit_table(constructed, [("a0.0", "S1+1"), ("a1.1", "END")], n=12, seed=3)
    previous, copying = rows
    assert (previous["site"], previous["position"], previous["n"]) == ("a0.0", "S1+1", 12)
    assert set(previous["edits"]) == set(EDITS)
    assert previous["edits"]["s"]["median"] > 0.8 and previous["edits"]["s"]["inside"] == 0
    for kind in ("io", "object", "place"):
        assert previous["edits"][kind]["median"] < 0.01 and previous["edits"][kind]["inside"] == 1
    # a1.1 copies every token of the prompt at END: every name edit moves it
    assert copying["edits"]["io"]["inside"] < 0.5 and copying["edits"]["s"]["inside"] < 0.5
    assert rows == edit_table(constructed, [("a0.0", "S1+1"), ("a1.1", "END")], n=12, seed=3)


def test_read_heads_is_seeded_and_counts_its_samples(tmp_path):
    from tiny_lms import make_ioi_lm

    from inversionview.decoder.train import DecoderTrainingConfig, train_decoder
    from inversionview.decoder.store import load_decoder
    from inversionview.ioi.readings import READ_ATTRIBUTES, read_heads

    model = load_probed(make_ioi_lm(tmp_path / "lm"))
    train_decoder(model, DecoderTrainingConfig(out=tmp_path / "decoder", examples=128,
                                               eval_every_seconds=10_000,
                                               eval_queries_per_site=1, eval_samples_per_query=2),
                  show_progress=False)
    decoder, _ = load_decoder(tmp_path / "decoder", model)
    first = read_heads(model, decoder, [("a1.0", "S2"), ("a0.1", "END")], queries=2,
                       candidates=16, seed=4)
    assert first == read_heads(model, decoder, [("a1.0", "S2"), ("a0.1", "END")], queries=2,
                               candidates=16, seed=4)
    for row in first:
        assert set(row["attributes"]) == set(READ_ATTRIBUTES)
        assert 0 <= row["queries_with_inside"] <= 2
        for counts in row["attributes"].values():
            assert counts["n_inside"] <= row["distinct_in_epsilon"]


def test_roles_read_the_patching_sign_the_scores_use(constructed_scores):
    """A patching score of 1 is a head that alone moves the logit difference as far as the ABC
    run (the copying head above); a name mover must carry part of that drop, a negative name
    mover work against it."""
    from inversionview.ioi.circuit import HeadScore

    def head(index, **scores):
        base = dict(attn_end_io=0.0, attn_end_s1=0.0, attn_end_s2=0.0, attn_s2_s1=0.0,
                    attn_s2_s1_next=0.0, duplicate=0.0, induction=0.0, previous=0.0,
                    copying=0.0, negative_copying=0.0, patch_all=0.0, patch_end=0.0)
        return HeadScore(3, index, **{**base, **scores})

    heads = [head(0, attn_end_io=0.6, copying=0.9, patch_end=0.4, patch_all=0.4),
             head(1, attn_end_io=0.5, negative_copying=0.8, patch_end=-0.2, patch_all=-0.2),
             head(2, attn_end_s2=0.7, patch_all=0.3),
             head(3, attn_end_io=0.6, copying=0.9, patch_end=-0.4)]  # works against: no mover
    roles = classify(heads)
    assert roles["name mover"] == ["a3.0"] and roles["negative name mover"] == ["a3.1"]
    assert roles["s-inhibition"] == ["a3.2"]
    assert score(constructed_scores, "a1.1").patch_all > 0.99  # the same sign, measured


def test_direct_effects_send_the_patch_only_to_the_logits(constructed):
    """The copying head a1.1 writes straight into the unembedding: nearly all of its effect
    at END is direct; the heads that write nothing have neither."""
    from inversionview.ioi.circuit import direct_effects

    effects = direct_effects(constructed, n=24, seed=1)
    assert effects["direct"].shape == effects["total"].shape == (2, 4)
    assert effects["total"][1, 1] == pytest.approx(1.0, abs=1e-4)
    assert 0.8 < effects["direct"][1, 1] < 1.2
    for layer, head in ((0, 2), (0, 3), (1, 0), (1, 2), (1, 3)):
        assert effects["direct"][layer, head] == pytest.approx(0, abs=1e-6)
    assert torch.equal(effects["direct"], direct_effects(constructed, n=24, seed=1)["direct"])


def test_read_members_counts_members_and_what_they_keep_of_the_names(ioi_lm_dir):
    from inversionview.decoder.train import build_decoder
    from inversionview.ioi.readings import MEMBER_NAMES, ROLE_POSITIONS, read_members

    model = load_probed(ioi_lm_dir)
    decoder = build_decoder(model, 0, d_model=32, n_heads=2, d_mlp=64, n_condition_blocks=2).eval()
    targets = [("a1.0", "END"), ("a0.1", "S1+1")]
    def timeless(rows):
        return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]

    first = read_members(model, decoder, targets, queries=2, candidates=16, search=64, seed=2)
    assert timeless(first) == timeless(read_members(model, decoder, targets, queries=2,
                                                    candidates=16, search=64, seed=2))
    for row, (site, position) in zip(first, targets):
        assert (row["site"], row["position"], row["queries"], row["search"]) == (site, position, 2, 64)
        assert len(row["members"]) == 2 and row["distinct_in_epsilon"] == sum(row["members"])
        assert row["queries_with_inside"] == sum(m > 0 for m in row["members"])
        assert set(row["attributes"]) == set(MEMBER_NAMES)
        for values in row["attributes"].values():
            for side in ("inside", "outside", "stays"):
                assert values[side] is None or 0.0 <= values[side] <= 1.0
    assert set(ROLE_POSITIONS.values()) <= {"S1+1", "S2", "END"}
