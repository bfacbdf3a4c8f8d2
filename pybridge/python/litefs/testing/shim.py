"""``litefs-py mount`` processes started by tests: one mount, a factory that cleans up every
mount it started, one-shot CLI runs, and a raft cluster of mounts (``mount --config``).

Each process runs in a session of its own (a Ctrl-C on the test runner does not reach it; the
cleanup stops it) and is signalled only by its PID.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from .mountinfo import is_mounted, mount_count
from .ports import free_port
from .processes import daemon_env, litefs_py_binary, stop_process
from .waiting import call_with_timeout, poll_until, wait_until
from .yml import NodeYml, write_secret

__all__ = [
    "READY_TIMEOUT",
    "STOP_TIMEOUT",
    "WATCHDOG_TIMEOUT",
    "Mount",
    "MountFactory",
    "MountNode",
    "mount_args",
    "mount_cluster",
    "run_cli",
    "wait_mount_roles",
]

#: How long a new mount may take until ``.role`` is readable.
READY_TIMEOUT = 10.0
#: How long the daemon may take to exit after SIGTERM/SIGINT (it gives open files 2 s).
STOP_TIMEOUT = 10.0
#: How long the watchdog may take to unmount after the daemon died.
WATCHDOG_TIMEOUT = 5.0


class Mount:
    """A ``litefs-py mount`` (or any ``litefs-py`` command line ``args``) started now, its
    output in ``log`` (stderr in ``err_log`` when given)."""

    def __init__(
        self,
        lower: Path,
        mnt: Path,
        args: Sequence[str],
        log: Path,
        env: dict[str, str] | None = None,
        err_log: Path | None = None,
    ) -> None:
        self.lower = Path(lower)
        # Canonical, as mountinfo and litefs-py's messages show it (resolved now, while
        # nothing of ours is mounted there).
        self.mnt = Path(os.path.realpath(mnt))
        self.args = list(args)
        self.log = Path(log)
        self.err_log = err_log
        # Mounts already stacked here before we started: cleanup leaves those alone.
        self.baseline = mount_count(self.mnt)
        self._files: list[IO[bytes]] = [open(self.log, "wb")]  # noqa: SIM115 (closed in cleanup)
        if err_log is not None:
            self._files.append(open(err_log, "wb"))  # noqa: SIM115 (closed in cleanup)
        self.proc: subprocess.Popen[bytes] = subprocess.Popen(
            self.args,
            stdin=subprocess.DEVNULL,
            stdout=self._files[0],
            stderr=self._files[1] if err_log is not None else subprocess.STDOUT,
            env=env,
            # Not the caller's cwd: `mount` would read a ./litefs-py.yml found there.
            cwd=self.log.parent,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        """The daemon's PID."""
        return self.proc.pid

    def output(self) -> str:
        """What the daemon wrote so far (stdout, and stderr unless it is kept apart)."""
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")
        return ""

    def errors(self) -> str:
        """Its stderr, when kept apart (``err_log``), else everything it wrote."""
        if self.err_log is None:
            return self.output()
        with contextlib.suppress(OSError):
            return self.err_log.read_text(errors="replace")
        return ""

    def is_mounted(self) -> bool:
        """Whether something is mounted at the mount point."""
        return is_mounted(self.mnt)

    def role(self) -> str | None:
        """What ``.role`` says, or None (not mounted, not readable)."""
        try:
            return (self.mnt / ".role").read_text().strip()
        except OSError:
            return None

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Waits until the mount answers ``.role``; raises AssertionError with the daemon's
        output if it exits or does not get there in time."""
        deadline = time.monotonic() + timeout
        last_error: BaseException | None = None
        role = self.mnt / ".role"
        while time.monotonic() < deadline:
            rc = self.proc.poll()
            if rc is not None:
                raise AssertionError(
                    f"litefs-py mount exited with {rc} before it was ready:\n{self.output()}"
                )
            if self.is_mounted():
                try:
                    left = max(0.1, deadline - time.monotonic())
                    if call_with_timeout(role.read_text, left):
                        return
                except (OSError, TimeoutError) as e:
                    last_error = e
            time.sleep(0.05)
        raise AssertionError(
            f"litefs-py mount at {self.mnt} not ready after {timeout} s "
            f"(last error: {last_error!r}):\n{self.output()}"
        )

    def send_signal(self, sig: int) -> None:
        """Sends ``sig`` to the daemon's PID (only while it runs: the PID is ours)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        """Sends ``sig`` and waits for the exit code (raises TimeoutExpired if it hangs)."""
        self.send_signal(sig)
        return self.proc.wait(timeout=timeout)

    def cleanup(self) -> list[str]:
        """Stops the daemon (SIGTERM, then SIGKILL) and makes sure nothing of ours is left
        mounted (waiting for the watchdog, then ``umount -l``). Returns the problems seen."""
        problems: list[str] = []
        if self.proc.poll() is None:
            rc, killed = stop_process(self.proc, STOP_TIMEOUT)
            if killed:
                problems.append(f"litefs-py did not exit within {STOP_TIMEOUT} s of SIGTERM")
            elif rc != 0:
                problems.append(f"litefs-py exited with {rc} after SIGTERM")
        if not wait_until(lambda: mount_count(self.mnt) <= self.baseline, WATCHDOG_TIMEOUT):
            problems.append(f"{self.mnt} still mounted after the daemon exited; umount -l")
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run(["umount", "-l", str(self.mnt)], timeout=10, check=False)
            if mount_count(self.mnt) > self.baseline:
                problems.append(f"{self.mnt} is STILL mounted after umount -l")
        for f in self._files:
            with contextlib.suppress(OSError):
                f.close()
        return problems


