"""Real SQLite through a real mount of the shim (passthrough data path): concurrent writers in
WAL and rollback-journal mode, locks that reach the lower file in both directions, and POSIX
lock ownership per process."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import selectors
import sqlite3
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from typing import Self


JOURNAL_MODES = ["wal", "delete"]
WORKERS = 5
INSERTS_PER_WORKER = 300
LOAD_TIMEOUT = 240.0
SCHEMA = "CREATE TABLE t (id INTEGER PRIMARY KEY, worker INTEGER, seq INTEGER, payload BLOB)"
WORKER = Path(__file__).resolve().parent / "sqlite_worker.py"


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


def create_db(path: Path, journal_mode: str) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        (mode,) = conn.execute(f"PRAGMA journal_mode={journal_mode}").fetchone()
        assert mode == journal_mode
        conn.execute(SCHEMA)
    finally:
        conn.close()


def run_load(db_paths: list[Path], start_file: Path) -> list[dict]:
    """Starts one `load` worker per path, releases them together, returns their reports."""
    children = [
        Child(
            [
                "load",
                str(path),
                "--worker",
                str(n + 1),
                "--count",
                str(INSERTS_PER_WORKER),
                "--busy-ms",
                "20000",
                "--start-file",
                str(start_file),
                "--deadline",
                str(LOAD_TIMEOUT - 30),
            ]
        )
        for n, path in enumerate(db_paths)
    ]
    try:
        time.sleep(0.3)  # let them all get to the start line
        start_file.touch()
        deadline = time.monotonic() + LOAD_TIMEOUT
        return [c.read_json(timeout=max(1.0, deadline - time.monotonic())) for c in children]
    finally:
        for c in children:
            c.close()


def check_db(path: Path, reports: list[dict]) -> None:
    """integrity_check is ok and the rows are exactly the acknowledged inserts."""
    for r in reports:
        assert not r["violations"], f"worker {r['worker']}: {r['violations'][:5]}"
        assert r["acked"], f"worker {r['worker']} got nothing committed: {r['failed'][:5]}"
    acked = sorted(i for r in reports for i in r["acked"])
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        (count,) = conn.execute("SELECT count(*) FROM t").fetchone()
        ids = [i for (i,) in conn.execute("SELECT id FROM t ORDER BY id")]
    finally:
        conn.close()
    missing = sorted(set(acked) - set(ids))
    assert not missing, f"{len(missing)} acknowledged rows are missing, e.g. {missing[:10]}"
    # A failed COMMIT is rolled back, so every row present was acknowledged as well.
    assert count == len(acked), f"{count} rows, {len(acked)} acknowledged"
    assert ids == acked


@pytest.mark.parametrize("journal_mode", JOURNAL_MODES)
def test_concurrent_writers_through_the_mount(shim, journal_mode):
    db = shim.mnt / "load.db"
    create_db(db, journal_mode)
    reports = run_load([db] * WORKERS, shim.mnt.parent / "go")
    check_db(db, reports)
    # The same database, read directly on the lower dir.
    check_db(shim.lower / "load.db", reports)
    failures = sum(len(r["failed"]) for r in reports)
    print(f"{journal_mode}: {sum(len(r['acked']) for r in reports)} acked, {failures} failed")


@pytest.mark.parametrize("journal_mode", JOURNAL_MODES)
def test_concurrent_writers_through_the_mount_and_on_the_lower_file(shim, journal_mode):
    """Four writers through the mount and one on the lower file itself: the shim's forwarded
    locks and the direct writer's locks exclude each other, so nothing is lost or torn."""
    db = shim.mnt / "mixed.db"
    create_db(db, journal_mode)
    paths = [db] * 4 + [shim.lower / "mixed.db"]
    reports = run_load(paths, shim.mnt.parent / "go")
    check_db(db, reports)


def sql_child(db: Path, busy_ms: int = 0) -> Child:
    c = Child(["sql", str(db), "--busy-ms", str(busy_ms)])
    assert c.read_json()["ready"]
    return c


def ok(c: Child, stmt: str) -> list:
    answer = c.ask_json(stmt)
    assert answer["ok"], f"{stmt}: {answer}"
    return answer["rows"]


