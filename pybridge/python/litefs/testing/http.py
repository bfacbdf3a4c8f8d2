"""One HTTP request to a test node's app, redirects not followed (the tests look at them)."""

from __future__ import annotations

import http.client
import json
import urllib.parse
from dataclasses import dataclass
from typing import Any

__all__ = ["Response", "request", "try_request"]


@dataclass
class Response:
    """Status, headers (lower-case names) and body of one response."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body, parsed as JSON."""
        return json.loads(self.body)


def request(
    url: str,
    method: str = "GET",
    data: dict[str, str] | None = None,
    timeout: float = 5.0,
) -> Response:
    """One request; ``data`` is sent as a JSON body. Raises OSError or HTTPException when the
    server cannot be reached or answers garbage."""
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port, timeout=timeout)
    try:
        body = json.dumps(data).encode() if data is not None else None
        headers = {"Content-Type": "application/json"} if body is not None else {}
        path = u.path + (f"?{u.query}" if u.query else "")
        conn.request(method, path or "/", body=body, headers=headers)
        r = conn.getresponse()
        return Response(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
    finally:
        conn.close()


def try_request(
    url: str,
    method: str = "GET",
    data: dict[str, str] | None = None,
    timeout: float = 5.0,
) -> Response | None:
    """:func:`request`, or None when the server cannot be reached (not up yet, or down)."""
    try:
        return request(url, method, data, timeout)
    except (OSError, http.client.HTTPException):
        return None