def mount_args(
    lower: Path,
    mnt: Path,
    data_path: str | None = None,
    extra_args: Iterable[str] = (),
    binary: Path | None = None,
) -> list[str]:
    """The command line of ``litefs-py mount --lower LOWER [--data-path P] [EXTRA] MNT``."""
    args = [str(binary or litefs_py_binary()), "mount", "--lower", str(lower)]
    if data_path:
        args += ["--data-path", data_path]
    args += list(extra_args)
    args.append(str(mnt))
    return args


class MountFactory:
    """Starts mounts (and one-shot CLI runs) under ``base`` and cleans every one of them up."""

    def __init__(self, base: Path, binary: Path | None = None) -> None:
        self.base = Path(base)
        self.binary = binary or litefs_py_binary()
        self.mounts: list[Mount] = []
        self._n = 0

    def _log(self, what: str) -> Path:
        self._n += 1
        return self.base / f"litefs-py.{self._n}.{what}.log"

    def add(self, mount: Mount) -> Mount:
        """Takes ``mount`` (started elsewhere) into the cleanup."""
        self.mounts.append(mount)
        return mount

    def start(
        self,
        lower: Path | None = None,
        mnt: Path | None = None,
        *,
        data_path: str | None = None,
        extra_args: Iterable[str] = (),
        wait: bool = True,
    ) -> Mount:
        """Mounts ``lower`` (default: a fresh dir) at ``mnt`` (default: a fresh dir); waits
        until it is ready unless ``wait`` is false."""
        if lower is None:
            lower = self.base / f"lower{self._n + 1}"
            lower.mkdir()
        if mnt is None:
            mnt = self.base / f"mnt{self._n + 1}"
            mnt.mkdir()
        m = self.add(
            Mount(
                lower,
                mnt,
                mount_args(lower, mnt, data_path, extra_args, self.binary),
                self._log("mount"),
                env=daemon_env(),
            )
        )
        if wait:
            m.wait_ready()
        return m

    def run(self, args: Sequence[str], timeout: float = 15.0) -> subprocess.CompletedProcess[str]:
        """Runs ``litefs-py ARGS`` to completion (stdout and stderr apart). A run that does not
        exit in time (e.g. a mount that should have been refused) raises AssertionError; the
        cleanup stops it and detaches what it mounted."""
        log = self._log("run")
        # Where it would mount, if it did: the last argument of a `mount`.
        mnt = Path(args[-1]) if args and args[0] == "mount" else Path("/nonexistent")
        m = self.add(
            Mount(
                Path("/nonexistent"),
                mnt,
                [str(self.binary), *args],
                log,
                env=daemon_env(),
                err_log=log.with_suffix(".err"),
            )
        )
        try:
            rc = m.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"`litefs-py {' '.join(args)}` still running after {timeout} s:\n{m.output()}"
            ) from None
        return subprocess.CompletedProcess(list(args), rc, stdout=m.output(), stderr=m.errors())

    def cleanup(self) -> list[str]:
        """Stops every process started here, newest first; the problems seen."""
        problems: list[str] = []
        for m in reversed(self.mounts):
            problems += m.cleanup()
        return problems


