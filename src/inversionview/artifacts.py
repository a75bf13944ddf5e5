"""Bundled trained artifacts (probed models, later decoders), each a directory with a manifest.

They live in the repository's ``artifacts/`` folder, found from the source tree (the README
installs the package in editable mode); ``INVERSIONVIEW_ARTIFACTS`` points elsewhere.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

MANIFESTS = ("inversionview.json", "decoder.json")  # probed models, decoders


def artifact_roots() -> list[Path]:
    roots = []
    if os.environ.get("INVERSIONVIEW_ARTIFACTS"):
        roots.append(Path(os.environ["INVERSIONVIEW_ARTIFACTS"]))
    roots.append(Path(__file__).resolve().parents[2] / "artifacts")  # the source checkout
    return [root for root in roots if root.is_dir()]


def list_artifacts() -> dict[str, tuple[Path, dict[str, Any]]]:
    """name -> (directory, manifest) of every bundled artifact; the first root wins."""
    found: dict[str, tuple[Path, dict[str, Any]]] = {}
    for root in artifact_roots():
        for directory in sorted(root.iterdir()):
            for manifest_name in MANIFESTS:
                manifest_path = directory / manifest_name
                if directory.name not in found and manifest_path.is_file():
                    found[directory.name] = (directory, json.loads(manifest_path.read_text()))
    return found


def artifact_names() -> list[str]:
    return sorted(list_artifacts())


def find_artifact(name: str) -> Path | None:
    entry = list_artifacts().get(name)
    return entry[0] if entry else None
