"""The paper's IOI and factual-recall findings (method.md §10) as claims, measured on a
language model and its decoder with the case studies' own machinery (``ioi``, ``factual``).

On the bundled models these are this toolkit's small LMs trained here, not GPT-2: a claim
says which model it ran on, and a head the decoder cannot read (no query with a sample in ε)
is reported as such rather than counted either way.
"""

from __future__ import annotations

import time
from typing import Any, Collection

from inversionview.reproduce.claims import TRAINED, Claim, Verdict, fmt

#: A name or attribute the in-ε samples "keep": inside rate and contrast at least these.
KEEP_INSIDE, KEEP_CONTRAST = 0.5, 0.2
#: ... or, for a name read from the members of a text query (``ioi.readings.read_members``),
#: inside rate at least KEEP_INSIDE and its substitutions leaving ε: at most this share of
#: them stays inside. The search's inputs outside ε are mostly edits of members, which keep
#: the names too, so the contrast alone understates a name that every substitution moves.
SUBSTITUTIONS_STAY = 0.25
#: DLA "fails" on a head when the expected name is among its 30 most promoted or suppressed
#: tokens in fewer than this share of the prompts.
DLA_FAILS = 0.5
#: An attribute moved "beyond the subject": kept by this much more of the in-ε samples than
#: the subject itself is.
BEYOND_SUBJECT = 0.2
#: A head is read at a position only when at least this share of its queries had a sample
#: in ε: one query's one sample decides nothing.
READABLE = 0.5
#: The IOI claim: at least this share of the classified heads, an unreadable head counting
#: against it, keep their role's name where the role acts.
MOST_HEADS = 0.8
#: Factual: an attribute two random subjects share with a chance over this is coarse (region:
#: five values, 0.21) and left out; so are attributes that name the subject's own entity
#: (a country's capital, a capital's country: each value belongs to one country and its
#: capital).
COARSE = 0.2
#: Factual: the readings registered on the selection split, tested on the other.
REGISTERED = 3

PAPER = {
    "ioi.heads-read-their-names":
        "\"Name Mover Heads (e.g. 9.9 at 'to') encode the IO name; Duplicate Token Heads and "
        "Induction Heads encode the S name or only its position; S-Inhibition heads carry the "
        "S name and position.\" (method.md §10; §3.3)",
    "ioi.dla-misses-inversionview-reads":
        "\"Except the first row, all heads do not directly connect to final output ..., the "
        "results show DLA cannot decode their information.\" (Table 4)",
    "factual.heads-move-attributes":
        "\"upper-layer heads at the last subject token and at the end move attributes of the "
        "subject ..., often independently of the asked relation\" (method.md §10; §3.4)",
}


def readable(reading: dict[str, Any]) -> bool:
    return reading["queries_with_inside"] >= max(1, READABLE * reading["queries"])


def kept_margin(values: dict[str, Any] | None) -> float | None:
    """How far ``values`` clear "kept" (>= 0: kept); None when nothing was read."""
    if values is None or values.get("inside") is None:
        return None
    moved = [values["inside"] - values["outside"] - KEEP_CONTRAST
             if values.get("outside") is not None else None,
             SUBSTITUTIONS_STAY - values["stays"] if values.get("stays") is not None else None]
    moved = [m for m in moved if m is not None]
    if not moved:
        return None
    return min(values["inside"] - KEEP_INSIDE, max(moved))


def kept(values: dict[str, Any] | None) -> bool:
    found = kept_margin(values)
    return found is not None and found >= 0


def over_arms(decoders: dict, seeds: list[int]):
    """(seed, arm, decoder, first) for every seed and decoder, the trained one first."""
    for seed in seeds:
        for arm, decoder in decoders.items():
            yield seed, arm, decoder, seed == seeds[0] and arm == TRAINED


# ----- IOI --------------------------------------------------------------------------------

EXPECTED = {"name mover": "io", "negative name mover": "io", "s-inhibition": "s",
            "induction": "s", "duplicate token": "s"}


