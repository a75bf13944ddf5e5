"""The server on a language model: the input as the model cuts it, queries, attention and the
HTML export over BPE tokens (a tiny GPT-2 with its own tokenizer, tests/web/conftest.py)."""

from __future__ import annotations

import json
import re

TEXT = "When Alice and Bob went to the park, Bob gave a key to Alice."


def test_tokens_are_the_models_own_pieces_with_bos_first(text_client, text_model):
    response = text_client.post("/api/tokens", json={"model": "tiny-lm", "input": TEXT})
    assert response.status_code == 200, response.text
    body = response.json()
    task = text_model.probed.task
    expected = task.token_strings(task.encode(TEXT))
    assert body["tokens"] == expected
    assert body["tokens"][0] == "<|endoftext|>" and "".join(body["tokens"][1:]) == TEXT
    assert len(body["tokens"]) < len(TEXT)  # pieces, not characters
    assert body["positions"] == {"last": len(expected) - 1}


def test_tokens_of_a_toy_task_are_its_characters_and_named_positions(text_client):
    body = text_client.post("/api/tokens", json={"model": "counting"}).json()
    assert body["tokens"] == list(body["input"])
    assert body["positions"]["query"] == body["input"].index("|") + 1


def test_tokens_errors_are_clear(text_client):
    cases = [({"model": "nope", "input": "x"}, 404, "unknown model 'nope'"),
             ({"model": "tiny-lm", "input": ""}, 422, "input"),
             ({"model": "tiny-lm", "input": "Alice " * 80}, 400, "context holds at most 64"),
             ({"model": "counting", "input": "Bab#|a:"}, 400, "not in the counting")]
    for request, status, message in cases:
        response = text_client.post("/api/tokens", json=request)
        assert response.status_code == status, (request, response.text)
        assert message in response.json()["detail"]


def test_query_on_text_labels_its_samples_with_tokens(text_client):
    request = {"model": "tiny-lm", "input": TEXT, "site": "a1.2", "position": 'first "Bob"',
               "candidates": 64, "shown": 10, "seed": 3}
    response = text_client.post("/api/query", json=request)
    assert response.status_code == 200, response.text
    record = response.json()
    tokens = text_client.post("/api/tokens", json={"model": "tiny-lm", "input": TEXT}).json()["tokens"]
    assert record["query"]["tokens"] == tokens
    # the first "Bob", at its last token
    assert "".join(tokens[1: record["position"] + 1]) == "When Alice and Bob"
    assert record["attribute_agreement"] == []
    assert len(record["attention"]) == record["position"] + 1  # a head's weights up to it
    for sample in record["samples"]:
        assert sample["tokens"][0] == "<|endoftext|>"
    assert record == text_client.post("/api/query", json=request).json()  # seeded


def test_attention_tokens_are_the_pieces(text_client):
    response = text_client.post("/api/attention", json={"model": "tiny-lm", "input": TEXT, "layer": 1})
    assert response.status_code == 200, response.text
    body = response.json()
    n = len(body["tokens"])
    assert n < len(TEXT) and len(body["patterns"]) == 4
    assert all(len(row) == n for row in body["patterns"][0])


def test_html_export_of_text_marks_the_query_token_and_has_no_empty_agreement(text_client):
    request = {"model": "tiny-lm", "input": TEXT, "site": "x0.mid", "position": "last",
               "candidates": 32, "shown": 5}
    response = text_client.post("/api/query/html", json=request)
    assert response.status_code == 200, response.text
    page = response.text
    assert "Attribute agreement" not in page
    assert re.search(r"<span class='query-pos'>\.</span>", page)
    record = json.loads(re.search(r"<script type='application/json' id='result'>\n(.*)\n</script>",
                                  page).group(1))
    assert record["site"] == "x0.mid"


def test_query_bans_rare_tokens_from_the_models_stored_counts(text_client, text_model):
    from pathlib import Path

    from inversionview.text.counts import TOKEN_COUNTS, write_token_counts

    request = {"model": "tiny-lm", "candidates": 16, "search": 0, "ban_rare": 2}
    missing = text_client.post("/api/query", json=request)
    assert missing.status_code == 400 and TOKEN_COUNTS in missing.json()["detail"]
    assert "/" not in missing.json()["detail"].split(TOKEN_COUNTS)[0]  # no server path
    toy = text_client.post("/api/query", json={"model": "counting", "ban_rare": 2})
    assert toy.status_code == 400 and "language models" in toy.json()["detail"]
    from tiny_lms import sentences

    counts = Path(text_model.probed.source) / TOKEN_COUNTS
    write_token_counts(counts.parent, text_model.probed.task.vocab, sentences())
    try:
        record = text_client.post("/api/query", json=request).json()
        assert record["banned_tokens"] > 0
        assert text_client.post("/api/query", json={**request, "ban_rare": 0}).status_code == 422
        # issue 31: a ban of nearly every token was accepted; refused, with what would do
        everything = text_client.post("/api/query", json={**request, "ban_rare": 1_000_000})
        assert everything.status_code == 400, everything.text
        detail = everything.json()["detail"]
        assert detail.startswith("ban_rare 1,000,000 bans ") and "or less" in detail
        assert "a ban must leave at least 10% of the tokens" in detail
        write_token_counts(counts.parent, text_model.probed.task.vocab, ["the the the of", "a b c"])
        few = text_client.post("/api/query", json={**request, "seed": 1})  # not the cached one
        assert few.status_code == 400 and "use more of the vocabulary" in few.json()["detail"]
    finally:
        counts.unlink()
