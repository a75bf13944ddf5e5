"""Positions over any tokenisation: how a user names the token a query reads.

A position is resolved against a text's token strings (index 0 is BOS):

    7, -1            an index; negative ones count back from the last real token (-1)
    last             the last real token (EOS and padding are never real)
    bos              index 0
    ' John'          the token(s) spelling `` John`` (quote with ', " or `); when the text
                     spells it more than once, say which: ``first ' John'``, ``last ' John'``,
                     ``2 ' John'`` (the second). A string the tokenizer cut into several
                     tokens names the last of them (where a model has read the whole word).
    a task's name    a named position of a task (``:`` for counting, ``IO`` for IOI, ...)

A match compares the exact token strings first; if nothing matches exactly, surrounding
spaces are ignored (so ``'John'`` finds `` John``).
"""

from __future__ import annotations

import re

from inversionview.errors import UserError, echo

POSITION_HELP = ("an index (0 = BOS, -1 = the last token), last, bos, or a quoted token such "
                 "as \"' John'\", \"first ' John'\", \"last ' John'\", \"2 ' John'\"")

_MATCH = re.compile(r"^(?:(first|last|[0-9]+)\s+)?(['\"`])(.*)\2$", re.DOTALL)


class PositionError(UserError, ValueError):
    """A position that cannot be parsed, or that the text does not have."""


def resolve(tokens: list[str], spec: str | int, named: dict[str, int] | None = None,
            real: int | None = None) -> int:
    """The index of ``spec`` in a text given as its token strings (BOS first).

    ``real``: how many of ``tokens`` are real (BOS + text); the rest (EOS, PAD) can be
    neither ``last`` nor a match. ``named``: a task's named positions of this text."""
    real = len(tokens) if real is None else real
    if isinstance(spec, int) or re.fullmatch(r"\s*-?[0-9]+\s*", str(spec)):
        index = int(spec)
        resolved = index if index >= 0 else real + index
        if not 0 <= resolved < real:
            raise PositionError(f"position {index} is outside the input, whose positions are "
                                f"0..{real - 1} (or -1..-{real})")
        return resolved
    text = str(spec).strip()
    if named and text in named:
        return named[text]
    if text.lower() == "last":
        return real - 1
    if text.lower() == "bos":
        return 0
    match = _MATCH.fullmatch(text)
    if match is None:
        names = f", or one of the task's: {', '.join(named)}" if named else ""
        raise PositionError(f"cannot read position {echo(spec)}; use {POSITION_HELP}{names}")
    which, _, wanted = match.groups()
    ends = token_matches(tokens[1:real], wanted)
    ends = [end + 1 for end in ends]  # back to indices with BOS at 0
    if not ends:
        raise PositionError(f"the input has no token {wanted!r}; its tokens: "
                            f"{show_tokens(tokens[1:real])}")
    if which is None:
        if len(ends) > 1:
            raise PositionError(f"{wanted!r} occurs {len(ends)} times (at {', '.join(map(str, ends))}); "
                                f"say which: first {spec}, last {spec} or 2 {spec}")
        return ends[0]
    if which == "first":
        return ends[0]
    if which == "last":
        return ends[-1]
    occurrence = int(which)
    if not 1 <= occurrence <= len(ends):
        raise PositionError(f"{wanted!r} occurs {len(ends)} time(s), so there is no occurrence "
                            f"{occurrence}")
    return ends[occurrence - 1]


def show_tokens(tokens: list[str], limit: int = 16) -> str:
    """Token strings for a message: quoted so spaces show, the first ``limit`` of them."""
    shown = ", ".join(repr(token) for token in tokens[:limit])
    return shown + (f", … ({len(tokens)} tokens)" if len(tokens) > limit else "")


def token_matches(tokens: list[str], wanted: str) -> list[int]:
    """Indices of the last token of every run of consecutive tokens that spells ``wanted``
    exactly, or, if there is none, up to surrounding spaces."""
    for compare in (lambda s: s, str.strip):
        target = compare(wanted)
        if not target:
            continue
        ends = []
        for start in range(len(tokens)):
            spelled = ""
            for end in range(start, len(tokens)):
                spelled += tokens[end]
                if compare(spelled) == target:
                    ends.append(end)
                    break
                if len(spelled.strip()) > len(target) + 1:
                    break
        if ends:
            return sorted(set(ends))
    return []
