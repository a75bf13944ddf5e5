"""The range of every number a user can set (and the few named choices, ``Choice``), in one
place, shared by the library, the CLI and the JSON API.

    CANDIDATES.check(2_000_000)   # OptionError: candidates must be an integer from 1 to 32,768; got 2000000
    typer.Option("--candidates", callback=CANDIDATES.callback)       # the CLI: a usage error
    Field(1024, **SERVER_CANDIDATES.bounds)                          # the API schema: 422

The library checks its arguments with these (``QueryConfig``, the training configs), so a
notebook user gets the same message as the CLI; the CLI checks them while parsing, before
anything loads; the API's pydantic schemas take their bounds from the same objects, so the
OpenAPI schema says exactly what the server accepts.
"""

from __future__ import annotations

import errno
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from inversionview.errors import OptionError, echo


@dataclass(frozen=True)
class Range:
    """A closed (or, at the bottom, open) interval of integers or finite floats."""

    name: str
    low: float
    high: float
    integer: bool = True
    low_open: bool = False  # low itself is excluded (e.g. epsilon > 0)

    def describe(self) -> str:
        if self.integer:
            return f"an integer from {self.low:,} to {self.high:,}"
        low = f"greater than {self.low:g}" if self.low_open else f"at least {self.low:g}"
        return f"a finite number {low} and at most {self.high:g}"

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is not allowed (None when it is)."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"must be {self.describe()}; got {echo(value)}"
        if self.integer and not isinstance(value, int):
            if not (math.isfinite(value) and value == int(value)):
                return f"must be {self.describe()}; got {value!r}"
        if not math.isfinite(value):
            return f"must be {self.describe()}; got {value}"
        below = value <= self.low if self.low_open else value < self.low
        if below or value > self.high:
            return f"must be {self.describe()}; got {value}"
        return None

    def check(self, value: Any) -> Any:
        """``value`` (an int for integer ranges), or OptionError naming the option."""
        problem = self.problem(value)
        if problem is not None:
            raise OptionError(f"{self.name} {problem}")
        return int(value) if self.integer else float(value)

    def callback(self, value: Any) -> Any:
        """A typer/click option callback: the same check, as a usage error naming the flag."""
        import typer

        if value is None:
            return value
        problem = self.problem(value)
        if problem is not None:
            raise typer.BadParameter(problem)
        return value

    @property
    def bounds(self) -> dict[str, Any]:
        """pydantic ``Field`` keyword arguments for this range."""
        bounds: dict[str, Any] = {"gt" if self.low_open else "ge": self.low, "le": self.high}
        if not self.integer:
            bounds["allow_inf_nan"] = False
        return bounds


@dataclass(frozen=True)
class Choice:
    """One of a few named values (a policy, a mode), checked like a ``Range``."""

    name: str
    allowed: tuple[str, ...]

    def problem(self, value: Any) -> str | None:
        if isinstance(value, str) and value in self.allowed:
            return None
        return f"must be one of {', '.join(self.allowed)}; got {echo(value)}"

    def check(self, value: Any) -> str:
        """``value``, or OptionError naming the option and the allowed values."""
        problem = self.problem(value)
        if problem is not None:
            raise OptionError(f"{self.name} {problem}")
        return value

    def callback(self, value: Any) -> Any:
        """A typer/click option callback: the same check, as a usage error naming the flag."""
        import typer

        problem = None if value is None else self.problem(value)
        if problem is not None:
            raise typer.BadParameter(problem)
        return value


# ----- sampling and scoring (query, completeness, verify, the API) -------------------------

# The sampler draws every candidate in one batch: 8,192 take about 1.5 GB and 20 s on a
# 2-core CPU, 32,768 about 4.7 GB and 65 s (counting, measured).
CANDIDATES = Range("candidates", 1, 32_768)
SERVER_CANDIDATES = Range("candidates", 1, 8_192)  # one request must not hold a shared server
GRID_CANDIDATES = Range("candidates", 1, 2_048)
# Inputs the local search scores beyond the decoder's candidates (0: decoder only).
SEARCH_EVALUATIONS = Range("search", 0, 1_000_000)
SERVER_SEARCH_EVALUATIONS = Range("search", 0, 65_536)
SHOWN = Range("shown", 1, 1_000)
TEMPERATURE = Range("temperature", 0, 100, integer=False, low_open=True)
NOISE = Range("noise", 0, 100, integer=False)
NOISE_COSINE = Range("noise cosine", 0, 1, integer=False)
# How a candidate's activation is compared with the query's (probed/distance.py).
Metric = Literal["euclidean", "cosine"]
METRIC = Choice("metric", get_args(Metric))
# A rare token's count in the corpus it is banned by: a token seen a million times is common
# in any corpus (and a ban that leaves too few tokens is refused: text/counts.py).
BAN_COUNT = Range("ban-rare", 1, 1_000_000)


