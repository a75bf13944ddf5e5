"""The paper's IOI and factual-recall findings (method.md §10) as claims, measured on a
language model and its decoder with the case studies' own machinery (``ioi``, ``factual``).

On the bundled models these are this toolkit's small LMs trained here, not GPT-2: a claim
says which model it ran on, and a head the decoder cannot read (no query with a sample in ε)
is reported as such rather than counted either way.
"""

from __future__ import annotations

import time
from typing import Any

from inversionview.reproduce.claims import Claim, fmt

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


def readable(reading: dict[str, Any]) -> bool:
    return reading["queries_with_inside"] >= max(1, READABLE * reading["queries"])


def kept(values: dict[str, Any] | None) -> bool:
    if values is None or values.get("inside") is None or values["inside"] < KEEP_INSIDE:
        return False
    contrast = values.get("outside") is not None and values["inside"] - values["outside"] >= KEEP_CONTRAST
    moved = values.get("stays") is not None and values["stays"] <= SUBSTITUTIONS_STAY
    return contrast or moved


# ----- IOI --------------------------------------------------------------------------------

EXPECTED = {"name mover": "io", "negative name mover": "io", "s-inhibition": "s",
            "induction": "s", "duplicate token": "s"}


def judge_ioi_roles(readings: list[dict[str, Any]]) -> tuple[bool, str]:
    """``readings``: per classified head, its role's expected name, the position where the
    role acts (``position``) and what the members of its queries there keep
    (``attributes``, ``ioi.readings.read_members``) with ``queries`` and
    ``queries_with_inside``, and optionally ``edits`` (its ``edit_table`` row's edits there).
    Passes when every readable head (``readable``) keeps its expected name; None (not
    measured) when none is. An unreadable
    head's edits say why: when every name edit leaves ε, its preimage among IOI prompts is
    the prompts with both of the query's names."""
    read = [r for r in readings if readable(r)]
    unread = ", ".join(f"{r['head']} ({r['queries_with_inside']}/{r['queries']}"
                       + (f"; IO / S edits within ε {fmt(r['edits']['io']['inside'])} / "
                          f"{fmt(r['edits']['s']['inside'])}" if r.get("edits") else "") + ")"
                       for r in readings if not readable(r))
    if not read:
        return None, (f"no head had members in ε where it acts in at least {READABLE:.0%} of "
                      f"its queries ({unread})")
    keeping = [r for r in read if kept(r["attributes"].get(r["expected"]))]
    parts = [f"{r['head']}@{r.get('position', 'END')} {r['expected'].upper()} "
             f"{fmt(r['attributes'][r['expected']]['inside'])}/"
             f"{fmt(r['attributes'][r['expected']]['outside'])}"
             + (f", substitutions staying {fmt(r['attributes'][r['expected']]['stays'])}"
                if r['attributes'][r['expected']].get('stays') is not None else "") for r in read]
    return len(keeping) == len(read), (
        f"{len(keeping)} of {len(read)} readable heads keep their role's name where it acts "
        f"(in/out: {'; '.join(parts)})"
        + (f"; too few queries with members: {unread}" if unread else ""))


def judge_dla_gap(rows: list[dict[str, Any]]) -> tuple[bool, str]:
    """``rows``: per head at END, ``dla`` (the larger of the promoted / suppressed top-30
    rates of the expected name) and ``inversionview`` (its agreement row, None where the
    head is not readable). Passes when some head's name is missed by DLA (< DLA_FAILS) and
    kept by the in-ε samples; None (not measured) when no head DLA misses is readable."""
    gaps = [r for r in rows if r["dla"] < DLA_FAILS and kept(r["inversionview"])]
    described = ", ".join(f"{r['head']} DLA {r['dla']:.2f} / InversionView "
                          f"{fmt((r['inversionview'] or {}).get('inside'))}" for r in rows)
    missed = [r for r in rows if r["dla"] < DLA_FAILS]
    if not gaps and not any(r["inversionview"] is not None for r in missed):
        return None, (f"no head that DLA misses could be read ({described})" if missed else
                      f"DLA finds the name on every classified head ({described})")
    return bool(gaps), (f"{len(gaps)} head(s) where DLA misses the name and InversionView "
                        f"reads it ({described})")


