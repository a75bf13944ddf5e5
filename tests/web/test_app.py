"""The JSON API: every endpoint, every error a user can cause, the record's schema."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from inversionview.preimage.query import query_config, run_query
from inversionview.options import GRID_CANDIDATES, SEED, SERVER_CANDIDATES, SHOWN
from inversionview.web.schemas import QueryResult

MAX_CANDIDATES, MAX_SHOWN = SERVER_CANDIDATES.high, SHOWN.high

TIMING = ("seconds", "seconds_sampling", "seconds_scoring", "seconds_colouring", "seconds_search")


def without_timing(record: dict) -> dict:
    record = dict(record)
    record["stats"] = {k: v for k, v in record["stats"].items() if k not in TIMING}
    return record


def wait_for(client, job: dict, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while job["state"] not in ("done", "failed", "cancelled"):
        assert time.monotonic() < deadline, f"job {job['id']} did not finish: {job}"
        time.sleep(0.02)
        response = client.get(f"/api/jobs/{job['id']}")
        assert response.status_code == 200
        job = response.json()
    return job


def test_models_lists_the_bundled_models_with_their_sites(client):
    response = client.get("/api/models")
    assert response.status_code == 200
    models = {m["name"]: m for m in response.json()}
    assert set(models) == {"counting", "addition"}
    counting = models["counting"]
    assert counting["sites"] == ["x0.pre", "a0.0", "x0.mid", "m0", "x0.post", "a1.0", "x1.mid",
                                 "m1", "x1.post"]
    assert counting["default_site"] == "a1.0" and counting["default_position"] == ":"
    assert ":" in counting["position_names"] and "|" in counting["position_names"]
    assert len(models["addition"]["sites"]) == 13 and models["addition"]["n_heads"] == 4


def test_example_is_a_seeded_sample_of_the_task(client, service):
    first = client.get("/api/models/counting/example", params={"seed": 7}).json()
    again = client.get("/api/models/counting/example", params={"seed": 7}).json()
    other = client.get("/api/models/counting/example", params={"seed": 8}).json()
    assert first == again and first["input"] != other["input"]
    assert first["input"] == service.models["counting"].probed.task.sample(1, seed=7)[0]
    assert client.get("/api/models/nope/example").status_code == 404
    negative = client.get("/api/models/counting/example", params={"seed": -1})
    assert negative.status_code == 422 and "seed" in negative.json()["detail"]


def test_query_returns_the_query_command_record(client, service):
    request = {"model": "counting", "input": "Bvvzccvczvvvzvcvc|v:8E", "site": "x1.mid",
               "position": ":", "candidates": 64, "seed": 3, "shown": 20}
    response = client.post("/api/query", json=request)
    assert response.status_code == 200
    record = response.json()
    loaded = service.models["counting"]
    expected = run_query(loaded.probed, loaded.decoder, request["input"], "x1.mid", ":",
                         query_config(candidates=64, shown=20), seed=3,
                         decoder_name=loaded.decoder_name).to_record()
    expected["model"] = "counting"
    assert record.pop("attention") is None  # not a head site
    assert without_timing(record) == without_timing(expected)
    QueryResult.model_validate(record)  # the schema describes the record exactly
    assert record["stats"]["shown"] == len(record["samples"]) <= 20


def test_query_defaults_to_the_task_example_and_default_query(client):
    record = client.post("/api/query", json={"model": "addition", "candidates": 32}).json()
    assert record["query"]["text"] == "B615+861=1476E"
    assert (record["site"], record["position_label"]) == ("x0.mid", "=")


def test_head_site_carries_its_attention_from_the_query_position(client, service):
    record = client.post("/api/query", json={"model": "counting", "site": "a1.0",
                                             "candidates": 32}).json()
    attention = record["attention"]
    assert len(attention) == record["position"] + 1  # causal: up to the query position
    assert sum(attention) == pytest.approx(1.0, abs=1e-4)
    pattern = service.models["counting"].probed.attention_pattern(record["query"]["text"], 1)
    assert attention == pytest.approx(pattern[0, record["position"], : record["position"] + 1].tolist(),
                                      abs=1e-5)


def test_single_temperature_replaces_the_schedule(client):
    record = client.post("/api/query", json={"model": "counting", "candidates": 32,
                                             "temperature": 0.5}).json()
    assert record["schedule"] == [{"temperature": 0.5, "noise": 0.0, "candidates": 32}]


@pytest.mark.parametrize("body, status, words", [
    ({"model": "counting", "site": "a7.0"}, 400, "a7.0"),
    ({"model": "counting", "site": "blah"}, 400, "cannot parse site"),
    ({"model": "counting", "input": "Bab!c|a:2E"}, 400, "not in the counting vocabulary"),
    ({"model": "counting", "input": "B" + "a" * 40 + "|a:9E"}, 400, "long"),
    ({"model": "counting", "input": "a" * 600}, 422, "input"),
    ({"model": "counting", "position": "F1"}, 400, "unknown position"),
    ({"model": "counting", "position": 99}, 400, "outside"),
    ({"model": "counting", "shown": MAX_SHOWN + 1}, 422, "shown"),
    ({"model": "counting", "candidates": MAX_CANDIDATES + 1}, 422, "candidates"),
    ({"model": "counting", "candidates": 0}, 422, "candidates"),
    ({"model": "counting", "epsilon": -1}, 422, "epsilon"),
    ({"model": "counting", "metric": "manhattan"}, 422, "metric"),
    ({"model": "counting", "temperature": 0}, 422, "temperature"),
    ({"model": "counting", "bogus": 1}, 422, "bogus"),
    ({"input": "B"}, 422, "model"),
    ({"model": "gpt-5"}, 404, "unknown model 'gpt-5'"),
    # issue 31: was accepted (4,095 of a language model's 4,096 tokens banned)
    ({"model": "counting", "ban_rare": 10**9}, 422, "ban_rare: Input should be less than or "
                                                      "equal to 1000000"),
])
def test_bad_query_answers_4xx_with_a_message(client, body, status, words):
    response = client.post("/api/query", json=body)
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and words in detail


def test_malformed_json_is_a_clear_422(client):
    response = client.post("/api/query", content=b"{not json", headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    assert "JSON" in response.json()["detail"]


def test_html_export_is_self_contained(client):
    response = client.post("/api/query/html", json={"model": "counting", "candidates": 32})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "attachment" in response.headers["content-disposition"]
    page = response.text
    assert "Bvvzccvczvvvzvcvc|v:8E" in page and "<script type='application/json' id='result'>" in page
    assert "http://" not in page and "https://" not in page
    assert client.post("/api/query/html", json={"model": "counting", "site": "x"}).status_code == 400


def test_grid_reads_every_site_at_one_position(client, service):
    response = client.post("/api/grid", json={"model": "counting", "candidates": 32})
    assert response.status_code == 200
    grid = response.json()
    sites = [site.short for site in service.models["counting"].probed.sites]
    assert [row["site"] for row in grid["rows"]] == sites and grid["position_label"] == ":"
    for row in grid["rows"]:
        assert 0 <= row["in_epsilon_rate"] <= 1
    # x0.pre at ':' is the token ':' plus its position: every sample ending so is inside
    assert grid["rows"][0]["in_epsilon_rate"] > 0.5
    assert client.post("/api/grid", json={"model": "counting", "position": "Q"}).status_code == 400
    assert client.post("/api/grid", json={"model": "counting", "candidates": 10**6}).status_code == 422


def test_attention_pattern_of_a_layer(client):
    response = client.post("/api/attention", json={"model": "addition", "layer": 1,
                                                   "input": "B123+456=579E"})
    assert response.status_code == 200
    result = response.json()
    assert result["n_heads"] == 4 and len(result["patterns"]) == 4
    assert result["tokens"] == list("B123+456=579E")
    for pattern in result["patterns"]:
        assert len(pattern) == len(result["tokens"])
        for q, row in enumerate(pattern):
            assert sum(row) == pytest.approx(1.0, abs=1e-3)
            assert all(w == 0 for w in row[q + 1:])  # causal
    bad_layer = client.post("/api/attention", json={"model": "addition", "layer": 5})
    assert bad_layer.status_code == 422 and "layer" in bad_layer.json()["detail"]
    bad_input = client.post("/api/attention", json={"model": "addition", "input": "B1x2E"})
    assert bad_input.status_code == 400 and "vocabulary" in bad_input.json()["detail"]


def test_job_runs_in_the_background_and_equals_the_direct_query(client):
    body = {"model": "addition", "candidates": 64, "seed": 11, "site": "a1.2", "position": "A2"}
    started = client.post("/api/jobs/query", json=body)
    assert started.status_code == 202
    job = wait_for(client, started.json())
    assert job["state"] == "done" and job["progress"] == 1.0 and job["error"] is None
    direct = client.post("/api/query", json=body).json()
    assert without_timing(job["result"]) == without_timing(direct)


def test_job_errors_are_reported_on_the_job(client):
    job = wait_for(client, client.post("/api/jobs/query", json={"model": "counting",
                                                                 "input": "B%"}).json())
    assert job["state"] == "failed" and job["status_code"] == 400
    assert "vocabulary" in job["error"]
    assert client.post("/api/jobs/query", json={"model": "counting", "shown": 0}).status_code == 422


def test_cancel_a_queued_and_a_running_job(client):
    # a long job occupies the worker; the one queued behind it is cancelled before it starts
    long_body = {"model": "counting", "candidates": MAX_CANDIDATES, "seed": 101}
    running = client.post("/api/jobs/query", json=long_body).json()
    queued = client.post("/api/jobs/query", json={"model": "counting", "candidates": 64,
                                                  "seed": 102}).json()
    assert client.delete(f"/api/jobs/{queued['id']}").status_code == 200
    deadline = time.monotonic() + 30
    while client.get(f"/api/jobs/{running['id']}").json()["progress"] == 0:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    status = client.delete(f"/api/jobs/{running['id']}").json()
    assert status["state"] == "running"  # it stops at its next progress step
    assert wait_for(client, running)["state"] == "cancelled"
    queued = wait_for(client, queued)
    assert queued["state"] == "cancelled" and queued["status_code"] == 409
    # the worker goes on after cancellations
    assert client.post("/api/query", json={"model": "counting", "candidates": 64}).status_code == 200


def test_grid_job_reports_progress_per_site(client):
    job = client.post("/api/jobs/grid", json={"model": "addition", "candidates": 16, "seed": 5}).json()
    assert job["kind"] == "grid"
    job = wait_for(client, job)
    assert job["state"] == "done" and len(job["result"]["rows"]) == 13


def test_unknown_job_is_404(client):
    assert client.get("/api/jobs/0123456789abcdef").status_code == 404
    assert client.delete("/api/jobs/nope").status_code == 404


def test_page_static_files_and_openapi(client):
    page = client.get("/")
    assert page.status_code == 200 and "/static/app.js" in page.text
    for name in ("app.js", "style.css", "favicon.svg"):
        assert client.get(f"/static/{name}").status_code == 200
    for text in (page.text, client.get("/static/app.js").text, client.get("/static/style.css").text):
        assert "https://" not in text and "cdn" not in text.lower()
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/api/models", "/api/query", "/api/query/html", "/api/grid", "/api/attention",
            "/api/jobs/query", "/api/jobs/grid", "/api/jobs/{job_id}", "/api/verify"} <= set(paths)
    schema = client.get("/openapi.json").json()["components"]["schemas"]
    assert {"QueryRequest", "QueryResult", "JobStatus", "ErrorMessage"} <= set(schema)


def test_verify_patches_in_and_out_of_epsilon_samples(client):
    response = client.post("/api/verify", json={"model": "counting", "candidates": 256})
    assert response.status_code == 200
    report = response.json()
    assert report["inside"] and report["outside"] and report["site"] == "a1.0"
    assert report["inside_mean"]["kl_max"] < report["outside_mean"]["kl_max"]
    assert client.post("/api/verify", json={"model": "counting", "site": "zz"}).status_code == 400


# ----- what a tester found (issue 12): each failed before the fix --------------------------


def test_a_seed_beyond_64_bits_is_a_422_not_a_500(client):
    for seed in (99999999999999999999999, SEED.high + 1):
        response = client.get("/api/models/counting/example", params={"seed": seed})
        assert response.status_code == 422, response.text
        assert "seed" in response.json()["detail"]
        body = {"model": "counting", "candidates": 16, "seed": seed}
        assert client.post("/api/query", json=body).status_code == 422
    top = client.get("/api/models/counting/example", params={"seed": SEED.high})
    assert top.status_code == 200 and top.json()["seed"] == SEED.high


@pytest.mark.parametrize("path, body, says", [
    ("/api/query", b'{"model": "counting", "seed": 9X}', "seed: a number of 5,000 digits"),
    ("/api/grid", b'{"model": "counting", "seed": 9X}', "seed: a number of 5,000 digits"),
    ("/api/query", b'{"model": "counting", "candidates": -9X}', "candidates: a number of 5,000"),
    ("/api/query", b'{"model": "counting", "noise_cosine": [0.5, 9X]}', "noise_cosine[1]: a number"),
])
def test_a_number_beyond_the_digits_python_reads_names_its_field(client, path, body, says):
    """Issue 31: a 5,000-digit seed was 'the request body is not JSON text' (Python reads at
    most 4,300 digits of an integer; json.loads raises ValueError); now the field, and its
    range where it has one."""
    response = client.post(path, content=body.replace(b"9X", b"9" * 5000),
                           headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert says in detail and "not JSON" not in detail
    if "seed" in says:
        assert detail.endswith("seed must be from 0 to 9,223,372,036,854,775,807")
    query = client.get("/api/models/counting/example", params={"seed": "9" * 5000})
    assert query.status_code == 422
    assert query.json()["detail"].endswith("seed must be from 0 to 9,223,372,036,854,775,807")
    broken = client.post(path, content=b"\xff{", headers={"Content-Type": "application/json"})
    assert broken.status_code == 422 and "JSON" in broken.json()["detail"]


def test_the_schema_states_the_limits_the_server_applies(client, service):
    document = client.get("/openapi.json").json()
    schemas = document["components"]["schemas"]
    seed = next(p for p in document["paths"]["/api/models/{name}/example"]["get"]["parameters"]
                if p["name"] == "seed")["schema"]
    assert (seed["minimum"], seed["maximum"]) == (SEED.low, SEED.high)
    query = schemas["QueryRequest"]["properties"]
    assert query["candidates"]["maximum"] == service.candidates.high == SERVER_CANDIDATES.high
    assert query["shown"]["maximum"] == SHOWN.high
    assert query["seed"]["maximum"] == SEED.high
    assert query["model"]["enum"] == ["counting", "addition"]
    assert schemas["GridRequest"]["properties"]["candidates"]["maximum"] == GRID_CANDIDATES.high
    assert schemas["AttentionRequest"]["properties"]["layer"]["maximum"] == 1  # 2 layers


def test_every_error_status_is_declared(client):
    paths = client.get("/openapi.json").json()["paths"]
    declared = {(path, method): set(operation["responses"])
                for path, methods in paths.items() for method, operation in methods.items()}
    compute = {"400", "404", "409", "422", "429", "503"}
    for path in ("/api/query", "/api/query/html", "/api/verify", "/api/grid", "/api/attention"):
        assert compute <= declared[(path, "post")], path
    for path in ("/api/jobs/query", "/api/jobs/grid"):
        assert {"202", "404", "422", "429", "503"} <= declared[(path, "post")], path
    assert "Retry-After" in paths["/api/jobs/query"]["post"]["responses"]["429"]["headers"]
    assert {"200", "404", "422"} <= declared[("/api/models/{name}/example", "get")]
    assert {"200", "404"} <= declared[("/api/jobs/{job_id}", "get")]
    html = paths["/api/query/html"]["post"]["responses"]
    assert "text/html" in html["200"]["content"] and "application/json" in html["400"]["content"]


def strings_in(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from strings_in(key)
            yield from strings_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings_in(item)


def test_no_response_reveals_an_absolute_path(client):
    root = str(Path(__file__).resolve().parents[2])
    models = client.get("/api/models").json()
    assert {(m["source"], m["decoder"]) for m in models} == {
        ("counting", "decoder-counting"), ("addition", "decoder-addition")}
    record = client.post("/api/query", json={"model": "counting", "candidates": 16}).json()
    grid = client.post("/api/grid", json={"model": "counting", "candidates": 4}).json()
    job = client.post("/api/jobs/query", json={"model": "addition", "candidates": 16}).json()
    for answer in (models, record, grid, wait_for(client, job)):
        for text in strings_in(answer):
            assert not os.path.isabs(text) and root not in text, text


@pytest.mark.parametrize("path, field", [
    ("/api/query", "site"), ("/api/query", "input"), ("/api/query", "position"),
    ("/api/grid", "input"), ("/api/grid", "position"), ("/api/attention", "input"),
    ("/api/jobs/query", "site"),
])
def test_an_empty_text_field_is_refused_not_the_default(client, path, field):
    body = {"model": "counting"} if path == "/api/attention" else {"model": "counting", "candidates": 4}
    response = client.post(path, json={**body, field: ""})
    assert response.status_code == 422, response.text
    assert response.json()["detail"] == f"{field}: must not be empty; leave it out (or null) for the default"
    assert client.post(path, json={**body, field: None}).status_code in (200, 202)


def test_a_layer_beyond_the_deepest_model_is_a_422_and_beyond_a_shallower_one_a_400(loaded_models):
    from fastapi.testclient import TestClient

    from inversionview.probed import build_probed
    from inversionview.web.app import create_app
    from inversionview.web.service import LoadedModel, QueryService

    counting = loaded_models[0]
    shallow = LoadedModel("shallow", build_probed("counting", seed=0, n_embd=16, n_head=1,
                                                  n_layer=1), counting.decoder, "decoder")
    service = QueryService([counting, shallow])
    try:
        client = TestClient(create_app(service))
        schema = client.get("/openapi.json").json()["components"]["schemas"]["AttentionRequest"]
        assert schema["properties"]["layer"]["maximum"] == 1
        assert client.post("/api/attention", json={"model": "counting", "layer": 1}).status_code == 200
        beyond = client.post("/api/attention", json={"model": "counting", "layer": 2})
        assert beyond.status_code == 422 and "layer" in beyond.json()["detail"]
        shallower = client.post("/api/attention", json={"model": "shallow", "layer": 1})
        assert shallower.status_code == 400 and "layers 0..0" in shallower.json()["detail"]
    finally:
        service.close()


def test_a_full_queue_answers_429_with_retry_after(loaded_models):
    from fastapi.testclient import TestClient

    from inversionview.web.app import create_app
    from inversionview.web.service import QueryService

    service = QueryService(loaded_models, max_jobs=2)
    try:
        client = TestClient(create_app(service))
        long_body = {"model": "counting", "candidates": SERVER_CANDIDATES.high}
        first = client.post("/api/jobs/query", json={**long_body, "seed": 1}).json()
        second = client.post("/api/jobs/query", json={**long_body, "seed": 2}).json()
        for path in ("/api/jobs/query", "/api/query", "/api/jobs/grid"):
            full = client.post(path, json={"model": "counting", "candidates": 4})
            assert full.status_code == 429, full.text
            assert int(full.headers["Retry-After"]) > 0
            assert "busy" in full.json()["detail"] and "at most 2" in full.json()["detail"]
        for job in (first, second):
            assert client.delete(f"/api/jobs/{job['id']}").status_code == 200
        assert wait_for(client, first)["state"] == wait_for(client, second)["state"] == "cancelled"
        assert client.post("/api/query", json={"model": "counting", "candidates": 4}).status_code == 200
    finally:
        service.close()


def test_query_takes_the_constraint_and_cosine_noise(client):
    free = client.post("/api/query", json={"model": "counting", "candidates": 32, "search": 0,
                                           "constrain": False}).json()
    assert free["constrained"] is False
    record = client.post("/api/query", json={"model": "counting", "candidates": 32, "search": 0,
                                             "noise_cosine": [0.8, 0.9]}).json()
    assert record["constrained"] is True and record["noise_cosine"] == [0.8, 0.9]
    assert record["stats"]["valid_rate"] == 1.0
    empty = client.post("/api/query", json={"model": "counting", "noise_cosine": [0.9, 0.5]})
    assert empty.status_code in (400, 422) and "LOW <= HIGH" in empty.json()["detail"]
    wrong = client.post("/api/query", json={"model": "counting", "noise_cosine": [0.9]})
    assert wrong.status_code == 422
