"""The paper's counting and addition findings (method.md §10), measured on a probed model and
its decoder: readings from per-site summaries, causal claims from activation patching,
completeness against the exact preimage.

Thresholds are the module's constants; every ``judge_*`` takes the figures and returns
(passed, one-line figure), so the criteria are tested apart from the measurement.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from inversionview.reproduce.claims import Claim, fmt, fraction, row

#: A component "carries the whole effect" when it reaches this share of it.
WHOLE = 0.9
#: A head "routes" digits when it alone carries this share of their patching effect ...
ROUTES = 0.8
#: ... and "does not" below this share.
NOT_ROUTED = 0.1
#: A feature the samples "keep": contrast (in-ε minus out-of-ε) at least this.
KEPT = 0.5
#: A feature "dropped": |contrast| at most this.
DROPPED = 0.1
#: The MLP "amplifies" the count: the exact count's contrast rises by at least this.
AMPLIFIES = 0.2
#: Most in-ε samples: a rate of at least this.
MOST = 0.8
#: Completeness: the decoder alone finds at least this share of what its budget allows
#: (median over the triples), as the paper's Fig. 7 implies (every in-ε input gets high
#: probability).
RECALL = 0.5


# ----- counting ---------------------------------------------------------------------------

def judge_mlp_amplifies(before: dict, after: dict) -> tuple[bool, str]:
    """``before``/``after``: the exact count's row at x0.mid / x0.post at the query letter."""
    if before["contrast"] is None or after["contrast"] is None:
        return False, "no query had samples on both sides of ε"
    rise = after["contrast"] - before["contrast"]
    return rise >= AMPLIFIES, (f"count kept in/out: {fmt(before['inside'])}/{fmt(before['outside'])} "
                               f"before the MLP, {fmt(after['inside'])}/{fmt(after['outside'])} after "
                               f"(contrast {fmt(before['contrast'])} -> {fmt(after['contrast'])}, "
                               f"+{fmt(rise)})")


def judge_count_not_letter(count: dict, letter: dict) -> tuple[bool, str]:
    """a1.0 at ':': the count's row and the query letter's row."""
    if count["contrast"] is None or letter["contrast"] is None:
        return False, "no query had samples on both sides of ε"
    passed = count["contrast"] >= KEPT and abs(letter["contrast"]) <= DROPPED
    return passed, (f"count {fmt(count['inside'])}/{fmt(count['outside'])} (contrast "
                    f"{fmt(count['contrast'])}); query letter {fmt(letter['inside'])}/"
                    f"{fmt(letter['outside'])} (contrast {fmt(letter['contrast'])})")


def judge_carry_whole_effect(full: float, first_alone: float, second_alone: float,
                             both: float) -> tuple[bool, str]:
    """Effects (patched LD - original LD): the contrast run's (``full``), a0.0@query alone,
    a1.0@: alone, and both."""
    shares = [fraction(x, full) for x in (first_alone, second_alone, both)]
    if any(s is None for s in shares):
        return False, "the contrast does not change the logit difference"
    passed = all(s >= WHOLE for s in shares)
    return passed, (f"share of the contrast run's effect ({full:+.2f}): a0.0@query alone "
                    f"{shares[0]:.1%}, a1.0@: alone {shares[1]:.1%}, both {shares[2]:.1%}")


