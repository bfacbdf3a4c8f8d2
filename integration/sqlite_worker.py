"""Helper processes for the integration tests (run as `python3 sqlite_worker.py CMD ...`).

load   DB  --worker N --count K [--busy-ms B] [--start-file F] [--deadline S]
       K write transactions (BEGIN IMMEDIATE; INSERT; COMMIT), each followed by reads; prints
       one JSON line: the ids whose COMMIT returned without error ("acked"), the failures, and
       any read-your-writes violation seen along the way.
sql    DB  [--busy-ms B]
       A connection driven over stdin: each line is one SQL statement; each answer is a JSON
       line {"ok": true, "rows": [...]} or {"ok": false, "error": "..."}.
lock   PATH
       POSIX (fcntl) locks driven over stdin, one JSON answer per line:
         open              -> {"ok": true, "fd": N}   another descriptor for PATH
         lock FD TYPE START LEN     TYPE is r, w or u; F_SETLK (never waits)
         lockw FD TYPE START LEN    F_SETLKW: answers once granted (or failed)
         getlk FD TYPE START LEN    F_GETLK: {"ok": true, "type": "u|r|w", "start", "len", "pid"}
         close FD
Every command exits when stdin reaches EOF.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import json
import os
import sqlite3
import struct
import sys
import time


def reply(obj: object) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def cmd_load(a: argparse.Namespace) -> None:
    if a.start_file:
        # Start together with the others (bounded: start anyway after 10 s).
        t0 = time.monotonic()
        while not os.path.exists(a.start_file) and time.monotonic() - t0 < 10:
            time.sleep(0.005)
    conn = sqlite3.connect(a.db, timeout=a.busy_ms / 1000, isolation_level=None)
    acked: list[int] = []
    failed: list[tuple[int, str]] = []
    violations: list[str] = []
    reads = 0
    deadline = time.monotonic() + a.deadline
    for i in range(a.count):
        if time.monotonic() > deadline:
            failed.append((-1, f"deadline of {a.deadline} s reached after {i} inserts"))
            break
        row_id = a.worker * 1_000_000 + i
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                "INSERT INTO t (id, worker, seq, payload) VALUES (?, ?, ?, randomblob(?))",
                (row_id, a.worker, i, 100 + (i * 37) % 900),
            )
            conn.execute("COMMIT")
        except sqlite3.Error as e:
            failed.append((row_id, str(e)))
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error as e2:
                    failed.append((row_id, f"rollback: {e2}"))
            continue
        acked.append(row_id)
        # Reads: our own rows must all be visible, and the table must be readable.
        try:
            (mine,) = conn.execute(
                "SELECT count(*) FROM t WHERE worker = ?", (a.worker,)
            ).fetchone()
            if mine != len(acked):
                violations.append(f"after {len(acked)} acked inserts, {mine} rows visible")
            if i % 10 == 0:
                conn.execute("SELECT count(*), sum(length(payload)) FROM t").fetchone()
                conn.execute("SELECT * FROM t ORDER BY id DESC LIMIT 20").fetchall()
            reads += 1
        except sqlite3.Error as e:
            failed.append((row_id, f"read: {e}"))
    conn.close()
    reply(
        {
            "worker": a.worker,
            "acked": acked,
            "failed": failed,
            "violations": violations,
            "reads": reads,
        }
    )


def cmd_sql(a: argparse.Namespace) -> None:
    conn = sqlite3.connect(a.db, timeout=a.busy_ms / 1000, isolation_level=None)
    reply({"ok": True, "ready": True})
    for line in sys.stdin:
        stmt = line.strip()
        if not stmt:
            continue
        try:
            rows = conn.execute(stmt).fetchall()
            reply({"ok": True, "rows": [list(r) for r in rows]})
        except sqlite3.Error as e:
            reply({"ok": False, "error": str(e)})
    conn.close()


LOCK_TYPES = {"r": fcntl.F_RDLCK, "w": fcntl.F_WRLCK, "u": fcntl.F_UNLCK}
LOCK_NAMES = {v: k for k, v in LOCK_TYPES.items()}
FLOCK = "hhqqi4x"  # struct flock on Linux x86_64/aarch64: type, whence, start, len, pid


def cmd_lock(a: argparse.Namespace) -> None:
    fds: dict[int, int] = {}

    def open_fd() -> int:
        fd = os.open(a.path, os.O_RDWR)
        fds[fd] = fd
        return fd

    open_fd()
    reply({"ok": True, "fd": next(iter(fds))})
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        try:
            if words[0] == "open":
                reply({"ok": True, "fd": open_fd()})
            elif words[0] == "close":
                os.close(fds.pop(int(words[1])))
                reply({"ok": True})
            elif words[0] in ("lock", "lockw", "getlk"):
                fd, typ, start, length = (
                    int(words[1]),
                    LOCK_TYPES[words[2]],
                    int(words[3]),
                    int(words[4]),
                )
                req = struct.pack(FLOCK, typ, os.SEEK_SET, start, length, 0)
                if words[0] in ("lock", "lockw"):
                    cmd = fcntl.F_SETLK if words[0] == "lock" else fcntl.F_SETLKW
                    fcntl.fcntl(fd, cmd, req)
                    reply({"ok": True})
                else:
                    t, _, s, n, pid = struct.unpack(FLOCK, fcntl.fcntl(fd, fcntl.F_GETLK, req))
                    reply(
                        {
                            "ok": True,
                            "type": LOCK_NAMES.get(t, str(t)),
                            "start": s,
                            "len": n,
                            "pid": pid,
                        }
                    )
            else:
                reply({"ok": False, "error": f"unknown command {words[0]}"})
        except OSError as e:
            reply(
                {
                    "ok": False,
                    "errno": e.errno,
                    "error": errno.errorcode.get(e.errno, str(e.errno)),
                }
            )


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    load = sub.add_parser("load")
    load.add_argument("db")
    load.add_argument("--worker", type=int, required=True)
    load.add_argument("--count", type=int, required=True)
    load.add_argument("--busy-ms", type=int, default=20_000)
    load.add_argument("--start-file")
    load.add_argument("--deadline", type=float, default=120.0)
    sql = sub.add_parser("sql")
    sql.add_argument("db")
    sql.add_argument("--busy-ms", type=int, default=0)
    lock = sub.add_parser("lock")
    lock.add_argument("path")
    a = p.parse_args()
    {"load": cmd_load, "sql": cmd_sql, "lock": cmd_lock}[a.cmd](a)


if __name__ == "__main__":
    main()
