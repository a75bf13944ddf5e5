"""Where a language model's inputs come from: a text corpus on disk, or a fixed list of texts.

A corpus is read once and tokenised in one batch call; each text is cut into pieces of at
most ``max_tokens`` tokens (a long line gives several inputs, none is dropped), duplicates
are removed, and a fixed, seeded share of the pieces is held out for evaluation. Every input
is ``BOS + piece + EOS``, right-padded with PAD:

    source = CorpusSource.from_path("kjv.txt", tokenizer, max_tokens=32)
    tokens = source.sample_tokens(256, torch.Generator().manual_seed(0))  # [256, 34]

Formats (by the path): a ``.txt`` file (one text per non-empty line), a ``.jsonl`` file (one
JSON object per line; the text is its ``field``), or a local ``datasets`` directory written
by ``Dataset.save_to_disk`` (its ``field`` column; of a ``DatasetDict``, the ``train`` split).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from inversionview.errors import UserError
from inversionview.files import first_line, input_kind

CORPUS_FORMATS = "a .txt file (one text per line), a .jsonl file or a datasets directory"
# A corpus is held in memory whole and tokenised in one call, several times its size: 1 GiB
# of text is about what a 24 GB machine takes (the corpora here are 4-40 MB). A line is one
# text; a line of a million bytes is a file without line breaks, or not text.
MAX_CORPUS_BYTES = 1024**3
MAX_LINE_BYTES = 1_000_000


class CorpusError(UserError, ValueError):
    """A corpus that cannot be read, or that holds no text."""


def read_texts(path: str | Path, field: str = "text", what: str = "corpus") -> list[str]:
    """The texts of a corpus file or directory (see the module docstring), in file order;
    a CorpusError, its message starting ``what`` and the path (``--text empty.txt``), for
    one that does not exist, is not a regular file or a directory (a device, a FIFO), is
    larger than MAX_CORPUS_BYTES, has a line longer than MAX_LINE_BYTES, or holds no text."""
    path = Path(path).expanduser()
    kind = input_kind(path, CorpusError, what, CORPUS_FORMATS, MAX_CORPUS_BYTES)
    if kind == "directory":
        texts = _read_datasets_directory(path, field)
    elif path.suffix == ".jsonl":
        texts = _read_jsonl(path, field, what)
    elif path.suffix in (".txt", ".text", ""):
        texts = [line.rstrip() for line in _read_lines(path, what) if line.strip()]
    else:
        raise CorpusError(f"{what} {path} has the suffix {path.suffix!r}; give {CORPUS_FORMATS}")
    if not texts:
        raise CorpusError(f"{what} {path} holds no text (no line with more than spaces); "
                          f"give {CORPUS_FORMATS}")
    return texts


def _read_lines(path: Path, what: str) -> list[str]:
    """The file's lines (as ``str.splitlines`` splits them), read a line at a time so that
    neither a line nor the file can grow past its limit in memory."""
    lines: list[str] = []
    read = 0
    try:
        with path.open("rb") as file:
            while True:
                raw = file.readline(MAX_LINE_BYTES + 1)
                if not raw:
                    return lines
                if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                    raise CorpusError(f"{what} {path}, line {len(lines) + 1}: longer than "
                                      f"{MAX_LINE_BYTES:,} bytes; give one text per line")
                try:
                    lines.extend(raw.decode("utf-8").splitlines())
                except UnicodeDecodeError as error:
                    raise CorpusError(f"{what} {path} is not UTF-8 text (byte "
                                      f"{read + error.start}); give {CORPUS_FORMATS}") from None
                read += len(raw)
                if read > MAX_CORPUS_BYTES:  # a file that grows while it is read
                    raise CorpusError(f"{what} {path} holds more than the {MAX_CORPUS_BYTES:,} "
                                      "bytes a corpus may; give a part of it")
    except OSError as error:
        raise CorpusError(f"{what} {path} cannot be read ({first_line(error)})") from None


def _read_jsonl(path: Path, field: str, what: str) -> list[str]:
    texts = []
    for number, line in enumerate(_read_lines(path, what), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise CorpusError(f"{path}, line {number}: not JSON ({error.msg}); expected one "
                              f"object per line with a {field!r} field") from None
        if not isinstance(record, dict) or not isinstance(record.get(field), str):
            raise CorpusError(f"{path}, line {number}: expected an object with a text field "
                              f"{field!r} (choose the field with --field)")
        if record[field].strip():
            texts.append(record[field])
    return texts


def _read_datasets_directory(path: Path, field: str) -> list[str]:
    try:
        import datasets
    except ImportError:
        raise CorpusError(f"corpus {path} is a directory, which needs the datasets package "
                          f"(pip install datasets)") from None
    try:
        loaded = datasets.load_from_disk(str(path))
    except (FileNotFoundError, OSError, ValueError) as error:
        raise CorpusError(f"corpus {path} is not a directory written by datasets' "
                          f"save_to_disk ({first_line(error)}); give {CORPUS_FORMATS}") from None
    if isinstance(loaded, datasets.DatasetDict):
        if "train" not in loaded:
            raise CorpusError(f"corpus {path} has the splits {', '.join(loaded)} and no 'train'")
        loaded = loaded["train"]
    if field not in loaded.column_names:
        raise CorpusError(f"corpus {path} has no column {field!r}; its columns: "
                          f"{', '.join(loaded.column_names)} (choose one with --field)")
    return [text for text in loaded[field] if isinstance(text, str) and text.strip()]


class CorpusSource:
    """Seeded inputs drawn uniformly from the pieces of a corpus (module docstring)."""

    def __init__(self, texts: list[str], tokenizer, max_tokens: int = 32,
                 held_out_fraction: float = 0.01, name: str = "<texts>"):
        if max_tokens < 1:
            raise CorpusError(f"max_tokens must be at least 1, got {max_tokens}")
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.name = name
        pieces = _pieces(tokenizer.encode_many(list(texts)), max_tokens)
        if not pieces:
            raise CorpusError(f"corpus {name} holds no text")
        # A piece's split is fixed by its content, not by the order of the file.
        held = [p for p in pieces if _held_out(p, held_out_fraction)]
        train = [p for p in pieces if not _held_out(p, held_out_fraction)] or held
        self.train, self.held_out = _Pieces(train), _Pieces(held or train)
        # False when the corpus is too small for the fraction (or it is 0): then "held out"
        # and train are the same pieces, and a held-out loss is a training loss.
        self.held_out_is_separate = 0 < len(held) < len(pieces)
        self.n_ctx = max_tokens + 2  # BOS + piece + EOS

    @classmethod
    def from_path(cls, path: str | Path, tokenizer, max_tokens: int = 32, field: str = "text",
                  held_out_fraction: float = 0.01) -> "CorpusSource":
        return cls(read_texts(path, field), tokenizer, max_tokens, held_out_fraction, str(path))

    def sample_tokens(self, n: int, generator: torch.Generator, held_out: bool = False
                      ) -> torch.Tensor:
        """``[n, max_tokens + 2]`` inputs, BOS + piece + EOS then PAD."""
        pieces = self.held_out if held_out else self.train
        chosen = torch.randint(len(pieces), (n,), generator=generator)
        return pieces.batch(chosen, self.n_ctx, self.tokenizer)

    def __len__(self) -> int:
        return len(self.train)

    def describe(self) -> str:
        return (f"{self.name}: {len(self.train):,} pieces of at most {self.max_tokens} tokens "
                f"({len(self.held_out):,} held out)")


def _pieces(rows: list[list[int]], max_tokens: int) -> list[tuple[int, ...]]:
    seen: set[tuple[int, ...]] = set()
    pieces = []
    for ids in rows:
        for start in range(0, len(ids), max_tokens):
            piece = tuple(ids[start:start + max_tokens])
            if piece and piece not in seen:
                seen.add(piece)
                pieces.append(piece)
    return pieces


def _held_out(piece: tuple[int, ...], fraction: float) -> bool:
    # A fixed hash (not Python's salted hash()): the same corpus splits the same way every run.
    key = 0
    for token in piece:
        key = (key * 1_000_003 + token + 1) % 2_147_483_647
    return (key % 10_000) < fraction * 10_000


class _Pieces:
    """Pieces stored flat (ids + offsets), so a batch is gathered without a Python loop."""

    def __init__(self, pieces: list[tuple[int, ...]]):
        self.lengths = torch.tensor([len(p) for p in pieces], dtype=torch.long)
        self.offsets = torch.cumsum(self.lengths, 0) - self.lengths
        self.ids = torch.tensor([token for piece in pieces for token in piece], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.lengths)

    def batch(self, chosen: torch.Tensor, length: int, tokenizer) -> torch.Tensor:
        lengths = self.lengths[chosen]
        batch = torch.full((len(chosen), length), tokenizer.pad_id, dtype=torch.long)
        batch[:, 0] = tokenizer.bos_id
        column = torch.arange(length - 1)
        inside = column[None, :] < lengths[:, None]  # [n, length - 1]
        source = (self.offsets[chosen][:, None] + column[None, :]).clamp(max=len(self.ids) - 1)
        body = torch.where(inside, self.ids[source], torch.full_like(source, tokenizer.pad_id))
        batch[:, 1:] = body
        batch[torch.arange(len(chosen)), lengths + 1] = tokenizer.eos_id
        return batch


def texts_source(texts: list[str], tokenizer, max_tokens: int = 32) -> CorpusSource:
    """A source over a fixed list of texts (nothing held out: every text is trained on)."""
    if not texts:
        raise CorpusError("the list of texts is empty")
    return CorpusSource(texts, tokenizer, max_tokens, held_out_fraction=0.0,
                        name=f"{len(texts)} texts")


__all__ = ["CORPUS_FORMATS", "MAX_CORPUS_BYTES", "MAX_LINE_BYTES", "CorpusError", "CorpusSource",
           "read_texts", "texts_source"]