def counting_claims(model, decoder, label: str, decoder_label: str, quick: bool, seed: int,
                    out: Path) -> list[Claim]:
    from inversionview.interpret.summary import plot_summary, summarize, summary_config
    from inversionview.verify.patching import (PatchingExperiment, contrast_pairs,
                                               parse_components)
    from inversionview.verify.plot import plot_patching

    queries, n_pairs = (6, 300) if quick else (20, 1000)
    claims = []
    started = time.perf_counter()
    summary = summarize(model, decoder, ["x0.mid", "x0.post", "a1.0"], ["query", ":"], queries,
                        seed, summary_config(256), model_name=label, decoder_name=decoder_label)
    plot_summary(summary, out / "counting-summary.png")
    spent = (time.perf_counter() - started) / 2

    before, after = (row(summary.cell(site, "query"), "count") for site in ("x0.mid", "x0.post"))
    claim = Claim("counting.mlp-amplifies-count", "counting",
                  "The layer-0 MLP amplifies the count at the query letter: inputs with another "
                  "count become distant after it.",
                  f"At the query letter, the exact count's contrast (in-ε minus out-of-ε rate of "
                  f"keeping it, {queries} queries) rises by >= {AMPLIFIES} from x0.mid to x0.post.",
                  label, decoder_label, plot="counting-summary.png", seconds=spent)
    claims.append(claim.decide(*judge_mlp_amplifies(before, after),
                               {"x0.mid": before, "x0.post": after}))

    count, letter = (row(summary.cell("a1.0", ":"), name) for name in ("count", "query_letter"))
    claim = Claim("counting.a1.0-keeps-count-drops-letter", "counting",
                  "a1.0 at ':' (attending to the query letter's occurrences) keeps the count "
                  "but no longer encodes which letter was counted.",
                  f"At a1.0@:, the count's contrast >= {KEPT} and the query letter's "
                  f"|contrast| <= {DROPPED} ({queries} queries).",
                  label, decoder_label, plot="counting-summary.png", seconds=spent)
    claims.append(claim.decide(*judge_count_not_letter(count, letter),
                               {"count": count, "query_letter": letter}))

    started = time.perf_counter()
    pairs = contrast_pairs(model.task, n_pairs, "flip", seed=seed)
    experiment = PatchingExperiment(model, pairs)
    components = parse_components(model, "a0.0@query,a1.0@:")
    report = experiment.cumulative(components)
    plot_patching(report, out / "counting-patching.png", title="flip the count: cumulative patching")
    full = report.contrast_ld - report.original_ld
    first_alone = report.steps[0].effect
    second_alone = report.steps_right_to_left[0].effect
    both = report.steps[-1].effect
    claim = Claim("counting.patching-a0.0-a1.0", "counting",
                  "a0.0 at the query letter and a1.0 at ':' carry the whole patching effect; "
                  "a1.0 at ':' depends only on a0.0 at the query letter.",
                  f"Cumulative patching on {n_pairs} flip pairs: a0.0@query alone, a1.0@: alone "
                  f"and both each reach >= {WHOLE:.0%} of the contrast run's change of LD.",
                  label, plot="counting-patching.png", seconds=time.perf_counter() - started)
    claims.append(claim.decide(*judge_carry_whole_effect(full, first_alone, second_alone, both),
                               {"report": report.to_record()}))
    return claims, summary


# ----- addition ---------------------------------------------------------------------------

def judge_routing(tens_shares: dict[str, float], hundreds_of_tens_head: float,
                  hundreds_of_others: float) -> tuple[bool, str]:
    """``tens_shares``: each layer-0 head's share alone of the tens (F2,S2) effect on A1; the
    top one is the tens head, whose own share of the hundreds (F1,S1) effect is
    ``hundreds_of_tens_head``; ``hundreds_of_others``: the other heads' share together."""
    head = max(tens_shares, key=tens_shares.get)
    passed = (tens_shares[head] >= ROUTES and hundreds_of_tens_head <= NOT_ROUTED
              and hundreds_of_others >= ROUTES)
    return passed, (f"tens (F2,S2): {head} alone {tens_shares[head]:.1%}; hundreds (F1,S1): "
                    f"{head} alone {hundreds_of_tens_head:.1%}, the other heads together "
                    f"{hundreds_of_others:.1%}")


def judge_unordered_pair(pair: dict, first: dict, second: dict, name: str) -> tuple[bool, str]:
    """A place's digits kept as a pair in either order but not in order: ``pair`` is the
    ``{F,S}`` row, ``first``/``second`` the ordered digits' rows."""
    if pair["inside"] is None or first["inside"] is None or second["inside"] is None:
        return False, "no query had samples on both sides of ε"
    ordered = max(first["inside"], second["inside"])
    passed = pair["inside"] >= MOST and pair["inside"] - ordered >= 0.2
    return passed, (f"{name} kept by {fmt(pair['inside'])} of in-ε samples (out "
                    f"{fmt(pair['outside'])}); in order only {fmt(first['inside'])} / "
                    f"{fmt(second['inside'])}")


def judge_carry(carry: dict, tens: dict) -> tuple[bool, str]:
    """The carry from the tens (C2) is kept while the tens digit itself (F2) is not."""
    if carry["inside"] is None or tens["inside"] is None:
        return False, "no query had samples on both sides of ε"
    passed = carry["inside"] >= MOST and tens["inside"] <= 0.5
    return passed, (f"carry C2 kept by {fmt(carry['inside'])} of in-ε samples (out "
                    f"{fmt(carry['outside'])}); the tens digit F2 by {fmt(tens['inside'])}")


def judge_fuzzy(exact: dict, close: dict, name: str) -> tuple[bool, str]:
    """A value kept only approximately: "within one" is kept (its in-ε rate at least 0.2
    above the out-of-ε rate) and by at least 0.2 more of the in-ε samples than the exact
    value is."""
    if exact["inside"] is None or close["inside"] is None or close["contrast"] is None:
        return False, "no query had samples on both sides of ε"
    passed = close["contrast"] >= 0.2 and close["inside"] - exact["inside"] >= 0.2
    return passed, (f"{name} within one: {fmt(close['inside'])} of in-ε samples (out "
                    f"{fmt(close['outside'])}); exactly: {fmt(exact['inside'])}")


