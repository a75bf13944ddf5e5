"""Run the ``inversionview`` command in-process the way a user's shell does: through
``inversionview.cli.run``, which turns errors into one line and an exit status (typer's own
CliRunner calls the app directly and would show exceptions instead)."""

from __future__ import annotations

import io
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass

from inversionview.cli import run


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def invoke(args: list) -> CliResult:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = run([str(arg) for arg in args])
    return CliResult(code, out.getvalue(), err.getvalue())
