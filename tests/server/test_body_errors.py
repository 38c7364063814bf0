"""A request body that is not JSON (or is missing) is a 400 naming ``body`` with the parse position, on every JSON
route alike (the OpenAI routes used to report FastAPI's parse position as the field: ``"0"``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from tests.server.conftest import tiny_test_client

ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/workflows")


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    yield from tiny_test_client()


@pytest.mark.parametrize("path", ROUTES)
@pytest.mark.parametrize(("body", "position"), [("hello", "line 1, column 1"), ('{"model": "m",\n  ', "line 2")])
def test_a_body_that_is_not_json_is_a_400_naming_body(client: TestClient, path: str, body: str, position: str) -> None:
    response = client.post(path, content=body, headers={"content-type": "application/json"})
    error = response.json()["error"]
    assert (response.status_code, error["field"]) == (400, "body"), response.text
    assert error["message"].startswith("the request body is not valid JSON: "), error["message"]
    if path != "/v1/workflows":  # the workflow routes parse with msgspec, which names the byte instead
        assert position in error["message"], error["message"]


@pytest.mark.parametrize("path", ROUTES)
def test_an_empty_body_is_a_400_naming_body(client: TestClient, path: str) -> None:
    response = client.post(path, content=b"", headers={"content-type": "application/json"})
    error = response.json()["error"]
    assert (response.status_code, error["field"]) == (400, "body"), response.text
    assert "empty" in error["message"]
