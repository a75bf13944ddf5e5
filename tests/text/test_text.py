"""The text layer: a local tokenizer's conventions, corpus sources and positions over tokens."""

from __future__ import annotations

import json

import pytest
import torch

from inversionview.tasks.text import TextTask
from inversionview.text import positions
from inversionview.text.sources import CorpusError, CorpusSource, read_texts, texts_source
from inversionview.text.tokenizer import HFTokenizer, TokenizerError
from tiny_lms import make_tiny_lm, sentences


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def tokenizer(request, tmp_path_factory):
    directory = make_tiny_lm(request.param, tmp_path_factory.mktemp(request.param))
    config = json.loads((directory / "config.json").read_text())
    return HFTokenizer.from_directory(directory, config["vocab_size"])


def test_special_ids_never_collide_and_pad_is_decoder_only(tokenizer):
    assert len({tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id}) == 3
    assert tokenizer.pad_id >= tokenizer.model_size
    assert tokenizer.size == tokenizer.pad_id + 1
    if tokenizer.hf.eos_token_id == tokenizer.hf.bos_token_id:  # GPT-2 style: EOS is ours
        assert tokenizer.eos_id == tokenizer.model_size
    else:  # Llama style: the tokenizer's own </s>
        assert tokenizer.eos_id == tokenizer.hf.eos_token_id


@pytest.mark.parametrize("text", ["When Alice and Bob went to the park", "  two  spaces\n",
                                  "naïve café ✓ 日本", "a"])
def test_round_trip_and_token_strings_spell_the_text(tokenizer, text):
    ids = tokenizer.encode(text)
    assert tokenizer.decode([tokenizer.bos_id] + ids + [tokenizer.eos_id, tokenizer.pad_id]) == text
    if text.isascii():  # a multi-byte character split over tokens has no string of its own
        assert "".join(tokenizer.token_strings(ids)) == text


def test_batch_encoding_equals_one_by_one(tokenizer):
    texts = sentences(20)
    assert tokenizer.encode_many(texts) == [tokenizer.encode(t) for t in texts]


def test_a_directory_without_tokenizer_is_one_clear_error(tmp_path):
    with pytest.raises(TokenizerError, match="has no tokenizer.*save_pretrained"):
        HFTokenizer.from_directory(tmp_path, 100)


def test_a_tokenizer_larger_than_the_embedding_is_refused(tokenizer):
    with pytest.raises(TokenizerError, match="another model"):
        HFTokenizer(tokenizer.hf, model_size=len(tokenizer.hf) - 1)


def test_fingerprint_depends_on_the_vocabulary(tokenizer):
    same = HFTokenizer(tokenizer.hf, tokenizer.model_size)
    wider = HFTokenizer(tokenizer.hf, tokenizer.model_size + 8)
    assert same.fingerprint() == tokenizer.fingerprint() != wider.fingerprint()


# ----- corpus sources -------------------------------------------------------------------


def test_txt_jsonl_and_datasets_directory_read_the_same_texts(tmp_path):
    texts = ["first line", "second line", "third"]
    (tmp_path / "c.txt").write_text("first line\n\n  \nsecond line\nthird\n")
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps({"body": t, "n": 1}) for t in texts))
    import datasets

    datasets.Dataset.from_dict({"body": texts}).save_to_disk(str(tmp_path / "ds"))
    assert read_texts(tmp_path / "c.txt") == texts
    assert read_texts(tmp_path / "c.jsonl", field="body") == texts
    assert read_texts(tmp_path / "ds", field="body") == texts


@pytest.mark.parametrize("content, suffix, message", [
    ("{not json", ".jsonl", "line 1: not JSON"),
    ('{"other": "x"}', ".jsonl", "line 1: expected an object with a text field 'text'"),
    ("a,b", ".csv", "suffix '.csv'"),
])
def test_bad_corpora_are_one_line_errors(tmp_path, content, suffix, message):
    path = tmp_path / f"corpus{suffix}"
    path.write_text(content)
    with pytest.raises(CorpusError, match=message) as error:
        read_texts(path)
    assert "\n" not in str(error.value)


