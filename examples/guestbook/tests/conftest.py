"""Fixtures of the guestbook's integration tests: a real 3-node cluster, always stopped.

Prerequisites: root, /dev/fuse, a LiteFS binary (``$LITEFS``, PATH or ``~/go/bin``) and a
litefs-py binary (``$LITEFS_PY_BIN`` or the workspace's build). Without them the tests are
skipped, except under ``CI=true``, where a missing prerequisite fails them.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster import ROOT, Cluster
from litefs import testing


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (FUSE mounts)"
    if not Path("/dev/fuse").exists():
        return "needs /dev/fuse"
    if testing.litefs_binary() is None:
        return "no litefs binary (install LiteFS v0.5.14: scripts/setup, or set $LITEFS)"
    try:
        testing.litefs_py_binary(ROOT, ("release", "debug"))
    except testing.MissingBinary as e:
        return str(e)
    return None


@pytest.fixture(scope="session")
def prerequisites() -> None:
    why = _missing()
    if why is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and the cluster cannot run: {why}")
        pytest.skip(why)


@pytest.fixture(scope="module")
def cluster(prerequisites: None, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    failed = request.session.testsfailed
    # 127.0.0.21-23: apart from the demo's addresses (127.0.0.11-13); ports chosen free.
    c = Cluster(size=3, ip_base=20)
    try:
        c.start_all()
        c.wait_primary(90)
        c.wait_ready(timeout=120)
        yield c
    finally:
        if request.session.testsfailed > failed:
            c.own_work = False  # keep the logs (mounts are detached all the same)
            warnings.warn(f"a test failed: the cluster's logs are in {c.work}", stacklevel=1)
        c.close()