def ioi_claims(model, decoder, label: str, decoder_label: str, quick: bool, seed: int,
               candidates: int = 256, out=None, search: int | None = None) -> list[Claim]:
    """The two IOI claims; ``search``: the text search's budget per query (None: the task's
    default)."""
    from inversionview.ioi.circuit import classify, head_scores
    from inversionview.ioi.readings import ROLE_POSITIONS, dla_table, edit_table, read_members

    n, queries, dla_n = (100, 6, 300) if quick else (200, 20, 1000)
    started = time.perf_counter()
    scores = head_scores(model, n, seed)
    roles = classify(scores["heads"])
    plot = None
    if out is not None:
        from inversionview.ioi.plot import plot_heads

        plot_heads(scores, out / "ioi-heads.png", "every head's IOI scores")
        plot = "ioi-heads.png"
    role_of: dict[str, str] = {}
    for role, heads in roles.items():
        for head in heads:
            if role in EXPECTED:
                role_of.setdefault(head, role)
    statement = ("The circuit's heads encode the name their role predicts: name movers the "
                 "IO name at END; S-inhibition heads (at END), induction and duplicate-token "
                 "heads (at S2) the S name.")
    criterion = (f"Heads classified by `ioi heads` ({n} prompts), each read where its role acts "
                 f"(the default text query: decoder draws, then the search; members are cut "
                 f"prefixes, the query's own left out); each readable head (members in ε in "
                 f">= {READABLE:.0%} of {queries} queries) keeps the expected name: in >= "
                 f"{KEEP_INSIDE} of its members, and kept by {KEEP_CONTRAST} more of them than "
                 f"of the inputs outside ε or with at most {SUBSTITUTIONS_STAY} of its "
                 f"substitutions staying inside ε.")
    roles_claim = Claim("ioi.heads-read-their-names", "ioi", statement, criterion, label,
                        decoder_label, plot=plot)
    dla_claim = Claim("ioi.dla-misses-inversionview-reads", "ioi",
                      "Direct logit attribution misses the name on heads not directly "
                      "connected to the output, where InversionView still reads it (Table 4).",
                      f"Some classified head has the expected name among its 30 most promoted "
                      f"or suppressed tokens in < {DLA_FAILS:.0%} of {dla_n} prompts where its "
                      f"role acts, while it is readable there (members in ε in >= "
                      f"{READABLE:.0%} of the queries) and its members keep that name.",
                      label, decoder_label, plot=plot)
    if not role_of:
        reason = "the circuit finder put no head in a role this claim reads"
        return [roles_claim.skip(reason), dla_claim.skip(reason)]
    heads = sorted(role_of)
    targets = [(h, ROLE_POSITIONS[role_of[h]]) for h in heads]
    readings = read_members(model, decoder, targets, queries, seed, candidates, search)
    dla = dla_table(model, [(h, p, EXPECTED[role_of[h]]) for h, p in targets], dla_n, seed)
    edits = edit_table(model, targets, n, seed)
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
    roles_claim.seconds = dla_claim.seconds = spent
    roles_claim.decide(*judge_ioi_roles(rows), {"roles": roles, "readings": rows})
    dla_claim.decide(*judge_dla_gap(dla_rows), {"rows": dla_rows, "dla": dla})
    return [roles_claim, dla_claim]


# ----- factual recall ---------------------------------------------------------------------

