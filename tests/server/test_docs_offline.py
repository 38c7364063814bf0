"""``/docs`` (Swagger UI) and ``/redoc`` work offline: their pages reference no other host, and every script,
stylesheet and icon they name is served by the server itself."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from tests.server.conftest import tiny_test_client

_REFERENCE = re.compile(r"""(?:src|href|spec-url)\s*=\s*["']([^"']+)["']|url:\s*["']([^"']+)["']""")


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    yield from tiny_test_client()


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_page_needs_no_other_host(client: TestClient, page: str) -> None:
    response = client.get(page)
    assert response.status_code == 200
    html = response.text
    assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", html, re.IGNORECASE), html
    references = [a or b for a, b in _REFERENCE.findall(html)]
    assert any(ref.endswith(".js") for ref in references), references
    for ref in references:
        asset = client.get(ref)
        assert asset.status_code == 200 and asset.content, ref
    if page == "/docs":
        assert any(ref.endswith(".css") for ref in references), references
        assert '"validatorUrl": null' in html  # Swagger UI would otherwise fetch a badge from validator.swagger.io
