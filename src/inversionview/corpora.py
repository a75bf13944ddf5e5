"""Text corpora that install offline from a package registry, written as one text per line.

The King James Version of the Bible comes with Debian's ``bible-kjv`` package
(``apt-get install bible-kjv``): its ``bible`` command prints any passage. The KJV text is
in the public domain (the translation dates from 1611); the ``bible`` program is GPL-2+
(``/usr/share/doc/bible-kjv-text/copyright``). ``kjv_verses()`` runs the command for the
whole Bible and returns its 31,102 verses in canonical order, one string each, without
book headers or verse numbers:

    write_kjv("data/kjv.txt")   # 31,102 lines, the same bytes on every run

The command prints a chapter as a header line after a blank line (``Genesis 1``), then
each verse as ``  N text`` with the text wrapped over further lines that start in column 0.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from pathlib import Path

from inversionview.errors import UserError

#: The whole Bible as a ``bible`` passage range.
KJV_RANGE = "Gen1:1-Rev22:21"
#: The number of verses in the KJV (and of lines ``kjv_verses`` returns).
KJV_VERSES = 31_102
KJV_LICENCE = ("King James Version text: public domain (1611); read with the 'bible' program "
               "of Debian's bible-kjv package (GPL-2+)")

_VERSE = re.compile(r"^\s+(\d+) (.*)$")


class CorpusToolError(UserError):
    """A program that writes a corpus is missing or failed."""


def bible_output(passage: str = KJV_RANGE, program: str = "bible") -> str:
    """The text the ``bible`` command prints for ``passage`` (the whole Bible by default)."""
    path = shutil.which(program)
    if path is None:
        raise CorpusToolError(f"the {program!r} command is not installed; install it with "
                              f"apt-get install bible-kjv")
    try:
        # -m: the most verses one passage may print (the whole Bible is 31,102).
        result = subprocess.run([path, "-m", "40000", passage], capture_output=True,
                                timeout=120, check=False)
    except (OSError, subprocess.SubprocessError) as error:
        raise CorpusToolError(f"{program} {passage} could not run ({error})") from None
    if result.returncode != 0:
        message = result.stderr.decode("utf-8", "replace").strip().splitlines()
        raise CorpusToolError(f"{program} {passage} failed with status {result.returncode}"
                              f"{': ' + message[0] if message else ''}")
    try:
        return result.stdout.decode("utf-8")
    except UnicodeDecodeError as error:
        raise CorpusToolError(f"{program} {passage} printed bytes that are not UTF-8 "
                              f"(byte {error.start})") from None


def parse_bible_output(text: str) -> list[str]:
    """The verses of the ``bible`` command's output, in order: each verse's lines joined
    with single spaces, its number and the chapter headers dropped."""
    verses: list[str] = []
    current: list[str] | None = None
    previous_blank = True
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            previous_blank = True
            continue
        match = _VERSE.match(line)
        if match:
            if current is not None:
                verses.append(" ".join(current))
            current = [match.group(2).strip()]
        elif previous_blank and not line[0].isspace():
            # A chapter header ("Genesis 1", "Song of Solomon 2"): the verse before it ends.
            if current is not None:
                verses.append(" ".join(current))
            current = None
        elif current is not None:
            current.append(stripped)  # the verse's text wrapped onto the next line
        else:
            raise CorpusToolError(f"unexpected line in the bible command's output: {line[:60]!r}; "
                                  f"expected a chapter header or a numbered verse")
        previous_blank = False
    if current is not None:
        verses.append(" ".join(current))
    return [" ".join(verse.split()) for verse in verses]


def kjv_verses() -> list[str]:
    """The 31,102 verses of the King James Version, one string each (module docstring)."""
    verses = parse_bible_output(bible_output(KJV_RANGE))
    if len(verses) != KJV_VERSES:
        raise CorpusToolError(f"the bible command printed {len(verses):,} verses; the KJV has "
                              f"{KJV_VERSES:,} (is the bible-kjv package complete?)")
    return verses


def write_lines(texts: list[str], path: str | Path) -> dict[str, object]:
    """Write ``texts`` one per line (UTF-8, ``\\n`` endings) to ``path``; return the file's
    name, line count and sha256 for a manifest."""
    for number, text in enumerate(texts, start=1):
        if "\n" in text or "\r" in text or not text.strip():
            raise UserError(f"text {number} is empty or holds a line break; a corpus file "
                            f"holds one non-empty text per line")
    data = "".join(text + "\n" for text in texts).encode("utf-8")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return {"path": str(path), "lines": len(texts), "sha256": hashlib.sha256(data).hexdigest()}


def write_kjv(path: str | Path) -> dict[str, object]:
    """Write the KJV to ``path``, one verse per line; return its record (with the licence)."""
    return {"name": "kjv", **write_lines(kjv_verses(), path), "licence": KJV_LICENCE}


__all__ = ["CorpusToolError", "KJV_LICENCE", "KJV_VERSES", "bible_output", "kjv_verses",
           "parse_bible_output", "write_kjv", "write_lines"]
