"""Are the browser tests stable on a busy machine? Run them N times beside K busy loops.

    python bench/browser_under_load.py --runs 5 --busy 2

Each run is `CI=true python -m pytest tests/web/test_browser.py -q -p no:cacheprovider`
(Debian chromium, Playwright) while K processes spin on the CPU; the busy loops are stopped
at the end whatever happens. Prints and writes bench/results/browser-under-load.json: the
passed/failed counts, pytest's time and the wall time of each run, the machine, the commit
and the command.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from inversionview import provenance

ROOT = Path(__file__).resolve().parents[1]


def run_once() -> dict:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pytest", "tests/web/test_browser.py", "-q",
                           "-p", "no:cacheprovider"], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "CI": "true"})
    wall = time.perf_counter() - started
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-300:]
    counts = {kind: int(number) for number, kind in re.findall(r"(\d+) (passed|failed|error|skipped)", summary)}
    seconds = re.search(r"in ([\d.]+)s", summary)
    return {"returncode": done.returncode, "passed": counts.get("passed", 0),
            "failed": counts.get("failed", 0) + counts.get("error", 0),
            "skipped": counts.get("skipped", 0), "pytest_seconds": float(seconds.group(1)) if seconds else None,
            "wall_seconds": round(wall, 1), "summary": summary}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--busy", type=int, default=2, help="busy loops beside the tests")
    args = parser.parse_args()
    loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    try:
        runs = []
        for index in range(args.runs):
            runs.append(run_once())
            print(f"run {index + 1}: {runs[-1]['summary']} (wall {runs[-1]['wall_seconds']} s)", flush=True)
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()
    record = {"benchmark": "browser tests beside busy loops", "runs": runs,
              "all_passed": all(r["returncode"] == 0 and r["failed"] == 0 and r["passed"] > 0 for r in runs),
              "busy_loops": args.busy, "machine": provenance.machine(), "commit": provenance.commit(),
              "command": "python bench/browser_under_load.py " + " ".join(sys.argv[1:])}
    out = ROOT / "bench" / "results" / "browser-under-load.json"
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"all passed: {record['all_passed']}; wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
