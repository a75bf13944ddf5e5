"""A language model's own tokenizer, read from its local directory (never from a hub).

``HFTokenizer`` wraps a HuggingFace tokenizer (``tokenizer.json``, GPT-2's ``vocab.json`` +
``merges.txt``, or a SentencePiece ``tokenizer.model``) with the interface the later stages
use for the toy tasks' character vocabularies (``tasks.base.Vocabulary``):

    size        ids the decoder knows: the model's vocabulary plus decoder-only ids
    model_size  ids the probed model's embedding has (>= the tokenizer's own ids)
    bos_id      prepended to every input (the tokenizer's BOS, else its EOS: GPT-2's
                ``<|endoftext|>`` serves as both)
    eos_id      what the decoder emits to end a sample: the tokenizer's EOS when it differs
                from BOS, else a decoder-only id
    pad_id      batch padding: always a decoder-only id, so that it is never a real token

Decoder-only ids (``>= model_size``) never reach the probed model: they only ever sit after
a text's last token, where a causal model's activations cannot see them, and the model
reads them as id 0 (``ProbedModel.model_ids``). The probed model is never resized.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from inversionview.errors import UserError, echo
from inversionview.files import first_line

#: Files one of which a model directory needs for its tokenizer to load.
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer.model")


class TokenizerError(UserError, ValueError):
    """A tokenizer that cannot be loaded, or text it cannot encode."""


class HFTokenizer:
    """A HuggingFace tokenizer with the toolkit's special-id conventions (module docstring)."""

    def __init__(self, tokenizer, model_size: int, source: str = "<memory>"):
        self.hf = tokenizer
        self.source = source
        own = len(tokenizer)
        if model_size < own:
            raise TokenizerError(
                f"the tokenizer in {source} has {own:,} tokens but the model's embedding only "
                f"{model_size:,}; is it the tokenizer of another model?")
        self.model_size = model_size
        bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
        if bos is None and eos is None:
            raise TokenizerError(
                f"the tokenizer in {source} has neither a BOS nor an EOS token; the toolkit "
                f"prepends one to every input (set bos_token in tokenizer_config.json)")
        self.bos_id = bos if bos is not None else eos
        extra = model_size
        if eos is not None and eos != self.bos_id:
            self.eos_id = eos
        else:
            self.eos_id, extra = extra, extra + 1
        self.pad_id = extra
        self.size = extra + 1
        self.unk_id = tokenizer.unk_token_id
        self._strings: dict[int, str] = {}

    @classmethod
    def from_directory(cls, directory: str | Path, model_size: int) -> "HFTokenizer":
        """The tokenizer saved in ``directory`` (offline); TokenizerError if there is none."""
        directory = Path(directory)
        if not any((directory / name).exists() for name in TOKENIZER_FILES):
            raise TokenizerError(
                f"{directory} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); copy the "
                f"model's tokenizer files into it (tokenizer.save_pretrained(directory))")
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        except (OSError, ValueError, TypeError, KeyError, ImportError) as error:
            raise TokenizerError(f"the tokenizer in {directory} cannot be loaded "
                                 f"({first_line(error)})") from None
        return cls(tokenizer, model_size, str(directory))

    # ----- the Vocabulary interface --------------------------------------------------

    @property
    def tokens(self) -> "_TokenTable":
        """``tokens[i]``: the readable string of id ``i`` (decoder-only ids as ``<eos>``, ``<pad>``)."""
        return _TokenTable(self)

    def id_of(self, token: str) -> int:
        """The id of one token given as its readable string (e.g. ``" John"``)."""
        ids = self.encode(token)
        if len(ids) != 1:
            raise TokenizerError(f"{echo(token)} is {len(ids)} tokens for this tokenizer, not one")
        return ids[0]

    def token_string(self, token_id: int) -> str:
        if token_id not in self._strings:
            self._strings[token_id] = self._readable(token_id)
        return self._strings[token_id]

    def _readable(self, token_id: int) -> str:
        if token_id == self.pad_id:
            return "<pad>"
        if token_id >= len(self.hf):
            return "<eos>" if token_id == self.eos_id else f"<unused {token_id}>"
        text = self.hf.decode([token_id], clean_up_tokenization_spaces=False)
        piece = self.hf.convert_ids_to_tokens(token_id)
        # SentencePiece marks a word start with "▁", which decoding one piece alone drops.
        if isinstance(piece, str) and piece.startswith("\u2581") and not text.startswith(" "):
            text = " " + text
        return text

    def token_strings(self, ids: list[int] | torch.Tensor) -> list[str]:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return [self.token_string(i) for i in ids]

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, no special tokens added. Text the tokenizer can only
        represent by its unknown token raises TokenizerError naming the characters."""
        ids = self.hf(text, add_special_tokens=False)["input_ids"]
        if self.unk_id is not None and self.unk_id in ids:
            unknown = self._unencodable(text)
            if unknown:
                raise TokenizerError(
                    f"{echo(text)} has characters this tokenizer cannot encode "
                    f"({', '.join(repr(c) for c in unknown[:5])}); it maps them to its unknown "
                    f"token {self.hf.unk_token!r}")
        return ids

    def encode_many(self, texts: list[str]) -> list[list[int]]:
        """Token ids of many texts in one call (the fast tokenizer's batch path)."""
        if not texts:
            return []
        return self.hf(texts, add_special_tokens=False)["input_ids"]

    def _unencodable(self, text: str) -> list[str]:
        unk = self.unk_id
        return sorted({c for c in set(text)
                       if unk in self.hf(c, add_special_tokens=False)["input_ids"]})

    def decode(self, ids: list[int] | torch.Tensor) -> str:
        """The text of ids, leaving out BOS, decoder-only ids and everything from EOS on."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        kept = []
        for position, token in enumerate(ids):
            if token == self.bos_id and position == 0:
                continue
            if token in (self.eos_id, self.pad_id):
                break
            if token < len(self.hf):
                kept.append(token)
        return self.hf.decode(kept, clean_up_tokenization_spaces=False)

    def fingerprint(self) -> str:
        """sha256 of the vocabulary (token -> id) and special ids: decoders are matched to it."""
        digest = hashlib.sha256()
        vocabulary = sorted(self.hf.get_vocab().items(), key=lambda item: item[1])
        for token, token_id in vocabulary:
            digest.update(f"{token_id}\t{token}\n".encode("utf-8", "surrogatepass"))
        digest.update(f"{self.model_size} {self.bos_id} {self.eos_id} {self.pad_id}".encode())
        return digest.hexdigest()

    def describe(self) -> str:
        return (f"{type(self.hf).__name__} of {len(self.hf):,} tokens from {self.source} "
                f"(BOS {self.token_string(self.bos_id)!r}, EOS {self.token_string(self.eos_id)!r})")


class _TokenTable:
    """A read-only sequence view ``tokens[i]`` over a tokenizer's readable token strings."""

    def __init__(self, tokenizer: HFTokenizer):
        self._tokenizer = tokenizer

    def __getitem__(self, token_id: int) -> str:
        return self._tokenizer.token_string(int(token_id))

    def __len__(self) -> int:
        return self._tokenizer.size

    def index(self, token: str) -> int:
        return self._tokenizer.id_of(token)
