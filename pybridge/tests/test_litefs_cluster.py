"""The Django backend on a 3-node cluster of ``litefs-py run`` with the real LiteFS: the
database replicates, migrate runs on the primary and is refused on a replica, a replica reads
what the primary wrote and raises NotPrimary on writes, also when the write gets past the
backend's own guards and LiteFS refuses it. Skipped where there is no ``litefs`` binary."""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import litefs
from conftest import client, manage, scenario
from litefs.testing import RunCluster, RunNode, litefs_binary

pytestmark = pytest.mark.cluster

WRITES = ("save", "update", "delete", "raw_insert", "executemany", "executescript", "atomic_write")


class Live:
    def __init__(self, cluster: RunCluster, primary: RunNode, replicas: list[RunNode]):
        self.cluster = cluster
        self.primary = primary
        self.replicas = replicas


@pytest.fixture(scope="module")
def live(litefs_bin: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    binary = litefs_binary()
    if binary is None:
        pytest.skip("no litefs binary (install LiteFS v0.5.14 or set $LITEFS)")
    cluster = RunCluster(
        3, tmp_path_factory.mktemp("litefs-cluster"), litefs_py=Path(litefs_bin), litefs=binary
    )
    try:
        cluster.start_all()
        primary, replicas = cluster.wait_roles()
        yield Live(cluster, primary, replicas)
    finally:
        problems = cluster.close()
        if problems:
            for n in cluster.nodes:
                print(f"--- node {n.id} ---\n{n.output()[-3000:]}")
            pytest.fail("teardown: " + "; ".join(problems), pytrace=False)


def wait_rows(mnt: Path, want: int, timeout: float = 20.0) -> int:
    """Until the replica's copy of app.db has ``want`` rows in guest_entry (read-only)."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            with sqlite3.connect(f"file:{mnt}/app.db?mode=ro", uri=True, timeout=1) as c:
                n = c.execute("SELECT count(*) FROM guest_entry").fetchone()[0]
            if n == want:
                return int(n)
            last = n
        except sqlite3.Error as e:
            last = e
        time.sleep(0.1)
    raise AssertionError(f"{mnt}/app.db: wanted {want} rows, last saw {last!r}")


def test_migrate_on_primary_replicates_refused_on_replica(live: Live):
    replica = live.replicas[0]
    r = manage(replica.mnt, "migrate", "--noinput")
    assert r.returncode != 0 and "litefs.E010" in r.stderr, r.stderr
    assert live.primary.hostname in r.stderr
    r = manage(live.primary.mnt, "migrate", "--noinput")
    assert r.returncode == 0, r.stdout + r.stderr
    for n in live.replicas:
        wait_rows(n.mnt, 0)
    r = manage(replica.mnt, "migrate", "--noinput")
    assert r.returncode != 0 and "litefs.E010" in r.stderr


def replica_check(mnt: Path, want: int, timeout: float = 30.0) -> None:
    """Until ``migrate --check`` on a replica exits ``want`` (the schema replicates)."""
    deadline = time.monotonic() + timeout
    while True:
        r = manage(mnt, "migrate", "--check")
        assert "litefs.E010" not in r.stderr, r.stderr
        if r.returncode == want:
            return
        assert time.monotonic() < deadline, (want, r.returncode, r.stdout + r.stderr)
        time.sleep(0.3)


def test_read_only_schema_checks_work_on_a_replica(live: Live):
    """``migrate --check``/``--plan`` and ``showmigrations`` answer on a replica, from the
    replicated schema, both with migrations pending and without; ``migrate`` itself is still
    refused there (litefs.E010)."""
    replica = live.replicas[0]
    r = manage(live.primary.mnt, "migrate", "--noinput")
    assert r.returncode == 0, r.stdout + r.stderr
    replica_check(replica.mnt, 0)
    r = manage(replica.mnt, "migrate", "--plan")
    assert r.returncode == 0 and "No planned migration operations" in r.stdout, r.stderr
    r = manage(replica.mnt, "showmigrations", "guest")
    assert r.returncode == 0 and "[X] 0001_initial" in r.stdout, r.stdout + r.stderr
    # Pending migrations: unapplied on the primary, seen so on the replica.
    r = manage(live.primary.mnt, "migrate", "guest", "zero", "--noinput")
    assert r.returncode == 0, r.stdout + r.stderr
    try:
        replica_check(replica.mnt, 1)
        r = manage(replica.mnt, "migrate", "--plan")
        assert r.returncode == 0 and "guest.0001_initial" in r.stdout, r.stdout + r.stderr
        r = manage(replica.mnt, "showmigrations", "guest")
        assert r.returncode == 0 and "[ ] 0001_initial" in r.stdout, r.stdout + r.stderr
        r = manage(replica.mnt, "migrate", "--noinput")
        assert r.returncode != 0 and "litefs.E010" in r.stderr, r.stderr
        # --prune writes (it deletes rows of the migration table): refused too.
        r = manage(replica.mnt, "migrate", "--plan", "--prune")
        assert r.returncode != 0 and "litefs.E010" in r.stderr, r.stderr
    finally:
        r = manage(live.primary.mnt, "migrate", "--noinput")
        assert r.returncode == 0, r.stdout + r.stderr
    replica_check(replica.mnt, 0)


def test_replica_reads_replicated_rows_and_refuses_writes(live: Live):
    out = scenario(live.primary.mnt, "ops")
    assert all(out[op]["ok"] for op in WRITES), out
    rows = out["count_after"]["value"]
    for n in live.replicas:
        wait_rows(n.mnt, rows)
        out = scenario(n.mnt, "ops")
        assert out["count"]["value"] == rows
        assert len(out["atomic_read"]["value"]) == rows
        for op in WRITES:
            o = out[op]
            assert o["type"] == "NotPrimary" and o["database_error"], (op, o)
            assert o["primary"] == live.primary.hostname, (op, o)
        assert out["count_after"]["value"] == rows
    assert scenario(live.primary.mnt, "ops")["count"]["value"] == rows


def test_litefs_refusal_is_not_primary(live: Live):
    """With the backend's guards switched off the write reaches LiteFS; a replica's LiteFS
    refuses it, and the backend still raises NotPrimary (from SQLite's error)."""
    replica = live.replicas[1]
    before = scenario(replica.mnt, "ops")["count"]["value"]
    out = scenario(replica.mnt, "bypass")
    o = out["raw_insert"]
    assert not o["ok"], out
    assert o["type"] == "NotPrimary" and o["primary"] == live.primary.hostname, o
    # LiteFS v0.5.14 answers a replica's write with EIO: SQLite's "disk I/O error".
    assert o["cause"] in ("OperationalError", "DatabaseError"), o
    assert o["cause_message"] in ("disk I/O error", "attempt to write a readonly database"), o
    assert out["count_after"]["value"] == before


def test_health_with_litefs(live: Live):
    for node in (live.primary, *live.replicas):
        s = litefs.state(node.mnt)
        assert s.litefs_mounted is True and s.litefs_serving is True, s
        assert s.primary == live.primary.hostname and s.healthy
        # From LiteFS's .lag (0 on the primary).
        assert isinstance(s.lag_ms, int), s
        if node is live.primary:
            assert s.lag_ms == 0
        (health,) = client(node.mnt, [["GET", "/health"]])
        assert health["status"] == 200, health
        assert health["body"]["litefs_serving"] is True
    r = manage(live.replicas[0].mnt, "litefs_status", "--json")
    assert r.returncode == 0, r.stderr


def test_health_judges_replication_lag(live: Live):
    """A replica further behind than LITEFS["MAX_LAG_MS"] is unhealthy (503, the lag in the
    reason); the primary's lag is never judged. Idle LiteFS replicas here report a few hundred
    ms, so a bound of 0 ms trips it."""
    strict = {"MAX_LAG_MS": 0}
    (health,) = client(live.primary.mnt, [["GET", "/health"]], DJP_LITEFS=strict)
    assert health["status"] == 200, health
    deadline = time.monotonic() + 10
    while True:
        (health,) = client(live.replicas[0].mnt, [["GET", "/health"]], DJP_LITEFS=strict)
        if health["status"] == 503 or time.monotonic() > deadline:
            break
    assert health["status"] == 503, health
    (reason,) = health["body"]["reasons"]
    assert re.fullmatch(r"replication lag \d+ ms exceeds 0 ms", reason), reason
    (health,) = client(live.replicas[0].mnt, [["GET", "/health"]], DJP_LITEFS={"MAX_LAG_MS": None})
    assert health["status"] == 200, health