def test_missing_column_lists_the_columns(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"body": ["x"]}).save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(CorpusError, match="no column 'text'; its columns: body"):
        read_texts(tmp_path / "ds")


def test_pieces_are_capped_deduplicated_and_split_by_content(tokenizer):
    texts = sentences(300) + sentences(300)  # every text twice
    source = CorpusSource(texts, tokenizer, max_tokens=8, held_out_fraction=0.1)
    train = {tuple(source.train.ids[o:o + n].tolist())
             for o, n in zip(source.train.offsets, source.train.lengths)}
    held = {tuple(source.held_out.ids[o:o + n].tolist())
            for o, n in zip(source.held_out.offsets, source.held_out.lengths)}
    assert len(train) == len(source.train) and not train & held
    assert 0.03 < len(held) / (len(held) + len(train)) < 0.2
    assert max(len(p) for p in train | held) == 8
    # The split is a function of the content, not of the order of the file.
    reversed_source = CorpusSource(texts[::-1], tokenizer, max_tokens=8, held_out_fraction=0.1)
    assert len(reversed_source.held_out) == len(source.held_out)


def test_batches_are_bos_piece_eos_then_pad_and_seeded(tokenizer):
    source = texts_source(sentences(50), tokenizer, max_tokens=12)
    batch = source.sample_tokens(64, torch.Generator().manual_seed(3))
    again = source.sample_tokens(64, torch.Generator().manual_seed(3))
    assert torch.equal(batch, again) and batch.shape == (64, 14)
    assert (batch[:, 0] == tokenizer.bos_id).all()
    for row in batch.tolist():
        end = row.index(tokenizer.eos_id)
        assert all(t == tokenizer.pad_id for t in row[end + 1:])
        body = row[1:end]
        assert body and all(t < tokenizer.model_size for t in body)


# ----- positions ------------------------------------------------------------------------

TOKENS = ["<bos>", "When", " John", " and", " Mary", " went", ",", " John", " gave"]


@pytest.mark.parametrize("spec, index", [
    (0, 0), ("3", 3), ("-1", 8), (-9, 0), ("last", 8), ("bos", 0), ("' Mary'", 4),
    ("first ' John'", 2), ("last ' John'", 7), ("2 ' John'", 7), ('"John"', None),
    ("`Mary`", 4), ("first 'John'", 2), ("' went,'", 6),
])
def test_positions_resolve_over_tokens(spec, index):
    if index is None:  # an ambiguous match asks which
        with pytest.raises(positions.PositionError, match="occurs 2 times .*say which"):
            positions.resolve(TOKENS, spec)
        return
    assert positions.resolve(TOKENS, spec) == index


@pytest.mark.parametrize("spec, message", [
    ("9", "outside"), ("-10", "outside"), ("' Bob'", "no token ' Bob'"),
    ("3 ' John'", "no occurrence 3"), ("middle", "cannot read position"),
])
def test_bad_positions_say_what_is_allowed(spec, message):
    with pytest.raises(positions.PositionError, match=message):
        positions.resolve(TOKENS, spec)


def test_eos_and_padding_are_never_last():
    assert positions.resolve(TOKENS + ["<eos>", "<pad>"], "last", real=len(TOKENS)) == 8


def test_a_word_cut_into_several_tokens_names_its_last_token():
    assert positions.resolve(["<bos>", " Jo", "hn", " ran"], "' John'") == 2


def test_text_task_positions_use_the_model_tokenisation(tokenizer):
    task = TextTask(tokenizer, context=64)
    text = "When Alice and Bob went to the park, Bob gave a key to Alice."
    ids = task.encode(text)
    tokens = task.token_strings(ids)
    index = task.resolve_position(text, "last ' Alice'")
    assert "".join(tokens[1:index + 1]).endswith("Alice") and index == len(ids) - 2
    assert task.resolve_position(text, -1) == len(ids) - 1
    row = torch.tensor(ids + [tokenizer.eos_id, tokenizer.pad_id])
    assert task.resolve_in_tokens(row, "last") == len(ids) - 1
