"""The guestbook on a real 3-node cluster (litefs-py run --migrate + its proxy + LiteFS +
gunicorn per node). Requests go through each node's proxy, as clients' do.

The tests share one cluster and run in file order: the last two kill the primary and stop the
next one.
"""

from __future__ import annotations

import http.client
import os
import re
import subprocess
import sys
import threading
import time
import urllib.parse

import pytest

from api import POSITIONS_COOKIE, entries, failover, get_entries, post, served_by, wait_count
from cluster import HERE, Cluster
from litefs.testing import RunNode, request, try_request

pytestmark = pytest.mark.litefs

#: From kill -9 to a write accepted by the new primary: raft (≈0.8 s) + the lease wait (≈1.5 s
#: with the default TTL of 1 s) + LiteFS's acquire; ≈2.5 s. Generous for a loaded CI machine.
FAILOVER_BOUND_S = 20.0


def _primary_and_replicas(c: Cluster):
    p = c.wait_primary(30)
    return p, [n for n in c.nodes if n is not p and n.running]


def test_every_node_serves_and_only_the_primary_migrated(cluster: Cluster) -> None:
    p, replicas = _primary_and_replicas(cluster)
    for n in cluster.nodes:
        r = request(n.url + "/healthz")
        assert r.status == 200, r.body
        health = r.json()
        assert health["role"] == ("primary" if n is p else "replica")
        assert health["primary"] == p.ip
        assert request(n.url + "/").status == 200
        assert request(n.url + "/primaryz").status == (200 if n is p else 503)
        # The app listens behind the proxy, on the proxy's target.
        assert request(n.app_url + "/livez").status == 200
    # run --migrate: the primary ran the command; the replicas started their app without it.
    migrated = "this node is the primary: running the migrate command"
    assert migrated in p.output()
    assert "the migrate command succeeded" in p.output()
    for n in replicas:
        assert migrated not in n.output(), n.output()


def test_write_on_the_primary_is_read_on_the_replicas(cluster: Cluster) -> None:
    p, replicas = _primary_and_replicas(cluster)
    before = entries(p)["count"]
    r = post(p, "test", "written on the primary")
    assert r.status == 201, r.body
    written = r.json()
    assert written["node"] == p.ip
    for n in replicas:
        wait_count(n, before + 1, timeout=10)
        d = entries(n)
        assert d["role"] == "replica"
        assert d["entries"][0]["id"] == written["id"]
        assert d["entries"][0]["message"] == "written on the primary"


def test_a_post_to_a_replica_is_served_by_the_primary(cluster: Cluster) -> None:
    p, replicas = _primary_and_replicas(cluster)
    before = entries(p)["count"]
    for i, n in enumerate(replicas, 1):
        r = post(n, "test", f"sent to replica {n.id}")
        assert r.status == 201, r.body
        assert served_by(r) == p.id
        assert r.json()["node"] == p.ip
        assert entries(p)["count"] == before + i
        # The read-your-writes cookie: a read with it on the other replica sees the row.
        assert POSITIONS_COOKIE in r.cookies, r.headers
        other = next(m for m in replicas if m is not n)
        read = get_entries(other, r.cookies)
        assert read.status == 200, read.body
        assert r.json()["id"] in [e["id"] for e in read.json()["entries"]]


def _form_post(n: RunNode, cookies: dict[str, str], token: str, message: str) -> int:
    """The HTML form, as a browser sends it (same origin, the CSRF cookie and token)."""
    body = urllib.parse.urlencode(
        {"name": "form", "message": message, "csrfmiddlewaretoken": token}
    )
    u = urllib.parse.urlsplit(n.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    try:
        conn.request(
            "POST",
            "/",
            body=body,
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "Origin": n.url,
                "Cookie": "; ".join(f"{k}={v}" for k, v in cookies.items()),
            },
        )
        r = conn.getresponse()
        r.read()
        return r.status
    finally:
        conn.close()


def test_the_csrf_protected_form_works_through_a_replica(cluster: Cluster) -> None:
    """The form's CSRF check passes on the primary for a form a replica served: the client
    keeps talking to one origin (the redirect mode's 307 failed here, issue 11)."""
    p, replicas = _primary_and_replicas(cluster)
    n = replicas[0]
    page = request(n.url + "/")
    assert page.status == 200 and served_by(page) == n.id
    m = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', page.body)
    assert m is not None and "csrftoken" in page.cookies
    before = entries(p)["count"]
    assert _form_post(n, page.cookies, m.group(1).decode(), "a form through a replica") == 302
    assert entries(p)["count"] == before + 1
    # Without the token the primary's CSRF check refuses it, as on one server.
    assert _form_post(n, page.cookies, "x" * 64, "no valid token") == 403
    assert entries(p)["count"] == before + 1


