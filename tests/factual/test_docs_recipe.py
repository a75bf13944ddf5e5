"""docs/factual.md's query recipe runs as written on a fresh clone (issue 31: it named a
corpus that only an earlier, 400,000-line recipe writes)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

from cli_runner import invoke

DOC = Path(__file__).resolve().parents[2] / "docs" / "factual.md"


def test_the_query_recipe_runs_on_the_bundled_model(tmp_path, monkeypatch):
    section = DOC.read_text().split("## The query recipe", 1)[1]
    command = re.search(r"^    (inversionview query .*?)(?:\n\n|\n[^ ])", section, re.S | re.M).group(1)
    args = shlex.split(command.replace("\\\n", " "))[1:]
    monkeypatch.chdir(Path(__file__).resolve().parents[2])  # paths as a user in the clone gives them
    result = invoke(args + ["--candidates", "64", "--search", "0", "--json", "--threads", "1"])
    assert result.exit_code == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["banned_tokens"] and record["noise_cosine"] == [0.75, 0.9]
