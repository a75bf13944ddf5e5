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

from inversionview.reproduce.claims import TRAINED, Claim, Verdict, fmt, fraction, margin, row

#: A component "carries the whole effect" when it reaches this share of it: the paper's
#: "the whole patching effect", with 10 % left for the pairs' noise.
WHOLE = 0.9
#: A head "routes" digits when it alone carries this share of their patching effect ...
ROUTES = 0.8
#: ... and "does not" below this share.
NOT_ROUTED = 0.1
#: The count "retained" at a site: the exact count's contrast (in-ε minus out-of-ε rate of
#: keeping it) at least this. Half the samples' difference: the out-of-ε samples are the
#: decoder's near misses for the same query, so a large contrast is needed to say the site,
#: not the sampler, holds the count.
KEPT = 0.5
#: "No longer encoded": the query letter kept inside ε by at most chance (1/26 letters) plus
#: this, and its |contrast| at most DROPPED. 0.1 over chance allows the few hundred in-ε
#: samples' sampling error; a letter kept by 1.00 inside and 0.95 outside is encoded (both
#: sides keep it), whatever the contrast.
NEAR_CHANCE = 0.1
DROPPED = 0.1
#: The MLP "amplifies" the count: the exact count's contrast rises by at least this from
#: before to after the MLP, and the count is retained after it (KEPT).
AMPLIFIES = 0.2
#: Most in-ε samples: a rate of at least this.
MOST = 0.8
#: A feature kept "with a contrast" on addition: in-ε minus out-of-ε rate at least this. A
#: round bar set before measuring, the same as the case studies' KEEP_CONTRAST; the out-of-ε
#: samples share most of the query's digits, so a digit feature's contrast is smaller than
#: the count's.
CONTRAST = 0.2
#: Completeness: the chance that the decoder gives an in-ε input a higher log-probability than
#: an out-of-ε one (the AUC: "higher probability than most other inputs", Fig. 11), median
#: over the triples. 0.9, not 1.0: the paper notes that inputs near the ε boundary need
#: temperature or noise. The AUC, not the share above the median: a small preimage's members
#: look alike, so a random decoder puts them all above or all below any one cut.
OUTRANKS = 0.9
#: Completeness triples: exact preimage sizes in these strata (upper bounds, exclusive); none
#: over 10 % of the 810,000 inputs, where any sampler of valid inputs finds members.
STRATA = (100, 1_000, 10_000, 81_000)

PAPER = {
    "counting.mlp-amplifies-count":
        "\"MLP layer amplifies count information. Comparing the distances before and after "
        "the MLP, we see that samples with diverging counts become much more distant from the "
        "query activation.\" (Fig. 3a)",
    "counting.a1.0-keeps-count-drops-letter":
        "\"In the next layer (':' exclusively attends to target character ...), the count is "
        "retained but the identity of the target character is no longer encoded ('c', 'm', "
        "etc. instead of 'g')\" (Fig. 3b)",
    "counting.patching-a0.0-a1.0":
        "\"a0.0 at the query letter and a1.0 at ':' carry the whole effect\" (Fig. 4a, 16)",
    "addition.layer0-heads-route-digits":
        "\"Layer-0 heads at '=' route the hundreds digits (F1, S1) and, in another head, the "
        "tens digits (F2, S2)\" (method.md §10; Fig. 31)",
    "addition.x0.mid-unordered-hundreds":
        "\"... symmetrically in the two operands (commutativity)\" (method.md §10)",
    "addition.x0.mid-carry":
        "\"the residual stream after layer-0 attention combines hundreds digits with the carry "
        "from the tens\" (method.md §10)",
    "addition.fuzzy-tens":
        "\"information is often 'fuzzy' (numerically close digits in the preimage)\" "
        "(method.md §10)",
    "addition.completeness":
        "\"Failure of completeness would mean that some inputs result in an activation very "
        "close to the query activation but nonetheless are assigned very small probability. "
        "... all inputs within the ε-preimage are assigned higher probability by the decoder "
        "than most other inputs.\" (Fig. 11)",
}


# ----- counting ---------------------------------------------------------------------------

