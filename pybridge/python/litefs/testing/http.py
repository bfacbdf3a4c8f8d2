"""One HTTP request to a test node's app, redirects not followed (the tests look at them)."""

from __future__ import annotations

import http.client
import json
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from typing import Any

__all__ = ["Response", "request", "try_request"]


@dataclass
class Response:
    """Status, headers (lower-case names; of a repeated header the last) and body of one
    response, and the cookies its ``Set-Cookie`` headers set (name -> value)."""

    status: int
    headers: dict[str, str]
    body: bytes
    cookies: dict[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        """The body, parsed as JSON."""
        return json.loads(self.body)


def request(
    url: str,
    method: str = "GET",
    data: dict[str, str] | None = None,
    timeout: float = 5.0,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """One request; ``data`` is sent as a JSON body, ``headers`` are added (e.g. a ``Cookie``).
    Raises OSError or HTTPException when the server cannot be reached or answers garbage."""
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port, timeout=timeout)
    try:
        body = json.dumps(data).encode() if data is not None else None
        sent = {"Content-Type": "application/json"} if body is not None else {}
        sent.update(headers or {})
        path = u.path + (f"?{u.query}" if u.query else "")
        conn.request(method, path or "/", body=body, headers=sent)
        r = conn.getresponse()
        cookies: dict[str, str] = {}
        for value in r.headers.get_all("Set-Cookie") or []:
            jar: SimpleCookie = SimpleCookie()
            jar.load(value)
            cookies.update({name: morsel.value for name, morsel in jar.items()})
        got = {k.lower(): v for k, v in r.getheaders()}
        return Response(r.status, got, r.read(), cookies)
    finally:
        conn.close()


def try_request(
    url: str,
    method: str = "GET",
    data: dict[str, str] | None = None,
    timeout: float = 5.0,
    headers: Mapping[str, str] | None = None,
) -> Response | None:
    """:func:`request`, or None when the server cannot be reached (not up yet, or down)."""
    try:
        return request(url, method, data, timeout, headers)
    except (OSError, http.client.HTTPException):
        return None
