"""The ``inversionview`` command: a thin shell over the library.

Every command but ``serve`` takes ``--json`` to print one JSON object instead of the human
view. ``run(argv)`` is the entry point: an error a user can act on (a ``UserError``: bad
input, an unknown site, a broken model file; or a usage error) prints one line and exits
with status 2; options are checked against ``options`` while parsing, and output paths
before any long work.

One module per command group, each adding its commands to ``app`` (``cli/app.py``), in the
order ``--help`` lists them; the options they declare alike are in ``cli/common.py``:

- ``models``: models, eval-probed, activation, inspect;
- ``train``: train-probed, train-decoder, export-decoder, decoders; ``train_lm``: train-lm;
- ``query``: query, completeness, serve;
- ``verify``: patch, verify, dla, ablate;
- ``ioi`` and ``factual``: the case studies' command groups;
- ``interpret``: summarize, interpret, reproduce.
"""

from __future__ import annotations

import os
import re

import typer

from inversionview.cli.app import app
# Each module adds its commands when imported: this order is --help's.
from inversionview.cli import models, train, query, verify  # noqa: E402,F401  isort: skip
from inversionview.cli import train_lm, ioi, factual, interpret  # noqa: E402,F401  isort: skip
from inversionview.errors import MAX_ECHO, UserError, echo

__all__ = ["app", "main", "run"]


def run(argv: list[str] | None = None) -> int:
    """Run one command line (``argv`` without the program name; default: ``sys.argv[1:]``)
    and return its exit status: 0 done, 2 a usage or user error (one line on stderr), 1 a bug
    (one line naming it; INVERSIONVIEW_DEBUG=1 shows the traceback), 130 interrupted."""

    command = typer.main.get_command(app)
    try:
        status = command.main(args=argv, prog_name="inversionview", standalone_mode=False)
    except typer.Exit as error:
        return error.exit_code
    except UserError as error:
        _error_line(str(error))
        return 2
    except (KeyboardInterrupt, typer.Abort):
        _error_line("interrupted")
        return 130
    except Exception as error:
        if _is_usage_error(error):  # a bad flag or value, a missing argument
            message = error.format_message()
            if not message:  # `inversionview` alone: the help was shown
                return 0
            context = getattr(error, "ctx", None)
            hint = f" (see `{context.command_path} --help`)" if context is not None else ""
            _error_line(_LONG_QUOTED.sub(lambda match: echo(match.group(1)), message) + hint)
            return 2
        if os.environ.get("INVERSIONVIEW_DEBUG"):
            raise
        _error_line(f"internal error ({type(error).__name__}: {error}); this is a bug, please "
                    f"report it with the command line (INVERSIONVIEW_DEBUG=1 shows the traceback)")
        return 1
    return status if isinstance(status, int) else 0  # typer's own Ctrl-C handling: 130


_LONG_QUOTED = re.compile(r"'([^']{%d,})'" % MAX_ECHO)  # a long value click quotes back whole


def _is_usage_error(error: Exception) -> bool:
    """click's ClickException and its subclasses (typer ships its own copy of click, so the
    class is recognised by shape, not by import)."""
    return hasattr(error, "format_message") and isinstance(getattr(error, "exit_code", None), int)


def _error_line(message: str) -> None:
    typer.secho(f"error: {' '.join(message.split())}", err=True, fg=typer.colors.RED)


def main() -> None:
    raise SystemExit(run())
