"""Train a GPT-2-style byte-level BPE tokenizer on a corpus and save it as a model's own.

    directory = train_bpe(texts, vocab_size=4096, directory="runs/lm")
    tokenizer = HFTokenizer.from_directory(directory, model_size=4096)

Like GPT-2's: bytes are the base alphabet (every text encodes, nothing is unknown), text is
pre-split with GPT-2's regex (a word keeps its leading space), and ``<|endoftext|>`` is the
one special token, id 0, serving as both BOS and EOS. Saved with ``save_pretrained``
(``tokenizer.json``, ``tokenizer_config.json``), so that
``AutoTokenizer.from_pretrained(directory, local_files_only=True)`` loads it as a fast
tokenizer. The same texts and settings give the same ``tokenizer.json``, byte for byte.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from inversionview.errors import OptionError
from inversionview.options import Range

END_OF_TEXT = "<|endoftext|>"
#: 256 byte tokens + the special token + at least one merge, up to GPT-2's size and more.
VOCAB_SIZE = Range("vocab-size", 258, 1_000_000)
MIN_FREQUENCY = Range("min_frequency", 1, 10**9)


def train_bpe(texts: Iterable[str], vocab_size: int, directory: str | Path,
              min_frequency: int = 2) -> Path:
    """Train a byte-level BPE of at most ``vocab_size`` tokens on ``texts`` and save it in
    ``directory`` (created if needed); return the directory. Fewer tokens result when the
    texts have fewer pairs seen ``min_frequency`` times."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    vocab_size = VOCAB_SIZE.check(vocab_size)
    min_frequency = MIN_FREQUENCY.check(min_frequency)
    texts = [text for text in texts if text]
    if not texts:
        raise OptionError("the tokenizer's training texts are empty; give a corpus with text")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=[END_OF_TEXT],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator(texts, trainer, length=len(texts))
    # No unknown token: every byte is in the alphabet, so nothing ever maps to one.
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=END_OF_TEXT,
                                      eos_token=END_OF_TEXT, model_max_length=1_000_000_000)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    wrapped.save_pretrained(str(directory))
    return directory


__all__ = ["END_OF_TEXT", "VOCAB_SIZE", "train_bpe"]
