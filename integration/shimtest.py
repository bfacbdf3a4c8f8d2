"""Helpers for the litefs-py integration tests: starting and stopping real mounts, reading
/proc/self/mountinfo, and talking to helper processes with bounded waits.

Nothing here kills a process it did not start: every signal goes to a PID from a Popen made
here, never by name.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Self

REPO = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
WORKER = HERE / "sqlite_worker.py"

#: How long a new mount may take until `.role` is readable.
READY_TIMEOUT = 10.0
#: How long the daemon may take to exit after SIGTERM/SIGINT (it gives open files 2 s).
STOP_TIMEOUT = 10.0
#: How long the watchdog may take to unmount after the daemon died.
WATCHDOG_TIMEOUT = 5.0


def binary() -> Path:
    """The litefs-py binary under test: $LITEFS_PY_BIN, else <repo>/target/debug/litefs-py."""
    return Path(
        os.environ.get("LITEFS_PY_BIN") or REPO / "target" / "debug" / "litefs-py"
    )


def _unescape_mountinfo(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as \\ooo."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mount_points() -> list[tuple[str, str]]:
    """(mount point, fstype) of every mount this process sees, from /proc/self/mountinfo."""
    out = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            fields = line.split(" ")
            try:
                sep = fields.index("-")
            except ValueError:
                continue
            out.append((_unescape_mountinfo(fields[4]), fields[sep + 1]))
    return out


def is_mounted(path: os.PathLike | str) -> bool:
    """Whether anything is mounted exactly at `path` (no access to the path itself, so a dead
    FUSE server cannot make this hang)."""
    want = os.path.abspath(path)
    return any(p == want for p, _ in mount_points())


def mount_count(path: os.PathLike | str) -> int:
    """How many mounts are stacked exactly at `path`."""
    want = os.path.abspath(path)
    return sum(1 for p, _ in mount_points() if p == want)


def fstype_at(path: os.PathLike | str) -> str | None:
    want = os.path.abspath(path)
    found = [t for p, t in mount_points() if p == want]
    return found[-1] if found else None


def wait_until(
    pred: Callable[[], bool], timeout: float, interval: float = 0.05
) -> bool:
    """Polls `pred` until it is true or `timeout` seconds passed; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def call_with_timeout(fn: Callable[[], object], timeout: float) -> object:
    """Runs `fn` on a daemon thread and waits at most `timeout` seconds for it, so that a file
    system call on a wedged mount cannot hang the test run. Re-raises `fn`'s exception."""
    result: dict[str, object] = {}

    def run() -> None:
        try:
            result["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            result["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise TimeoutError(
            f"{getattr(fn, '__name__', fn)} did not return within {timeout} s"
        )
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    return result.get("value")


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A loopback port free right now and not handed out before by this process.

    The socket is closed at once and nodes bind later, so the kernel may offer one port twice;
    without the record two addresses of one cluster (a raft port, a LiteFS port) could collide.
    """
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def one_line(text: str) -> str:
    """The stripped text, asserted to be exactly one non-empty line."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert len(lines) == 1, f"expected exactly one line, got {len(lines)}: {text!r}"
    return lines[0]


class Mount:
    """A `litefs-py mount` process started by the tests."""

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
        self._files = [open(self.log, "wb")]  # noqa: SIM115 - closed in cleanup()
        if err_log is not None:
            self._files.append(open(err_log, "wb"))  # noqa: SIM115 - closed in cleanup()
        self.proc = subprocess.Popen(
            self.args,
            stdin=subprocess.DEVNULL,
            stdout=self._files[0],
            stderr=self._files[1] if err_log is not None else subprocess.STDOUT,
            env=env,
            # Not the caller's cwd: `mount` would read a ./litefs-py.yml found there.
            cwd=self.log.parent,
            # Its own session: a Ctrl-C on pytest does not reach it; the fixture stops it.
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        """What the daemon wrote so far (stdout, and stderr unless it is kept apart)."""
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")
        return ""

    def errors(self) -> str:
        """Its stderr, when kept apart (`err_log`), else everything it wrote."""
        if self.err_log is None:
            return self.output()
        with contextlib.suppress(OSError):
            return self.err_log.read_text(errors="replace")
        return ""

    def is_mounted(self) -> bool:
        return is_mounted(self.mnt)

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Waits until the mount answers `.role`; fails with the daemon's output if it exits
        or does not get there in time."""
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
                    text = call_with_timeout(role.read_text, left)
                    if text:
                        return
                except (OSError, TimeoutError) as e:
                    last_error = e
            time.sleep(0.05)
        raise AssertionError(
            f"litefs-py mount at {self.mnt} not ready after {timeout} s "
            f"(last error: {last_error!r}):\n{self.output()}"
        )

    def send_signal(self, sig: int) -> None:
        """Sends `sig` to the daemon's PID (only if it is still running: the PID is ours)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        """Sends `sig` and waits for the exit code (raises TimeoutExpired if it hangs)."""
        self.send_signal(sig)
        return self.proc.wait(timeout=timeout)

    def cleanup(self) -> list[str]:
        """Stops the daemon (SIGTERM, then SIGKILL) and makes sure nothing is left mounted at
        the mountpoint (waiting for the watchdog, then `umount -l`). Returns the problems seen,
        which the fixture reports as a failure."""
        problems: list[str] = []
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                rc = self.proc.wait(timeout=STOP_TIMEOUT)
                if rc != 0:
                    problems.append(f"litefs-py exited with {rc} after SIGTERM")
            except subprocess.TimeoutExpired:
                problems.append(
                    f"litefs-py did not exit within {STOP_TIMEOUT} s of SIGTERM"
                )
                self.proc.kill()
                try:
                    self.proc.wait(timeout=STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    problems.append("litefs-py did not exit after SIGKILL")
        if not wait_until(
            lambda: mount_count(self.mnt) <= self.baseline, WATCHDOG_TIMEOUT
        ):
            problems.append(
                f"{self.mnt} still mounted after the daemon exited; umount -l"
            )
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
) -> list[str]:
    args = [str(binary()), "mount", "--lower", str(lower)]
    if data_path:
        args += ["--data-path", data_path]
    args += list(extra_args)
    args.append(str(mnt))
    return args


def daemon_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("LITEFS_PY_LOG", "info")
    env["NO_COLOR"] = "1"
    return env


class MountFactory:
    """Starts mounts (and one-shot CLI runs) and cleans every one of them up."""

    def __init__(self, base: Path) -> None:
        self.base = Path(base)
        self.mounts: list[Mount] = []
        self._n = 0

    def _log(self, what: str) -> Path:
        self._n += 1
        return self.base / f"litefs-py.{self._n}.{what}.log"

    def start(
        self,
        lower: Path | None = None,
        mnt: Path | None = None,
        *,
        data_path: str | None = None,
        extra_args: Iterable[str] = (),
        wait: bool = True,
    ) -> Mount:
        """Mounts `lower` (default: a fresh dir) at `mnt` (default: a fresh dir)."""
        if lower is None:
            lower = self.base / f"lower{self._n + 1}"
            lower.mkdir()
        if mnt is None:
            mnt = self.base / f"mnt{self._n + 1}"
            mnt.mkdir()
        m = Mount(
            lower,
            mnt,
            mount_args(lower, mnt, data_path, extra_args),
            self._log("mount"),
            env=daemon_env(),
        )
        self.mounts.append(m)
        if wait:
            m.wait_ready()
        return m

    def run(
        self, args: Sequence[str], timeout: float = 15.0
    ) -> subprocess.CompletedProcess:
        """Runs `litefs-py ARGS` to completion. A run that does not exit in time (e.g. a mount
        that should have been refused) is stopped and cleaned up, and the test fails."""
        log = self._log("run")
        # Where it would mount, if it did: the last argument of a `mount`.
        mnt = Path(args[-1]) if args and args[0] == "mount" else Path("/nonexistent")
        m = Mount(
            Path("/nonexistent"),
            mnt,
            [str(binary()), *args],
            log,
            env=daemon_env(),
            err_log=log.with_suffix(".err"),
        )
        self.mounts.append(m)
        try:
            rc = m.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"`litefs-py {' '.join(args)}` still running after {timeout} s:\n{m.output()}"
            ) from None
        return subprocess.CompletedProcess(
            args, rc, stdout=m.output(), stderr=m.errors()
        )

    def cleanup(self) -> list[str]:
        problems: list[str] = []
        for m in reversed(self.mounts):
            problems += m.cleanup()
        return problems


def run_cli(args: Sequence[str], timeout: float = 15.0) -> subprocess.CompletedProcess:
    """Runs `litefs-py ARGS` with separate stdout/stderr. Only for commands that never mount."""
    return subprocess.run(
        [str(binary()), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=daemon_env(),
        check=False,
    )


class Child:
    """A helper process (integration/sqlite_worker.py) driven line by line over pipes, with
    every read bounded in time."""

    def __init__(self, args: Sequence[str], cwd: Path | None = None) -> None:
        self.args = [sys.executable, str(WORKER), *args]
        self.proc = subprocess.Popen(
            self.args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
        )
        self._buf = b""
        os.set_blocking(self.proc.stdout.fileno(), False)

    def send(self, line: str) -> None:
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def read_line(self, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._buf:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    raise AssertionError(
                        f"no answer from {self.args} within {timeout} s; stderr: {self._stderr()}"
                    )
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise AssertionError(
                        f"{self.args} exited ({self.proc.wait(timeout=5)}) without answering; "
                        f"stderr: {self._stderr()}"
                    )
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode()

    def ask(self, line: str, timeout: float = 10.0) -> str:
        self.send(line)
        return self.read_line(timeout)

    def ask_json(self, line: str, timeout: float = 10.0) -> dict:
        return json.loads(self.ask(line, timeout))

    def read_json(self, timeout: float = 10.0) -> dict:
        return json.loads(self.read_line(timeout))

    def _stderr(self) -> str:
        if self.proc.poll() is None:
            return "(still running)"
        return self.proc.stderr.read().decode(errors="replace")

    def close(self, timeout: float = 10.0) -> int:
        """Closes its stdin (it exits on EOF) and waits; kills it (our own PID) if it hangs."""
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout=timeout)
        finally:
            for f in (self.proc.stdout, self.proc.stderr):
                with contextlib.suppress(OSError):
                    f.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
