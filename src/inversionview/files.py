"""Reading and writing the files the tool keeps (manifests, safetensors weights) safely.

Readers raise the caller's ``UserError`` subclass with a one-line message that names the
file and says what it should hold; writers replace a file only once the new one is whole.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from inversionview.errors import UserError


def sha256_file(path: Path) -> str:
    """The sha256 of a file's bytes (what ``sha256sum`` prints), read in 16 MB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 24), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_path(path: Path):
    """Yield a temporary path beside ``path``; move it into place only if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json_atomic(path: Path, record: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(record, indent=2, sort_keys=False) + "\n")


def read_json_object(path: Path, error: type[UserError], expected: str) -> dict[str, Any]:
    """The JSON object in ``path``; ``error`` naming the file (and ``expected``, what it should
    hold) when it cannot be read, is not JSON, or holds something other than an object."""
    try:
        content = path.read_bytes().decode("utf-8")
    except OSError as problem:
        raise error(f"cannot read {path} ({problem.strerror or problem}); expected {expected}") from None
    except UnicodeDecodeError:
        raise error(f"{path} is not valid JSON (it is not UTF-8 text); expected {expected}") from None
    if not content.strip():
        raise error(f"{path} is empty; expected {expected}")
    try:
        record = json.loads(content)
    except json.JSONDecodeError as problem:
        raise error(f"{path} is not valid JSON (line {problem.lineno} column {problem.colno}: "
                    f"{problem.msg}); expected {expected}") from None
    if not isinstance(record, dict):
        raise error(f"{path} is not a JSON object (it holds {_JSON_KINDS[type(record)]}); "
                    f"expected {expected}")
    return record


_JSON_KINDS = {list: "an array", str: "a string", int: "a number", float: "a number",
               bool: "a boolean", type(None): "null"}


def read_safetensors(path: Path, error: type[UserError], expected: str) -> dict[str, torch.Tensor]:
    """The tensors in a safetensors file; ``error`` naming the file when it cannot be read
    (empty, truncated, overwritten, or a header that claims more than the file holds)."""
    try:
        return load_file(str(path))
    except SafetensorError as problem:
        reason = str(problem).removeprefix("Error while deserializing header: ")
        raise error(f"{path} is not a readable safetensors file ({reason}); expected {expected} "
                    f"(is it truncated or overwritten?)") from None
    except OSError as problem:
        raise error(f"cannot read {path} ({problem.strerror or problem}); expected {expected}") from None


def weights_mismatch(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor],
                     ignored: tuple[str, ...] = ()) -> str | None:
    """What keeps ``state`` from loading into a module whose state dict is ``expected`` (names
    ending in ``ignored`` may be absent or extra), or None."""
    problems = []
    for name, tensor in state.items():
        if name not in expected:
            if not name.endswith(ignored):
                problems.append(f"unexpected weight {name}")
        elif tuple(tensor.shape) != tuple(expected[name].shape):
            problems.append(f"{name} has shape {tuple(tensor.shape)}, the config says "
                            f"{tuple(expected[name].shape)}")
    problems += [f"missing weight {name}" for name in expected
                 if name not in state and not name.endswith(ignored)]
    more = f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
    return "; ".join(problems[:3]) + more if problems else None


def input_kind(path: Path, error: type[UserError], what: str, expected: str,
               max_bytes: int) -> str:
    """"file" or "directory": what a path a user gave to read is. ``error``, one line naming
    ``what`` and the path and saying what is ``expected``, for one that does not exist, is a
    broken link or a symlink loop, is neither a regular file nor a directory (a device or a
    FIFO: /dev/zero never ends, a FIFO without a writer never starts), or is a file of more
    than ``max_bytes`` (it would be read into memory whole)."""
    try:
        info = path.stat()
    except FileNotFoundError:
        if path.is_symlink():
            raise error(f"{what} {path} is a symlink to {os.readlink(path)}, which does not "
                        f"exist; give {expected}") from None
        raise error(f"{what} {path} does not exist; give {expected}") from None
    except OSError as problem:
        if problem.errno == errno.ELOOP:
            raise error(f"{what} {path} is a symlink loop (its links lead back to themselves); "
                        f"give {expected}") from None
        raise error(f"{what} {path} cannot be read ({first_line(problem)})") from None
    if stat.S_ISDIR(info.st_mode):
        return "directory"
    if not stat.S_ISREG(info.st_mode):
        raise error(f"{what} {path} is not a regular file (a device, a FIFO or a socket); "
                    f"give {expected}")
    if info.st_size > max_bytes:
        raise error(f"{what} {path} holds {info.st_size:,} bytes, more than the {max_bytes:,} "
                    f"it may (it is read into memory whole); give a part of it")
    return "file"


def positive_int(value: Any) -> bool:
    """Whether a value read from JSON is a positive integer (not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (some span many lines), shortened."""
    lines = str(error).strip().splitlines()
    line = lines[0] if lines else type(error).__name__
    return line if len(line) <= 160 else line[:159] + "…"
