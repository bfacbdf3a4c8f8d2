"""Stopping a cluster leaves nothing behind: no process, no mount, no work dir."""

from __future__ import annotations

import pytest

from cluster import Cluster
from litefs.testing import is_mounted

pytestmark = pytest.mark.litefs


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.usefixtures("prerequisites")
def test_close_stops_every_process_and_detaches_every_mount() -> None:
    c = Cluster(size=3, ip_base=30)
    pids: list[int] = []
    try:
        c.start_all()
        c.wait_primary(90)
        c.wait_ready(timeout=120)
        for n in c.nodes:
            assert n.proc is not None
            pids.append(n.proc.pid)
            litefs = n.find_litefs()
            assert litefs is not None
            pids.append(litefs)
        codes = c.stop_many(c.nodes)
    finally:
        work = c.work
        c.close()
    # SIGTERM: every litefs-py run stopped its app, shim and LiteFS and exited with the app's
    # status (gunicorn's 0).
    assert codes == {1: 0, 2: 0, 3: 0}
    assert [p for p in pids if _alive(p)] == []
    for n in c.nodes:
        assert not is_mounted(n.mnt)
        assert not is_mounted(n.dir / "lower")
    assert work is not None
    assert not work.exists()