def judge_ioi_roles(readings: list[dict[str, Any]]) -> Verdict:
    """``readings``: per classified head, its role's expected name, the position where the
    role acts (``position``) and what the members of its queries there keep
    (``attributes``, ``ioi.readings.read_members``) with ``queries`` and
    ``queries_with_inside``, and optionally ``edits`` (its ``edit_table`` row's edits there).
    Passes when at least MOST_HEADS of the heads are readable (``readable``) and keep their
    expected name: an unreadable head counts against the claim. An unreadable head's edits
    say why: when every name edit leaves ε, its preimage among IOI prompts is the prompts
    with both of the query's names."""
    if not readings:
        return Verdict(None, "no head was classified in a role this claim reads")
    read = [r for r in readings if readable(r)]
    unread = ", ".join(f"{r['head']} ({r['queries_with_inside']}/{r['queries']}"
                       + (f"; IO / S edits within ε {fmt(r['edits']['io']['inside'])} / "
                          f"{fmt(r['edits']['s']['inside'])}" if r.get("edits") else "") + ")"
                       for r in readings if not readable(r))
    keeping = [r for r in read if kept(r["attributes"].get(r["expected"]))]
    parts = [f"{r['head']}@{r.get('position', 'END')} {r['expected'].upper()} "
             f"{fmt(r['attributes'][r['expected']]['inside'])}/"
             f"{fmt(r['attributes'][r['expected']]['outside'])}"
             + (f", substitutions staying {fmt(r['attributes'][r['expected']]['stays'])}"
                if r['attributes'][r['expected']].get('stays') is not None else "") for r in read]
    share = len(keeping) / len(readings)
    return Verdict(share >= MOST_HEADS, (
        f"{len(keeping)} of {len(readings)} classified heads keep their role's name where it "
        f"acts" + (f" (in/out: {'; '.join(parts)})" if parts else "")
        + (f"; unreadable, counted against: {unread}" if unread else "")), share - MOST_HEADS)


def judge_dla_gap(rows: list[dict[str, Any]]) -> Verdict:
    """``rows``: per head at END, ``dla`` (the larger of the promoted / suppressed top-30
    rates of the expected name) and ``inversionview`` (its agreement row, None where the
    head is not readable). Passes when some head's name is missed by DLA (< DLA_FAILS) and
    kept by the in-ε samples; None (not measured) when DLA finds the name on every head."""
    described = ", ".join(f"{r['head']} DLA {r['dla']:.2f} / InversionView "
                          f"{fmt((r['inversionview'] or {}).get('inside'))}" for r in rows)
    missed = [r for r in rows if r["dla"] < DLA_FAILS]
    if not missed:
        return Verdict(None, f"DLA finds the name on every classified head ({described})")
    margins = [min(DLA_FAILS - r["dla"], -1.0 if (by := kept_margin(r["inversionview"])) is None
                   else by) for r in missed]
    gaps = [r for r in missed if kept(r["inversionview"])]
    return Verdict(bool(gaps), (f"{len(gaps)} of {len(missed)} head(s) where DLA misses the "
                                f"name, InversionView reads it ({described})"), max(margins))


