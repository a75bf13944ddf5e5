"""Character counting (method.md §3.1): ``B`` + context + ``|`` + query letter + ``:`` + count + ``E``.

The context is a shuffle of three distinct letters, each repeated 1..9 times; the query letter
is one of the three and the answer is its count. Example: ``Bvvzccvczvvvzvcvc|v:8E``.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import Any

import torch

from inversionview.errors import echo
from inversionview.tasks.base import Task, TaskInputError, Validity, Vocabulary

LETTERS = string.ascii_lowercase
DIGITS = "123456789"  # there is no 0: every count is 1..9
N_LETTERS = 3
MAX_COUNT = 9
MAX_CONTEXT = N_LETTERS * MAX_COUNT  # 27

_GRAMMAR = re.compile(r"^B([a-z]+)\|([a-z]):([1-9])E$")


class CountingTask(Task):
    name = "counting"
    vocab = Vocabulary(tuple(LETTERS) + tuple(DIGITS) + ("|", ":", "B", "E", "P"))
    n_ctx = 33  # B + 27 + | + q + : + digit + E
    sites = ("x0.pre", "a0.0", "x0.mid", "m0", "x0.post", "a1.0", "x1.mid", "m1", "x1.post")
    position_names = ("|", "query", ":")
    attribute_names = ("count", "query_letter", "letters", "length")
    example = "Bvvzccvczvvvzvcvc|v:8E"
    # a1.0 at ':' attends to the query letter's occurrences: it carries the count, not the letter.
    default_query = ("a1.0", ":")
    fuzzy_attributes = ("count",)
    # The decoder's held-out evaluation reads the count where it is predicted and at the
    # query letter (decoder/evaluate.py).
    eval_positions = (":", "query")

    targets = ("count",)  # the count digit, predicted at ':'
    contrast_kinds = ("flip",)

    def __init__(self) -> None:
        self._bar = self.vocab.id_of("|")
        self._colon = self.vocab.id_of(":")
        self._first_digit = self.vocab.id_of("1")

    def describe_vocabulary(self) -> str:
        return "a-z, 1-9, |, :, B (BOS), E (EOS), P (PAD)"

    # ----- sampling -------------------------------------------------------------------

    def sample_tokens(self, n: int, generator: torch.Generator) -> torch.Tensor:
        letters = torch.rand(n, len(LETTERS), generator=generator).argsort(dim=1)[:, :N_LETTERS]
        counts = torch.randint(1, MAX_COUNT + 1, (n, N_LETTERS), generator=generator)
        query_slot = torch.randint(0, N_LETTERS, (n,), generator=generator)
        lengths = counts.sum(dim=1)

        # Lay the multiset out in slots 0..26 (letter k fills a run of counts[k] slots), then
        # shuffle the filled slots by sorting random keys; empty slots sort last.
        slot = torch.arange(MAX_CONTEXT).expand(n, -1)
        run_end = counts.cumsum(dim=1)
        letter_of_slot = (slot.unsqueeze(-1) >= run_end.unsqueeze(1)).sum(dim=-1)  # [n, 27] in 0..3
        filled = letter_of_slot < N_LETTERS
        keys = torch.rand(n, MAX_CONTEXT, generator=generator).masked_fill(~filled, 2.0)
        order = keys.argsort(dim=1)
        shuffled_slot_letter = letter_of_slot.gather(1, order).clamp(max=N_LETTERS - 1)
        context = letters.gather(1, shuffled_slot_letter)  # letter ids are token ids (a=0)

        tokens = torch.full((n, self.n_ctx), self.vocab.pad_id, dtype=torch.long)
        tokens[:, 0] = self.vocab.bos_id
        positions = torch.arange(self.n_ctx).expand(n, -1)
        in_context = (positions >= 1) & (positions <= lengths.unsqueeze(1))
        padded_context = torch.cat([torch.zeros(n, 1, dtype=torch.long), context,
                                    torch.zeros(n, self.n_ctx - 1 - MAX_CONTEXT, dtype=torch.long)], 1)
        tokens = torch.where(in_context, padded_context, tokens)

        rows = torch.arange(n)
        query_letter = letters[rows, query_slot]
        count = counts[rows, query_slot]
        tail = torch.stack([
            torch.full((n,), self._bar),
            query_letter,
            torch.full((n,), self._colon),
            self._first_digit + count - 1,
            torch.full((n,), self.vocab.eos_id),
        ], dim=1)
        tail_positions = lengths.unsqueeze(1) + 1 + torch.arange(5)
        tokens.scatter_(1, tail_positions, tail)
        return tokens

    def complete(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows ``B`` + context + ``|`` + query letter whose context is three distinct letters,
        each 1..9 times, with the query letter among them, get ``:`` + its count + ``E``
        written anew; any other row is not an input (ok False)."""
        n, width = tokens.shape
        positions = torch.arange(width).expand(n, -1)
        is_bar = tokens == self._bar
        bar = torch.where(is_bar.any(dim=1), is_bar.float().argmax(dim=1), torch.full((n,), width))
        context = (positions >= 1) & (positions < bar[:, None])
        is_letter = tokens < len(LETTERS)
        counts = torch.zeros(n, len(LETTERS), dtype=torch.long)
        counts.scatter_add_(1, tokens.clamp(max=len(LETTERS) - 1), (context & is_letter).long())
        query = tokens.gather(1, (bar + 1).clamp(max=width - 1)[:, None]).squeeze(1)
        query_count = counts.gather(1, query.clamp(max=len(LETTERS) - 1)[:, None]).squeeze(1)
        ok = ((tokens[:, 0] == self.vocab.bos_id) & (bar + 4 < width)
              & (~context | is_letter).all(dim=1) & ((counts > 0).sum(dim=1) == N_LETTERS)
              & (counts.max(dim=1).values <= MAX_COUNT) & (query < len(LETTERS)) & (query_count > 0))
        written = torch.where(positions <= (bar + 1)[:, None], tokens,
                              torch.full_like(tokens, self.vocab.pad_id))
        tail = torch.stack([torch.full((n,), self._colon), self._first_digit + query_count - 1,
                            torch.full((n,), self.vocab.eos_id)], dim=1)
        at = (bar[:, None] + 2 + torch.arange(3)).clamp(max=width - 1)
        written.scatter_(1, at, tail)
        return torch.where(ok[:, None], written, tokens), ok

    def next_token_mask(self, prefix: torch.Tensor) -> torch.Tensor:
        """Before ``|``: a letter that keeps the context within three distinct letters, each
        at most nine times, or ``|`` once there are three; then a letter of the context, ``:``,
        its count and ``E``."""
        n, width = prefix.shape
        positions = torch.arange(width).expand(n, -1)
        is_bar = prefix == self._bar
        bar = torch.where(is_bar.any(dim=1), is_bar.float().argmax(dim=1), torch.full((n,), width))
        context = (positions >= 1) & (positions < bar[:, None]) & (prefix < len(LETTERS))
        counts = torch.zeros(n, len(LETTERS), dtype=torch.long)
        counts.scatter_add_(1, prefix.clamp(max=len(LETTERS) - 1), context.long())
        present = counts > 0
        full = present.sum(dim=1) == N_LETTERS
        allowed = torch.zeros(n, self.vocab.size, dtype=torch.bool)
        after = width - bar  # tokens written since '|' (0: still in the context)
        in_context = after <= 0
        # a letter: one already present with room left, or a new one while fewer than three
        letters = (present & (counts < MAX_COUNT)) | (~present & ~full[:, None])
        allowed[:, :len(LETTERS)] = letters & in_context[:, None]
        allowed[:, self._bar] = in_context & full
        query = prefix.gather(1, (bar + 1).clamp(max=width - 1)[:, None]).squeeze(1)
        allowed[:, :len(LETTERS)] |= present & (after == 1)[:, None]
        allowed[:, self._colon] = after == 2
        query_count = counts.gather(1, query.clamp(max=len(LETTERS) - 1)[:, None]).squeeze(1)
        rows = torch.nonzero(after == 3).flatten()
        allowed[rows, self._first_digit + query_count[rows] - 1] = True
        allowed[:, self.vocab.eos_id] = after == 4
        return allowed

    # ----- positions ------------------------------------------------------------------

    def named_positions(self, text: str) -> dict[str, int]:
        text = self.normalize(text)
        named: dict[str, int] = {}
        bar = text.find("|")
        if bar >= 0:
            named["|"] = bar
            if bar + 1 < len(text):
                named["query"] = bar + 1
        colon = text.find(":", max(bar, 0))
        if colon >= 0:
            named[":"] = colon
        return named

    def query_position_mask(self, tokens: torch.Tensor) -> torch.Tensor:
        is_bar = tokens == self._bar
        after_bar = torch.zeros_like(is_bar)
        after_bar[:, 1:] = is_bar[:, :-1]
        return is_bar | after_bar | (tokens == self._colon)

    # ----- reading and checking ---------------------------------------------------------

    def attributes(self, text: str) -> dict[str, Any]:
        match = _GRAMMAR.match(self.normalize(text))
        if match is None:
            return {}
        context, query_letter, _ = match.groups()
        counts = Counter(context)
        return {
            "count": counts.get(query_letter, 0),
            "query_letter": query_letter,
            "letters": dict(sorted(counts.items())),
            "length": len(context),
        }

    def validate(self, text: str) -> Validity:
        text = self.normalize(text)
        match = _GRAMMAR.match(text)
        if match is None:
            return Validity(False, False, None, "does not match B<letters>|<letter>:<digit>E")
        context, query_letter, digit = match.groups()
        counts = Counter(context)
        correct = counts.get(query_letter, 0) == int(digit)
        reason = ""
        if len(counts) != N_LETTERS:
            reason = f"context has {len(counts)} distinct letters, not {N_LETTERS}"
        elif max(counts.values()) > MAX_COUNT:
            reason = f"a letter occurs more than {MAX_COUNT} times"
        elif query_letter not in counts:
            reason = "query letter does not occur in the context"
        return Validity(True, reason == "", correct, reason)

    # ----- training and evaluation ------------------------------------------------------

    def loss_mask(self, tokens: torch.Tensor) -> torch.Tensor:
        # The authors' counting model is trained only on the count digit.
        return self.answer_mask(tokens)

    def answer_mask(self, tokens: torch.Tensor) -> torch.Tensor:
        # The logits at ':' predict the count digit.
        return tokens == self._colon

    def probed_config(self) -> dict[str, Any]:
        # The authors' checkpoint: 2 layers, d_model 64, 1 head, d_mlp 256, no dropout.
        return dict(
            vocab_size=self.vocab.size, n_positions=self.n_ctx, n_embd=64, n_layer=2, n_head=1,
            n_inner=256, activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0,
            attn_pdrop=0.0, layer_norm_epsilon=1e-5, bos_token_id=self.vocab.bos_id,
            eos_token_id=self.vocab.eos_id, pad_token_id=self.vocab.pad_id,
        )

    # ----- contrast inputs ------------------------------------------------------------

    def target_index(self, text: str, target: str) -> int:
        if target != "count":
            raise TaskInputError(f"unknown target {target!r} for the counting task; use: count")
        return self.resolve_position(text, ":") + 1

    def make_contrast(self, text: str, kind: str, generator: torch.Generator, target: str,
                      places: tuple[str, ...] = ()) -> str | None:
        if kind == "flip":
            return self.flip(text, generator)
        return super().make_contrast(text, kind, generator, target, places)

    def flip(self, text: str, generator: torch.Generator) -> str | None:
        """Replace one context character so that the query letter's count changes by one
        and every count stays in 1..9 (method.md §9); None when no such change exists
        (every count 1, or every count 9)."""
        match = _GRAMMAR.match(self.normalize(text))
        if match is None:
            raise TaskInputError(f"{echo(text)} is not a well-formed counting input")
        context, query, _ = match.groups()
        counts = Counter(context)
        moves = []  # (index in context, replacement letter)
        for index, letter in enumerate(context):
            if letter == query:  # the query count falls by one, another letter's rises
                moves += [(index, other) for other in counts
                          if other != query and counts[query] > 1 and counts[other] < MAX_COUNT]
            elif counts[query] < MAX_COUNT and counts[letter] > 1:  # the query count rises
                moves.append((index, query))
        if not moves:
            return None
        index, replacement = moves[int(torch.randint(len(moves), (1,), generator=generator))]
        flipped = context[:index] + replacement + context[index + 1:]
        return f"B{flipped}|{query}:{flipped.count(query)}E"
