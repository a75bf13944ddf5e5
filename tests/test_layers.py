"""The pipeline's layering (docs/architecture.md), as the import-linter contracts in
pyproject.toml state it: stages import down only, the foundations import no stage, and no
module imports itself back through a sibling."""

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def contracts() -> dict[str, dict]:
    settings = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    return {contract["id"]: contract for contract in settings["contracts"]}


def test_the_import_contracts_hold():
    run = subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import "
                          "lint_imports; sys.exit(lint_imports(no_cache=True, no_logo=True))"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "3 kept, 0 broken" in run.stdout


def test_at_most_three_imports_run_back_up_and_no_cycle_is_excused():
    layers, acyclic = contracts()["layers"], contracts()["acyclic"]
    assert len(layers.get("ignore_imports", [])) <= 3
    assert not acyclic.get("ignore_imports")


def test_every_stage_is_in_a_layer_and_every_exception_says_why():
    layers = contracts()["layers"]
    named = {name.strip() for layer in layers["layers"] for name in layer.replace(":", "|").split("|")}
    stages = {path.name for path in (ROOT / "src/inversionview").iterdir()
              if path.is_dir() and (path / "__init__.py").exists()}
    assert stages <= named, f"packages in no layer: {sorted(stages - named)}"
    text = (ROOT / "pyproject.toml").read_text()
    for contract in contracts().values():
        for exception in contract.get("ignore_imports", []):
            line = next(line for line in text.splitlines() if f'"{exception}"' in line)
            before = text[:text.index(line)].rstrip().splitlines()
            # The exception, or the group it starts or belongs to, is preceded by its reason.
            assert any(l.strip().startswith("#") for l in before[-8:]), exception