def run_cli(
    args: Sequence[str], timeout: float = 15.0, binary: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Runs ``litefs-py ARGS`` with stdout and stderr apart. Only for commands that never
    mount (nothing cleans up after them)."""
    return subprocess.run(
        [str(binary or litefs_py_binary()), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=daemon_env(),
        check=False,
    )


@dataclass
class MountNode:
    """One node of :func:`mount_cluster`: its id, hostname, litefs-py.yml and mount."""

    id: int
    hostname: str
    config: Path
    mount: Mount

    @property
    def mnt(self) -> Path:
        """The shim's mount point."""
        return self.mount.mnt

    @property
    def lower(self) -> Path:
        """The directory under the shim."""
        return self.mount.lower

    def role(self) -> str | None:
        """What ``.role`` says, or None."""
        return self.mount.role()


def mount_cluster(
    factory: MountFactory,
    base: Path,
    ids: Sequence[int],
    ready_timeout: float = 15.0,
    data_path: str | None = None,
) -> list[MountNode]:
    """``litefs-py mount --config`` nodes of one raft cluster (``ids[0]`` bootstraps), each
    with its own lower dir, mount point and loopback ports under ``base/node<id>``; the
    factory's cleanup stops them. No LiteFS underneath: nothing replicates. Returns once every
    mount is ready."""
    raft = {i: f"127.0.0.1:{free_port()}" for i in ids}
    secret = write_secret(base / "secret")
    nodes: list[MountNode] = []
    for i in ids:
        d = base / f"node{i}"
        for sub in ("lower", "mnt", "raft"):
            (d / sub).mkdir(parents=True)
        yml = NodeYml(
            id=i,
            hostname=f"node-{i}",
            raft_addr=raft[i],
            http_addr=f"127.0.0.1:{free_port()}",
            bootstrap=i == ids[0],
            peers=raft,
            secret_file=secret,
            data_dir=d / "raft",
            mount_dir=d / "mnt",
            lower=d / "lower",
            lease_addr=f"127.0.0.1:{free_port()}",
            data_path=data_path,
        )
        config = yml.write(d / "litefs-py.yml")
        args = [str(factory.binary), "mount", "--config", str(config), str(d / "mnt")]
        m = factory.add(Mount(d / "lower", d / "mnt", args, d / "mount.log", env=daemon_env()))
        nodes.append(MountNode(i, yml.hostname, config, m))
    for n in nodes:
        n.mount.wait_ready(timeout=ready_timeout)
    return nodes


def wait_mount_roles(
    nodes: Sequence[MountNode], timeout: float = 20.0
) -> tuple[MountNode, list[MountNode]]:
    """Waits until one node says ``primary`` and the others ``replica``: (primary, replicas).
    Raises AssertionError with the roles and the logs' tails after ``timeout`` seconds."""

    def settled() -> tuple[MountNode, list[MountNode]] | None:
        roles = {n.id: n.role() for n in nodes}
        primaries = [n for n in nodes if roles[n.id] == "primary"]
        replicas = [n for n in nodes if roles[n.id] == "replica"]
        if len(primaries) == 1 and len(replicas) == len(nodes) - 1:
            return primaries[0], replicas
        return None

    try:
        return poll_until(settled, timeout, "one primary and replicas")
    except TimeoutError:
        roles = {n.id: n.role() for n in nodes}
        logs = "\n".join(n.mount.output()[-2000:] for n in nodes)
        raise AssertionError(f"no primary + replicas after {timeout} s: {roles}\n{logs}") from None
