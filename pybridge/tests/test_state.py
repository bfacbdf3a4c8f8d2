"""``litefs.state()``, ``is_primary()``, ``wait_for_primary()`` and the exceptions, against real
mounts."""

from __future__ import annotations

import dataclasses
import json
import pickle
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

import litefs
from conftest import Cluster
from litefs import testing
from litefs._state import read_role


def test_single_node_is_primary(shim, monkeypatch):
    s = litefs.state(shim.mnt)
    assert isinstance(s, litefs.State)
    assert s.role == "primary"
    assert s.is_primary and not s.is_replica
    assert s.primary == "solo" == s.hostname
    assert s.healthy
    assert s.problems() == ()
    assert s.term >= 1 and s.node_id == 1
    assert s.version == litefs.__version__
    assert s.raw["role"] == "primary"
    assert litefs.is_primary(shim.mnt) is True
    assert litefs.primary(shim.mnt) == "solo"
    assert litefs.require_primary(str(shim.mnt)).is_primary
    # The mount from $LITEFS_DIR when no argument is given.
    monkeypatch.setenv("LITEFS_DIR", str(shim.mnt))
    assert litefs.mount_path() == str(shim.mnt)
    assert litefs.is_primary()
    assert litefs.wait_for_primary(1).primary == "solo"


def test_state_is_immutable(shim):
    s = litefs.state(shim.mnt)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.role = "replica"  # type: ignore[misc]
    with pytest.raises(TypeError):
        s.raw["role"] = "x"  # type: ignore[index]


def test_default_mount(monkeypatch):
    monkeypatch.delenv("LITEFS_DIR", raising=False)
    assert litefs.mount_path() == "/litefs" == litefs.DEFAULT_MOUNT


def test_not_mounted_plain_dir(tmp_path):
    for fn in (litefs.state, litefs.is_primary, litefs.primary):
        with pytest.raises(litefs.NotMounted, match="not a litefs-py mount"):
            fn(tmp_path)
    with pytest.raises(litefs.NotMounted, match="no such directory"):
        litefs.state(tmp_path / "missing")
    with pytest.raises(litefs.NotMounted):
        litefs.is_primary(tmp_path / "missing")
    # A file is not a mount either.
    (tmp_path / "f").write_text("x")
    with pytest.raises(litefs.NotMounted):
        litefs.state(tmp_path / "f")
    assert issubclass(litefs.NotMounted, litefs.LiteFSError)
    assert not issubclass(litefs.NotMounted, OSError)


def test_wait_for_primary_times_out(tmp_path):
    started = time.monotonic()
    with pytest.raises(litefs.NotMounted):
        litefs.wait_for_primary(0.3, tmp_path)
    assert 0.25 < time.monotonic() - started < 3


def test_wait_for_primary_sees_a_mount_come_up(mount_factory, tmp_path):
    lower, mnt = tmp_path / "lower", tmp_path / "mnt"
    lower.mkdir()
    mnt.mkdir()
    found: dict = {}

    def wait() -> None:
        try:
            found["state"] = litefs.wait_for_primary(15, mnt)
        except Exception as e:  # handed to the test
            found["error"] = e

    t = threading.Thread(target=wait)
    t.start()
    time.sleep(0.3)
    mount_factory.start(lower, mnt, extra_args=["--hostname", "late"])
    t.join(20)
    assert "error" not in found, found
    assert found["state"].primary == "late"


def test_replica_and_primary(cluster: Cluster):
    p, r = litefs.state(cluster.primary.mnt), litefs.state(cluster.replica.mnt)
    assert p.is_primary and p.role == "primary" and p.primary == cluster.primary.hostname
    assert not r.is_primary and r.is_replica
    assert r.primary == cluster.primary.hostname
    assert r.hostname == cluster.replica.hostname
    assert r.healthy and r.problems() == ()
    assert p.term == r.term and p.leader_id == r.leader_id == cluster.primary.id
    assert litefs.is_primary(cluster.replica.mnt) is False
    with pytest.raises(litefs.NotPrimary) as info:
        litefs.require_primary(cluster.replica.mnt)
    assert info.value.primary == cluster.primary.hostname
    assert cluster.primary.hostname in str(info.value)


def test_no_primary_known(cluster: Cluster):
    """A replica whose primary is gone (two voters: no election can succeed) says electing:
    no primary, not healthy; wait_for_primary times out with NoPrimary."""
    cluster.primary.mount.stop()
    deadline = time.monotonic() + 10
    while litefs.state(cluster.replica.mnt).role != "electing":
        assert time.monotonic() < deadline, "the replica never noticed its primary was gone"
        time.sleep(0.05)
    s = litefs.state(cluster.replica.mnt)
    assert s.primary is None and not s.healthy
    assert any("no primary known" in p for p in s.problems())
    with pytest.raises(litefs.NoPrimary, match="no primary known"):
        litefs.wait_for_primary(0.3, cluster.replica.mnt)
    with pytest.raises(litefs.NotPrimary, match="no primary is known"):
        litefs.require_primary(cluster.replica.mnt)


def test_problems_lag_and_litefs():
    health = {
        "role": "replica",
        "hostname": "b",
        "primary": "a",
        "term": 3,
        "lag_ms": 2500,
        "litefs": {"mounted": True, "serving": False},
    }
    s = litefs.State.from_health("/m", health)
    assert s.problems() == ("LiteFS is not serving",)
    assert s.problems(max_lag_ms=1000) == (
        "LiteFS is not serving",
        "replication lag 2500 ms exceeds 1000 ms",
    )
    assert not s.healthy
    with pytest.raises(litefs.LiteFSError, match="unexpected content"):
        litefs.State.from_health("/m", {"no": "role"})


