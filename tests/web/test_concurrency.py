"""20 clients x 5 queries at once against a real server: no error, and every result equals
the same query run alone, outside the server."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx

from inversionview.preimage.query import query_config, run_query
from tests.web.test_app import without_timing

CLIENTS, QUERIES_EACH = 20, 5
SITES = ["x0.pre", "a0.0", "x0.mid", "m0", "x0.post", "a1.0", "x1.mid", "m1", "x1.post"]


def request_of(client: int, query: int) -> dict:
    """100 different requests (no two share a cache entry)."""
    index = client * QUERIES_EACH + query
    return {"model": "counting", "site": SITES[index % len(SITES)], "position": ":",
            "candidates": 32, "seed": index, "shown": 16}


def test_concurrent_clients_get_the_serial_results(live_server, loaded_models):
    def one_client(client: int) -> list[tuple[dict, dict]]:
        with httpx.Client(base_url=live_server, timeout=120) as http:
            answers = []
            for query in range(QUERIES_EACH):
                request = request_of(client, query)
                response = http.post("/api/query", json=request)
                assert response.status_code == 200, response.text
                answers.append((request, response.json()))
            return answers

    with ThreadPoolExecutor(CLIENTS) as pool:
        answers = [pair for client_answers in pool.map(one_client, range(CLIENTS))
                   for pair in client_answers]
    assert len(answers) == CLIENTS * QUERIES_EACH

    counting = loaded_models[0]
    for request, record in answers:
        alone = run_query(counting.probed, counting.decoder, counting.probed.task.example,
                          request["site"], ":", query_config(candidates=32, shown=16),
                          seed=request["seed"], decoder_name=counting.decoder_name).to_record()
        alone["model"] = "counting"
        record.pop("attention")
        assert without_timing(record) == without_timing(alone), request