def ioi_claims(model, decoders: dict, label: str, decoder_label: str, quick: bool,
               seeds: list[int], candidates: int = 256, out=None, search: int | None = None
               ) -> list[Claim]:
    """The two IOI claims over ``seeds``, with the trained decoder and (``decoders``) its
    control; ``search``: the text search's budget per query (None: the task's default)."""
    from inversionview.ioi.circuit import classify, head_scores
    from inversionview.ioi.readings import ROLE_POSITIONS, dla_table, edit_table, read_members

    n, queries, dla_n = (100, 6, 300) if quick else (200, 20, 1000)
    roles_claim = Claim(
        "ioi.heads-read-their-names", "ioi",
        "The circuit's heads encode the name their role predicts: name movers the IO name at "
        "END; S-inhibition heads (at END), induction and duplicate-token heads (at S2) the S "
        "name.",
        f"Heads classified by `ioi heads` ({n} prompts), each read where its role acts (the "
        f"default text query: decoder draws, then the search; members are cut prefixes, the "
        f"query's own left out); >= {MOST_HEADS:.0%} of the classified heads are readable "
        f"(members in ε in >= {READABLE:.0%} of {queries} queries) and keep the expected name: "
        f"in >= {KEEP_INSIDE} of its members, and kept by {KEEP_CONTRAST} more of them than of "
        f"the inputs outside ε or with at most {SUBSTITUTIONS_STAY} of its substitutions "
        f"staying inside ε. An unreadable head counts against the claim.",
        label, "preimage", decoder_label, paper=PAPER["ioi.heads-read-their-names"],
        why=f"{MOST_HEADS:.0%}: most heads, one of five may miss; {KEEP_INSIDE}/"
            f"{KEEP_CONTRAST}: most members keep the name, and clearly more than near misses.",
        plot="ioi-heads.png" if out is not None else None)
    dla_claim = Claim(
        "ioi.dla-misses-inversionview-reads", "ioi",
        "Direct logit attribution misses the name on heads not directly connected to the "
        "output, where InversionView still reads it (Table 4).",
        f"Some classified head has the expected name among its 30 most promoted or suppressed "
        f"tokens in < {DLA_FAILS:.0%} of {dla_n} prompts where its role acts, while it is "
        f"readable there (members in ε in >= {READABLE:.0%} of the queries) and its members "
        f"keep that name.", label, "preimage", decoder_label,
        paper=PAPER["ioi.dla-misses-inversionview-reads"],
        why=f"{DLA_FAILS:.0%}: DLA misses the name in most prompts.",
        plot="ioi-heads.png" if out is not None else None)
    runs: dict[str, list] = {roles_claim.id: [], dla_claim.id: []}
    circuit: dict[int, tuple] = {}
    for seed, arm, decoder, first in over_arms(decoders, seeds):
        started = time.perf_counter()
        if seed not in circuit:  # the model's own: classified once per seed
            scores = head_scores(model, n, seed)
            roles = classify(scores["heads"])
            role_of: dict[str, str] = {}
            for role, heads in roles.items():
                for head in heads:
                    if role in EXPECTED:
                        role_of.setdefault(head, role)
            targets = [(h, ROLE_POSITIONS[role_of[h]]) for h in sorted(role_of)]
            dla = dla_table(model, [(h, p, EXPECTED[role_of[h]]) for h, p in targets], dla_n,
                            seed) if targets else []
            edits = edit_table(model, targets, n, seed) if targets else []
            circuit[seed] = (roles, role_of, targets, dla, edits)
            if first and out is not None:
                from inversionview.ioi.plot import plot_heads

                plot_heads(scores, out / "ioi-heads.png", "every head's IOI scores")
        roles, role_of, targets, dla, edits = circuit[seed]
        if not targets:
            reason = Verdict(None, "the circuit finder put no head in a role this claim reads")
            runs[roles_claim.id].append(Claim.run(arm, seed, reason, {"roles": roles}))
            runs[dla_claim.id].append(Claim.run(arm, seed, reason, {"roles": roles}))
            continue
        readings = read_members(model, decoder, targets, queries, seed, candidates, search)
        rows, dla_rows = [], []
        for (head, position), reading, baseline, edited in zip(targets, readings, dla, edits):
            expected = EXPECTED[role_of[head]]
            rows.append({"head": head, "role": role_of[head], "position": position,
                         "expected": expected, "members": reading["members"],
                         "queries": reading["queries"],
                         "queries_with_inside": reading["queries_with_inside"],
                         "attributes": reading["attributes"], "edits": edited["edits"]})
            rate = max(baseline["top30_promoted"], baseline["top30_suppressed"])
            dla_rows.append({"head": head, "expected": expected, "dla": rate,
                             "inversionview": reading["attributes"].get(expected)
                             if readable(rows[-1]) else None})
        spent = (time.perf_counter() - started) / 2
        runs[roles_claim.id].append(Claim.run(arm, seed, judge_ioi_roles(rows),
                                              {"roles": roles, "readings": rows}, spent))
        runs[dla_claim.id].append(Claim.run(arm, seed, judge_dla_gap(dla_rows),
                                            {"rows": dla_rows, "dla": dla}, spent))
    return [roles_claim.settle(runs[roles_claim.id]), dla_claim.settle(runs[dla_claim.id])]


