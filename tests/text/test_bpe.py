"""A GPT-2-style byte-level BPE trained on a corpus: it loads offline as a fast tokenizer with
<|endoftext|> as BOS and EOS, every text round-trips, and the same texts give the same file."""

from __future__ import annotations

import json
import random

import pytest
from transformers import AutoTokenizer

from inversionview.errors import OptionError
from inversionview.text.bpe import END_OF_TEXT, train_bpe
from inversionview.text.tokenizer import HFTokenizer

_WORDS = ["the", "LORD", "said", "unto", "Moses", "and", "he", "went", "into", "land", "of",
          "Egypt", "children", "Israel", "behold", "thou", "shalt", "not", "naïve", "café"]


VOCAB = 500  # more than this corpus' pairs: every word ends up one token


def corpus(n: int = 300, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    lines = [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 12))) for _ in range(n)]
    return [line[0].upper() + line[1:] + "." for line in lines]


@pytest.fixture(scope="module")
def directory(tmp_path_factory):
    return train_bpe(corpus(), vocab_size=VOCAB, directory=tmp_path_factory.mktemp("bpe"))


def test_it_loads_offline_as_a_fast_gpt2_style_tokenizer(directory, no_network):
    loaded = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    assert loaded.is_fast
    assert loaded.bos_token == loaded.eos_token == END_OF_TEXT
    assert loaded.convert_tokens_to_ids(END_OF_TEXT) == 0
    assert 300 < len(loaded) <= VOCAB  # 256 bytes + the special token + merges
    assert loaded(" the LORD", add_special_tokens=False)["input_ids"] == \
        loaded.convert_tokens_to_ids(["Ġthe", "ĠLORD"])
    assert not no_network


@pytest.mark.parametrize("text", ["And the LORD said unto Moses,", "  two  spaces  ",
                                  "line one\nline two\r\n\ttab", "naïve café ✓ 日本語 🙂",
                                  "never seen: Zyxq 1611!", " ", "\u00a0\u200b"])
def test_every_text_round_trips(directory, text):
    tokenizer = HFTokenizer.from_directory(directory, model_size=VOCAB)
    ids = tokenizer.encode(text)
    assert all(0 < token < len(tokenizer.hf) for token in ids)  # no unknown, no special
    assert tokenizer.decode([tokenizer.bos_id] + ids + [tokenizer.eos_id, tokenizer.pad_id]) == text
    assert (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id) == (0, VOCAB, VOCAB + 1)


def test_the_same_texts_give_the_same_tokenizer_file(tmp_path, directory):
    again = train_bpe(corpus(), vocab_size=VOCAB, directory=tmp_path / "again")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (again / name).read_bytes() == (directory / name).read_bytes()
    other = train_bpe(corpus(seed=1), vocab_size=VOCAB, directory=tmp_path / "other")
    assert (other / "tokenizer.json").read_bytes() != (directory / "tokenizer.json").read_bytes()
    vocabulary = json.loads((directory / "tokenizer.json").read_text())["model"]["vocab"]
    assert vocabulary["Moses"] > 256 and vocabulary["ĠLORD"] > 256  # frequent words merged


@pytest.mark.parametrize("vocab_size", [0, 257, 10**7])
def test_a_vocabulary_size_out_of_range_is_a_one_line_error(tmp_path, vocab_size):
    with pytest.raises(OptionError, match="vocab-size must be an integer from 258"):
        train_bpe(corpus(), vocab_size=vocab_size, directory=tmp_path)


def test_no_text_is_an_error(tmp_path):
    with pytest.raises(OptionError, match="training texts are empty"):
        train_bpe(["", ""], vocab_size=300, directory=tmp_path)