def judge_mlp_amplifies(before: dict, after: dict) -> Verdict:
    """``before``/``after``: the exact count's row at x0.mid / x0.post at the query letter."""
    if before["contrast"] is None or after["contrast"] is None:
        return Verdict(None, "no query had samples on both sides of ε")
    rise = after["contrast"] - before["contrast"]
    worst = margin((after["contrast"], KEPT), (rise, AMPLIFIES))
    return Verdict(worst >= 0, (
        f"count kept in/out: {fmt(before['inside'])}/{fmt(before['outside'])} before the MLP, "
        f"{fmt(after['inside'])}/{fmt(after['outside'])} after (contrast "
        f"{fmt(before['contrast'])} -> {fmt(after['contrast'])}, {rise:+.2f})"), worst)


def judge_count_not_letter(count: dict, letter: dict, chance: float = 1 / 26) -> Verdict:
    """a1.0 at ':': the count's row and the query letter's row; ``chance``: the rate at
    which a random input has the query's letter."""
    if count["contrast"] is None or letter["contrast"] is None:
        return Verdict(None, "no query had samples on both sides of ε")
    worst = margin((count["contrast"], KEPT), (chance + NEAR_CHANCE, letter["inside"]),
                   (DROPPED, abs(letter["contrast"])))
    return Verdict(worst >= 0, (
        f"count {fmt(count['inside'])}/{fmt(count['outside'])} (contrast "
        f"{fmt(count['contrast'])}); query letter {fmt(letter['inside'])}/"
        f"{fmt(letter['outside'])} (contrast {fmt(letter['contrast'])}; chance "
        f"{chance:.2f})"), worst)


def judge_carry_whole_effect(full: float, first_alone: float, second_alone: float,
                             both: float) -> Verdict:
    """Effects (patched LD - original LD): the contrast run's (``full``), a0.0@query alone,
    a1.0@: alone, and both."""
    shares = [fraction(x, full) for x in (first_alone, second_alone, both)]
    if any(s is None for s in shares):
        return Verdict(False, "the contrast does not change the logit difference", -WHOLE)
    worst = margin(*((s, WHOLE) for s in shares))
    return Verdict(worst >= 0, (
        f"share of the contrast run's effect ({full:+.2f}): a0.0@query alone {shares[0]:.1%}, "
        f"a1.0@: alone {shares[1]:.1%}, both {shares[2]:.1%}"), worst)


