"""The guestbook's JSON API as the tests, the demo and the benchmark use it: write an entry,
list the entries, wait until a node lists enough of them, and find the new primary after a
kill (the node whose app accepted the first write sent after it).

Requests go to a node's :attr:`~litefs.testing.RunNode.url`: its litefs-py proxy, which serves
reads from the node's own app and forwards writes to the primary's. Every answer says in
``x-litefs-py-node`` which node's app (or proxy, for its own errors) answered."""

from __future__ import annotations

import threading
import time
from typing import Any

from litefs.testing import ClusterError, Response, RunCluster, RunNode, request, try_request

#: Per request: longer than the proxy's ``primary-wait`` (5 s), for which a write waits for a
#: primary during a failover before its 503.
WRITE_TIMEOUT = 10.0
#: The proxy's read-your-writes cookie (docs/proxy.md, "Read-your-writes").
POSITIONS_COOKIE = "__litefs_py_pos"


def post(node: RunNode, name: str, message: str) -> Response:
    """``POST /api/entries`` through ``node``'s proxy (a replica's forwards it to the primary)."""
    data = {"name": name, "message": message}
    return request(node.url + "/api/entries", "POST", data, timeout=WRITE_TIMEOUT)


def served_by(r: Response) -> int:
    """The id of the node whose app answered (the proxy's ``x-litefs-py-node``)."""
    try:
        return int(r.headers["x-litefs-py-node"])
    except (KeyError, ValueError):
        raise ClusterError(f"no x-litefs-py-node in the answer: {r.headers}") from None


def get_entries(node: RunNode, cookies: dict[str, str] | None = None) -> Response:
    """``GET /api/entries?limit=500`` through ``node``'s proxy, sending ``cookies``."""
    jar = "; ".join(f"{k}={v}" for k, v in (cookies or {}).items())
    return request(node.url + "/api/entries?limit=500", headers={"Cookie": jar} if jar else None)


def entries(node: RunNode) -> dict[str, Any]:
    """``GET /api/entries``: ``count``, ``role`` and the latest ``entries`` on ``node``."""
    r = get_entries(node)
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
    c: RunCluster,
    old: RunNode,
    timeout: float = 60.0,
    message: str | None = None,
    served_by_old: list[float] | None = None,
) -> tuple[RunNode, float, float]:
    """After ``old`` died (or was told to stop): POSTs ``message`` through the other running
    nodes' proxies in turn until a survivor's app accepts one (201; while no primary is known a
    proxy holds the write up to its ``primary-wait``, and ``503 not-executed`` answers are sent
    again). A stopping primary still serves writes while it hands off: those are accepted too
    and their times appended to ``served_by_old``. Returns the node whose app accepted the write
    (``x-litefs-py-node``), the seconds until a survivor's ``.role`` said primary and until the
    write was accepted (both from now, the kill)."""
    message = message or f"first write after node {old.id} died"
    t0 = time.monotonic()
    survivors = [n for n in c.nodes if n is not old and n.running]
    # A write may wait in a proxy for a primary: the roles are watched alongside (bounded).
    role_seen: list[float] = []
    done = threading.Event()

    def watch_roles() -> None:
        while not done.is_set() and time.monotonic() - t0 < timeout:
            if any(m.role() == "primary" for m in survivors):
                role_seen.append(time.monotonic() - t0)
                return
            time.sleep(0.02)

    watcher = threading.Thread(target=watch_roles, daemon=True)
    watcher.start()
    try:
        old_times = served_by_old if served_by_old is not None else []
        new, t_write = _first_write(c, old, survivors, message, t0, timeout, old_times)
        watcher.join(timeout=2)  # a primary is there now: its next look sees it
        return new, role_seen[0] if role_seen else t_write, t_write
    finally:
        done.set()
        watcher.join(timeout=5)


def _first_write(
    c: RunCluster,
    old: RunNode,
    survivors: list[RunNode],
    message: str,
    t0: float,
    timeout: float,
    served_by_old: list[float],
) -> tuple[RunNode, float]:
    by_id = {n.id: n for n in survivors}
    while time.monotonic() - t0 < timeout:
        c.check_alive(survivors)
        for n in survivors:
            r = try_request(
                n.url + "/api/entries",
                "POST",
                data={"name": "demo", "message": message},
                timeout=WRITE_TIMEOUT,
            )
            if r is not None and r.status == 201:
                t_write = time.monotonic() - t0
                new = by_id.get(served_by(r))
                if new is not None:
                    return new, t_write
                if served_by(r) != old.id:
                    raise ClusterError(f"node {served_by(r)} accepted a write, not a survivor")
                served_by_old.append(t_write)
            if r is not None and r.headers.get("x-litefs-py-outcome") == "unknown":
                # The write may have been executed: sending it again could write it twice.
                raise ClusterError(f"the write's outcome is unknown: {r.status} {r.body[:200]!r}")
        time.sleep(0.05)
    raise ClusterError(f"no write accepted within {timeout:g} s of the kill\n" + c.logs())
