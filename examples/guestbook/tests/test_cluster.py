"""The guestbook on a real 3-node cluster (litefs-py run + LiteFS + gunicorn per node).

The tests share one cluster and run in file order: the last one kills the primary.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from api import entries, failover, post, wait_count
from cluster import HERE, Cluster
from litefs.testing import request

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
    log = p.log_path.read_text()
    assert "is the primary: migrate" in log
    for n in replicas:
        log = n.log_path.read_text()
        assert "the schema is replicated" in log, log
        assert "is the primary: migrate" not in log


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


def test_a_post_to_a_replica_is_redirected_to_the_primary(cluster: Cluster) -> None:
    p, replicas = _primary_and_replicas(cluster)
    n = replicas[0]
    before = entries(p)["count"]
    r = post(n, "test", "sent to a replica")
    assert r.status == 307, r.body
    assert r.headers["location"] == f"{p.url}/api/entries"
    assert entries(p)["count"] == before, "the replica must not have run the write"
    # The HTML form is redirected the same way.
    form = request(n.url + "/", "POST", None)
    assert form.status == 307
    assert form.headers["location"] == f"{p.url}/"
    r = request(r.headers["location"], "POST", {"name": "test", "message": "sent to a replica"})
    assert r.status == 201, r.body
    assert r.json()["node"] == p.ip


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
    # The other survivor follows the new primary and redirects to it.
    other = next(n for n in replicas if n is not new)
    cluster.wait_ready([other], timeout=30)
    wait_count(other, acknowledged + 2, timeout=10)
    r = post(other, "test", "to the survivor replica")
    assert r.status == 307
    assert r.headers["location"].startswith(new.url)

    # The old primary comes back as a replica with everything.
    cluster.start(p)
    cluster.wait_ready([p], timeout=120)
    wait_count(p, acknowledged + 2, timeout=30)
    deadline = time.monotonic() + 10
    while p.role() != "replica" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert p.role() == "replica"
    assert p.primary() == new.ip
    assert post(p, "test", "to the rejoined node").status == 307