def judge_completeness(recalls: list[float], sizes: list[int] | None = None
                       ) -> tuple[bool, str]:
    """``recalls``: recall at budget per triple; ``sizes``: the true preimages' sizes."""
    if not recalls:
        return False, "no triple had a non-empty preimage"
    median = statistics.median(recalls)
    each = [f"{r:.2f}" + (f" of {n:,}" if sizes else "") for r, n in
            zip(recalls, sizes or [0] * len(recalls))]
    return median >= RECALL, (f"median recall at budget {median:.2f} over {len(recalls)} triples "
                              f"(each: {', '.join(each)} true in-ε inputs)")


def addition_claims(model, decoder, label: str, decoder_label: str, quick: bool, seed: int,
                    out: Path) -> list[Claim]:
    from inversionview.interpret.summary import plot_summary, summarize, summary_config
    from inversionview.verify.patching import (PatchingExperiment, contrast_pairs,
                                               parse_components)

    queries, n_pairs = (6, 300) if quick else (20, 1000)
    claims = []
    heads = [f"a0.{h}" for h in range(model.n_heads)]

    started = time.perf_counter()
    shares: dict[str, dict[str, float]] = {}
    experiments = {}
    for places in ("F1,S1", "F2,S2"):
        pairs = contrast_pairs(model.task, n_pairs, "resample", target="A1", seed=seed,
                               places=tuple(places.split(",")))
        experiments[places] = experiment = PatchingExperiment(model, pairs)
        full = (experiment.contrast_ld - experiment.original_ld).mean().item()
        shares[places] = {"full": full}
        for head in heads:
            effect = (experiment.patched_ld(parse_components(model, f"{head}@="))
                      - experiment.original_ld).mean().item()
            shares[places][head] = fraction(effect, full) or 0.0
    tens = {h: shares["F2,S2"][h] for h in heads}
    tens_head = max(tens, key=tens.get)
    others = ",".join(f"{h}@=" for h in heads if h != tens_head)
    experiment = experiments["F1,S1"]
    effect = (experiment.patched_ld(parse_components(model, others))
              - experiment.original_ld).mean().item()
    others_share = fraction(effect, shares["F1,S1"]["full"]) or 0.0
    _plot_shares(shares, heads, out / "addition-routing.png",
                 "each layer-0 head at '=' patched alone (target A1)")
    claim = Claim("addition.layer0-heads-route-digits", "addition",
                  "Layer-0 heads at '=' route the hundreds digits (F1, S1) and, in another head, "
                  "the tens digits (F2, S2).",
                  f"Patching each layer-0 head at '=' on {n_pairs} resample pairs (target A1): "
                  f"one head carries >= {ROUTES:.0%} of the tens effect and <= {NOT_ROUTED:.0%} "
                  f"of the hundreds effect; the other heads together >= {ROUTES:.0%} of the "
                  "hundreds effect.", label, plot="addition-routing.png",
                  seconds=time.perf_counter() - started)
    claims.append(claim.decide(*judge_routing(tens, shares["F1,S1"][tens_head], others_share),
                               {"shares": shares, "tens_head": tens_head,
                                "hundreds_of_other_heads": others_share}))

    started = time.perf_counter()
    summary = summarize(model, decoder, [*heads, "x0.mid"], ["="], queries, seed,
                        summary_config(256), model_name=label, decoder_name=decoder_label)
    plot_summary(summary, out / "addition-summary.png")
    spent = (time.perf_counter() - started) / 3
    mid = summary.cell("x0.mid", "=")
    claim = Claim("addition.x0.mid-unordered-hundreds", "addition",
                  "After layer-0 attention at '=' (x0.mid) the hundreds digits are held "
                  "symmetrically in the two operands (commutativity).",
                  f"At x0.mid@=, >= {MOST} of in-ε samples keep {{F1,S1}} in either order, at "
                  f"least 0.2 more than keep F1 or S1 in order ({queries} queries).",
                  label, decoder_label, plot="addition-summary.png", seconds=spent)
    rows = {name: row(mid, name) for name in ("{F1,S1}", "F1", "S1")}
    claims.append(claim.decide(*judge_unordered_pair(rows["{F1,S1}"], rows["F1"], rows["S1"],
                                                     "{F1,S1}"), rows))

    claim = Claim("addition.x0.mid-carry", "addition",
                  "x0.mid at '=' combines the hundreds digits with the carry from the tens.",
                  f"At x0.mid@=, >= {MOST} of in-ε samples keep the carry C2 while <= 0.5 keep the "
                  f"tens digit F2 itself ({queries} queries).",
                  label, decoder_label, plot="addition-summary.png", seconds=spent)
    rows = {name: row(mid, name) for name in ("C2", "F2")}
    claims.append(claim.decide(*judge_carry(rows["C2"], rows["F2"]), rows))

    tens_cell = summary.cell(tens_head, "=")
    claim = Claim("addition.fuzzy-tens", "addition",
                  "Information is often fuzzy: the preimage holds numerically close values, "
                  "as the carry is predicted from an approximate tens sum.",
                  f"At the tens head ({tens_head}@=, found by patching), the in-ε samples keep "
                  "F2+S2 within one (contrast >= 0.2), by at least 0.2 more of them than keep "
                  "it exactly "
                  f"({queries} queries).", label, decoder_label, plot="addition-summary.png",
                  seconds=spent)
    rows = {name: row(tens_cell, name) for name in ("F2+S2", "F2+S2 ±1")}
    claims.append(claim.decide(*judge_fuzzy(rows["F2+S2"], rows["F2+S2 ±1"], "F2+S2"), rows))
    return claims, summary


