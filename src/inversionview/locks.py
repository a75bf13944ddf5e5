"""One process at a time in a directory that a long command writes in: a training run's
``--out`` (the trainers and their commands), a report's (``reproduce``).

    with hold_directory(out):   # a DirectoryInUseError at once if another process holds it
        ...                     # train, checkpoint, save the result

The hold is an advisory lock (``flock``) on ``LOCK_FILE`` inside the directory, which names
the process that holds it. The lock dies with its process, so a killed run leaves nothing
that blocks its ``--resume``.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from inversionview.errors import OptionError, UserError
from inversionview.provenance import command_line

try:
    import fcntl
except ImportError:  # Windows: no flock; directories are not held
    fcntl = None

LOCK_FILE = ".inversionview.lock"  # who holds the directory; removed when the hold ends


class DirectoryInUseError(UserError):
    """Another process holds the directory."""

    status_code = 409


# The directories this process holds: real path -> nested holds. A flock belongs to an open
# file, so this process's own second open would be refused by its first; a command and the
# trainer it calls both hold the run directory.
_held: dict[str, int] = {}


@contextlib.contextmanager
def hold_directory(directory: Path) -> Iterator[Path]:
    """Hold ``directory`` (created if missing) for this process until the block ends; while
    it is held another process asking for it gets a ``DirectoryInUseError`` at once, naming
    the process that holds it. Holds of one process nest. The lock file is removed when the
    hold ends (a killed process leaves it behind, harmless: its lock is gone), and so are
    the directories the hold created, if the block left them empty (a command refused
    after the hold leaves nothing behind)."""
    directory = Path(directory)
    created = _missing(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OptionError(f"--out {directory}: cannot create it ({error.strerror or error})") from None
    key = os.path.realpath(directory)
    if key in _held or fcntl is None:
        _held[key] = _held.get(key, 0) + 1
        try:
            yield directory
        finally:
            _held[key] -= 1
            if not _held[key]:
                del _held[key]
        return
    path = directory / LOCK_FILE
    descriptor = _lock(path, directory)
    _held[key] = 1
    try:
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, json.dumps(_holder_record()).encode(), 0)
        yield directory
    finally:
        del _held[key]
        with contextlib.suppress(OSError):
            os.unlink(path)  # still locked: a process that opened it meanwhile retries
        os.close(descriptor)
        for made in created:  # innermost first; one that holds anything stays, and its parents
            try:
                made.rmdir()
            except OSError:
                break


def _missing(directory: Path) -> list[Path]:
    """``directory`` and its ancestors that do not exist yet, innermost first."""
    missing = []
    while not directory.exists() and not directory.is_symlink() and directory != directory.parent:
        missing.append(directory)
        directory = directory.parent
    return missing


def _lock(path: Path, directory: Path) -> int:
    """A descriptor of ``path`` whose flock this process holds."""
    while True:
        try:
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise OptionError(f"--out {directory}: cannot write in it ({error.strerror or error})"
                              ) from None
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe_holder(descriptor)
            os.close(descriptor)
            raise DirectoryInUseError(f"{directory} is in use by {holder}; wait for it to end "
                                      f"(or stop it), or give another --out") from None
        except OSError:  # a file system without locks: go on, unheld
            return descriptor
        try:
            current = os.path.samestat(os.fstat(descriptor), os.stat(path))
        except FileNotFoundError:
            current = False
        if current:
            return descriptor
        os.close(descriptor)  # the last holder removed the file after we opened it


def _holder_record() -> dict[str, Any]:
    return {"pid": os.getpid(), "command": command_line(),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}


def _describe_holder(descriptor: int) -> str:
    """'process 123 (inversionview train-lm ..., started ...)' from a lock file, or 'another
    process' while it says nothing readable (its holder has not written it yet)."""
    try:
        record = json.loads(os.pread(descriptor, 65_536, 0).decode("utf-8"))
        pid, command, started = int(record["pid"]), str(record["command"]), record["started"]
    except (OSError, ValueError, TypeError, KeyError):
        return "another process"
    if len(command) > 160:
        command = command[:159] + "…"
    return f"process {pid} ({command}, started {started})"
