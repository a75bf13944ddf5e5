"""IOI member readings against their control (issue 28): the trained decoder and a decoder of
the same shape with random weights, under the same text search.

    python bench/ioi_members_control.py    # bench/results/ioi-members-random-decoder-control.json

a1.2, a2.0 and a2.3 (S-inhibition heads of the bundled lm-ioi) at END, 6 prompts each, seed
0, 256 candidates, the task's default search; one thread.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from inversionview import provenance
from inversionview.decoder.model import Decoder
from inversionview.decoder.store import decoder_for
from inversionview.ioi.readings import read_members
from inversionview.probed import load_probed

RESULTS = Path(__file__).parent / "results"
TARGETS = [("a1.2", "END"), ("a2.0", "END"), ("a2.3", "END")]


def main() -> None:
    torch.set_num_threads(1)
    model = load_probed("lm-ioi", "ioi")
    trained, _ = decoder_for(model, "lm-ioi", None)
    torch.manual_seed(0)
    random_decoder = Decoder(trained.config).eval()
    random_decoder.site_names = trained.site_names
    rows = {}
    for name, decoder in (("trained", trained), ("random", random_decoder)):
        rows[name] = read_members(model, decoder, TARGETS, queries=6, seed=0, candidates=256)
        for row in rows[name]:
            print(name, row["site"], row["position"], "members", sum(row["members"]),
                  {k: (v["inside"], v["outside"], v["stays"]) for k, v in row["attributes"].items()},
                  flush=True)
    record = {"benchmark": "ioi members: trained decoder vs a random-weight decoder of the same "
                           "shape under the same search",
              "machine": provenance.machine(), "commit": provenance.commit(),
              "command": " ".join(["python", *sys.argv]), "rows": rows}
    path = RESULTS / "ioi-members-random-decoder-control.json"
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(f"-> {path}")


if __name__ == "__main__":
    main()
