"""The guestbook's JSON API as the tests, the demo and the benchmark use it: write an entry,
list the entries, wait until a node lists enough of them, and find the new primary after a
kill (the first node that accepts a write)."""

from __future__ import annotations

import time
from typing import Any

from litefs.testing import ClusterError, Response, RunCluster, RunNode, request, try_request


def post(node: RunNode, name: str, message: str) -> Response:
    """``POST /api/entries`` on ``node`` (a replica answers 307 to the primary)."""
    return request(node.url + "/api/entries", "POST", {"name": name, "message": message})


def entries(node: RunNode) -> dict[str, Any]:
    """``GET /api/entries``: ``count``, ``role`` and the latest ``entries`` on ``node``."""
    r = request(node.url + "/api/entries?limit=500")
    if r.status != 200:
        raise ClusterError(f"GET {node.url}/api/entries: {r.status} {r.body[:200]!r}")
    data = r.json()
    assert isinstance(data, dict)
    return data


def wait_count(node: RunNode, count: int, timeout: float = 10.0) -> float:
    """Seconds until ``node`` lists at least ``count`` entries."""
    t0 = time.monotonic()
    while True:
        r = try_request(node.url + "/api/entries?limit=0", timeout=2)
        if r is not None and r.status == 200 and r.json()["count"] >= count:
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise ClusterError(f"node {node.id} did not reach {count} entries in {timeout:g} s")
        time.sleep(0.02)


def failover(
    c: RunCluster, old: RunNode, timeout: float = 60.0, message: str | None = None
) -> tuple[RunNode, float, float]:
    """After ``old`` died (or was told to stop): POSTs ``message`` to every other running node
    until one accepts (201). Returns that node, the seconds until its ``.role`` said primary and
    until the write was accepted (both from now, the kill)."""
    message = message or f"first write after node {old.id} died"
    t0 = time.monotonic()
    survivors = [n for n in c.nodes if n is not old and n.running]
    t_role: float | None = None
    while time.monotonic() - t0 < timeout:
        c.check_alive(survivors)
        for n in survivors:
            if t_role is None and n.role() == "primary":
                t_role = time.monotonic() - t0
            r = try_request(
                n.url + "/api/entries",
                "POST",
                data={"name": "demo", "message": message},
                timeout=2,
            )
            if r is not None and r.status == 201:
                t_write = time.monotonic() - t0
                return n, t_role if t_role is not None else t_write, t_write
        time.sleep(0.05)
    raise ClusterError(f"no write accepted within {timeout:g} s of the kill\n" + c.logs())
