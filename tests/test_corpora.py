"""The KJV corpus from Debian's bible-kjv: the parser on a literal sample of the ``bible``
command's output, the whole text when the command is installed, and the errors."""

import hashlib
import shutil

import pytest

from inversionview import corpora
from inversionview.corpora import (CorpusToolError, KJV_VERSES, parse_bible_output, write_kjv,
                                   write_lines)
from inversionview.errors import UserError

# As `bible -m 40000 "Gen1:1-3" ...` prints it: a blank line and a header per chapter, then
# "  N text" with the text wrapped at 79 columns onto lines that start in column 0.
SAMPLE = """
Genesis 1

  1 In the beginning God created the heaven and the earth.
  2 And the earth was without form, and void; and darkness was upon the face of
the deep. And the Spirit of God moved upon the face of the waters.

Song of Solomon 2

  1 I am the rose of Sharon, and the lily of the valleys.

1 Samuel 3

  10 And the LORD came, and stood, and called as at other times, Samuel, Samuel.
Then Samuel answered, Speak; for thy servant heareth.
  11 And the LORD said to Samuel, Behold, I will do a thing in Israel, at which
both the ears of every one that heareth it shall tingle.
"""

EXPECTED = [
    "In the beginning God created the heaven and the earth.",
    "And the earth was without form, and void; and darkness was upon the face of the deep. "
    "And the Spirit of God moved upon the face of the waters.",
    "I am the rose of Sharon, and the lily of the valleys.",
    "And the LORD came, and stood, and called as at other times, Samuel, Samuel. Then Samuel "
    "answered, Speak; for thy servant heareth.",
    "And the LORD said to Samuel, Behold, I will do a thing in Israel, at which both the ears "
    "of every one that heareth it shall tingle.",
]

needs_bible = pytest.mark.skipif(shutil.which("bible") is None,
                                 reason="the bible command (apt-get install bible-kjv) is absent")


def test_the_parser_joins_wrapped_verses_and_drops_numbers_and_headers():
    assert parse_bible_output(SAMPLE) == EXPECTED


def test_a_line_the_parser_does_not_expect_is_a_one_line_error():
    with pytest.raises(CorpusToolError, match="unexpected line.*'stray text'"):
        parse_bible_output("\nGenesis 1\nstray text\n  1 In the beginning\n")


def test_a_missing_bible_command_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(corpora.shutil, "which", lambda name: None)
    with pytest.raises(UserError, match="install it with apt-get install bible-kjv") as error:
        corpora.kjv_verses()
    assert "\n" not in str(error.value)


def test_write_lines_refuses_texts_that_are_not_one_line(tmp_path):
    with pytest.raises(UserError, match="text 2 is empty or holds a line break"):
        write_lines(["one", "two\nthree"], tmp_path / "x.txt")
    with pytest.raises(UserError, match="text 1 is empty"):
        write_lines(["  "], tmp_path / "x.txt")


@needs_bible
def test_the_whole_kjv_one_verse_a_line_the_same_bytes_every_time(tmp_path):
    first = write_kjv(tmp_path / "a" / "kjv.txt")
    second = write_kjv(tmp_path / "b.txt")
    data = (tmp_path / "a" / "kjv.txt").read_bytes()
    assert first["sha256"] == second["sha256"] == hashlib.sha256(data).hexdigest()
    assert data == (tmp_path / "b.txt").read_bytes()
    lines = data.decode("utf-8").split("\n")
    assert lines[-1] == "" and len(lines) - 1 == first["lines"] == KJV_VERSES
    assert lines[0] == "In the beginning God created the heaven and the earth."
    assert lines[1] == EXPECTED[1]
    assert lines[-2] == "The grace of our Lord Jesus Christ be with you all. Amen."
    assert "Jesus wept." in lines  # John 11:35, a verse on a line of its own
    assert all(line == " ".join(line.split()) and not line[0].isdigit() for line in lines[:-1])
    assert "public domain" in first["licence"]