def counting_claims(model, decoders: dict, label: str, decoder_label: str, quick: bool,
                    seeds: list[int], out: Path) -> tuple[list[Claim], object]:
    """The counting claims over ``seeds``; ``decoders``: {TRAINED: decoder, CONTROL: a random
    decoder of its shape} (the control only where the claim is about the preimage). Returns
    the claims and the trained decoder's first summary."""
    from inversionview.interpret.summary import plot_summary, summarize, summary_config
    from inversionview.tasks.counting import LETTERS
    from inversionview.verify.patching import (PatchingExperiment, contrast_pairs,
                                               parse_components)
    from inversionview.verify.plot import plot_patching

    queries, n_pairs = (6, 300) if quick else (20, 1000)
    mlp = Claim("counting.mlp-amplifies-count", "counting",
                "The layer-0 MLP amplifies the count at the query letter: inputs with another "
                "count become distant after it.",
                f"At the query letter, the exact count's contrast (in-ε minus out-of-ε rate of "
                f"keeping it, {queries} queries) rises by >= {AMPLIFIES} from x0.mid to x0.post "
                f"and is >= {KEPT} at x0.post.", label, "preimage", decoder_label,
                paper=PAPER["counting.mlp-amplifies-count"],
                why=f"{KEPT}: the count is retained after the MLP, not merely less lost; "
                    f"{AMPLIFIES}: a round bar set before measuring.",
                plot="counting-summary.png")
    letter = Claim("counting.a1.0-keeps-count-drops-letter", "counting",
                   "a1.0 at ':' (attending to the query letter's occurrences) keeps the count "
                   "but no longer encodes which letter was counted.",
                   f"At a1.0@:, the count's contrast >= {KEPT}; the query letter kept by at "
                   f"most chance (1/{len(LETTERS)}) + {NEAR_CHANCE} of the in-ε samples, and its "
                   f"|contrast| <= {DROPPED} ({queries} queries).", label, "preimage",
                   decoder_label, paper=PAPER["counting.a1.0-keeps-count-drops-letter"],
                   why=f"'No longer encoded' means the in-ε samples keep the letter about as "
                       f"often as a random letter would; {NEAR_CHANCE} over chance is slack "
                       "for a few hundred samples.", plot="counting-summary.png")
    patching = Claim("counting.patching-a0.0-a1.0", "counting",
                     "a0.0 at the query letter and a1.0 at ':' carry the whole patching effect; "
                     "a1.0 at ':' depends only on a0.0 at the query letter.",
                     f"Cumulative patching on {n_pairs} flip pairs: a0.0@query alone, a1.0@: "
                     f"alone and both each reach >= {WHOLE:.0%} of the contrast run's change of "
                     "LD.", label, "model", paper=PAPER["counting.patching-a0.0-a1.0"],
                     why=f"{WHOLE:.0%}: 'the whole effect' with 10 % for the pairs' noise.",
                     plot="counting-patching.png")
    runs: dict[str, list] = {mlp.id: [], letter.id: [], patching.id: []}
    first_summary = None
    for seed in seeds:
        for arm, decoder in decoders.items():
            started = time.perf_counter()
            summary = summarize(model, decoder, ["x0.mid", "x0.post", "a1.0"], ["query", ":"],
                                queries, seed, summary_config(256), model_name=label,
                                decoder_name=decoder_label if arm == TRAINED else "random weights")
            if seed == seeds[0]:
                plot_summary(summary, out / ("counting-summary.png" if arm == TRAINED
                                             else "counting-summary-control.png"))
                if arm == TRAINED:
                    first_summary = summary
            spent = (time.perf_counter() - started) / 2
            before, after = (row(summary.cell(site, "query"), "count")
                             for site in ("x0.mid", "x0.post"))
            runs[mlp.id].append(Claim.run(arm, seed, judge_mlp_amplifies(before, after),
                                          {"x0.mid": before, "x0.post": after}, spent))
            count, kept = (row(summary.cell("a1.0", ":"), name)
                           for name in ("count", "query_letter"))
            runs[letter.id].append(Claim.run(
                arm, seed, judge_count_not_letter(count, kept, 1 / len(LETTERS)),
                {"count": count, "query_letter": kept}, spent))

        started = time.perf_counter()
        pairs = contrast_pairs(model.task, n_pairs, "flip", seed=seed)
        report = PatchingExperiment(model, pairs).cumulative(
            parse_components(model, "a0.0@query,a1.0@:"))
        if seed == seeds[0]:
            plot_patching(report, out / "counting-patching.png",
                          title="flip the count: cumulative patching")
        full = report.contrast_ld - report.original_ld
        verdict = judge_carry_whole_effect(full, report.steps[0].effect,
                                           report.steps_right_to_left[0].effect,
                                           report.steps[-1].effect)
        runs[patching.id].append(Claim.run(TRAINED, seed, verdict,
                                           {"report": report.to_record()},
                                           time.perf_counter() - started))
    claims = [claim.settle(runs[claim.id]) for claim in (mlp, letter, patching)]
    return claims, first_summary


# ----- addition ---------------------------------------------------------------------------

def judge_routing(tens_shares: dict[str, float], hundreds_of_tens_head: float,
                  hundreds_of_others: float) -> Verdict:
    """``tens_shares``: each layer-0 head's share alone of the tens (F2,S2) effect on A1; the
    top one is the tens head, whose own share of the hundreds (F1,S1) effect is
    ``hundreds_of_tens_head``; ``hundreds_of_others``: the other heads' share together."""
    head = max(tens_shares, key=tens_shares.get)
    worst = margin((tens_shares[head], ROUTES), (NOT_ROUTED, hundreds_of_tens_head),
                   (hundreds_of_others, ROUTES))
    return Verdict(worst >= 0, (
        f"tens (F2,S2): {head} alone {tens_shares[head]:.1%}; hundreds (F1,S1): {head} alone "
        f"{hundreds_of_tens_head:.1%}, the other heads together {hundreds_of_others:.1%}"), worst)