def assert_busy(db: Path, what: str) -> None:
    """A writer on `db` in this process, busy timeout 0, gets SQLITE_BUSY."""
    conn = sqlite3.connect(db, timeout=0, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t (id, worker, seq) VALUES (999999, 0, 0)")
        conn.execute("COMMIT")
    except sqlite3.OperationalError as e:
        assert "database is locked" in str(e), f"{what}: {e}"
    else:
        pytest.fail(f"{what}: the write succeeded although another process holds the lock")
    finally:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        conn.close()


def assert_can_write(db: Path, row_id: int) -> None:
    conn = sqlite3.connect(db, timeout=5, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t (id, worker, seq) VALUES (?, 0, 0)", (row_id,))
        conn.execute("COMMIT")
    finally:
        conn.close()


@pytest.mark.parametrize("journal_mode", JOURNAL_MODES)
@pytest.mark.parametrize("holder_side", ["mount", "lower"])
def test_write_lock_reaches_the_other_side(shim, journal_mode, holder_side):
    """A write transaction held on one side (through the shim, or on the lower file directly)
    makes a writer on the other side get SQLITE_BUSY; once committed, the other side writes
    and sees the holder's row."""
    create_db(shim.mnt / "lock.db", journal_mode)
    holder_db = (shim.mnt if holder_side == "mount" else shim.lower) / "lock.db"
    other_db = (shim.lower if holder_side == "mount" else shim.mnt) / "lock.db"
    with sql_child(holder_db) as holder:
        ok(holder, "BEGIN IMMEDIATE")
        ok(holder, "INSERT INTO t (id, worker, seq) VALUES (1, 1, 1)")
        assert_busy(other_db, f"writer opposite a {holder_side} holder")
        # Still busy on a second try (the failed attempt must not have disturbed the lock).
        assert_busy(other_db, "second attempt")
        ok(holder, "COMMIT")
        assert_can_write(other_db, 2)
        assert ok(holder, "SELECT id FROM t ORDER BY id") == [[1], [2]]
    conn = sqlite3.connect(shim.mnt / "lock.db")
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        conn.close()


@pytest.mark.parametrize("journal_mode", JOURNAL_MODES)
def test_write_lock_between_two_processes_through_the_mount(shim, journal_mode):
    create_db(shim.mnt / "two.db", journal_mode)
    db = shim.mnt / "two.db"
    with sql_child(db) as holder:
        ok(holder, "BEGIN IMMEDIATE")
        ok(holder, "INSERT INTO t (id, worker, seq) VALUES (1, 1, 1)")
        assert_busy(db, "second process through the mount")
        ok(holder, "ROLLBACK")
        assert_can_write(db, 2)


# ----- POSIX locks through the mount: one owner per process ---------------------------------

LOCK_BYTE = 100
BUSY_ERRNOS = (errno.EAGAIN, errno.EACCES)


def lock_child(path: Path) -> tuple[Child, int]:
    c = Child(["lock", str(path)])
    first = c.read_json()
    assert first["ok"], first
    return c, first["fd"]


def try_lock(c: Child, fd: int, typ: str, start: int = LOCK_BYTE, length: int = 1) -> dict:
    return c.ask_json(f"lock {fd} {typ} {start} {length}")


def test_posix_locks_are_per_process(shim):
    path = shim.mnt / "locked"
    path.write_bytes(b"x" * 4096)
    a, a_fd = lock_child(path)
    b, b_fd = lock_child(path)
    with a, b:
        assert try_lock(a, a_fd, "w")["ok"]
        # Another process through the same mount is refused, shared or exclusive.
        for typ in ("w", "r"):
            answer = try_lock(b, b_fd, typ)
            assert not answer["ok"] and answer["errno"] in BUSY_ERRNOS, answer
        # A non-overlapping byte is free.
        assert try_lock(b, b_fd, "w", LOCK_BYTE + 1)["ok"]
        # F_GETLK through the mount reports the conflict.
        got = b.ask_json(f"getlk {b_fd} w 0 0")
        assert got["ok"] and got["type"] == "w", got
        assert (got["start"], got["len"]) == (LOCK_BYTE, 1), got
        # ... and the holder itself sees no conflict with its own lock.
        own = a.ask_json(f"getlk {a_fd} w {LOCK_BYTE} 1")
        assert own["ok"] and own["type"] == "u", own
        # A second descriptor in the holding process shares its owner: no conflict.
        second = a.ask_json("open")["fd"]
        assert try_lock(a, second, "w")["ok"]
        # POSIX: closing ANY descriptor of the file releases the process's locks on it.
        assert a.ask_json(f"close {second}")["ok"]
        assert try_lock(b, b_fd, "w")["ok"], "lock still held after the holder closed an fd"
        assert try_lock(b, b_fd, "u")["ok"]
        # Lock again, then the holder closes its (last) fd while staying alive.
        assert try_lock(a, a_fd, "w")["ok"]
        assert not try_lock(b, b_fd, "w")["ok"]
        assert a.ask_json(f"close {a_fd}")["ok"]
        assert try_lock(b, b_fd, "w")["ok"]
        got = b.ask_json(f"getlk {b_fd} w 0 0")
        assert got["type"] == "u", got


def test_posix_lock_through_the_mount_reaches_the_lower_file(shim):
    (shim.mnt / "locked").write_bytes(b"x" * 4096)
    a, a_fd = lock_child(shim.mnt / "locked")
    direct, d_fd = lock_child(shim.lower / "locked")
    with a, direct:
        assert try_lock(a, a_fd, "w")["ok"]
        answer = try_lock(direct, d_fd, "r")
        assert not answer["ok"] and answer["errno"] in BUSY_ERRNOS, answer
        assert direct.ask_json(f"getlk {d_fd} r 0 0")["type"] == "w"
        assert a.ask_json(f"close {a_fd}")["ok"]
        assert try_lock(direct, d_fd, "w")["ok"]
        # And the other way: the direct lock is seen through the mount.
        b, b_fd = lock_child(shim.mnt / "locked")
        with b:
            answer = try_lock(b, b_fd, "w")
            assert not answer["ok"] and answer["errno"] in BUSY_ERRNOS, answer


def test_locks_of_a_process_that_dies_are_released(shim):
    (shim.mnt / "locked").write_bytes(b"x")
    a, a_fd = lock_child(shim.mnt / "locked")
    b, b_fd = lock_child(shim.mnt / "locked")
    with b:
        assert try_lock(a, a_fd, "w")["ok"]
        assert not try_lock(b, b_fd, "w")["ok"]
        a.proc.kill()  # our own child
        a.close()
        deadline = time.monotonic() + 5
        while not try_lock(b, b_fd, "w")["ok"]:
            assert time.monotonic() < deadline, "lock of a killed process never released"
            time.sleep(0.05)


def test_no_lock_is_left_on_the_lower_file_after_sqlite_closes(shim):
    """After all connections through the mount are closed, a direct exclusive lock on the
    lower database's lock bytes succeeds (the shim released its forwarded locks)."""
    db = shim.mnt / "released.db"
    create_db(db, "delete")
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO t (id) VALUES (1)")
    conn.execute("COMMIT")
    conn.execute("SELECT * FROM t").fetchall()
    conn.close()
    direct, fd = lock_child(shim.lower / "released.db")
    with direct:
        # SQLite's lock bytes: PENDING 0x40000000, RESERVED +1, SHARED +2 .. +511.
        assert try_lock(direct, fd, "w", 0x40000000, 512)["ok"]
    assert os.path.getsize(shim.lower / "released.db") > 0


@pytest.mark.parametrize(
    "shim",
    [{}, {"extra_args": ["--threads", "1"]}],
    ids=["default", "one-thread"],
    indirect=True,
)
def test_blocking_lock_is_granted_when_the_holder_lets_go(shim):
    """F_SETLKW through the mount waits off the FUSE workers: even with one worker thread the
    mount keeps answering while a lock request waits."""
    (shim.mnt / "locked").write_bytes(b"x" * 100)
    a, a_fd = lock_child(shim.mnt / "locked")
    b, b_fd = lock_child(shim.mnt / "locked")
    with a, b:
        assert try_lock(a, a_fd, "w")["ok"]
        b.send(f"lockw {b_fd} w {LOCK_BYTE} 1")
        with pytest.raises(AssertionError, match="no answer"):
            b.read_line(timeout=0.5)  # still waiting
        assert (shim.mnt / ".role").read_text() == "primary\n"
        assert (shim.mnt / "locked").stat().st_size == 100
        assert a.ask_json(f"close {a_fd}")["ok"]
        assert b.read_json(timeout=5)["ok"], "F_SETLKW not granted after the holder closed"
        # b holds it now, as seen from the lower file.
        direct, d_fd = lock_child(shim.lower / "locked")
        with direct:
            assert not try_lock(direct, d_fd, "w")["ok"]


def test_killed_waiter_does_not_leave_a_lock_behind(shim):
    """A process killed while blocked in F_SETLKW through the mount must not be granted the
    lock afterwards (it would be held by nobody, forever)."""
    (shim.mnt / "locked").write_bytes(b"x" * 100)
    a, a_fd = lock_child(shim.mnt / "locked")
    b, b_fd = lock_child(shim.mnt / "locked")
    with a:
        assert try_lock(a, a_fd, "w")["ok"]
        b.send(f"lockw {b_fd} w {LOCK_BYTE} 1")
        time.sleep(0.3)
        b.proc.kill()  # our own child, blocked in the lock request
        b.close()
        assert a.ask_json(f"close {a_fd}")["ok"]
    c, c_fd = lock_child(shim.mnt / "locked")
    direct, d_fd = lock_child(shim.lower / "locked")
    with c, direct:
        deadline = time.monotonic() + 5
        while not try_lock(c, c_fd, "w")["ok"]:
            assert time.monotonic() < deadline, "the killed waiter's lock was never released"
            time.sleep(0.05)
        assert try_lock(c, c_fd, "u", 0, 0)["ok"]
        assert try_lock(direct, d_fd, "w", 0, 0)["ok"], "a lock is left on the lower file"


def test_sigterm_with_a_blocked_waiter_exits_cleanly(shim):
    (shim.mnt / "locked").write_bytes(b"x" * 100)
    a, a_fd = lock_child(shim.mnt / "locked")
    b, b_fd = lock_child(shim.mnt / "locked")
    with a, b:
        assert try_lock(a, a_fd, "w")["ok"]
        b.send(f"lockw {b_fd} w {LOCK_BYTE} 1")
        time.sleep(0.3)
        assert shim.stop() == 0, shim.output()
        answer = b.read_json(timeout=5)
        assert not answer["ok"], answer
        assert not shim.is_mounted()
