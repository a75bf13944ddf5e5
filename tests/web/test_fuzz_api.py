"""Schemathesis against the app's own OpenAPI document, in process (ASGI): every operation,
positive and negative cases, with every response check: no 5xx, each status documented,
content type, headers and body as the schema says, what the schema refuses is refused, and
what it allows is not refused as malformed (422).

The server is the bundled models behind a QueryService whose candidate limits are small, so
that every request stays cheap; the schema states those limits, so nothing checked is
weakened, only the search space is smaller. The count of cases each operation ran is printed
at the end and kept in test-artifacts/fuzz-api.json.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path

import pytest
import schemathesis
from fuzz_counter import count_case
from hypothesis import HealthCheck, settings

from inversionview.options import Range
from inversionview.web.app import create_app
from inversionview.web.service import QueryService
from tests.web.conftest import bundled_models

EXAMPLES = 40  # per operation and phase; schemathesis adds boundary (coverage) cases
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
# Statuses a request the schema allows may get: 2xx, 400 (a site or input the model cannot
# take: the schema cannot know every model's vocabulary), 404 (a job id that does not exist),
# 409 (cancelled), 429 (queue full). Never 422: that would mean the schema allows what the
# server refuses as malformed.
ALLOWED_FOR_VALID = ["2xx", "400", "404", "409", "429"]

CASES: Counter[str] = Counter()
STATUSES: Counter[str] = Counter()


# schemathesis needs the document when the tests are collected (its lazy loader does not
# work with this pytest), so the server is made at import; its worker idles until used.
FUZZ_SERVICE = QueryService(list(bundled_models()), max_jobs=8,
                            candidates=Range("candidates", 1, 16),
                            grid_candidates=Range("candidates", 1, 2))
schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(FUZZ_SERVICE))
schema.config.checks.positive_data_acceptance.expected_statuses = ALLOWED_FOR_VALID


@pytest.fixture(scope="module", autouse=True)
def fuzz_report(request):
    started = time.monotonic()
    yield
    FUZZ_SERVICE.close()
    seconds = time.monotonic() - started
    record = {"cases": sum(CASES.values()), "seconds": round(seconds, 1),
              "per_operation": dict(sorted(CASES.items())), "statuses": dict(sorted(STATUSES.items()))}
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "fuzz-api.json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [f"schemathesis: {record['cases']} cases in {seconds:.0f} s; "
             f"statuses {record['statuses']}"]
    lines += [f"  {count:5d}  {label}" for label, count in record["per_operation"].items()]
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled():  # shown without -s
        print("\n" + "\n".join(lines))


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck),
          print_blob=True, derandomize=os.environ.get("HYPOTHESIS_PROFILE") != "explore")
def test_every_operation_conforms_to_its_schema(case):
    response = case.call_and_validate()
    CASES[case.operation.label] += 1
    count_case("API")
    STATUSES[str(response.status_code)] += 1


def test_enough_cases_ran_for_every_operation():
    """After the fuzzing above (same module, run in file order): every operation with
    parameters ran at least EXAMPLES cases."""
    if not CASES:
        pytest.skip("the fuzz test did not run (deselected)")
    operations = [operation.label for operation in
                  (result.ok() for result in schema.get_all_operations())]
    assert set(operations) == set(CASES), set(operations) ^ set(CASES)
    for label in operations:
        if label != "GET /api/models":  # no parameters: few distinct cases exist
            assert CASES[label] >= EXAMPLES, (label, CASES[label])


def test_a_job_status_conforms_to_its_schema():
    """GET and DELETE /api/jobs/{id} of real jobs (fuzzing finds only unknown ids)."""
    from inversionview.web.schemas import GridRequest, QueryRequest

    deadline = time.monotonic() + 120
    while FUZZ_SERVICE.pending():  # what the fuzzing left in the queue
        assert time.monotonic() < deadline
        time.sleep(0.05)
    jobs = [FUZZ_SERVICE.submit_query(QueryRequest(model="counting", candidates=8, seed=3)),
            FUZZ_SERVICE.submit_grid(GridRequest(model="addition", candidates=2)),
            FUZZ_SERVICE.submit_query(QueryRequest(model="counting", site="zz", candidates=8))]
    for job in jobs:
        assert job.finished.wait(60)
        for method in ("GET", "DELETE"):
            case = schema["/api/jobs/{job_id}"][method].Case(path_parameters={"job_id": job.id})
            response = case.call_and_validate()
            assert response.status_code == 200
    assert jobs[2].status()["status_code"] == 400
