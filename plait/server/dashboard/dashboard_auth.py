"""Who is looking at the dashboard: the API's own authentication, plus a cookie a browser can send on page loads.

A browser cannot add an ``Authorization`` header to a page load, so the key is given once (``/dashboard?key=KEY`` or
the login form) and kept in an HttpOnly, SameSite=Strict cookie scoped to ``/dashboard``; the page's own requests
send it. The cookie holds the API key itself (the server keeps no sessions): it is checked on every request exactly
like a header, so removing a key from the server's configuration signs its browsers out. A request with an
``Authorization`` or ``X-API-Key`` header is authenticated by that header alone. Without API keys on the server no
key is needed and everyone is the default tenant.
"""

from __future__ import annotations

from fastapi import Request, Response

from plait.server.errors import APIError
from plait.server.tenants import Tenant, authenticate

COOKIE = "plait_dashboard_key"
COOKIE_PATH = "/dashboard"
COOKIE_MAX_AGE_S = 7 * 24 * 3600


def dashboard_tenant(request: Request) -> Tenant:
    """FastAPI dependency: the caller's tenant from its header, else from the dashboard cookie (401 without either
    when the server has API keys)."""
    config = request.app.state.plait.config
    authorization, api_key = request.headers.get("authorization"), request.headers.get("x-api-key")
    if authorization or api_key or not config.auth_enabled:
        return authenticate(config, authorization, api_key)
    key = request.cookies.get(COOKIE)
    if not key:
        raise APIError(401, "sign in at /dashboard with an API key", field="key")
    return authenticate(config, None, key)


def tenant_of_key(request: Request, key: str) -> Tenant:
    """The tenant of ``key`` (401 for an unknown or empty one)."""
    return authenticate(request.app.state.plait.config, None, key.strip() or None)


def set_key_cookie(request: Request, response: Response, key: str) -> None:
    response.set_cookie(
        COOKIE,
        key.strip(),
        max_age=COOKIE_MAX_AGE_S,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def clear_key_cookie(response: Response) -> None:
    response.delete_cookie(COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict")
