"""The one error type for anything a user gave that cannot be used.

Every error a user can cause and act on (a malformed option, an unknown site, a broken model
file, a decoder for another model) is a ``UserError``: its message says what was wrong, what
is allowed and where it came from, in one line. The CLI prints it as ``error: <message>`` and
exits with status 2; the server answers it with ``status_code`` (4xx) and
``{"detail": <message>}``. Anything else that escapes is a bug.

The specific errors (``TaskInputError``, ``SiteError``, ``ModelLoadError``,
``DecoderLoadError``, ``OptionError``) subclass it; they also subclass ``ValueError`` so that
library callers who caught ``ValueError`` keep working.
"""

from __future__ import annotations

MAX_ECHO = 80  # characters of a user's text repeated back in a message


class UserError(Exception):
    """Input that cannot be used; ``str(error)`` is one line for the user."""

    status_code = 400

    def __init__(self, message: str, status_code: int | None = None):
        super().__init__(" ".join(str(message).split("\n")))
        if status_code is not None:
            self.status_code = status_code


class OptionError(UserError, ValueError):
    """An option's value is out of its range or of the wrong kind (see ``options``)."""


def echo(text: object, limit: int = MAX_ECHO) -> str:
    """``repr`` of a user's text, shortened to about ``limit`` characters, for a message: a
    5,000-character input is not echoed back whole."""
    shown = repr(text)
    if len(shown) <= limit:
        return shown
    length = f" ({len(text):,} characters)" if isinstance(text, str) else ""
    return shown[: limit - 1] + "…" + length