def judge_attributes_beyond_subject(rows: list[dict[str, Any]], asked_of: dict[str, str]
                                    ) -> tuple[bool, str, list[dict[str, Any]]]:
    """``rows``: read_factual's rows (head, position, relation, attributes). An attribute is
    moved beyond the subject in a row when it is kept and kept by at least BEYOND_SUBJECT more
    of the in-ε samples than the subject is. Passes when some (head, position) moves an
    attribute that the relation asked does not ask for."""
    found = []
    for row in rows:
        if not readable(row):
            continue
        attributes = row["attributes"]
        subject = attributes.get("subject", {}).get("inside")
        for name, values in attributes.items():
            if name in ("subject", "kind") or not kept(values):
                continue
            if subject is not None and values["inside"] - subject < BEYOND_SUBJECT:
                continue
            found.append({"head": row["site"], "position": row["position"],
                          "relation": row["relation"], "attribute": name,
                          "asked": asked_of.get(row["relation"]) == name,
                          "inside": values["inside"], "outside": values["outside"],
                          "subject_inside": subject})
    unasked = [f for f in found if not f["asked"]]
    shown = ", ".join(f"{f['head']}@{f['position']} keeps {f['attribute']} when asked "
                      f"{f['relation']} ({fmt(f['inside'])}/{fmt(f['outside'])}, subject "
                      f"{fmt(f['subject_inside'])})" for f in unasked[:4])
    read = sum(readable(row) for row in rows)
    if not read:
        return None, (f"the decoder is too weak at these heads: no reading had in-ε samples in "
                      f"at least {READABLE:.0%} of its queries"), found
    return bool(unasked), (f"{len(unasked)} (head, position, relation) readings move an "
                           f"attribute the relation does not ask for, beyond the subject; "
                           f"{read} of {len(rows)} readings had in-ε samples in at least "
                           f"{READABLE:.0%} of their queries" + (f": {shown}" if shown else "")), found


def factual_claims(model, decoder, label: str, decoder_label: str, quick: bool, seed: int,
                   heads: list[str] | None = None, candidates: int = 256, out=None
                   ) -> list[Claim]:
    from inversionview.factual.evaluate import factual_task
    from inversionview.factual.heads import attribution_heads
    from inversionview.factual.knowledge import RELATIONS
    from inversionview.factual.readings import read_factual

    top, queries = (3, 4) if quick else (6, 10)
    started = time.perf_counter()
    task = factual_task(model)
    plot = None
    if heads is None:
        import random

        prompts = task.knowledge.prompts("eval")
        prompts = random.Random(seed).sample(prompts, min(len(prompts), 300 if quick else 1000))
        table = attribution_heads(model, prompts)
        heads = table["kept"][:top]
        if out is not None:
            from inversionview.factual.heads import plot_attribution

            plot_attribution(table, out / "factual-heads.png", "head attribution at END")
            plot = "factual-heads.png"
    rows = read_factual(model, decoder, heads, queries=queries, seed=seed,
                        candidates=candidates)
    asked_of = {name: relation.attribute for name, relation in RELATIONS.items()}
    claim = Claim("factual.heads-move-attributes", "factual",
                  "Upper-layer heads at the subject's last token and at the end move "
                  "attributes of the subject, often whatever relation was asked.",
                  f"The {len(heads)} heads with the largest attribution share ({', '.join(heads)}), "
                  f"read at SUBJ and END on {queries} held-out prompts per relation (cosine ε "
                  f"0.25, noise at cosine 0.75-0.9): some reading keeps an attribute the "
                  f"relation does not ask for (inside >= {KEEP_INSIDE}, contrast >= "
                  f"{KEEP_CONTRAST}) in at least {BEYOND_SUBJECT} more of the in-ε samples "
                  "than keep the subject itself.", label, decoder_label, plot=plot,
                  seconds=time.perf_counter() - started)
    passed, figure, found = judge_attributes_beyond_subject(rows, asked_of)
    return [claim.decide(passed, figure, {"heads": heads, "found": found, "readings": rows})]


__all__ = ["factual_claims", "ioi_claims", "judge_attributes_beyond_subject", "judge_dla_gap",
           "judge_ioi_roles"]
