"""Against a real server: 20 clients x 5 queries at once, every result equal to the same
query run alone; and 20 clients x 10 requests of load and misuse (cancels in flight, a full
queue, bad requests), every answer the status expected and memory flat."""

from __future__ import annotations

import gc
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from inversionview.preimage.query import query_config, run_query
from inversionview.web.service import QueryService
from tests.web.conftest import serving
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


# ----- load and misuse: 20 clients x 10 requests, cancels in flight, memory flat ------------

LOAD_CLIENTS, LOAD_EACH = 20, 10
MAX_JOBS = 8  # small, so that 20 clients fill the queue and meet 429
RSS_GROWTH_LIMIT_MB = 40  # after a warm-up that fills the bounded cache and kept jobs

# Each misuse and the one status it must get.
MISUSE = [
    ("GET", "/api/models/counting/example?seed=99999999999999999999999", None, 422),
    ("POST", "/api/query", {"model": "counting", "site": "zz"}, 400),
    ("POST", "/api/query", {"model": "counting", "input": ""}, 422),
    ("POST", "/api/query", {"model": "gpt-5"}, 404),
    ("POST", "/api/query", {"model": "counting", "candidates": 10**9}, 422),
    ("POST", "/api/query", b"{not json", 422),
    ("GET", "/api/jobs/0123456789abcdef", None, 404),
    ("DELETE", "/api/jobs/nope", None, 404),
    ("POST", "/api/attention", {"model": "addition", "layer": 7}, 422),
    ("POST", "/api/grid", {"model": "counting", "position": "Q", "candidates": 4}, 400),
]


def rss_mb() -> float:
    """This process's resident memory (the server runs in a thread of it)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


class Client:
    """One client's requests; every answer's status must be one of those expected."""

    def __init__(self, http: httpx.Client, statuses: Counter):
        self.http, self.statuses = http, statuses

    def send(self, method: str, path: str, body=None, expected=(200,)) -> httpx.Response:
        """``method path`` until it is not 429 (the queue was full: retried shortly)."""
        deadline = time.monotonic() + 120
        while True:
            content = body if isinstance(body, bytes) else None
            response = self.http.request(method, path, json=None if content else body,
                                         content=content,
                                         headers={"Content-Type": "application/json"} if content else None)
            self.statuses[response.status_code] += 1
            if response.status_code != 429:
                assert response.status_code in expected, (method, path, body, response.text)
                return response
            assert int(response.headers["Retry-After"]) > 0 and "busy" in response.json()["detail"]
            assert time.monotonic() < deadline, "the queue stayed full for 2 minutes"
            time.sleep(0.25)  # shorter than Retry-After: the test wants the load

    def poll(self, job: dict) -> dict:
        deadline = time.monotonic() + 120
        while job["state"] not in ("done", "failed", "cancelled"):
            assert time.monotonic() < deadline, job
            time.sleep(0.05)
            job = self.send("GET", f"/api/jobs/{job['id']}").json()
        return job


def one_round(base_url: str, client: int, requests: int, statuses: Counter,
              outcomes: Counter) -> None:
    """``requests`` requests: sync queries, background jobs polled to the end, jobs cancelled
    while queued or running, and misuses (every kind across the clients), of small queries."""
    with httpx.Client(base_url=base_url, timeout=120) as http:
        me = Client(http, statuses)
        for index in range(requests):
            body = {"model": ("counting", "addition")[index % 2], "candidates": 16,
                    "seed": 1000 * client + index + 100 * requests, "shown": 8}
            kind = (client + index) % 5
            if kind in (0, 1):
                record = me.send("POST", "/api/query", body).json()
                assert record["model"] == body["model"] and record["seed"] == body["seed"]
                outcomes["query"] += 1
            elif kind == 2:
                job = me.poll(me.send("POST", "/api/jobs/query", body, expected=(202,)).json())
                assert job["state"] == "done" and job["result"]["seed"] == body["seed"], job
                outcomes["job done"] += 1
            elif kind == 3:
                job = me.send("POST", "/api/jobs/query", body, expected=(202,)).json()
                cancelled = me.send("DELETE", f"/api/jobs/{job['id']}").json()
                assert cancelled["state"] in ("queued", "running", "done"), cancelled
                job = me.poll(job)
                # a job that finished before the DELETE reached it stays done
                assert (job["state"], job["status_code"]) in (("cancelled", 409), ("done", None)), job
                outcomes[f"job {job['state']} after DELETE"] += 1
            else:
                method, path, misuse_body, status = MISUSE[(2 * client + index // 5) % len(MISUSE)]
                response = me.send(method, path, misuse_body, expected=(status,))
                assert isinstance(response.json()["detail"], str)
                outcomes[f"misuse {status}"] += 1


def test_load_and_misuse_with_cancels_keeps_memory_flat(loaded_models):
    service = QueryService(loaded_models, max_jobs=MAX_JOBS, cache_size=16, kept_jobs=32)
    with serving(service) as base_url:
        def load(round_name: str, requests: int) -> tuple[Counter, Counter, float]:
            statuses, outcomes = Counter(), Counter()
            started = time.monotonic()
            with ThreadPoolExecutor(LOAD_CLIENTS) as pool:
                for done in [pool.submit(one_round, base_url, client, requests, statuses, outcomes)
                             for client in range(LOAD_CLIENTS)]:
                    done.result()  # a client's failed assertion fails the test
            print(f"{round_name}: {time.monotonic() - started:.1f} s, statuses "
                  f"{dict(sorted(statuses.items()))}, outcomes {dict(sorted(outcomes.items()))}")
            return statuses, outcomes, time.monotonic() - started

        # the warm-up fills the cache and the kept jobs to their bounds (16 and 32), starts
        # the server's threads, and lets the allocator settle
        load("warm-up", LOAD_EACH // 2)
        gc.collect()
        before = rss_mb()
        statuses, outcomes, seconds = load("load", LOAD_EACH)
        gc.collect()
        after = rss_mb()
        print(f"RSS {before:.0f} MB after the warm-up, {after:.0f} MB after the load "
              f"({after - before:+.1f} MB); {seconds:.1f} s")
        assert sum(outcomes.values()) == LOAD_CLIENTS * LOAD_EACH
        assert set(statuses) <= {200, 202, 400, 404, 422, 429}
        assert outcomes["misuse 400"] and outcomes["misuse 404"] and outcomes["misuse 422"]
        assert after - before < RSS_GROWTH_LIMIT_MB
        assert service.pending() == 0
        assert len(service._jobs) <= 32 and len(service._cache) <= 16
