"""Bundled trained artifacts (probed models, later decoders), each a directory with a manifest.

They live in the repository's ``artifacts/`` folder, found from the source tree (the README
installs the package in editable mode); ``INVERSIONVIEW_ARTIFACTS`` points elsewhere. An
artifact whose manifest cannot be read is left out of the listings (``broken_artifacts()``
says why) and reported when it is loaded by name.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from inversionview.errors import UserError, echo
from inversionview.files import read_json_object

MANIFESTS = ("inversionview.json", "decoder.json")  # probed models, decoders
_KINDS = {"inversionview.json": "probed-model", "decoder.json": "decoder"}


def artifact_roots() -> list[Path]:
    roots = []
    if os.environ.get("INVERSIONVIEW_ARTIFACTS"):
        roots.append(Path(os.environ["INVERSIONVIEW_ARTIFACTS"]))
    roots.append(Path(__file__).resolve().parents[2] / "artifacts")  # the source checkout
    return [root for root in roots if root.is_dir()]


def list_artifacts() -> dict[str, tuple[Path, dict[str, Any]]]:
    """name -> (directory, manifest) of every bundled artifact whose manifest can be read;
    the first root wins. The others are in ``broken_artifacts()``."""
    found = {}
    for name, (directory, manifest_path) in _scan().items():
        manifest = _read_manifest(manifest_path)
        if isinstance(manifest, dict):
            found[name] = (directory, manifest)
    return found


def broken_artifacts() -> dict[str, tuple[Path, str]]:
    """name -> (directory, what is wrong with its manifest) of the artifacts that
    ``list_artifacts`` leaves out."""
    broken = {}
    for name, (directory, manifest_path) in _scan().items():
        problem = _read_manifest(manifest_path)
        if isinstance(problem, str):
            broken[name] = (directory, problem)
    return broken


def bundled_model_names() -> list[str]:
    """The bundled probed models (artifacts with a probed-model manifest), sorted."""
    return sorted(name for name, (directory, _) in list_artifacts().items()
                  if (directory / "inversionview.json").is_file())


def find_artifact(name: str) -> Path | None:
    """The directory of the artifact called ``name``, even one whose manifest is broken (the
    loader then says what is wrong with it)."""
    entry = _scan().get(name)
    return entry[0] if entry else None


def _scan() -> dict[str, tuple[Path, Path]]:
    """name -> (directory, manifest path) of each directory in a root that holds a manifest."""
    found: dict[str, tuple[Path, Path]] = {}
    for root in artifact_roots():
        for directory in sorted(root.iterdir()):
            for manifest_name in MANIFESTS:
                if directory.name not in found and (directory / manifest_name).is_file():
                    found[directory.name] = (directory, directory / manifest_name)
    return found


def _read_manifest(path: Path) -> dict[str, Any] | str:
    """The manifest, or a one-line description of what is wrong with it. The fields the
    listings show must have their types: kind and task strings, the scores numbers."""
    kind = _KINDS[path.name]
    expected = f'expected a JSON object with "kind": "{kind}" and a "task"'
    try:
        manifest = read_json_object(path, UserError, expected)
    except UserError as error:
        return str(error)
    if manifest.get("kind") != kind or not isinstance(manifest.get("task"), str):
        return f"{path} is not a {kind} manifest; {expected}"
    for score in ("accuracy", "in_epsilon_mean"):
        value = manifest.get(score)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            return f"{path}: {score} is {echo(value)}; expected a number"
    return manifest


def shown_name(source: str) -> str:
    """What a response says of a model or decoder: a bundled artifact's name, a directory's
    base name, a hub name as it is; never an absolute path (it would tell a client where the
    server's files are)."""
    path = Path(source).expanduser()
    return path.resolve().name if path.is_absolute() or path.exists() else source
