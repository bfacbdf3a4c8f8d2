"""Fixtures for the Python package's tests: real ``litefs-py mount`` processes (one node, or a
two-node raft cluster with a primary and a replica), always stopped by PID and unmounted
afterwards (:mod:`litefs.testing` does the process and mount bookkeeping), and Django run in
subprocesses of the test project ``djproject/`` (Django's settings are per process).

The package under test is the installed ``litefs`` (``maturin develop`` or the wheel), the
daemon is ``target/debug/litefs-py`` (or ``$LITEFS_PY_BIN``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from litefs import testing

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
DJPROJECT = HERE / "djproject"

#: How long a two-node cluster may take to elect its primary.
ELECTION_TIMEOUT = 20.0


@pytest.fixture(scope="session")
def litefs_bin() -> str:
    try:
        path = testing.litefs_py_binary(REPO)
    except testing.MissingBinary as e:
        pytest.fail(str(e), pytrace=False)
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(f"litefs-py binary not found at {path}: run `cargo build`", pytrace=False)
    if not os.path.exists("/dev/fuse") or os.geteuid() != 0:
        pytest.fail("these tests mount FUSE filesystems: run as root with /dev/fuse")
    return str(path)


@pytest.fixture
def mount_factory(litefs_bin: str, tmp_path: Path) -> Iterator[testing.MountFactory]:
    """Starts mounts; teardown stops each by its PID (SIGTERM, then SIGKILL) and makes sure
    nothing stays mounted."""
    factory = testing.MountFactory(tmp_path, Path(litefs_bin))
    try:
        yield factory
    finally:
        problems = factory.cleanup()
        for m in factory.mounts:
            print(f"--- {' '.join(m.args)} (exit {m.proc.returncode}) ---\n{m.output()}")
        if problems:
            pytest.fail("teardown: " + "; ".join(problems), pytrace=False)


@pytest.fixture
def shim(mount_factory: testing.MountFactory, tmp_path: Path) -> testing.Mount:
    """A one-node ``litefs-py mount`` (no config: the node is primary) of a fresh lower dir."""
    lower, mnt = tmp_path / "lower", tmp_path / "mnt"
    lower.mkdir()
    mnt.mkdir()
    return mount_factory.start(lower, mnt, extra_args=["--hostname", "solo"])


@dataclass
class Cluster:
    primary: testing.MountNode
    replica: testing.MountNode
    nodes: list[testing.MountNode]


@pytest.fixture
def cluster(mount_factory: testing.MountFactory, tmp_path: Path) -> Cluster:
    """A two-node raft cluster of ``litefs-py mount``: one primary, one replica. (Two voters
    cannot fail over; these tests only need the roles.) Each node has its own lower dir: with
    no LiteFS underneath nothing replicates, so tests copy files between them by hand."""
    return wait_cluster(testing.mount_cluster(mount_factory, tmp_path, [1, 2]))


def wait_cluster(nodes: list[testing.MountNode]) -> Cluster:
    """Until one of ``nodes`` says primary and the others replica (bounded)."""
    primary, replicas = testing.wait_mount_roles(nodes, ELECTION_TIMEOUT)
    return Cluster(primary, replicas[0], nodes)


def django_env(mount: Path | str, **extra: Any) -> dict[str, str]:
    env = dict(os.environ)
    for key in (
        "DJP_DB",
        "DJP_ENGINE",
        "DJP_OPTIONS",
        "DJP_LITEFS",
        "DJP_MIDDLEWARE",
        "DJP_ATOMIC",
        # Fly.io's: REPLICA_WRITES "auto" means "replay" where they are set.
        "FLY_APP_NAME",
        "FLY_ALLOC_ID",
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
