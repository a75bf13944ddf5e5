"""The interface every task implements, and the pieces tasks share.

A task says what the probed model's inputs look like: a character-level vocabulary with
fixed ids, a seeded sampler of the task distribution, named positions, the attributes an
analysis reads off an input, and a validity check for generated strings. Later stages
(probed-model training, the decoder's data stream, the query engine) use only this
interface and never branch on a task's name.

Texts are strings with one character per token, e.g. ``"Bvvzc|v:2E"``. A text may be given
with or without its leading ``B``; it is never padded (``P``) by the user.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable

import torch

from inversionview.errors import UserError, echo


class TaskInputError(UserError, ValueError):
    """A user-supplied input does not fit the task (bad character, too long, bad position)."""


@dataclass(frozen=True)
class Relation:
    """A value computed from an input's attributes, whose equality with the query's (or,
    ``fuzzy``, being within one of it) a per-site summary counts: addition's ``{F1,S1}``."""
    name: str
    value: Callable[[dict[str, Any]], Any]
    fuzzy: bool = False


@dataclass(frozen=True)
class Vocabulary:
    """A character vocabulary: ``tokens[i]`` is the character with id ``i``."""

    tokens: tuple[str, ...]
    bos: str = "B"
    eos: str = "E"
    pad: str = "P"

    def __post_init__(self) -> None:
        if len(set(self.tokens)) != len(self.tokens):
            raise ValueError("vocabulary has duplicate tokens")
        if any(len(token) != 1 for token in self.tokens):
            raise ValueError("every token must be exactly one character")

    @property
    def size(self) -> int:
        return len(self.tokens)

    @property
    def bos_id(self) -> int:
        return self.tokens.index(self.bos)

    @property
    def eos_id(self) -> int:
        return self.tokens.index(self.eos)

    @property
    def pad_id(self) -> int:
        return self.tokens.index(self.pad)

    def id_of(self, char: str) -> int:
        return self._index[char]

    @property
    def model_size(self) -> int:
        """Ids the probed model reads: all of them (a language model's tokenizer may add
        decoder-only ids beyond its model's vocabulary)."""
        return self.size

    def fingerprint(self) -> None:
        """None: a character vocabulary is fixed by its task, so a decoder is matched to it
        by the task (a language model's tokenizer gives its sha256 here)."""
        return None

    @property
    def _index(self) -> dict[str, int]:
        # Cached on first use; the dataclass is frozen, so bypass __setattr__.
        cache = self.__dict__.get("_index_cache")
        if cache is None:
            cache = {token: i for i, token in enumerate(self.tokens)}
            object.__setattr__(self, "_index_cache", cache)
        return cache


@dataclass(frozen=True)
class Validity:
    """Whether a (generated) text is a proper input of the task.

    well_formed: follows the task's grammar (``B`` ... ``E``, right characters in the right slots).
    in_distribution: well formed and could have been drawn by the task's sampler.
    correct: the answer written in the text is the right one (None when not well formed).
    reason: why it is not well formed / in distribution, empty when it is.
    """

    well_formed: bool
    in_distribution: bool
    correct: bool | None
    reason: str = ""


