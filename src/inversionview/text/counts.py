"""Token counts over a corpus: which tokens are rare (the paper banned rare tokens from the
factual decoder's samples). ``train-lm`` stores a model's counts beside its weights
(``token_counts.json``), so that ``--ban-rare`` needs no corpus at query time.

``Vocabulary`` here is either a toy task's character vocabulary or an ``HFTokenizer``: both
have ``size``, the special ids and ``encode``.
"""

from __future__ import annotations

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


def rare_from_counts(vocab: Vocabulary, counts: torch.Tensor, min_count: int) -> tuple[int, ...]:
    """Ids of the tokens counted fewer than ``min_count`` times; BOS, EOS and PAD never."""
    rare = (counts < min_count).nonzero().flatten().tolist()
    return tuple(i for i in rare if i not in (vocab.bos_id, vocab.eos_id, vocab.pad_id))


def rare_tokens(vocab: Vocabulary, texts: list[str], min_count: int) -> tuple[int, ...]:
    """Ids of the tokens seen fewer than ``min_count`` times when ``texts`` are encoded (the
    paper banned rare tokens from the factual decoder's samples). BOS and EOS are never
    counted as rare."""
    return rare_from_counts(vocab, token_counts(vocab, texts), min_count)


#: A language model's token counts over its training corpus, beside its weights (train-lm
#: writes it), so that --ban-rare needs no corpus at query time.
TOKEN_COUNTS = "token_counts.json"


def write_token_counts(directory, vocab: Vocabulary, texts, corpus: dict | None = None) -> None:
    counts = token_counts(vocab, texts)
    write_json_atomic(Path(directory) / TOKEN_COUNTS, {
        "kind": "token-counts", "vocab_size": vocab.size, "texts": len(texts),
        "corpus": corpus, "counts": counts.tolist()})


def stored_rare_tokens(source: str, vocab: Vocabulary, min_count: int) -> tuple[int, ...]:
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
    return rare_from_counts(vocab, torch.tensor(counts, dtype=torch.long), min_count)

__all__ = ["TOKEN_COUNTS", "rare_from_counts", "rare_tokens", "stored_rare_tokens", "token_counts",
           "write_token_counts"]
