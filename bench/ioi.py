"""The IOI case study measured end to end on one model (issue 15; docs/ioi.md cites it).

    python bench/ioi.py MODEL [--decoder DIR] [--eval-n 1000] [--heads-n 200] [--queries 20]
                              [--dla-n 1000] [--edit-n 200] [--patching activation] [--skip-readings]
                              [--extra-heads a0.1]

1. IOI accuracy and logit difference on held-out templates (and on the train templates);
2. every head's scores, the roles they give (``ioi.circuit``) and the per-head map
   (bench/results/ioi-<name>-heads.png);
3. for every head in a role, InversionView readings at S1+1, S2 and END (in-ε agreement of
   IO, S, order, positions, template, pooled over --queries prompts; the decoder's draws at
   the query's named position, as the paper) beside the DLA baseline (the paper's Table 4) on
   --dla-n prompts, and the one-attribute edits of --edit-n prompts (how far each head's
   output moves when one attribute changes; no decoder);
4. (issue 28) each head read where its role acts (``ROLE_POSITIONS``; extras at END) with the
   default text query, decoder draws then the search: members per query (distinct cut
   prefixes in ε, the query's own left out) and whether they keep the IO and S names (against
   the inputs outside ε, and the substitutions that stay inside); beside it each head's direct
   effect at END (the ABC patch sent only to the logits) against its total effect.

Writes bench/results/ioi-<name>.json with the machine, the commit, the command and seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from inversionview import provenance
from inversionview.decoder.store import decoder_for
from inversionview.ioi.circuit import ROLE_RULES, classify, direct_effects, evaluate_ioi, head_scores
from inversionview.ioi.plot import plot_heads
from inversionview.ioi.readings import (READ_POSITIONS, ROLE_POSITIONS, dla_table, edit_table,
                                        read_heads, read_members)
from inversionview.probed import load_probed

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--decoder", type=Path, default=None)
    parser.add_argument("--name", default=None, help="results file name (default: the model's)")
    parser.add_argument("--eval-n", type=int, default=1000)
    parser.add_argument("--heads-n", type=int, default=200)
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--candidates", type=int, default=256)
    parser.add_argument("--dla-n", type=int, default=1000)
    parser.add_argument("--edit-n", type=int, default=200)
    parser.add_argument("--patching", default="activation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--skip-readings", action="store_true")
    parser.add_argument("--skip-sampled", action="store_true",
                        help="leave out the decoder-only readings at every position (3.)")
    parser.add_argument("--member-queries", type=int, default=20)
    parser.add_argument("--search", type=int, default=None, help="default: the task's")
    parser.add_argument("--extra-heads", default="",
                        help="heads to read beside those in a role, comma separated (e.g. a0.1)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    name = args.name or Path(args.model).name
    model = load_probed(args.model, "ioi")
    record = {"benchmark": "ioi", "model": args.model, "machine": provenance.machine(),
              "commit": provenance.commit(), "command": " ".join(["python", *sys.argv]),
              "seconds": {}}

    started = time.perf_counter()
    record["eval"] = {split: evaluate_ioi(model, args.eval_n, args.seed, split)
                      for split in ("eval", "train")}
    record["eval"]["eval_late"] = evaluate_ioi(model, args.eval_n, args.seed, "eval", "late")
    record["seconds"]["eval"] = round(time.perf_counter() - started, 1)
    held_out = record["eval"]["eval"]
    print(f"held-out templates: top-1 {held_out['top1_accuracy']:.3f}, IO over S "
          f"{held_out['io_over_s']:.3f}, LD {held_out['logit_difference']:.2f}")

    started = time.perf_counter()
    scores = head_scores(model, args.heads_n, args.seed, patching=args.patching)
    roles = classify(scores["heads"])
    record["seconds"]["heads"] = round(time.perf_counter() - started, 1)
    record["heads"] = {**{k: v for k, v in scores.items() if k != "heads"},
                       "heads": [h.to_dict() for h in scores["heads"]], "roles": roles,
                       "rules": ROLE_RULES}
    RESULTS.mkdir(parents=True, exist_ok=True)
    plot_heads(scores, RESULTS / f"ioi-{name}-heads.png", name)
    print("roles:", json.dumps(roles))

    if not args.skip_readings:
        decoder, directory = decoder_for(model, args.model, args.decoder)
        record["decoder"] = str(directory)
        role_of: dict[str, list[str]] = {}
        for role, heads in roles.items():
            for head in heads:
                role_of.setdefault(head, []).append(role)
        for head in filter(None, (h.strip() for h in args.extra_heads.split(","))):
            role_of.setdefault(model.site(head).short, [])
        targets = [(head, position) for head in role_of for position in READ_POSITIONS]
        if not args.skip_sampled:
            started = time.perf_counter()
            record["readings"] = read_heads(model, decoder, targets, args.queries, args.seed,
                                            args.candidates)
            record["seconds"]["readings"] = round(time.perf_counter() - started, 1)
        acting = [(head, ROLE_POSITIONS[roles_of[0]] if roles_of else "END")
                  for head, roles_of in role_of.items()]
        started = time.perf_counter()
        members = read_members(model, decoder, acting, args.member_queries, args.seed,
                               args.candidates, args.search)
        record["members"] = members
        record["seconds"]["members"] = round(time.perf_counter() - started, 1)
        for row in members:
            names = ", ".join(f"{name.upper()} {_fmt(v['inside'])}/{_fmt(v['outside'])} "
                              f"stays {_fmt(v['stays'])}" for name, v in row["attributes"].items())
            print(f"{row['site']}@{row['position']}: members in {row['queries_with_inside']}/"
                  f"{row['queries']} queries (median {sorted(row['members'])[len(row['members']) // 2]}); "
                  f"{names}", flush=True)
        started = time.perf_counter()
        direct = direct_effects(model, args.heads_n, args.seed)
        record["direct"] = {"n": direct["n"], "abc_effect": direct["abc_effect"],
                            "heads": {f"a{layer}.{head}": {
                                "total": round(float(direct["total"][layer, head]), 4),
                                "direct": round(float(direct["direct"][layer, head]), 4)}
                                for layer in range(model.n_layers) for head in range(model.n_heads)}}
        record["seconds"]["direct"] = round(time.perf_counter() - started, 1)
        targets = sorted(set(targets) | set(acting))
        started = time.perf_counter()
        record["dla"] = dla_table(model, [(head, position,
                                           "io" if "name mover" in role_of[head] else "s")
                                          for head, position in targets], args.dla_n, args.seed)
        record["seconds"]["dla"] = round(time.perf_counter() - started, 1)
        started = time.perf_counter()
        record["edits"] = edit_table(model, targets, args.edit_n, args.seed)
        record["seconds"]["edits"] = round(time.perf_counter() - started, 1)
        record["roles_by_head"] = role_of
    path = RESULTS / f"ioi-{name}.json"
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(f"-> {path}")


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.2f}"


if __name__ == "__main__":
    main()