# ----- factual recall ---------------------------------------------------------------------

def attribute_kinds(knowledge) -> dict[str, dict[str, Any]]:
    """Per attribute: the chance that two random subjects share it, and whether it is left
    out as coarse (chance over COARSE) or as naming the subject's own entity (no value is
    shared beyond one country and its capital)."""
    from collections import Counter

    from inversionview.factual.knowledge import ATTRIBUTES

    subjects = {p.subject: p.attributes for p in knowledge.prompts("eval")}
    kinds = {}
    for name in ATTRIBUTES:
        counts = Counter(attributes[name] for attributes in subjects.values())
        total = sum(counts.values())
        chance = sum((c / total) ** 2 for c in counts.values())
        same_entity = max(counts.values()) <= 2
        kinds[name] = {"chance": round(chance, 3), "same_entity": same_entity,
                       "coarse": chance > COARSE,
                       "tested": not same_entity and chance <= COARSE}
    return kinds


def moved_beyond_subject(rows: list[dict[str, Any]], tested: Collection[str],
                         asked_of: dict[str, str]) -> list[dict[str, Any]]:
    """Each (reading, attribute) of ``tested`` that the relation does not ask for, kept and
    kept by at least BEYOND_SUBJECT more of the in-ε samples than the subject, with its
    margin (the smallest of the two conditions' excess), best first."""
    found = []
    for row in rows:
        if not readable(row):
            continue
        attributes = row["attributes"]
        subject = attributes.get("subject", {}).get("inside") or 0.0
        for name in tested:
            values = attributes.get(name)
            kept_by = kept_margin(values)
            if kept_by is None or asked_of.get(row["relation"]) == name:
                continue
            excess = min(kept_by, values["inside"] - subject - BEYOND_SUBJECT)
            found.append({"head": row["site"], "position": row["position"],
                          "relation": row["relation"], "attribute": name, "margin": excess,
                          "inside": values["inside"], "outside": values["outside"],
                          "subject_inside": subject})
    return sorted(found, key=lambda f: -f["margin"])


def judge_attributes_beyond_subject(registered: list[dict[str, Any]],
                                    tested: list[dict[str, Any]]) -> Verdict:
    """``registered``: the readings chosen on the selection split (``moved_beyond_subject``
    with a margin >= 0, at most REGISTERED); ``tested``: the same (head, position, relation,
    attribute) read on the test split, with their margins (None: not readable there). Passes
    when at least half the registered readings hold on the test split; fails when none was
    registered."""
    if not registered:
        return Verdict(False, "no reading on the selection split moved a tested attribute "
                              "beyond the subject: nothing to register", -0.5)
    holds = [t for t in tested if t["margin"] is not None and t["margin"] >= 0]
    share = len(holds) / len(registered)
    shown = "; ".join(f"{t['head']}@{t['position']} keeps {t['attribute']} when asked "
                      f"{t['relation']}: selection {fmt(r['inside'])}/{fmt(r['outside'])}, "
                      f"test {fmt(t.get('inside'))}/{fmt(t.get('outside'))} (subject "
                      f"{fmt(t.get('subject_inside'))})" for r, t in zip(registered, tested))
    return Verdict(share >= 0.5, (f"{len(holds)} of {len(registered)} registered readings hold "
                                  f"on the held-out subjects: {shown}"), share - 0.5)


