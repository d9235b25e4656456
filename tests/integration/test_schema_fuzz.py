"""Schemathesis against a real `lethe serve` process: every operation of the gateway's own
OpenAPI schema (/openapi.json), fed schema-valid and schema-violating inputs, never answers
5xx, and every error it does answer is OpenAI's error envelope.

The admin bearer token is sent, so /admin/* is exercised past authentication; routes that
take a target id get, for about half of their examples, the id of a target that exists (and
the chat route the served model's name), so lookups, deletions, adapter uploads and generation
get past 404 too. The chat route runs the real model:
the server is started with a small default max_tokens and a short generation timeout, which
bound what a fuzzed request may cost (a large `max_tokens` ends at the timeout with the tokens
so far), and examples per operation are bounded.
"""

from __future__ import annotations

import copy
import tempfile
import zlib
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from _support import (
    ADMIN,
    ADMIN_TOKEN,
    MODEL_ID,
    assert_error_shape,
    gateway_settings,
    serve_process,
)
from hypothesis import HealthCheck, settings
from schemathesis import Case, Response
from schemathesis.checks import CheckContext, not_a_server_error
from schemathesis.specs.openapi.checks import negative_data_rejection

from app.main import create_app

pytestmark = pytest.mark.slow

EXAMPLES_PER_OPERATION = 30
# Client-side bound on one call: well above the server's generation timeout, so a request
# that outlives it is a hang, reported as a failure rather than waited on.
CALL_TIMEOUT_S = 60.0
GENERATION_TIMEOUT_S = 5
KNOWN_TARGET = {"name": "Schema Fuzz Target", "aliases": ["Fuzzland"], "intervention": "eco"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A gateway process on a free port (no background calibration: fuzzed registrations
    must not keep the CPU busy)."""
    env = {
        "LETHE_DATA_DIR": str(tmp_path_factory.mktemp("schema-fuzz")),
        "LETHE_ADMIN_TOKEN": ADMIN_TOKEN,
        "LETHE_CALIBRATION_WORKERS": "0",
        "LETHE_MAX_TOKENS_DEFAULT": "8",
        "LETHE_REQUEST_TIMEOUT_S": str(GENERATION_TIMEOUT_S),
        "LETHE_LOG_LEVEL": "WARNING",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    with serve_process(env) as base:
        yield base


def known_target_id(base: str) -> str:
    """The id of the fuzz run's own target, registered again if an example deleted it."""
    with httpx.Client(base_url=base, headers=ADMIN, timeout=CALL_TIMEOUT_S) as client:
        for target in client.get("/admin/targets").json()["data"]:
            if target["name"] == KNOWN_TARGET["name"]:
                return str(target["id"])
        created = client.post("/admin/targets", json=KNOWN_TARGET)
        assert created.status_code == 201, created.text
        return str(created.json()["id"])


def openai_error_shape(ctx: CheckContext, response: Response, case: Case[Any]) -> bool | None:
    """Every error is OpenAI's envelope (message/type/param/code), as JSON."""
    if response.status_code < 400:
        return None
    assert response.headers.get("content-type", [""])[0].startswith("application/json"), (
        f"{response.status_code} with content-type {response.headers.get('content-type')}"
    )
    assert_error_shape(response.json())
    return True


def _served_schema() -> dict[str, Any]:
    """The document the gateway serves at /openapi.json (routes do not depend on settings,
    and no lifespan is needed to build it); a test below checks the running server agrees."""
    with tempfile.TemporaryDirectory() as data_dir:
        app = create_app(gateway_settings(Path(data_dir)))
        document: dict[str, Any] = app.openapi()
    return document


SERVED_SCHEMA = _served_schema()
# A body over LETHE_MAX_BODY_BYTES is refused with 413 before it is parsed: a rejection too.
CONFIG = schemathesis.Config.from_dict(
    {
        "checks": {
            "negative_data_rejection": {
                "expected-statuses": [400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428, 429]
            }
        }
    }
)
schema = schemathesis.openapi.from_dict(copy.deepcopy(SERVED_SCHEMA), config=CONFIG)


def test_fuzzed_schema_is_the_served_one(server: str) -> None:
    served = httpx.get(f"{server}/openapi.json", timeout=CALL_TIMEOUT_S)
    assert served.status_code == 200
    assert served.json() == SERVED_SCHEMA


def use_known_ids(case: Case[Any], base: str) -> None:
    """Point the case at things that exist: the served model, the run's own target."""
    if case.path_parameters and "target_id" in case.path_parameters:
        case.path_parameters["target_id"] = known_target_id(base)
    if case.path_parameters and "model_id" in case.path_parameters:
        case.path_parameters["model_id"] = MODEL_ID
    if isinstance(case.body, dict) and "model" in case.body:
        case.body["model"] = MODEL_ID


def half_of_cases(case: Case[Any]) -> bool:
    """True for about half of the cases, always the same for the same case (so an example
    replays identically while Hypothesis shrinks it)."""
    return zlib.crc32(repr((case.path_parameters, case.body)).encode()) % 2 == 1


# Statuses answered per operation, for the sanity test at the end of the module.
ANSWERED: defaultdict[str, list[int]] = defaultdict(list)


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_no_operation_answers_5xx(case: Case[Any], server: str) -> None:
    if half_of_cases(case):
        use_known_ids(case, server)
    response = case.call(base_url=server, headers=ADMIN, timeout=CALL_TIMEOUT_S)
    ANSWERED[case.operation.label].append(response.status_code)
    case.validate_response(
        response,
        checks=[not_a_server_error, negative_data_rejection, openai_error_shape],
        headers=ADMIN,
    )


def test_the_fuzzing_got_past_auth_and_ran_the_model() -> None:
    """The run above exercised what it claims: every operation, none refused for its
    credentials, and chat completions that ran the model to a 200."""
    if not ANSWERED:
        pytest.skip("runs after test_no_operation_answers_5xx, in the same session")
    served = {
        f"{verb.upper()} {path}" for path, ops in SERVED_SCHEMA["paths"].items() for verb in ops
    }
    assert set(ANSWERED) == served
    statuses = [status for answered in ANSWERED.values() for status in answered]
    assert 401 not in statuses and 403 not in statuses
    assert 200 in ANSWERED["POST /v1/chat/completions"]
    assert 201 in ANSWERED["POST /admin/targets"]