def parse_cosine_range(text: str | None, option: str) -> tuple[float, float] | None:
    """``LOW[:HIGH]`` as (low, high), each in [0, 1] and low <= high; None stays None."""
    if text is None:
        return None
    parts = text.split(":")
    try:
        values = [float(part) for part in parts]
    except ValueError:
        values = []
    if len(parts) not in (1, 2) or len(values) != len(parts):
        raise OptionError(f"{option} takes LOW or LOW:HIGH (cosines in [0, 1], e.g. 0.75:0.9); "
                          f"got {echo(text)}")
    low, high = values[0], values[-1]
    for value in (low, high):
        problem = NOISE_COSINE.problem(value)
        if problem:
            raise OptionError(f"{option}: each cosine {problem}")
    if low > high:
        raise OptionError(f"{option}: the range {text} is empty; give LOW:HIGH with LOW <= HIGH")
    return low, high


def parse_site_weights(text: str | None, option: str) -> dict[str, float] | None:
    """``SITE=W,SITE=W,...`` (``*`` for every site not named) as site name -> weight, each a
    finite number >= 0; the names are checked against the model when it has loaded."""
    if text is None:
        return None
    weights: dict[str, float] = {}
    usage = (f"{option} takes SITE=WEIGHT pairs separated by commas, * for every site not "
             f"named (e.g. m1=4,x1.post=2 or m1=1,*=0)")
    for part in text.split(","):
        name, sep, value = (piece.strip() for piece in part.partition("="))
        try:
            weight = float(value)
        except ValueError:
            weight = None
        if not sep or not name or weight is None:
            raise OptionError(f"{usage}; got {echo(text)}")
        if not (math.isfinite(weight) and weight >= 0):
            raise OptionError(f"{option}: the weight of {echo(name)} must be a finite number "
                              f">= 0, not {echo(value)}")
        if name in weights:
            raise OptionError(f"{option} names {echo(name)} twice")
        weights[name] = weight
    return weights
EPSILON = Range("epsilon", 0, 100, integer=False, low_open=True)
SEED = Range("seed", 0, 2**63 - 1)
PER_SIDE = Range("per-side", 1, 1_000)
SUMMARY_QUERIES = Range("queries", 1, 10_000)  # queries per (site, position) of a summary
LLM_TIMEOUT = Range("timeout", 0, 3_600, integer=False, low_open=True)  # seconds

# ----- machines ------------------------------------------------------------------------

THREADS = Range("threads", 1, 1_024)
PORT = Range("port", 1, 65_535)

# ----- evaluation, patching, attribution -------------------------------------------------

EVAL_SAMPLES = Range("n", 1, 10_000_000)
PAIRS = Range("n", 1, 1_000_000)
DLA_SAMPLES = Range("n", 0, 1_000_000)  # 0: one input
TOP_K = Range("k", 1, 1_000_000)  # also at most the vocabulary, checked with the model

# ----- training ------------------------------------------------------------------------

MINUTES = Range("minutes", 0, 525_600, integer=False, low_open=True)  # at most a year
STEPS = Range("steps", 1, 10**12)
EXAMPLES = Range("examples", 1, 10**15)
BATCH_SIZE = Range("batch-size", 1, 1_000_000)
LEARNING_RATE = Range("lr", 0, 10, integer=False, low_open=True)
REBALANCE = Range("rebalance", 0, 100, integer=False)
BALL_NOISE = Range("ball_noise", 0, 1, integer=False)  # a radius in units of the activation's norm
CHECKPOINT_SECONDS = Range("checkpoint-every", 0, 86_400, integer=False, low_open=True)
WIDTH = Range("d-model", 1, 65_536)
HEADS = Range("n-heads", 1, 1_024)
LAYERS = Range("n-layers", 1, 1_024)
MAX_TOKENS = Range("max-tokens", 1, 4_096)  # the longest corpus piece a decoder trains on
# Where a decoder's training activations are read (decoder/positions.py).
POSITIONS = Choice("positions", ("uniform", "last", "low-bos-attention", "last-or-least-bos"))


