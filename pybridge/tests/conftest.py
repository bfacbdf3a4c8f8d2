"""Fixtures for the Python package's tests: real ``litefs-py mount`` processes (one node, or a
two-node raft cluster with a primary and a replica), always stopped by PID and unmounted
afterwards (``integration/shimtest.py`` does the process and mount bookkeeping), and Django run
in subprocesses of the test project ``djproject/`` (Django's settings are per process).

The package under test is the installed ``litefs`` (``maturin develop`` or the wheel), the
daemon is ``target/debug/litefs-py`` (or ``$LITEFS_PY_BIN``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
DJPROJECT = HERE / "djproject"
sys.path.insert(0, str(REPO / "integration"))

import shimtest  # noqa: E402

#: How long a two-node cluster may take to elect its primary.
ELECTION_TIMEOUT = 20.0
SECRET = "pybridge-test-secret"


@pytest.fixture(scope="session")
def litefs_bin() -> str:
    path = shimtest.binary()
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(f"litefs-py binary not found at {path}: run `cargo build`", pytrace=False)
    if not os.path.exists("/dev/fuse") or os.geteuid() != 0:
        pytest.fail("these tests mount FUSE filesystems: run as root with /dev/fuse")
    return str(path)


@pytest.fixture
def mount_factory(litefs_bin: str, tmp_path: Path) -> Iterator[shimtest.MountFactory]:
    """Starts mounts; teardown stops each by its PID (SIGTERM, then SIGKILL) and makes sure
    nothing stays mounted."""
    factory = shimtest.MountFactory(tmp_path)
    try:
        yield factory
    finally:
        problems = factory.cleanup()
        for m in factory.mounts:
            print(f"--- {' '.join(m.args)} (exit {m.proc.returncode}) ---\n{m.output()}")
        if problems:
            pytest.fail("teardown: " + "; ".join(problems), pytrace=False)


@pytest.fixture
def shim(mount_factory: shimtest.MountFactory, tmp_path: Path) -> shimtest.Mount:
    """A one-node ``litefs-py mount`` (no config: the node is primary) of a fresh lower dir."""
    lower, mnt = tmp_path / "lower", tmp_path / "mnt"
    lower.mkdir()
    mnt.mkdir()
    return mount_factory.start(lower, mnt, extra_args=["--hostname", "solo"])


@dataclass
class Node:
    id: int
    hostname: str
    config: Path
    mount: shimtest.Mount

    @property
    def mnt(self) -> Path:
        return self.mount.mnt

    @property
    def lower(self) -> Path:
        return self.mount.lower

    def role(self) -> str | None:
        try:
            return (self.mnt / ".role").read_text().strip()
        except OSError:
            return None


@dataclass
class Cluster:
    primary: Node
    replica: Node
    nodes: list[Node]


def start_cluster(factory: shimtest.MountFactory, base: Path, ids: Sequence[int]) -> list[Node]:
    """``litefs-py mount --config`` nodes of one raft cluster (node ``ids[0]`` bootstraps), each
    with its own lower dir, mountpoint and loopback ports."""
    raft = {i: f"127.0.0.1:{shimtest.free_port()}" for i in ids}
    secret = base / "secret"
    secret.write_text(SECRET + "\n")
    peers = "".join(f"    {i}: {raft[i]}\n" for i in ids)
    nodes = []
    for i in ids:
        d = base / f"node{i}"
        for sub in ("lower", "mnt", "raft"):
            (d / sub).mkdir(parents=True)
        config = d / "litefs-py.yml"
        config.write_text(
            f"node:\n  id: {i}\n  hostname: node-{i}\n  raft-addr: {raft[i]}\n"
            f"  http-addr: 127.0.0.1:{shimtest.free_port()}\n"
            f"cluster:\n  bootstrap: {'true' if i == ids[0] else 'false'}\n  peers:\n{peers}"
            f"  secret-file: {secret}\n  data-dir: {d / 'raft'}\n"
            f"mount:\n  dir: {d / 'mnt'}\n  lower: {d / 'lower'}\n"
            f"lease:\n  addr: 127.0.0.1:{shimtest.free_port()}\n"
        )
        m = shimtest.Mount(
            d / "lower",
            d / "mnt",
            [str(shimtest.binary()), "mount", "--config", str(config), str(d / "mnt")],
            d / "mount.log",
            env={k: v for k, v in shimtest.daemon_env().items() if k != "LITEFS_PY_SECRET"},
        )
        factory.mounts.append(m)
        nodes.append(Node(i, f"node-{i}", config, m))
    for n in nodes:
        n.mount.wait_ready(timeout=15)
    return nodes


def wait_roles(nodes: Sequence[Node], timeout: float = ELECTION_TIMEOUT) -> Cluster:
    """Waits until one node says ``primary`` and the others ``replica``."""
    deadline = time.monotonic() + timeout
    while True:
        roles = {n.id: n.role() for n in nodes}
        primaries = [n for n in nodes if roles[n.id] == "primary"]
        replicas = [n for n in nodes if roles[n.id] == "replica"]
        if len(primaries) == 1 and len(replicas) == len(nodes) - 1:
            return Cluster(primaries[0], replicas[0], list(nodes))
        if time.monotonic() > deadline:
            logs = "\n".join(n.mount.output()[-2000:] for n in nodes)
            raise AssertionError(f"no primary + replicas after {timeout} s: {roles}\n{logs}")
        time.sleep(0.05)


@pytest.fixture
def cluster(mount_factory: shimtest.MountFactory, tmp_path: Path) -> Cluster:
    """A two-node raft cluster of ``litefs-py mount``: one primary, one replica. (Two voters
    cannot fail over; these tests only need the roles.) Each node has its own lower dir: with
    no LiteFS underneath nothing replicates, so tests copy files between them by hand."""
    return wait_roles(start_cluster(mount_factory, tmp_path, [1, 2]))


def django_env(mount: Path | str, **extra: Any) -> dict[str, str]:
    env = dict(os.environ)
    for key in (
        "DJP_DB",
        "DJP_ENGINE",
        "DJP_OPTIONS",
        "DJP_LITEFS",
        "DJP_MIDDLEWARE",
        "DJP_ATOMIC",
    ):
        env.pop(key, None)
    env["LITEFS_DIR"] = str(mount)
    env["PYTHONPATH"] = str(DJPROJECT)
    for key, value in extra.items():
        if value is None:
            continue
        env[key] = value if isinstance(value, str) else json.dumps(value)
    return env


def manage(
    mount: Path | str, *args: str, timeout: float = 60, **env: Any
) -> subprocess.CompletedProcess[str]:
    """``python manage.py ARGS`` of the test project, with the mount (and ``DJP_*``) set."""
    return subprocess.run(
        [sys.executable, str(DJPROJECT / "manage.py"), *args],
        cwd=DJPROJECT,
        env=django_env(mount, **env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def scenario(mount: Path | str, name: str, *args: str, timeout: float = 60, **env: Any) -> Any:
    """Runs ``djproject/scenario.py NAME ARGS`` and returns its JSON result."""
    r = subprocess.run(
        [sys.executable, str(DJPROJECT / "scenario.py"), name, *args],
        cwd=DJPROJECT,
        env=django_env(mount, **env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert r.returncode == 0, f"scenario {name} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
    return json.loads(r.stdout.strip().splitlines()[-1])


def spawn_scenario(mount: Path | str, name: str, *args: str, **env: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(DJPROJECT / "scenario.py"), name, *args],
        cwd=DJPROJECT,
        env=django_env(mount, **env),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def client(mount: Path | str, requests: list[list[str]], **env: Any) -> list[dict[str, Any]]:
    """Requests (``[method, path]``) through Django's test client in the test project."""
    result: list[dict[str, Any]] = scenario(mount, "client", json.dumps(requests), **env)
    return result
