"""`--data-path symlink`: regular files in the mount appear as symlinks to the same name in
the lower dir, so SQLite (which resolves a symlinked database path) does all its I/O and
locking on the lower files directly; the shim only serves lookups, listings and the virtual
files.

Known limit: a regular file cannot be opened through the mount with O_NOFOLLOW (ELOOP), since
the mount shows it as a symlink; tools that refuse symlinks will not open it there.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from test_sqlite import SCHEMA, check_db, run_load

pytestmark = pytest.mark.shim(data_path="symlink")

JOURNAL_MODES = ["wal", "delete"]


def connect(path: Path, timeout: float = 5.0) -> sqlite3.Connection:
    return sqlite3.connect(path, timeout=timeout, isolation_level=None)


def integrity_ok(path: Path) -> None:
    conn = connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        conn.close()


def test_regular_files_appear_as_symlinks_to_the_lower_files(shim):
    lower = Path(os.path.realpath(shim.lower))
    (shim.lower / "pre").write_text("pre")
    (shim.lower / "sub").mkdir()
    (shim.lower / "sub" / "inner").write_text("inner")
    (shim.lower / "link").symlink_to("pre")
    pre = shim.mnt / "pre"
    assert pre.is_symlink()
    assert os.readlink(pre) == str(lower / "pre")
    assert pre.read_text() == "pre"
    assert os.path.realpath(pre) == str(lower / "pre")
    # Directories stay directories; files below them are symlinks too.
    assert (shim.mnt / "sub").is_dir() and not (shim.mnt / "sub").is_symlink()
    assert os.readlink(shim.mnt / "sub" / "inner") == str(lower / "sub" / "inner")
    # A real symlink in the lower dir is passed through as it is.
    assert os.readlink(shim.mnt / "link") == "pre"
    with os.scandir(shim.mnt) as it:
        kinds = {e.name: (e.is_symlink(), e.is_dir(follow_symlinks=False)) for e in it}
    assert kinds["pre"] == (True, False)
    assert kinds["sub"] == (False, True)
    # The virtual files are regular files, not symlinks.
    assert kinds[".role"] == (False, False)
    assert (shim.mnt / ".role").read_text() == "primary\n"
    assert not (shim.mnt / ".role").is_symlink()


def test_file_created_through_the_mount_becomes_a_symlink(shim):
    lower = Path(os.path.realpath(shim.lower))
    with open(shim.mnt / "new", "w") as f:
        f.write("hello")
        f.flush()
        assert (shim.lower / "new").read_text() == "hello"
    assert (shim.mnt / "new").is_symlink()
    assert os.readlink(shim.mnt / "new") == str(lower / "new")
    assert (shim.mnt / "new").read_text() == "hello"
    # Writing through the symlink writes the lower file.
    (shim.mnt / "new").write_text("again")
    assert (shim.lower / "new").read_text() == "again"


def test_o_nofollow_fails_with_eloop(shim):
    """Known limit of symlink mode (see the module docstring)."""
    (shim.lower / "db").write_bytes(b"x")
    with pytest.raises(OSError) as e:
        os.open(shim.mnt / "db", os.O_RDONLY | os.O_NOFOLLOW)
    assert e.value.errno == errno.ELOOP
    # Without O_NOFOLLOW it opens (the lower file).
    fd = os.open(shim.mnt / "db", os.O_RDONLY)
    os.close(fd)


@pytest.mark.parametrize("journal_mode", JOURNAL_MODES)
def test_sqlite_files_live_next_to_the_lower_file(shim, journal_mode):
    # The database exists in the lower dir (as LiteFS would have it); the app opens it
    # through the mount.
    seed = connect(shim.lower / "app.db")
    seed.execute(f"PRAGMA journal_mode={journal_mode}")
    seed.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    seed.close()
    conn = connect(shim.mnt / "app.db")
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == journal_mode
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t (v) VALUES ('a')")
        sidecars = ["-wal", "-shm"] if journal_mode == "wal" else ["-journal"]
        for suffix in sidecars:
            assert (shim.lower / f"app.db{suffix}").exists(), sorted(os.listdir(shim.lower))
            # Seen through the mount as symlinks to the lower sidecars, not as shim files.
            assert (shim.mnt / f"app.db{suffix}").is_symlink()
        conn.execute("COMMIT")
        for n in range(100):
            conn.execute("INSERT INTO t (v) VALUES (?)", (f"row {n}",))
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (101,)
    finally:
        conn.close()
    # Nothing but the database's own files was created.
    names = {n for n in os.listdir(shim.lower) if n != "app.db-shm" and n != "app.db-wal"}
    assert names == {"app.db"}
    direct = connect(shim.lower / "app.db")
    try:
        assert direct.execute("SELECT count(*) FROM t").fetchone() == (101,)
    finally:
        direct.close()
    integrity_ok(shim.mnt / "app.db")


@pytest.mark.parametrize("journal_mode", JOURNAL_MODES)
def test_database_created_through_the_mount(shim, journal_mode):
    """The first connection creates the file (it runs through the shim until it closes); a
    second connection opened by the same path while the first stays open reaches the lower
    file through the symlink. Both see each other's rows."""
    db = shim.mnt / "created.db"
    assert not db.exists()
    first = connect(db)
    try:
        first.execute(f"PRAGMA journal_mode={journal_mode}")
        first.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, who TEXT)")
        first.execute("INSERT INTO t (who) VALUES ('first')")
        assert (shim.lower / "created.db").exists()
        assert db.is_symlink()
        second = connect(db)
        try:
            assert second.execute("SELECT who FROM t").fetchall() == [("first",)]
            second.execute("INSERT INTO t (who) VALUES ('second')")
            assert first.execute("SELECT who FROM t ORDER BY id").fetchall() == [
                ("first",),
                ("second",),
            ]
            for n in range(50):
                (first if n % 2 else second).execute("INSERT INTO t (who) VALUES (?)", (f"n{n}",))
            assert first.execute("SELECT count(*) FROM t").fetchone() == (52,)
            assert second.execute("SELECT count(*) FROM t").fetchone() == (52,)
            assert first.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        finally:
            second.close()
    finally:
        first.close()
    integrity_ok(db)
    integrity_ok(shim.lower / "created.db")
    assert db.is_symlink()