class Task(ABC):
    """One task: vocabulary, sampler, positions, attributes, validity.

    Subclasses set ``name``, ``vocab``, ``n_ctx`` and ``sites`` and implement the abstract
    methods. Token tensors are right-padded with PAD to ``n_ctx``: ``[batch, n_ctx]`` int64.
    """

    name: str
    vocab: Vocabulary
    n_ctx: int
    #: The ordered site list; a site's index here is its site id for the decoder.
    sites: tuple[str, ...]
    #: Position names a user may query, in display order (integers are accepted too).
    position_names: tuple[str, ...]
    #: The attributes ``attributes()`` returns, in display order.
    attribute_names: tuple[str, ...]
    #: One example text, used as a default in the CLI.
    example: str
    #: The (site, position) a query reads when none is given: a reading the paper made.
    default_query: tuple[str, str]
    #: Numeric attributes whose "within one of the query's" a per-site summary counts too
    #: (the paper's numerically close digits; ``interpret/features.py``).
    fuzzy_attributes: tuple[str, ...] = ()

    # ----- abilities a stage relies on (declared here, so that no stage asks which task
    # it holds) ------------------------------------------------------------------------

    #: The kinds of site a decoder reads when ``sites`` is None (the model's shape gives the
    #: sites): None for every kind, e.g. ("resid_pre", "head", "mlp_out") for IOI's.
    site_kinds: tuple[str, ...] | None = None
    #: Whether a per-site summary mines the tokens shared with the query (free text, whose
    #: attributes say nothing; a toy task's attributes say what its characters mean).
    mines_tokens: bool = False
    #: Whether an input's answer is the task's to grade: a toy task writes the right count
    #: or sum in the input; free text's next token is data, and a prompt stops before its
    #: answer.
    grades_answers: bool = True
    #: Whether inputs can only come from a corpus the user gives (free text has no sampler
    #: of its own; ``with_corpus``).
    needs_corpus: bool = False
    #: The named positions a decoder's held-out evaluation queries (None: all of them).
    eval_positions: tuple[str, ...] | None = None

    def with_corpus(self, path: str, max_tokens: int = 32, field: str = "text") -> "Task":
        """This task drawing its inputs from the corpus at ``path``: only a language model
        read as free text can; a task with a sampler of its own refuses."""
        raise TaskInputError(f"the {self.name} task draws its own inputs; a corpus is for "
                             f"language models read as free text")

    def derived_relations(self) -> list[Relation]:
        """Relations between attributes a per-site summary counts besides the attributes
        themselves (``interpret.features`` makes each a feature); none by default."""
        return []

    # ----- encoding -------------------------------------------------------------------

    def normalize(self, text: str) -> str:
        """Return ``text`` with its leading BOS (added if missing) and surrounding spaces removed."""
        text = text.strip()
        if not text:
            raise TaskInputError(f"the input is empty; give a {self.name} input such as "
                                 f"{self.example!r}")
        if not text.startswith(self.vocab.bos):
            text = self.vocab.bos + text
        return text

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, with BOS prepended when missing.

        Raises TaskInputError naming the offending character or the length and what is allowed.
        """
        text = self.normalize(text)
        ids = []
        for index, char in enumerate(text):
            try:
                ids.append(self.vocab.id_of(char))
            except KeyError:
                raise TaskInputError(
                    f"character {char!r} at index {index} of {echo(text)} is not in the {self.name} "
                    f"vocabulary; allowed characters: {self.describe_vocabulary()}"
                ) from None
        if self.vocab.pad_id in ids:
            raise TaskInputError(
                f"{echo(text)} contains the padding token {self.vocab.pad!r}; give the input unpadded"
            )
        if len(ids) > self.n_ctx:
            raise TaskInputError(
                f"{echo(text)} is {len(ids)} tokens long (BOS included) but the {self.name} task's "
                f"context holds at most {self.n_ctx}"
            )
        return ids

    def decode(self, ids: list[int] | torch.Tensor, strip_padding: bool = True) -> str:
        """The text of token ids; trailing PAD tokens are dropped unless strip_padding is False."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        text = "".join(self.vocab.tokens[i] for i in ids)
        return text.rstrip(self.vocab.pad) if strip_padding else text

    def encode_batch(self, texts: list[str], length: int | None = None) -> torch.Tensor:
        """``[batch, length]`` token ids, right-padded with PAD (length defaults to n_ctx)."""
        length = self.n_ctx if length is None else length
        batch = torch.full((len(texts), length), self.vocab.pad_id, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = self.encode(text)
            if len(ids) > length:
                raise TaskInputError(f"{echo(text)} is longer than the batch length {length}")
            batch[row, : len(ids)] = torch.tensor(ids)
        return batch

    def decode_batch(self, tokens: torch.Tensor) -> list[str]:
        return [self.decode(row) for row in tokens]

    def describe_vocabulary(self) -> str:
        return " ".join(self.vocab.tokens)

    def token_strings(self, ids: list[int] | torch.Tensor) -> list[str]:
        """The readable string of each token of a row of ids, trailing PAD dropped (a
        character here; a BPE piece for a language model)."""
        return list(self.decode(ids))

    def text_tokens(self, text: str) -> list[str]:
        """The token strings of a user's text, BOS first."""
        return self.token_strings(self.encode(text))

    # ----- sampling -------------------------------------------------------------------

    @abstractmethod
    def sample_tokens(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``[n, n_ctx]`` complete inputs (BOS ... EOS, then PAD) drawn from the task distribution."""

    def sample(self, n: int, seed: int = 0) -> list[str]:
        """``n`` texts from the task distribution; the same seed gives the same texts."""
        generator = torch.Generator().manual_seed(seed)
        return self.decode_batch(self.sample_tokens(n, generator))

    def enumerate_tokens(self) -> torch.Tensor:
        """Every input of the task distribution, ``[N, n_ctx]``, for tasks small enough."""
        raise TaskInputError(f"the {self.name} task's input space is too large to enumerate")

    #: The local search's budget when a query does not say (``query --search``): inputs scored
    #: beyond the decoder's candidates; 0 keeps the paper's decoder-only sampling.
    default_search: int = 16_384

    def complete(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Make edited inputs ``[n, width]`` proper inputs of the task where they can be.

        Returns (tokens, ok ``[n]``): each row with its derived part rewritten from the rest
        (the answer of a toy task is a function of its question), and whether the row is then
        an input the task's sampler could draw. The local search of a query (preimage/search.py)
        edits a question and lets the task write the answer. Default: free text, every row as it
        is (a row must still end in EOS then PAD, which the search keeps).
        """
        return tokens, torch.ones(tokens.shape[0], dtype=torch.bool)

    def next_token_mask(self, prefix: torch.Tensor) -> torch.Tensor | None:
        """``[b, vocab]`` bool: the tokens that can follow each row of ``prefix`` ``[b, t]``
        (BOS first, no PAD) on the way to an input the task's sampler could draw
        (``in_space``), EOS included where the row may end there. A query's constrained
        sampling draws only these (``query --constrain``, the default where a task has one).
        None: the task has no grammar to enforce (free text), and every token may follow."""
        return None

    def in_space(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[n]`` bool: rows the task's sampler could draw (``complete`` leaves them as they are)."""
        completed, ok = self.complete(tokens)
        return ok & (completed == tokens).all(dim=1)

    def lengths(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[batch]`` number of non-PAD tokens of each row."""
        return (tokens != self.vocab.pad_id).sum(dim=1)

    # ----- positions ------------------------------------------------------------------

    @abstractmethod
    def named_positions(self, text: str) -> dict[str, int]:
        """Every named position present in ``text`` (with BOS at index 0)."""

    def resolve_position(self, text: str, position: str | int) -> int:
        """The index (0 = BOS) of a named or integer position in ``text``."""
        text = self.normalize(text)
        if isinstance(position, str) and re.fullmatch(r"-?[0-9]+", position.strip()):
            position = int(position)
        if isinstance(position, int):
            if not 0 <= position < len(text):
                raise TaskInputError(
                    f"position {position} is outside {echo(text)}, whose positions are 0..{len(text) - 1}"
                )
            return position
        named = self.named_positions(text)
        if position in named:
            return named[position]
        if position in self.position_names:
            raise TaskInputError(f"{echo(text)} has no position {echo(position)}")
        raise TaskInputError(
            f"unknown position {echo(position)} for the {self.name} task; use an integer index "
            f"(0 = BOS) or one of: {', '.join(self.position_names)}"
        )

    def resolve_in_tokens(self, ids: list[int] | torch.Tensor, position: str | int) -> int:
        """The index of ``position`` in a row of token ids (e.g. a decoder's sample)."""
        return self.resolve_position(self.decode(ids), position)

    def position_label(self, text: str, index: int) -> str:
        """A readable label of an index: its name if it has one, else ``"<index>"``."""
        for name, named_index in self.named_positions(text).items():
            if named_index == index:
                return name
        return str(index)

    @abstractmethod
    def query_position_mask(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[batch, n_ctx]`` bool: the positions a user may query (and a decoder trains on)."""

    # ----- reading and checking ---------------------------------------------------------

    @abstractmethod
    def attributes(self, text: str) -> dict[str, Any]:
        """The task attributes of a text (``attribute_names``); empty for malformed texts."""

    @abstractmethod
    def validate(self, text: str) -> Validity:
        """Whether ``text`` is well formed, in distribution, and has the right answer."""

    # ----- training and evaluation of a probed model ----------------------------------

    @abstractmethod
    def loss_mask(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[batch, n_ctx]`` bool: positions whose next-token prediction is trained."""

    @abstractmethod
    def answer_mask(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[batch, n_ctx]`` bool: positions whose next-token prediction must all be right
        for the example to count as solved (greedy exact match, computed teacher-forced)."""

    @abstractmethod
    def probed_config(self) -> dict[str, Any]:
        """Keyword arguments of the GPT2Config of this task's default probed model."""

    # ----- contrast inputs for activation patching (method.md §9) ----------------------

    #: Answer tokens a patching experiment can target; the first is the default.
    targets: tuple[str, ...] = ()
    #: Inputs are a language model's free text (its tokenizer's pieces, not characters).
    free_text: bool = False
    #: Contrast kinds besides "random" (see ``make_contrast``).
    contrast_kinds: tuple[str, ...] = ()

    def answer_pairs(self, n: int, kind: str, seed: int = 0) -> dict[str, list]:
        """``n`` (original, contrast) pairs with their two answer tokens (keys ``original``,
        ``contrast``, ``answer``, ``contrast_answer``), for a task without ``targets`` of its
        own to flip (IOI draws them; free text asks the user)."""
        raise TaskInputError(f"the {self.name} task draws no contrast pairs itself; give your "
                             f"own (a pairs file: original, contrast, answer, contrast_answer "
                             f"per line)")

    def target_index(self, text: str, target: str) -> int:
        """Index of the answer token ``target`` in ``text``; the model predicts it at the
        index before."""
        return self.resolve_position(text, target)

    def make_contrast(self, text: str, kind: str, generator: torch.Generator, target: str,
                      places: tuple[str, ...] = ()) -> str | None:
        """A contrast input for ``text`` whose ``target`` answer token differs, or None when
        ``text`` has none (e.g. counting's all-ones inputs cannot be flipped). "random" draws
        other inputs of the task distribution; task kinds are in ``contrast_kinds``."""
        if kind == "random":
            return self._random_contrast(text, generator, target)
        raise TaskInputError(f"unknown contrast {kind!r} for the {self.name} task; use one of: "
                             f"{', '.join(('random',) + self.contrast_kinds)}")

    def _random_contrast(self, text: str, generator: torch.Generator, target: str,
                         tries: int = 256) -> str | None:
        """Another input of the task distribution with a different answer at the same index
        (patching compares the two runs position by position, so the answer must line up)."""
        index = self.target_index(text, target)
        for candidate in self.decode_batch(self.sample_tokens(tries, generator)):
            try:
                same_place = self.target_index(candidate, target) == index
            except TaskInputError:
                continue
            if same_place and candidate[index] != text[index]:
                return candidate
        return None


def right_pad(rows: list[list[int]], length: int, pad_id: int) -> torch.Tensor:
    batch = torch.full((len(rows), length), pad_id, dtype=torch.long)
    for i, row in enumerate(rows):
        batch[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return batch


def next_token_targets(tokens: torch.Tensor, pad_id: int) -> torch.Tensor:
    """``[batch, n_ctx]`` target of each position: the next token, PAD after the last one."""
    targets = torch.full_like(tokens, pad_id)
    targets[:, :-1] = tokens[:, 1:]
    return targets