def _sides(values: dict) -> str:
    return f"{fmt(values['inside'])} of in-ε samples (out {fmt(values['outside'])})"


def judge_unordered_pair(pair: dict, first: dict, second: dict, name: str) -> Verdict:
    """A place's digits kept as a pair in either order but not in order: ``pair`` is the
    ``{F,S}`` row, ``first``/``second`` the ordered digits' rows."""
    if pair["contrast"] is None or first["inside"] is None or second["inside"] is None:
        return Verdict(None, "no query had samples on both sides of ε")
    ordered = max(first["inside"], second["inside"])
    worst = margin((pair["inside"], MOST), (pair["contrast"], CONTRAST),
                   (pair["inside"] - ordered, CONTRAST))
    return Verdict(worst >= 0, (f"{name} kept by {_sides(pair)}; in order only "
                                f"{fmt(first['inside'])} / {fmt(second['inside'])}"), worst)


def judge_carry(carry: dict, tens: dict) -> Verdict:
    """The carry from the tens (C2) is kept, with a contrast, while the tens digit itself
    (F2) is not."""
    if carry["contrast"] is None or tens["inside"] is None:
        return Verdict(None, "no query had samples on both sides of ε")
    worst = margin((carry["inside"], MOST), (carry["contrast"], CONTRAST),
                   (0.5, tens["inside"]))
    return Verdict(worst >= 0, (f"carry C2 kept by {_sides(carry)}; the tens digit F2 by "
                                f"{fmt(tens['inside'])}"), worst)


def judge_fuzzy(exact: dict, close: dict, name: str) -> Verdict:
    """A value kept only approximately: "within one" is kept (its in-ε rate at least
    CONTRAST above the out-of-ε rate) and by at least CONTRAST more of the in-ε samples than
    the exact value is."""
    if exact["inside"] is None or close["inside"] is None or close["contrast"] is None:
        return Verdict(None, "no query had samples on both sides of ε")
    worst = margin((close["contrast"], CONTRAST), (close["inside"] - exact["inside"], CONTRAST))
    return Verdict(worst >= 0, (f"{name} within one: {_sides(close)}; exactly: "
                                f"{fmt(exact['inside'])}"), worst)


def judge_completeness(separations: list[float], recalls: list[float] | None = None,
                       sizes: list[int] | None = None) -> Verdict:
    """``separations``: per triple, the chance that the decoder ranks an in-ε input above an
    out-of-ε one (AUC); ``recalls``: the decoder's recall at budget under free sampling
    (reported, not judged); ``sizes``: the true preimages' sizes."""
    if not separations:
        return Verdict(None, "no triple had inputs on both sides of ε")
    median = statistics.median(separations)
    each = [f"{s:.2f}" + (f" (recall {r:.2f}" if recalls else "")
            + (f", {n:,} in ε)" if sizes else ")" if recalls else "")
            for s, r, n in zip(separations, recalls or [0] * len(separations),
                               sizes or [0] * len(separations))]
    return Verdict(median >= OUTRANKS, (
        f"median AUC (in-ε inputs above out-of-ε ones) {median:.2f} over {len(separations)} "
        f"triples (each: {', '.join(each)})"), median - OUTRANKS)


