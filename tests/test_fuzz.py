"""The API fuzzed from its own OpenAPI document (schemathesis): a real `minyin serve`
(embedded) on loopback, the generated requests sent with an admin, a staff and a
submitter key in turn. No answer may be a 5xx, every status code and content type must be one
the document lists, and each response must match its schema. A method a path does not
have is answered 405 with an `Allow` header that lists exactly the document's methods.

Bounded for CI: a fixed seed and a few examples per operation (`FUZZ_EXAMPLES`)."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.service import Api, make_key, service_env

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "10"))
SEED = int(os.environ.get("FUZZ_SEED", "20261203"))
METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
ROLES = ("admin", "staff", "submitter")
_turn = itertools.count()
# what a schema cannot say: bytes that match `format: binary` are rarely audio, and the
# intake decodes every upload in full (a 4xx naming the file is the right answer)
NOT_FROM_SCHEMA = {("POST", "/v1/voice-notes"): [positive_data_acceptance]}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    data = tmp_path_factory.mktemp("fuzz")
    env = service_env(data, MINYIN_UPLOAD_RATE_LIMIT="100000/minute",
                      MINYIN_MAX_UPLOAD_BYTES=str(2 * 1024 * 1024))
    api = Api(env, data / "serve.log")
    yield api
    api.close()


@pytest.fixture(scope="module")
def fuzz_keys(server: Api) -> dict[str, str]:
    return {role: make_key(server.env, role, f"fuzz-{role}") for role in ROLES}


def _document() -> dict:
    """The app's OpenAPI document, built without starting it (the server's is compared
    with it below)."""
    from api.app import create_app
    from pipeline.config import Settings

    return create_app(Settings(), maintenance=False).openapi()


DOCUMENT = _document()
schema = schemathesis.openapi.from_dict(DOCUMENT)
schema.config.seed = SEED


def test_the_server_serves_this_document(server: Api) -> None:
    assert httpx.get(f"{server.url}/openapi.json").json() == DOCUMENT


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck),
          database=None)
def test_no_server_error_and_every_answer_documented(case: schemathesis.Case, server: Api,
                                                     fuzz_keys: dict[str, str]) -> None:
    # the roles take turns (each operation sees all three): three calls per case would
    # triple the suite's time for little more
    role = ROLES[next(_turn) % len(ROLES)]
    headers = {**(case.headers or {}), "Authorization": f"Bearer {fuzz_keys[role]}"}
    response = case.call(base_url=server.url, headers=headers, timeout=60)
    assert response.status_code < 500, (role, response.status_code, response.text[:300])
    excluded = NOT_FROM_SCHEMA.get((case.method.upper(), case.path), [])
    case.validate_response(response, headers=headers, excluded_checks=excluded)


def test_allow_lists_the_documents_methods(server: Api, fuzz_keys: dict[str, str]) -> None:
    wrong = []
    for path, item in DOCUMENT["paths"].items():
        documented = {m.upper() for m in item if m in METHODS}
        concrete = Path(path.replace("{fmt}", "json")).as_posix()
        concrete = "".join(part if not part.startswith("{") else "x"
                           for part in _split(concrete))
        for method in sorted({"PUT", "DELETE", "PATCH", "POST", "GET"} - documented):
            r = httpx.request(method, f"{server.url}{concrete}",
                              headers={"Authorization": f"Bearer {fuzz_keys['admin']}"})
            allow = {m.strip() for m in r.headers.get("allow", "").split(",") if m.strip()}
            allow -= {"HEAD"} if "HEAD" not in documented else set()
            if r.status_code != 405 or allow != documented:
                wrong.append((method, path, r.status_code, sorted(allow), sorted(documented)))
    assert not wrong, wrong


def _split(path: str) -> list[str]:
    """A path's literal runs and its {parameters}, in order."""
    parts, k = [], 0
    while k < len(path):
        if path[k] == "{":
            end = path.index("}", k)
            parts.append(path[k:end + 1])
            k = end + 1
        else:
            end = path.find("{", k)
            end = len(path) if end < 0 else end
            parts.append(path[k:end])
            k = end
    return parts


@pytest.mark.parametrize("url", [
    "/v1/tickets?offset=76811638124859637760", "/v1/review/queue?offset=76811638124859637760",
    "/v1/clusters?offset=2147483648", "/v1/tickets?created_to=0.5",
])
def test_what_the_fuzzer_found_is_a_4xx_naming_the_field(server: Api, fuzz_keys: dict[str, str],
                                                         url: str) -> None:
    r = httpx.get(f"{server.url}{url}", headers={"Authorization": f"Bearer {fuzz_keys['admin']}"})
    assert r.status_code == 422, r.text
    field = url.split("?")[1].split("=")[0]
    assert r.json()["error"]["details"][0]["field"] == f"query.{field}"