def factual_claims(model, decoders: dict, label: str, decoder_label: str, quick: bool,
                   seeds: list[int], heads: list[str] | None = None, candidates: int = 256,
                   out=None) -> list[Claim]:
    """The factual claim, pre-registered per seed: the subjects split in two; on the first
    half the heads (by attribution), positions and attributes are chosen; on the second the
    chosen readings are tested."""
    import random

    from inversionview.factual.evaluate import factual_task
    from inversionview.factual.heads import attribution_heads
    from inversionview.factual.knowledge import RELATIONS
    from inversionview.factual.readings import read_factual

    top, queries = (3, 6) if quick else (6, 10)
    task = factual_task(model)
    kinds = attribute_kinds(task.knowledge)
    tested_attributes = [name for name, kind in kinds.items() if kind["tested"]]
    asked_of = {name: relation.attribute for name, relation in RELATIONS.items()}
    left_out = ", ".join(f"{name} ({'same entity' if kind['same_entity'] else 'coarse'}, "
                         f"chance {kind['chance']:.2f})" for name, kind in kinds.items()
                         if not kind["tested"])
    claim = Claim(
        "factual.heads-move-attributes", "factual",
        "Upper-layer heads at the subject's last token and at the end move attributes of the "
        "subject, often whatever relation was asked.",
        f"Pre-registered: the subjects split in two halves (by seed). On the first, the {top} "
        f"heads with the largest attribution share, read at SUBJ and END ({queries} prompts per "
        f"relation; cosine ε 0.25, noise at cosine 0.75-0.9), and the up to {REGISTERED} "
        f"readings that best keep an attribute the relation does not ask for (inside >= "
        f"{KEEP_INSIDE}, contrast >= {KEEP_CONTRAST}, {BEYOND_SUBJECT} more than the subject "
        f"itself) are registered; on the second half those readings are read again, and at "
        f"least half must hold. Attributes tested: {', '.join(tested_attributes)}; left out: "
        f"{left_out}.", label, "preimage", decoder_label,
        paper=PAPER["factual.heads-move-attributes"],
        why=f"Choosing among ~150 (head, position, relation, attribute) readings and testing on "
            f"the same prompts passes by chance; the split makes the choice and the test "
            f"independent. Coarse attributes (chance agreement over {COARSE}) are kept by many "
            f"samples whatever the head holds; a capital's country is the subject's own entity.",
        plot="factual-heads.png" if out is not None else None)
    runs = []
    chosen: dict[int, tuple] = {}
    for seed, arm, decoder, first in over_arms(decoders, seeds):
        started = time.perf_counter()
        if seed not in chosen:
            subjects = sorted({p.subject for p in task.knowledge.prompts("eval")})
            random.Random(f"split-{seed}").shuffle(subjects)
            selection, test = set(subjects[::2]), set(subjects[1::2])
            seed_heads = heads
            if seed_heads is None:
                prompts = [p for p in task.knowledge.prompts("eval") if p.subject in selection]
                prompts = random.Random(seed).sample(prompts, min(len(prompts),
                                                                  300 if quick else 1000))
                table = attribution_heads(model, prompts)
                seed_heads = table["kept"][:top]
                if first and out is not None:
                    from inversionview.factual.heads import plot_attribution

                    plot_attribution(table, out / "factual-heads.png",
                                     "head attribution at END (selection half)")
            chosen[seed] = (selection, test, seed_heads)
        selection, test, seed_heads = chosen[seed]
        rows = read_factual(model, decoder, seed_heads, queries=queries, seed=seed,
                            candidates=candidates, subjects=selection)
        registered = [f for f in moved_beyond_subject(rows, tested_attributes, asked_of)
                      if f["margin"] >= 0][:REGISTERED]
        tested = []
        for reading in registered:
            [again] = read_factual(model, decoder, [reading["head"]], [reading["position"]],
                                   [reading["relation"]], queries=queries, seed=seed,
                                   candidates=candidates, subjects=test)
            match = moved_beyond_subject([again], [reading["attribute"]], asked_of)
            tested.append(match[0] if match else {**reading, "margin": None, "inside": None,
                                                  "outside": None, "subject_inside": None})
        verdict = judge_attributes_beyond_subject(registered, tested)
        read = sum(readable(row) for row in rows)
        runs.append(Claim.run(arm, seed, verdict._replace(
            figure=verdict.figure + f" ({read} of {len(rows)} selection readings readable)"),
            {"heads": seed_heads, "registered": registered, "tested": tested,
             "attributes": kinds, "readings": rows}, time.perf_counter() - started))
    return [claim.settle(runs)]


__all__ = ["PAPER", "attribute_kinds", "factual_claims", "ioi_claims",
           "judge_attributes_beyond_subject", "judge_dla_gap", "judge_ioi_roles", "kept",
           "kept_margin", "moved_beyond_subject"]