def addition_claims(model, decoders: dict, label: str, decoder_label: str, quick: bool,
                    seeds: list[int], out: Path) -> tuple[list[Claim], object]:
    """The addition claims over ``seeds`` (the completeness claim apart:
    ``completeness_claim``)."""
    from inversionview.interpret.summary import plot_summary, summarize, summary_config
    from inversionview.verify.patching import (PatchingExperiment, contrast_pairs,
                                               parse_components)

    queries, n_pairs = (6, 300) if quick else (20, 1000)
    heads = [f"a0.{h}" for h in range(model.n_heads)]
    routing = Claim("addition.layer0-heads-route-digits", "addition",
                    "Layer-0 heads at '=' route the hundreds digits (F1, S1) and, in another "
                    "head, the tens digits (F2, S2).",
                    f"Patching each layer-0 head at '=' on {n_pairs} resample pairs (target A1): "
                    f"one head carries >= {ROUTES:.0%} of the tens effect and <= "
                    f"{NOT_ROUTED:.0%} of the hundreds effect; the other heads together >= "
                    f"{ROUTES:.0%} of the hundreds effect.", label, "model",
                    paper=PAPER["addition.layer0-heads-route-digits"],
                    why=f"{ROUTES:.0%} / {NOT_ROUTED:.0%}: 'routes' and 'does not', round bars "
                        "set before measuring.", plot="addition-routing.png")
    unordered = Claim("addition.x0.mid-unordered-hundreds", "addition",
                      "After layer-0 attention at '=' (x0.mid) the hundreds digits are held "
                      "symmetrically in the two operands (commutativity).",
                      f"At x0.mid@=, >= {MOST} of in-ε samples keep {{F1,S1}} in either order, "
                      f"with a contrast >= {CONTRAST}, and at least {CONTRAST} more than keep F1 "
                      f"or S1 in order ({queries} queries).", label, "preimage", decoder_label,
                      paper=PAPER["addition.x0.mid-unordered-hundreds"],
                      why=f"{MOST}: most samples; {CONTRAST}: a round bar for 'kept with a "
                          "contrast', the same in every addition claim.",
                      plot="addition-summary.png")
    carry = Claim("addition.x0.mid-carry", "addition",
                  "x0.mid at '=' combines the hundreds digits with the carry from the tens.",
                  f"At x0.mid@=, >= {MOST} of in-ε samples keep the carry C2, with a contrast "
                  f">= {CONTRAST} (in-ε minus out-of-ε), while <= 0.5 keep the tens digit F2 "
                  f"itself ({queries} queries).", label, "preimage", decoder_label,
                  paper=PAPER["addition.x0.mid-carry"],
                  why="Without the contrast a carry kept by 0.95 of the samples outside ε too "
                      "would count; 0.5 for F2: not kept by most samples.",
                  plot="addition-summary.png")
    fuzzy = Claim("addition.fuzzy-tens", "addition",
                  "Information is often fuzzy: the preimage holds numerically close values, as "
                  "the carry is predicted from an approximate tens sum.",
                  f"At the tens head (found by patching, at '='), the in-ε samples keep F2+S2 "
                  f"within one (contrast >= {CONTRAST}), by at least {CONTRAST} more of them "
                  f"than keep it exactly ({queries} queries).", label, "preimage",
                  decoder_label, paper=PAPER["addition.fuzzy-tens"],
                  why=f"{CONTRAST}: the same bar as every addition contrast.",
                  plot="addition-summary.png")
    runs: dict[str, list] = {c.id: [] for c in (routing, unordered, carry, fuzzy)}
    first_summary = None
    for seed in seeds:
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
        if seed == seeds[0]:
            _plot_shares(shares, heads, out / "addition-routing.png",
                         "each layer-0 head at '=' patched alone (target A1)")
        runs[routing.id].append(Claim.run(
            TRAINED, seed, judge_routing(tens, shares["F1,S1"][tens_head], others_share),
            {"shares": shares, "tens_head": tens_head, "hundreds_of_other_heads": others_share},
            time.perf_counter() - started))

        for arm, decoder in decoders.items():
            started = time.perf_counter()
            summary = summarize(model, decoder, [*heads, "x0.mid"], ["="], queries, seed,
                                summary_config(256), model_name=label,
                                decoder_name=decoder_label if arm == TRAINED else "random weights")
            if seed == seeds[0]:
                plot_summary(summary, out / ("addition-summary.png" if arm == TRAINED
                                             else "addition-summary-control.png"))
                if arm == TRAINED:
                    first_summary = summary
            spent = (time.perf_counter() - started) / 3
            mid = summary.cell("x0.mid", "=")
            rows = {name: row(mid, name) for name in ("{F1,S1}", "F1", "S1")}
            runs[unordered.id].append(Claim.run(arm, seed, judge_unordered_pair(
                rows["{F1,S1}"], rows["F1"], rows["S1"], "{F1,S1}"), rows, spent))
            rows = {name: row(mid, name) for name in ("C2", "F2")}
            runs[carry.id].append(Claim.run(arm, seed, judge_carry(rows["C2"], rows["F2"]),
                                            rows, spent))
            rows = {name: row(summary.cell(tens_head, "="), name)
                    for name in ("F2+S2", "F2+S2 ±1")}
            verdict = judge_fuzzy(rows["F2+S2"], rows["F2+S2 ±1"], f"F2+S2 at {tens_head}@=")
            runs[fuzzy.id].append(Claim.run(arm, seed, verdict, {**rows, "head": tens_head},
                                            spent))
    claims = [c.settle(runs[c.id]) for c in (routing, unordered, carry, fuzzy)]
    return claims, first_summary


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