def test_migrate_on_a_replica_is_refused(cluster: Cluster) -> None:
    _, replicas = _primary_and_replicas(cluster)
    n = replicas[0]
    env = {**os.environ, "LITEFS_DIR": str(n.mnt)}
    env.pop("GUESTBOOK_PLAIN_DB", None)
    out = subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput"],
        cwd=HERE,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0, out.stdout + out.stderr
    assert "primary" in out.stderr, out.stderr


def test_kill_9_of_the_primary_fails_over_and_it_rejoins(cluster: Cluster) -> None:
    p, replicas = _primary_and_replicas(cluster)
    for i in range(5):
        assert post(p, "test", f"before the kill {i}").status == 201
    acknowledged = entries(p)["count"]
    for n in replicas:
        wait_count(n, acknowledged, timeout=10)

    cluster.kill9(p)
    new, _, took = failover(cluster, p, timeout=60)
    assert took < FAILOVER_BOUND_S, f"failover took {took:.1f} s"
    assert new.role() == "primary"
    # Every row acknowledged before the kill is there, plus the failover's write.
    assert entries(new)["count"] == acknowledged + 1
    r = post(new, "test", "on the new primary")
    assert r.status == 201, r.body
    assert r.json()["node"] == new.ip
    # The other survivor follows the new primary and forwards writes to it.
    other = next(n for n in replicas if n is not new)
    cluster.wait_ready([other], timeout=30)
    wait_count(other, acknowledged + 2, timeout=10)
    r = post(other, "test", "to the survivor replica")
    assert r.status == 201, r.body
    assert served_by(r) == new.id

    # The old primary comes back as a replica with everything.
    cluster.start(p)
    cluster.wait_ready([p], timeout=120)
    wait_count(p, acknowledged + 3, timeout=30)
    deadline = time.monotonic() + 10
    while p.role() != "replica" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert p.role() == "replica"
    assert p.primary() == new.ip
    r = post(p, "test", "to the rejoined node")
    assert r.status == 201, r.body
    assert served_by(r) == new.id


def test_a_graceful_stop_of_the_primary_under_writes_through_the_proxies(cluster: Cluster) -> None:
    """SIGTERM to the primary while clients write through the other nodes' proxies: it hands
    off, then its proxy stops before its app. Every write gets a 201 or a 503: from a proxy
    (``not-executed``) or from the app's ReplicaWriteMiddleware (the write reached the old
    primary's app as its node lost the role); never a 500, nor a proxy's 502. Every
    acknowledged row is on the next primary, and none that a 503 said was not executed."""
    p, others = _primary_and_replicas(cluster)
    for n in others:
        cluster.wait_ready([n], timeout=60)
    stop = threading.Event()
    # status, and whether it was surely not executed (the proxy's not-executed, or the app's
    # Retry-After: refused before the view, or rolled back), message
    answers: list[tuple[int, bool, str]] = []
    lock = threading.Lock()

    def writer(n: RunNode, k: int) -> None:
        i = 0
        while not stop.is_set() and i < 100:  # bounded: at most 400 rows, all listed below
            i += 1
            message = f"graceful {n.id}.{k}.{i}"
            r = try_request(
                n.url + "/api/entries", "POST", {"name": "t", "message": message}, timeout=15
            )
            if r is None:
                time.sleep(0.05)
                continue
            with lock:
                clean = r.headers.get("x-litefs-py-outcome") == "not-executed" or (
                    "retry-after" in r.headers
                )
                answers.append((r.status, clean, message))

    threads = [threading.Thread(target=writer, args=(n, k)) for n in others for k in range(2)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        assert cluster.stop(p) == 0
        time.sleep(2.0)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    # One SIGTERM (RunCluster.stop): the run handed off, then stopped its proxy, then its app.
    log = p.output().split(f"==== start #{p.starts} ====")[-1]
    assert "handed off before stopping" in log, log[-3000:]
    assert "a second stop signal" not in log
    by_status = {s: sum(1 for a in answers if a[0] == s) for s in {a[0] for a in answers}}
    assert by_status.get(201, 0) > 0, by_status
    odd = [a for a in answers if a[0] not in (201, 503)]
    assert odd == [], (by_status, odd[:5])
    new = cluster.wait_primary(30)
    acked = {m for s, _, m in answers if s == 201}
    rows = {e["message"] for e in entries(new)["entries"]}  # the latest 500 rows
    missing = acked - rows
    assert missing == set(), sorted(missing)[:5]
    # A 503 that says the write was not executed (or rolled back) left no row.
    refused = {m for s, clean, m in answers if s == 503 and clean}
    assert refused & rows == set(), sorted(refused & rows)[:5]