def _plot_shares(shares: dict, heads: list[str], path: Path, title: str) -> Path:
    """Bars: each head's share alone of the hundreds' and of the tens' patching effect."""
    from inversionview.figures import pyplot, save_figure

    plt = pyplot()
    figure, axis = plt.subplots(figsize=(6, 3.2))
    width = 0.38
    for offset, (places, name) in enumerate((("F1,S1", "hundreds (F1, S1)"),
                                             ("F2,S2", "tens (F2, S2)"))):
        axis.bar([i + (offset - 0.5) * width for i in range(len(heads))],
                 [shares[places][h] for h in heads], width, label=name)
    axis.set_xticks(range(len(heads)), heads)
    axis.set_ylabel("share of the contrast run's effect")
    axis.axhline(0, color="grey", linewidth=0.5)
    axis.legend(fontsize=8)
    axis.set_title(title, fontsize=8)
    return save_figure(figure, path)


def completeness_claim(model, decoder, label: str, decoder_label: str, quick: bool, seed: int,
                       out: Path | None = None) -> Claim:
    """The decoder alone (no search, the paper's sampler) against the exact preimage of
    random (query, site, position) triples over all 810,000 inputs."""
    import torch

    from inversionview.preimage.exact import completeness, plot_completeness
    from inversionview.preimage.query import QueryConfig

    n = 3 if quick else 8
    started = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    sites = list(decoder.site_names)
    positions = [p for p in model.task.position_names if p != "A4"]
    texts = model.task.sample(n, seed=seed)
    universe = model.task.enumerate_tokens()
    config = QueryConfig(candidates=1024, search=0)
    triples, recalls, sizes = [], [], []
    smallest = None  # the triple with the smallest preimage: the scatter plot's
    for number, text in enumerate(texts):
        site = sites[int(torch.randint(len(sites), (1,), generator=generator))]
        position = positions[int(torch.randint(len(positions), (1,), generator=generator))]
        report = completeness(model, decoder, text, site, position, config, seed=seed + number,
                              universe=universe)
        triples.append({"query": text, "site": site, "position": position,
                        "true_in_epsilon": report.true_in_epsilon,
                        "found": report.found_in_epsilon,
                        "recall_at_budget": report.recall_at_budget})
        if report.recall_at_budget is not None:
            recalls.append(report.recall_at_budget)
            sizes.append(report.true_in_epsilon)
            if smallest is None or report.true_in_epsilon < smallest.true_in_epsilon:
                smallest = report
    plot = None
    if out is not None and smallest is not None:
        plot_completeness(smallest, model, decoder, universe, out / "addition-completeness.png",
                          seed=seed)
        plot = "addition-completeness.png"
    claim = Claim("addition.completeness", "addition",
                  "The decoder gives every input of the ε-preimage a high probability: sampling "
                  "finds the preimage (the paper's completeness check, Fig. 7).",
                  f"On {n} random (query, site, position) triples, the decoder alone (1,024 "
                  f"draws, no search) finds a median >= {RECALL} of the exact in-ε inputs its "
                  "budget could find (all 810,000 inputs scored); the plot: the triple with the "
                  "smallest preimage.", label, decoder_label, plot=plot,
                  seconds=time.perf_counter() - started)
    return claim.decide(*judge_completeness(recalls, sizes), {"triples": triples})


__all__ = ["addition_claims", "completeness_claim", "counting_claims", "judge_carry",
           "judge_carry_whole_effect", "judge_completeness", "judge_count_not_letter",
           "judge_fuzzy", "judge_mlp_amplifies", "judge_routing", "judge_unordered_pair"]
