"""Free text read by a language model with its own tokenizer (issue 13).

``TextTask`` gives a language model the interface the toy tasks give theirs, so that the
decoder's data stream, the query engine, patching and the views run unchanged:

- tokens come from the model's ``HFTokenizer`` (BPE pieces, not characters); a text is
  encoded as ``BOS + tokens`` and may be as long as the model's context;
- inputs for the decoder come from a ``CorpusSource`` (``with_source``); without one the
  model can still be queried, but not trained on;
- positions are indices (negative too), ``last``, ``bos`` or token matches
  (``text/positions.py``); a subclass (IOI, factual recall) adds named positions;
- free text has no attributes and no grammar: every text is valid.
"""

from __future__ import annotations

from typing import Any

import torch

from inversionview.errors import echo
from inversionview.tasks.base import Task, TaskInputError, Validity, next_token_targets
from inversionview.text import positions
from inversionview.text.sources import CorpusSource
from inversionview.text.tokenizer import HFTokenizer

#: Pieces of a corpus are at most this many tokens unless a source says otherwise.
DEFAULT_MAX_TOKENS = 32


class TextTask(Task):
    name = "text"
    position_names = ("last",)
    attribute_names = ()
    # A per-site summary mines shared tokens from the samples (interpret/features.py).
    mines_tokens = True
    sites = None  # the model's shape gives them (Subject.sites; site_kinds may narrow them)
    # The local search on text (edits inside a member's cut prefix, issue 28): 4,096 inputs
    # keep the default lm-kjv query within about 6 s on one CPU thread (bench/text_readings.py).
    default_search = 4_096
    free_text = True
    example_text = "The quick brown fox jumps over the lazy dog"

    def __init__(self, tokenizer: HFTokenizer, context: int, source: CorpusSource | None = None,
                 example: str = example_text,
                 default_query: tuple[str, str] = ("a0.0", "last")):
        self.vocab = tokenizer
        self.context = context  # the probed model's n_positions: the longest input
        self.source = source
        # A batch's width without a source: never more positions than the model has.
        self.n_ctx = source.n_ctx if source is not None else min(DEFAULT_MAX_TOKENS + 2, context)
        self.example = example
        self.default_query = default_query

    #: Free text's next token is data, not an answer to grade.
    grades_answers = False

    def with_corpus(self, path: str, max_tokens: int = 32, field: str = "text") -> "TextTask":
        """This task drawing its inputs from pieces of at most ``max_tokens`` tokens of the
        corpus at ``path`` (.txt lines, .jsonl ``field``, a datasets directory)."""
        return self.with_source(CorpusSource.from_path(path, self.vocab, max_tokens, field))

    def with_source(self, source: CorpusSource) -> "TextTask":
        """This task drawing its inputs from ``source`` (its pieces set the decoder's length)."""
        if source.n_ctx > self.context:
            raise TaskInputError(f"pieces of {source.max_tokens} tokens (+ BOS and EOS) do not fit "
                                 f"the model's context of {self.context}; lower --max-tokens")
        return type(self)(self.vocab, self.context, source, self.example, self.default_query)

    @property
    def needs_corpus(self) -> bool:
        """Whether inputs can only come from a corpus the user gives (free text has no
        sampler of its own)."""
        return self.source is None

    def describe_vocabulary(self) -> str:
        return self.vocab.describe()

    # ----- encoding ---------------------------------------------------------------------

    def normalize(self, text: str) -> str:
        """The text itself: spaces are tokens here, and BOS is an id, not a character."""
        if not isinstance(text, str) or text == "":
            raise TaskInputError(f"the input is empty; give a text such as {self.example!r}")
        return text

    def encode(self, text: str) -> list[int]:
        ids = [self.vocab.bos_id] + self.vocab.encode(self.normalize(text))
        if len(ids) > self.context:
            raise TaskInputError(f"{echo(text)} is {len(ids):,} tokens long (BOS included) but "
                                 f"the model's context holds at most {self.context:,}")
        return ids

    def decode(self, ids: list[int] | torch.Tensor, strip_padding: bool = True) -> str:
        return self.vocab.decode(ids)

    def encode_batch(self, texts: list[str], length: int | None = None) -> torch.Tensor:
        rows = [self.encode(text) for text in texts]
        length = length or max([self.n_ctx] + [len(row) for row in rows])
        batch = torch.full((len(rows), length), self.vocab.pad_id, dtype=torch.long)
        for index, row in enumerate(rows):
            if len(row) > length:
                raise TaskInputError(f"{echo(texts[index])} is longer than the batch length {length}")
            batch[index, : len(row)] = torch.tensor(row)
        return batch

    def lengths(self, tokens: torch.Tensor) -> torch.Tensor:
        return (tokens != self.vocab.pad_id).sum(dim=1)

    def token_strings(self, ids: list[int] | torch.Tensor) -> list[str]:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        while ids and ids[-1] == self.vocab.pad_id:
            ids = ids[:-1]
        return self.vocab.token_strings(ids)

    def text_tokens(self, text: str) -> list[str]:
        return self.vocab.token_strings(self.encode(text))

    # ----- sampling ---------------------------------------------------------------------

    def sample_tokens(self, n: int, generator: torch.Generator, held_out: bool = False
                      ) -> torch.Tensor:
        if self.source is None:
            raise TaskInputError("this language model has no corpus to draw inputs from; give "
                                 "one with --corpus FILE (.txt lines, .jsonl or a datasets "
                                 "directory)")
        return self.source.sample_tokens(n, generator, held_out)

    # ----- positions --------------------------------------------------------------------

    def named_positions(self, text: str) -> dict[str, int]:
        return {}

    def resolve_position(self, text: str, position: str | int) -> int:
        return self.resolve_in_tokens(self.encode(text), position)

    def resolve_in_tokens(self, ids: list[int] | torch.Tensor, position: str | int) -> int:
        """The index of ``position`` in a row of ids (BOS first; EOS and PAD are not real)."""
        strings = self.token_strings(ids)
        real = len(strings)
        if real > 1 and self._is_end(ids, real - 1):
            real -= 1
        try:
            return positions.resolve(strings, position, self.named_positions_in_tokens(ids), real)
        except positions.PositionError as error:
            raise TaskInputError(str(error)) from None

    def named_positions_in_tokens(self, ids) -> dict[str, int]:
        """A subclass's named positions of a row of ids (none for free text)."""
        return {}

    def _is_end(self, ids, index: int) -> bool:
        token = ids[index] if not isinstance(ids, torch.Tensor) else int(ids[index])
        return token == self.vocab.eos_id

    def position_label(self, text: str, index: int) -> str:
        """A subclass's name for the position (IOI's END, ...), else the index."""
        for name, at in self.named_positions(text).items():
            if at == index:
                return name
        return str(index)

    def query_position_mask(self, tokens: torch.Tensor) -> torch.Tensor:
        """Every real token after BOS (the decoder's data stream adds 1 % BOS itself)."""
        special = (tokens == self.vocab.pad_id) | (tokens == self.vocab.eos_id)
        special[:, 0] = True
        return ~special

    # ----- reading and checking -----------------------------------------------------------

    def attributes(self, text: str) -> dict[str, Any]:
        return {}

    def validate(self, text: str) -> Validity:
        return Validity(well_formed=True, in_distribution=True, correct=None)

    # ----- training a language model -------------------------------------------------------

    def loss_mask(self, tokens: torch.Tensor) -> torch.Tensor:
        """Positions whose next token is a real token of the model (not EOS or PAD when those
        are decoder-only ids)."""
        targets = next_token_targets(tokens, self.vocab.pad_id)
        return (targets != self.vocab.pad_id) & (targets < self.vocab.model_size)

    def answer_mask(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.loss_mask(tokens)

    def probed_config(self) -> dict[str, Any]:
        """A small GPT-2 for this tokenizer (4 layers, d 256: issue 13's bundled LM)."""
        return {"vocab_size": self.vocab.model_size, "n_positions": self.context,
                "n_embd": 256, "n_layer": 4, "n_head": 4, "n_inner": 1024,
                "bos_token_id": self.vocab.bos_id, "eos_token_id": self.vocab.bos_id,
                "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}

    def answer_pairs(self, n: int, kind: str, seed: int = 0) -> dict[str, list]:
        """``n`` (original, contrast) pairs with the two answer tokens whose logit difference
        is read after each text (keys ``original``, ``contrast``, ``answer``,
        ``contrast_answer``); free text has none of its own."""
        raise TaskInputError("a language model needs your contrast pairs: --pairs FILE.jsonl "
                             "with original, contrast, answer and contrast_answer on each line")

    def _random_contrast(self, text, generator, target, tries: int = 256):
        raise TaskInputError("free text has no answer to contrast at random; give the contrast "
                             "text yourself (--contrast)")