# ----- output paths ----------------------------------------------------------------------

PLOT_SUFFIXES = (".png", ".pdf", ".svg")


def check_output_file(path: Path, option: str, suffixes: tuple[str, ...] = (),
                      force: bool = False) -> Path:
    """Check, before any work is done, that ``path`` can be written as a new regular file:
    not a directory, not a special file, not an existing file unless ``force``, its parent a
    writable directory (created if missing), its suffix one of ``suffixes`` (when given)."""
    path = _plain_path(path, option)
    where = f"{option} {echo(str(path))}"
    if path.is_dir():
        raise OptionError(f"{where} is a directory; give a file path")
    if suffixes and path.suffix.lower() not in suffixes:
        raise OptionError(f"{where}: the file name must end in {' or '.join(suffixes)}")
    if path.exists() or path.is_symlink():
        if not path.is_file():
            raise OptionError(f"{where} exists and is not a regular file")
        if not force:
            raise OptionError(f"{where} exists; pass --force to replace it")
    _writable_directory(path.parent, where)
    _probe(path, where)
    return path


def _probe(path: Path, where: str) -> None:
    """Open ``path`` for writing once (without truncating it; a new file is removed again),
    so that a file system that refuses it says so now, whoever runs the command."""
    try:
        if path.exists():
            with open(path, "ab"):
                pass
        else:
            with open(path, "xb"):
                pass
            path.unlink()
    except OSError as error:
        raise OptionError(f"{where}: cannot write it ({error.strerror})") from None


def check_output_directory(path: Path, option: str, force: bool = False,
                           marker: str | None = None) -> Path:
    """Check that ``path`` can be written as a directory: not a file, its nearest existing
    ancestor writable; an existing directory holding ``marker`` needs ``force``."""
    path = _plain_path(path, option)
    where = f"{option} {echo(str(path))}"
    if path.exists() and not path.is_dir():
        raise OptionError(f"{where} exists and is not a directory")
    if marker is not None and (path / marker).exists() and not force:
        raise OptionError(f"{where} already holds {marker}; pass --force to replace it")
    if path.is_dir():
        _writable_directory(path, where)
    else:
        _writable_directory(path.parent, where)
    return path


def _plain_path(path: Path | str, option: str) -> Path:
    """``path`` if the file system can take it as a name at all, and, if it is a symbolic
    link, one that leads somewhere (writing through a dangling link or a loop of links fails
    with "File exists" only once the work is done)."""
    if not str(path) or "\x00" in str(path):
        raise OptionError(f"{option} needs a file path; got {echo(str(path))}")
    try:
        os.lstat(path)
    except FileNotFoundError:
        pass
    except OSError as error:  # a name too long, a loop of links, a file used as a folder
        if error.errno != errno.ENOTDIR:
            raise OptionError(f"{option} {echo(str(path))}: {error.strerror}") from None
    if os.path.islink(path):
        try:
            os.stat(path)
        except OSError as error:
            leads = ("a loop of symbolic links" if error.errno == errno.ELOOP else
                     f"a symbolic link to {echo(os.readlink(path))}, which does not exist")
            raise OptionError(f"{option} {echo(str(path))} is {leads}; give a path that leads "
                              f"somewhere, or remove the link") from None
    return Path(path)


def _writable_directory(directory: Path, where: str) -> None:
    """Create ``directory`` if missing; an OptionError unless it is a writable directory."""
    ancestor = directory
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OptionError(f"{where}: {echo(str(ancestor))} is a file, not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OptionError(f"{where}: cannot write in {echo(str(ancestor))} (permission denied)")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OptionError(f"{where}: cannot create {echo(str(directory))} ({error.strerror})") from None


def write_output(path: Path, option: str, write: Callable[[Path], None]) -> Path:
    """Run ``write(path)``; an OSError (disk full, permission changed meanwhile) becomes an
    OptionError naming the file."""
    try:
        write(path)
    except OSError as error:
        raise OptionError(f"{option} {echo(str(path))}: cannot write it ({error.strerror or error})") from None
    return path