def test_not_primary_is_a_database_error_and_pickles():
    from django.db import DatabaseError

    e = litefs.NotPrimary(primary="node-a", hostname="node-b")
    assert isinstance(e, DatabaseError) and isinstance(e, litefs.LiteFSError)
    assert "node-a" in str(e) and "node-b" in str(e)
    again = pickle.loads(pickle.dumps(e))
    assert type(again) is litefs.NotPrimary
    assert (again.primary, again.hostname, str(again)) == ("node-a", "node-b", str(e))
    c = pickle.loads(pickle.dumps(litefs.ConfigError("bad", "node.id")))
    assert (c.key, str(c)) == ("node.id", "bad")


def test_import_does_not_import_django():
    code = "import sys, litefs; litefs.is_primary; print('django' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_dead_daemon_is_not_mounted(mount_factory, tmp_path: Path):
    """A mount whose daemon is gone: NotMounted (ENOTCONN), not a bare OSError."""
    lower, mnt = tmp_path / "lower", tmp_path / "mnt"
    lower.mkdir()
    mnt.mkdir()
    m = mount_factory.start(lower, mnt, extra_args=["--no-auto-unmount"])
    m.proc.kill()
    m.proc.wait(10)
    try:
        with pytest.raises(litefs.NotMounted, match="not connected"):
            litefs.state(m.mnt)
        with pytest.raises(litefs.NotMounted):
            litefs.is_primary(m.mnt)
    finally:
        subprocess.run(["umount", "-l", str(m.mnt)], check=False)


def test_state_pickles_and_deep_copies(shim):
    import copy

    s = litefs.state(shim.mnt)
    for again in (pickle.loads(pickle.dumps(s)), copy.deepcopy(s), copy.copy(s)):
        assert again == s and type(again) is litefs.State
        assert dict(again.raw) == dict(s.raw) and again.raw["role"] == "primary"
        with pytest.raises(TypeError):
            again.raw["role"] = "replica"  # type: ignore[index]


def _role_opens(node: testing.MountNode, file: str = ".role") -> float:
    """Opens of ``file`` the node's shim has served, from its /metrics."""
    addr = next(
        line.split(":", 1)[1].strip().strip("'\"")
        for line in node.config.read_text().splitlines()
        if line.strip().startswith("http-addr:")
    )
    with urllib.request.urlopen(f"http://{addr}/metrics", timeout=10) as r:
        text = r.read().decode()
    prefix = f'litefs_py_fuse_virtual_opens_total{{file="{file}"}} '
    return next(float(line[len(prefix) :]) for line in text.splitlines() if line.startswith(prefix))


def test_is_primary_reads_the_shared_page_not_the_mount(cluster: Cluster):
    """After the first call (which finds the page through .health), ``is_primary()`` opens no
    ``.role``: the role comes from the shim's shared page, and says the same as ``.role``."""
    for node, expected in ((cluster.primary, True), (cluster.replica, False)):
        assert litefs.is_primary(node.mnt) is expected
        before = _role_opens(node)
        for _ in range(200):
            assert litefs.is_primary(node.mnt) is expected
        assert _role_opens(node) == before, "is_primary() went through the mount"
        page = litefs.state(node.mnt).raw["state_page"]
        assert page and Path(page).stat().st_mode & 0o022 == 0
    # The primary stops: its page is closed and removed, and the replica's page follows the
    # replica to "electing" as .role does.
    cluster.primary.mount.stop()
    with pytest.raises(litefs.NotMounted):
        litefs.is_primary(cluster.primary.mnt)
    deadline = time.monotonic() + 10
    while read_role(str(cluster.replica.mnt)) != "electing":
        assert time.monotonic() < deadline, "the page never said electing"
        time.sleep(0.05)
    assert litefs.state(cluster.replica.mnt).role == "electing"


def test_state_reads_the_pages_mirror_of_health(cluster: Cluster):
    """``state()`` answers from the shared page's mirror of ``.health`` (one ``.health`` read a
    second to check the page, not one per call), and says what ``.health`` says: the same
    fields and values, the ages within the time between the two reads. Once the primary is
    gone, the replica's mirror says electing and no primary, as ``.health`` does."""
    ages = ("ms_since_quorum_ack", "ms_since_leader_contact", "primary_valid_ms")
    for node in (cluster.primary, cluster.replica):
        litefs.state(node.mnt)  # finds the page (one .health read)
        before = _role_opens(node, ".health")
        t0 = time.monotonic()
        states = [litefs.state(node.mnt) for _ in range(200)]
        if time.monotonic() - t0 < 0.9:  # the page is rechecked once a second
            assert _role_opens(node, ".health") == before, "state() went through the mount"
        mirrored = states[-1].raw
        fused = json.loads((node.mnt / ".health").read_text())
        assert set(mirrored) == set(fused), (mirrored, fused)
        for key, value in fused.items():
            if key in ages and value is not None:
                assert mirrored[key] is not None, key
                assert abs(mirrored[key] - value) < 1000, (key, mirrored[key], value)
            else:
                assert mirrored[key] == value, (key, mirrored[key], value)
    cluster.primary.mount.stop()
    deadline = time.monotonic() + 10
    while litefs.state(cluster.replica.mnt).role != "electing":
        assert time.monotonic() < deadline, "the mirror never said electing"
        time.sleep(0.05)
    s = litefs.state(cluster.replica.mnt)
    fused = json.loads((cluster.replica.mnt / ".health").read_text())
    assert s.primary is None and fused["primary"] is None and fused["role"] == "electing"
