"""Where a result came from: the commit, the machine and the command.

Manifests hold no absolute path of the machine that wrote them: a bundled artifact is named
(``counting``), any other path is written relative to the directory the command ran in (the
repository root, in the README's commands); ``portable_path`` does both.
"""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch


def commit() -> str:
    """The git commit of the source tree this package runs from ("unknown" outside git)."""
    root = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                              text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def machine() -> dict[str, object]:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def portable_path(path: str | Path) -> str:
    """``path`` as a manifest stores it: the name of the bundled artifact it is, else
    relative to the current directory. Anything that is not an existing path (a hub name,
    ``<random init>``) is returned unchanged."""
    from inversionview.artifacts import list_artifacts

    text = str(path)
    if not os.path.exists(text):
        return text
    resolved = Path(text).resolve()
    for name, (directory, _) in list_artifacts().items():
        # The name must load the same thing from here: no directory of that name in the way.
        if directory.resolve() == resolved and not os.path.exists(name):
            return name
    try:
        return os.path.relpath(os.path.abspath(text))
    except ValueError:  # another drive (Windows)
        return text


def command_line() -> str:
    """This process's command line, with ``inversionview`` as the program however it was
    started (``python -m inversionview.cli``, the console script) and absolute paths made
    portable (see ``portable_path``)."""
    program = Path(sys.argv[0]).name if sys.argv else "python"
    if program in ("cli.py", "__main__.py"):
        program = "inversionview"
    return shlex.join([program, *(_portable_argument(a) for a in sys.argv[1:])])


def _portable_argument(argument: str) -> str:
    flag, equals, value = ("", "", argument)
    if argument.startswith("--"):
        flag, equals, value = argument.partition("=")
    if os.path.isabs(value) and os.path.exists(value):
        return flag + equals + portable_path(value)
    return argument


def command_entry(resumed_from_step: int | None) -> dict[str, Any]:
    """One entry of a manifest's command history: the command, when it started (UTC), the
    commit it ran and the step it resumed from (None: it started the run)."""
    return {"command": command_line(),
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "commit": commit(), "resumed_from_step": resumed_from_step}