def interleave(a: sqlite3.Connection, b: sqlite3.Connection, journal_mode: str) -> None:
    """Alternating writes and reads on two connections of this process, plus a check that a
    transaction held on one blocks the other's writer instead of letting it through."""
    (expected,) = a.execute("SELECT count(*) FROM t").fetchone()
    for n in range(60):
        conn = a if n % 2 == 0 else b
        other = b if conn is a else a
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t (v) VALUES (?)", (f"row {n}",))
        conn.execute("COMMIT")
        expected += 1
        assert other.execute("SELECT count(*) FROM t").fetchone() == (expected,)
    # A write transaction on `a` keeps `b`'s writer out (SQLITE_BUSY), whichever path it used.
    a.execute("BEGIN IMMEDIATE")
    a.execute("INSERT INTO t (v) VALUES ('held')")
    b.execute("PRAGMA busy_timeout = 0")
    with pytest.raises(sqlite3.OperationalError, match="database is locked"):
        b.execute("BEGIN IMMEDIATE")
    if journal_mode == "wal":
        # Readers are not blocked in WAL mode, and do not see the uncommitted row.
        assert b.execute("SELECT count(*) FROM t").fetchone() == (expected,)
    a.execute("COMMIT")
    expected += 1
    b.execute("PRAGMA busy_timeout = 5000")
    b.execute("INSERT INTO t (v) VALUES ('after')")
    expected += 1
    assert a.execute("SELECT count(*) FROM t").fetchone() == (expected,)
    assert b.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


@pytest.mark.parametrize("journal_mode", JOURNAL_MODES)
def test_two_paths_in_one_process_existing_db(shim, journal_mode):
    seed = connect(shim.lower / "two.db")
    seed.execute(f"PRAGMA journal_mode={journal_mode}")
    seed.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    seed.close()
    via_mount = connect(shim.mnt / "two.db")
    via_lower = connect(shim.lower / "two.db")
    try:
        interleave(via_mount, via_lower, journal_mode)
        # Closing one connection must not drop the other's locks (POSIX close semantics).
        via_lower.close()
        via_mount.execute("INSERT INTO t (v) VALUES ('last')")
    finally:
        via_mount.close()
        via_lower.close()
    integrity_ok(shim.lower / "two.db")
    conn = connect(shim.lower / "two.db")
    try:
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (63,)
    finally:
        conn.close()


@pytest.mark.parametrize("journal_mode", JOURNAL_MODES)
def test_two_paths_in_one_process_db_created_through_the_mount(shim, journal_mode):
    """The hard case: the connection that created the database through the mount is on a shim
    file (passthrough, forwarded locks) while the other one is on the lower file itself."""
    via_mount = connect(shim.mnt / "made.db")
    try:
        via_mount.execute(f"PRAGMA journal_mode={journal_mode}")
        via_mount.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        via_lower = connect(shim.lower / "made.db")
        try:
            interleave(via_mount, via_lower, journal_mode)
            interleave(via_lower, via_mount, journal_mode)
        finally:
            via_lower.close()
        # The lower connection closed: the mount connection still works and keeps its locks.
        via_mount.execute("INSERT INTO t (v) VALUES ('last')")
        assert via_mount.execute("SELECT count(*) FROM t").fetchone() == (125,)
    finally:
        via_mount.close()
    integrity_ok(shim.lower / "made.db")
    integrity_ok(shim.mnt / "made.db")


@pytest.mark.parametrize("journal_mode", JOURNAL_MODES)
def test_concurrent_processes_while_the_creating_connection_stays_open(shim, journal_mode):
    """The creating connection (a shim file, forwarded locks) keeps writing while four other
    processes write through the symlink (the lower file, their own locks)."""
    db = shim.mnt / "busy.db"
    # Created here, written from a thread below.
    creator = sqlite3.connect(db, timeout=20, isolation_level=None, check_same_thread=False)
    try:
        creator.execute(f"PRAGMA journal_mode={journal_mode}")
        creator.execute(SCHEMA)
        start = shim.mnt.parent / "go"
        mine: list[int] = []
        errors: list[BaseException] = []

        def write_from_creator() -> None:
            try:
                write()
            except BaseException as e:
                errors.append(e)

        def write() -> None:
            # Wait for the workers' start signal, then interleave with them.
            deadline = time.monotonic() + 10
            while not start.exists() and time.monotonic() < deadline:
                time.sleep(0.005)
            for n in range(200):
                row_id = 9_000_000 + n
                creator.execute("BEGIN IMMEDIATE")
                creator.execute("INSERT INTO t (id, worker, seq) VALUES (?, 9, ?)", (row_id, n))
                creator.execute("COMMIT")
                mine.append(row_id)

        t = threading.Thread(target=write_from_creator, daemon=True)
        t.start()
        reports = run_load([db] * 4, start)
        t.join(60)
        assert not t.is_alive(), "the creating connection's writes did not finish"
        assert not errors, f"the creating connection failed: {errors[0]!r}"
    finally:
        creator.close()
    reports.append({"worker": 9, "acked": mine, "failed": [], "violations": []})
    check_db(shim.lower / "busy.db", reports)
