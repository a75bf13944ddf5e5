"""Token counts over a corpus: which tokens are rare (the paper banned rare tokens from the
factual decoder's samples). ``train-lm`` stores a model's counts beside its weights
(``token_counts.json``), so that ``--ban-rare`` needs no corpus at query time.

``Vocabulary`` here is either a toy task's character vocabulary or an ``HFTokenizer``: both
have ``size``, the special ids and ``encode``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from inversionview.artifacts import shown_name
from inversionview.errors import UserError
from inversionview.files import read_json_object, write_json_atomic

Vocabulary = Any  # tasks.base.Vocabulary or text.tokenizer.HFTokenizer


def token_counts(vocab: Vocabulary, texts) -> torch.Tensor:
    """``[vocab.size]`` how often each token occurs when ``texts`` are encoded."""
    counts = torch.zeros(vocab.size, dtype=torch.long)
    for text in texts:
        ids = torch.tensor(vocab.encode(text), dtype=torch.long)
        counts += torch.bincount(ids[ids < vocab.size], minlength=vocab.size)
    return counts


#: A ban must leave at least this share of the tokens to sample from: the paper's ban drops
#: the few tokens a corpus barely shows; one that leaves almost nothing (a threshold above
#: most counts, or a corpus of a few lines) makes every sample the same few tokens.
MIN_KEPT_SHARE = 0.1


def rare_from_counts(vocab: Vocabulary, counts: torch.Tensor, min_count: int,
                     option: str = "--ban-rare", counted: str = "the corpus") -> tuple[int, ...]:
    """Ids of the tokens counted fewer than ``min_count`` times; BOS, EOS and PAD never. A
    UserError, naming ``option`` and what was ``counted``, when they would leave fewer than
    MIN_KEPT_SHARE of the other tokens."""
    special = {vocab.bos_id, vocab.eos_id, vocab.pad_id}
    ordinary = torch.tensor([i for i in range(len(counts)) if i not in special], dtype=torch.long)
    rare = (counts < min_count).nonzero().flatten().tolist()
    banned = tuple(i for i in rare if i not in special)
    needed = math.ceil(MIN_KEPT_SHARE * len(ordinary))
    if len(ordinary) - len(banned) < needed:
        # the largest threshold that keeps enough: the needed-th largest count
        largest = int(counts[ordinary].sort(descending=True).values[needed - 1])
        remedy = (f"give {option} {largest:,} or less" if largest >= 1 else
                  "give texts that use more of the vocabulary")
        raise UserError(f"{option} {min_count:,} bans {len(banned):,} of the {len(ordinary):,} "
                        f"tokens (those seen fewer than {min_count:,} time{'s' * (min_count != 1)} in "
                        f"{counted}), "
                        f"leaving {len(ordinary) - len(banned):,}: a ban must leave at least "
                        f"{MIN_KEPT_SHARE:.0%} of the tokens to sample from; {remedy}")
    return banned


def rare_tokens(vocab: Vocabulary, texts: list[str], min_count: int,
                option: str = "--ban-rare", counted: str = "the texts") -> tuple[int, ...]:
    """Ids of the tokens seen fewer than ``min_count`` times when ``texts`` are encoded (the
    paper banned rare tokens from the factual decoder's samples). BOS and EOS are never
    counted as rare; a ban that leaves too little is refused (``rare_from_counts``)."""
    return rare_from_counts(vocab, token_counts(vocab, texts), min_count, option, counted)


#: A language model's token counts over its training corpus, beside its weights (train-lm
#: writes it), so that --ban-rare needs no corpus at query time.
TOKEN_COUNTS = "token_counts.json"


def write_token_counts(directory, vocab: Vocabulary, texts, corpus: dict | None = None) -> None:
    counts = token_counts(vocab, texts)
    write_json_atomic(Path(directory) / TOKEN_COUNTS, {
        "kind": "token-counts", "vocab_size": vocab.size, "texts": len(texts),
        "corpus": corpus, "counts": counts.tolist()})


def stored_rare_tokens(source: str, vocab: Vocabulary, min_count: int,
                       option: str = "--ban-rare") -> tuple[int, ...]:
    """The tokens of ``vocab`` seen fewer than ``min_count`` times in the training corpus of
    the model in directory ``source``, from the counts stored beside its weights; a UserError
    saying what to give instead when there are none."""
    path = Path(source) / TOKEN_COUNTS
    name = shown_name(source)  # never a path on a server's machine
    if not path.is_file():
        raise UserError(f"model {name} has no {TOKEN_COUNTS} (the token counts of its training "
                        "corpus that train-lm writes); on the command line, give the texts to "
                        "count with --ban-corpus FILE")
    record = read_json_object(path, UserError, "token counts written by train-lm")
    counts = record.get("counts")
    if (record.get("kind") != "token-counts" or not isinstance(counts, list)
            or len(counts) != vocab.size or not all(isinstance(c, int) for c in counts)):
        raise UserError(f"the {TOKEN_COUNTS} of model {name} does not hold {vocab.size} token "
                        "counts for its vocabulary; rewrite it, or give --ban-corpus FILE")
    return rare_from_counts(vocab, torch.tensor(counts, dtype=torch.long), min_count, option,
                            f"the training corpus of model {name}")

__all__ = ["MIN_KEPT_SHARE", "TOKEN_COUNTS", "rare_from_counts", "rare_tokens", "stored_rare_tokens", "token_counts",
           "write_token_counts"]
