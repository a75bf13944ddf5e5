"""What a stage needs of a task, as small protocols.

A stage takes the narrowest of these that it uses, so that its signature says what a task
must be able to do for it, and a new task knows what to provide:

- ``Grammar``: which inputs exist. The local search completes an edited row into an input
  (an addition's sum, a count) and asks whether a row is one the sampler could draw;
  constrained sampling draws only the tokens that can lead to one. Free text has none: every
  row is an input as it is, and every token may follow.
- ``Annotator``: what an input is. Its attributes (counting's count, IOI's names) and
  validity, the numeric ones worth reading within one, the relations between them, and
  whether a summary mines shared tokens instead (free text).
- ``Contrasts``: how to change an input's answer for activation patching. The answer tokens
  a contrast can target, where each is predicted, and a contrast of a named kind; or, for a
  task with no answer token of its own (IOI, free text), pairs with their answer tokens.

``tasks.base.Task`` provides all three with the defaults of free text (no grammar, no
attributes, random contrasts); a task overrides what it has (``tests/tasks`` checks that
every registered task satisfies each protocol).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch

if TYPE_CHECKING:
    from inversionview.tasks.base import Relation, Validity


@runtime_checkable
class Grammar(Protocol):
    """Which token rows are inputs of the task."""

    vocab: Any

    def complete(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows ``[n, width]`` with their derived part rewritten, ok ``[n]``)."""

    def in_space(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[n]`` bool: rows the task's sampler could draw."""

    def next_token_mask(self, prefix: torch.Tensor) -> torch.Tensor | None:
        """``[b, vocab]`` bool: tokens that can follow each prefix; None: any."""


@runtime_checkable
class Annotator(Protocol):
    """What an input of the task is: its attributes and validity."""

    attribute_names: tuple[str, ...]
    fuzzy_attributes: tuple[str, ...]
    mines_tokens: bool

    def attributes(self, text: str) -> dict[str, Any]:
        """The attributes of ``text`` (``attribute_names``); empty when malformed."""

    def validate(self, text: str) -> Validity:
        """Whether ``text`` is well formed, in distribution, and has the right answer."""

    def derived_relations(self) -> list[Relation]:
        """Relations between attributes a summary counts besides the attributes."""


@runtime_checkable
class Contrasts(Protocol):
    """How to change an input's answer, for activation patching."""

    targets: tuple[str, ...]
    contrast_kinds: tuple[str, ...]

    def target_index(self, text: str, target: str) -> int:
        """Index of the answer token ``target`` in ``text``."""

    def make_contrast(self, text: str, kind: str, generator: torch.Generator, target: str,
                      places: tuple[str, ...] = ()) -> str | None:
        """An input whose ``target`` answer differs (None: ``text`` has none)."""

    def answer_pairs(self, n: int, kind: str, seed: int = 0) -> dict[str, list]:
        """Pairs with their two answer tokens, for a task without ``targets`` to flip."""


__all__ = ["Annotator", "Contrasts", "Grammar"]