def completeness_triples(model, decoder, per_stratum: int, seed: int, universe,
                         epsilon: float = 0.1, max_tries: int = 400,
                         strata: tuple[int, ...] = STRATA,
                         sites: list[str] | None = None) -> list[dict]:
    """(query, site, position) triples drawn with ``seed`` whose exact ε-preimage over
    ``universe`` falls in each of ``strata``'s size ranges, ``per_stratum`` of each (fewer when
    ``max_tries`` draws do not find them), with every input's distance. A 1 % subsample of
    the universe skips triples whose preimage is plainly too large before the exact pass."""
    import torch

    from inversionview.preimage.exact import exact_distances
    from inversionview.preimage.query import resolve_query

    generator = torch.Generator().manual_seed(seed)
    task = model.task
    sites = list(sites or decoder.site_names)
    positions = [p for p in task.position_names if p != "A4"]
    probe = universe[torch.randperm(len(universe), generator=generator)[: len(universe) // 100]]
    bounds = (0, *strata)
    chosen: list[list[dict]] = [[] for _ in strata]
    texts = task.sample(max_tries, seed=seed)
    for number, text in enumerate(texts):
        if all(len(found) >= per_stratum for found in chosen):
            break
        site = sites[int(torch.randint(len(sites), (1,), generator=generator))]
        position = positions[int(torch.randint(len(positions), (1,), generator=generator))]
        query = resolve_query(model, decoder, text, site, position)
        guess = float((exact_distances(model, query.site, query.activation, probe)
                       <= epsilon).float().mean()) * len(universe)
        wanted = [i for i, found in enumerate(chosen) if len(found) < per_stratum]
        if guess >= 2 * strata[-1] or not any(guess < 3 * bounds[i + 1] and
                                             guess >= bounds[i] / 3 for i in wanted):
            continue
        distances = exact_distances(model, query.site, query.activation, universe)
        size = int((distances <= epsilon).sum())
        stratum = next((i for i, top in enumerate(strata) if size < top), None)
        if stratum is not None and len(chosen[stratum]) < per_stratum:
            chosen[stratum].append({"query": text, "site": site, "position": position,
                                    "true_in_epsilon": size, "stratum": f"< {strata[stratum]:,}",
                                    "distances": distances, "seed": seed + number})
    return [triple for found in chosen for triple in found]


def completeness_claim(model, decoders: dict, label: str, decoder_label: str, quick: bool,
                       seeds: list[int], out: Path | None = None,
                       strata: tuple[int, ...] = STRATA, sites: list[str] | None = None
                       ) -> Claim:
    """The decoder alone, sampling freely (no search, no grammar mask: the paper's sampler),
    against the exact preimage of (query, site, position) triples with small preimages
    (stratified by size; ``sites``: drawn from these, default every site of the decoder),
    beside a random decoder of the same shape on the same triples."""
    from inversionview.preimage.exact import completeness, separation
    from inversionview.preimage.query import QueryConfig

    per_stratum = 1 if quick else 2
    budget = 1024
    config = QueryConfig(candidates=budget, search=0, constrain=False)
    universe = model.task.enumerate_tokens()
    claim = Claim("addition.completeness", "addition",
                  "The decoder gives every input of the ε-preimage a high probability: the "
                  "paper's completeness check (Fig. 11).",
                  f"Triples (query, site, position) with a small exact preimage ({per_stratum} "
                  f"per size range {', '.join(f'< {b:,}' for b in strata)} of the 810,000 "
                  f"inputs), each input's distance computed exactly: the decoder (no grammar "
                  f"mask) gives an in-ε input a higher log-probability than an out-of-ε one with "
                  f"a chance (AUC) whose median over the triples is >= {OUTRANKS} (up to 2,048 "
                  f"inputs of each side scored), and clearly "
                  f"beats a random decoder of its shape. Reported beside it: the recall at "
                  f"budget of {budget:,} free draws.", label, "decoder", decoder_label,
                  paper=PAPER["addition.completeness"],
                  why=f"{OUTRANKS}: 'all ... higher than most', with slack for the inputs at "
                      "the ε boundary, which the paper raises with temperature and noise; "
                      "small preimages only, since a preimage of most of the space is found by "
                      "any sampler of valid inputs.", plot="addition-completeness.png")
    runs = []
    for seed in seeds:
        started = time.perf_counter()
        triples = completeness_triples(model, decoders[TRAINED], per_stratum, seed, universe,
                                       strata=strata, sites=sites)
        shared = (time.perf_counter() - started) / len(decoders)
        scatters = {}
        for arm, decoder in decoders.items():
            started = time.perf_counter()
            rows, separations, recalls, sizes = [], [], [], []
            for triple in triples:
                report = completeness(model, decoder, triple["query"], triple["site"],
                                      triple["position"], config, seed=triple["seed"],
                                      universe=universe, distances=triple["distances"])
                split = separation(model, decoder, triple["query"], triple["site"],
                                   triple["position"], triple["distances"], config.epsilon,
                                   universe, sample=2048, seed=triple["seed"])
                rows.append({**{k: v for k, v in triple.items() if k != "distances"},
                             "recall_at_budget": report.recall_at_budget,
                             "found": report.found_in_epsilon,
                             "separation": None if split is None else split.to_record()})
                if split is not None:
                    separations.append(split.auc)
                    recalls.append(report.recall_at_budget or 0.0)
                    sizes.append(triple["true_in_epsilon"])
                    scatters.setdefault(arm, []).append((triple, split))
            runs.append(Claim.run(arm, seed, judge_completeness(separations, recalls, sizes),
                                  {"triples": rows},
                                  time.perf_counter() - started + shared))
        if out is not None and seed == seeds[0] and scatters:
            _plot_separations(scatters, config.epsilon, out / "addition-completeness.png")
    return claim.settle(runs)


def _plot_separations(scatters: dict, epsilon: float, path: Path) -> Path:
    """The paper's completeness scatter, a panel per triple: each scored input's distance
    against the decoder's log-probability, a row per decoder (trained, then the control)."""
    from inversionview.figures import pyplot, save_figure

    plt = pyplot()
    arms = list(scatters)
    columns = max(len(v) for v in scatters.values())
    figure, axes = plt.subplots(len(arms), columns, figsize=(3.2 * columns, 2.8 * len(arms)),
                                squeeze=False)
    for r, arm in enumerate(arms):
        for c, (triple, split) in enumerate(scatters[arm]):
            axis = axes[r][c]
            inside = split.distance <= epsilon
            axis.scatter(split.distance[~inside], split.log_prob[~inside], s=2, alpha=0.3,
                         c="#888", rasterized=True)
            axis.scatter(split.distance[inside], split.log_prob[inside], s=3, alpha=0.5,
                         c="#2563eb", rasterized=True)
            axis.axvline(epsilon, color="#c33", linestyle="--", linewidth=0.8)
            axis.set_title(f"{arm}: {triple['site']}@{triple['position']} "
                           f"{triple['true_in_epsilon']:,} in ε\nAUC {split.auc:.2f}", fontsize=7)
            axis.tick_params(labelsize=6)
            if c == 0:
                axis.set_ylabel("decoder log P(input | z_q)", fontsize=7)
            if r == len(arms) - 1:
                axis.set_xlabel("distance to the query", fontsize=7)
        for c in range(len(scatters[arm]), columns):
            axes[r][c].axis("off")
    figure.tight_layout()
    return save_figure(figure, path)


__all__ = ["PAPER", "STRATA", "addition_claims", "completeness_claim", "completeness_triples",
           "counting_claims", "judge_carry",
           "judge_carry_whole_effect", "judge_completeness", "judge_count_not_letter",
           "judge_fuzzy", "judge_mlp_amplifies", "judge_routing", "judge_unordered_pair"]
