#!/usr/bin/env python3
"""Runs one scenario of the tests inside a configured Django process and prints its result as
one JSON line: ``python scenario.py NAME [ARG]`` (settings from the environment, see
djproject/settings.py)."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djproject.settings")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import django

django.setup()

from django.db import DatabaseError, connection, transaction  # noqa: E402
from django.utils import timezone  # noqa: E402
from guest.models import Entry  # noqa: E402

import litefs  # noqa: E402

INSERT = "INSERT INTO guest_entry (name, text, created) VALUES (%s, %s, %s)"


def outcome(fn: Callable[[], Any]) -> dict[str, Any]:
    try:
        value = fn()
    except Exception as e:
        return {
            "ok": False,
            "type": type(e).__name__,
            "not_primary": isinstance(e, litefs.NotPrimary),
            "database_error": isinstance(e, DatabaseError),
            "primary": getattr(e, "primary", None),
            "message": str(e),
            "cause": type(e.__cause__).__name__ if e.__cause__ is not None else None,
            "cause_message": str(e.__cause__) if e.__cause__ is not None else None,
        }
    return {"ok": True, "value": value}


def atomic_read() -> list[str]:
    with transaction.atomic():
        return list(Entry.objects.values_list("name", flat=True))


def atomic_write() -> None:
    with transaction.atomic():
        Entry.objects.count()
        Entry.objects.create(name="atomic")


def raw(sql: str, params: Any = None) -> None:
    with connection.cursor() as c:
        c.execute(sql, params)


def many() -> None:
    now = timezone.now()
    with connection.cursor() as c:
        c.executemany(INSERT, [("m1", "", now), ("m2", "", now)])


def script() -> None:
    with connection.cursor() as c:
        c.executescript("INSERT INTO guest_entry (name, text, created) VALUES ('s', '', 0);")


def ops() -> dict[str, Any]:
    """Every kind of read and write; on a replica the writes must raise NotPrimary."""
    now = timezone.now()
    return {
        "count": outcome(Entry.objects.count),
        "atomic_read": outcome(atomic_read),
        "save": outcome(lambda: Entry.objects.create(name="orm").pk),
        "update": outcome(lambda: Entry.objects.update(text="u")),
        "delete": outcome(lambda: Entry.objects.filter(name="nobody").delete()[0]),
        "raw_insert": outcome(lambda: raw(INSERT, ["raw", "", now])),
        "executemany": outcome(many),
        "executescript": outcome(script),
        "atomic_write": outcome(atomic_write),
        "pragma_write": outcome(lambda: raw("PRAGMA user_version = 7")),
        "create_table": outcome(lambda: raw("CREATE TABLE t_new (x)")),
        "temp_table": outcome(lambda: raw("CREATE TEMP TABLE t_tmp (x)")),
        "count_after": outcome(Entry.objects.count),
        "atomic_read_after": outcome(lambda: len(atomic_read())),
        "journal_mode": outcome(lambda: _one("PRAGMA journal_mode")),
    }


def _one(sql: str) -> Any:
    with connection.cursor() as c:
        c.execute(sql)
        return c.fetchone()[0]


def hold(seconds: str) -> dict[str, Any]:
    """Takes the write lock (a write in atomic()), says so, holds it until a line arrives on
    stdin, then ``seconds`` more, and commits."""
    with transaction.atomic():
        Entry.objects.create(name="holder")
        print(json.dumps({"locked": True}), flush=True)
        sys.stdin.readline()
        time.sleep(float(seconds))
    return {"committed": True}


def names() -> list[str]:
    """The names of every entry (a read: works on any node)."""
    return list(Entry.objects.values_list("name", flat=True))


def write_txn(pause: str) -> dict[str, Any]:
    """A read-then-write transaction, the pattern that fails at its write under DEFERRED while
    another writer holds the lock (SQLite cannot upgrade a stale read snapshot). Says when it
    starts."""
    connection.ensure_connection()
    print(json.dumps({"starting": True}), flush=True)
    started = time.monotonic()

    def txn() -> None:
        with transaction.atomic():
            Entry.objects.count()
            time.sleep(float(pause))
            Entry.objects.create(name="waiter")

    result = outcome(txn)
    result["seconds"] = round(time.monotonic() - started, 3)
    result["begin"] = connection.transaction_mode
    return result


def client(requests: str) -> list[dict[str, Any]]:
    """Runs requests through Django's test client: a JSON list of [method, path] or
    [method, path, {header: value}]. A JSON answer's body is parsed, any other is text."""
    from django.test import Client

    c = Client(raise_request_exception=False)
    out = []
    for method, path, *headers in json.loads(requests):
        r = getattr(c, method.lower())(path, headers=headers[0] if headers else None)
        body: Any = r.content.decode(errors="replace")
        if r.get("Content-Type", "").startswith("application/json"):
            body = json.loads(r.content)
        out.append(
            {
                "status": r.status_code,
                "body": body,
                "headers": {k.lower(): v for k, v in r.headers.items()},
            }
        )
    return out


def lost_role() -> dict[str, Any]:
    """ReplicaWriteMiddleware.process_exception on this node for a database error that escaped
    the backend's mapping (what a write LiteFS refused at an autocommit's commit looks like):
    for a POST, a GET, and a POST with another error."""
    from django.db import IntegrityError, OperationalError
    from django.http import HttpResponse
    from django.test import RequestFactory

    from litefs.django.middleware import ReplicaWriteMiddleware

    mw = ReplicaWriteMiddleware(lambda r: HttpResponse())
    rf = RequestFactory()
    out: dict[str, Any] = {}
    for key, request, error in (
        ("post", rf.post("/sign"), OperationalError("disk I/O error")),
        ("get", rf.get("/sign"), OperationalError("disk I/O error")),
        ("post_integrity", rf.post("/sign"), IntegrityError("UNIQUE constraint failed")),
    ):
        r = mw.process_exception(request, error)
        out[key] = (
            None
            if r is None
            else {
                "status": r.status_code,
                "retry_after": r.get("Retry-After"),
                "body": json.loads(r.content),
            }
        )
    return out


def bypass() -> dict[str, Any]:
    """The backend's own guards off (no role read before statements, an authorizer that denies
    nothing, no ``query_only``): a write reaches the file system, and what LiteFS answers on a
    replica must still come back as NotPrimary."""
    connection.ensure_connection()

    def before(query: Any) -> None:  # no role read; the authorizer still watches
        connection._litefs_current = query
        connection._litefs_seen = connection._litefs_saw_write = False

    connection._litefs_before = before
    connection._litefs_primary = True  # the authorizer lets every write through
    sqlite = connection.connection
    sqlite.execute("PRAGMA query_only = 0")
    connection._litefs_query_only = False
    now = timezone.now()
    return {
        "raw_insert": outcome(lambda: raw(INSERT, ["bypass", "", now])),
        "count_after": outcome(Entry.objects.count),
    }


def role_reads() -> dict[str, Any]:
    """How often the backend reads ``.role`` for a request-like unit of work (connect, a few
    reads, one write transaction, close), the first time and once statements are known."""
    from litefs.django import mixin

    calls = {"n": 0}
    real = mixin.read_role

    def counting(mount: Any) -> str:
        calls["n"] += 1
        return real(mount)

    mixin.read_role = counting  # type: ignore[assignment]
    out = []
    for _ in range(3):
        calls["n"] = 0
        Entry.objects.count()
        list(Entry.objects.filter(name="x"))
        with transaction.atomic():
            Entry.objects.create(name="r")
        connection.close()  # Django's default: a new connection per request
        out.append(calls["n"])
    return {"per_unit": out}


class _RefusingCommit:
    """The sqlite3 connection, except that COMMIT fails as LiteFS fails it on a node that lost
    the primary role (a disk I/O error)."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def commit(self) -> None:
        import sqlite3

        raise sqlite3.OperationalError("disk I/O error")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def commit_refused() -> dict[str, Any]:
    """A write in atomic() on the primary; before COMMIT the node is demoted (``.role`` read as
    replica) and the commit is refused: NotPrimary, not Django's OperationalError."""
    from litefs.django import mixin

    connection.ensure_connection()
    real = mixin.read_role

    def txn() -> None:
        with transaction.atomic():
            Entry.objects.create(name="demoted")
            mixin.read_role = lambda mount: "replica"  # type: ignore[assignment]
            connection.connection = _RefusingCommit(connection.connection)

    try:
        result = outcome(txn)
    finally:
        mixin.read_role = real  # type: ignore[assignment]
        if isinstance(connection.connection, _RefusingCommit):
            connection.connection = connection.connection._conn
    return result


def classify_overflow() -> dict[str, Any]:
    """The statement classification overflows (a small ``_CLASSIFIED_MAX``) and is cleared
    while sqlite3 still holds a write statement prepared: its next run must not record it as a
    read. Then, after a line on stdin (the test demotes the node), the same write and a
    value-setting PRAGMA must raise NotPrimary."""
    from litefs.django import mixin

    mixin._CLASSIFIED_MAX = 3
    now = timezone.now()
    first = {
        "insert": outcome(lambda: raw(INSERT, ["c1", "", now])),
        "pragma": outcome(lambda: raw("PRAGMA user_version = 5")),
    }
    for i in range(5):  # distinct reads: the classification fills up and is cleared
        _one(f"SELECT {i}")
    first["insert_again"] = outcome(lambda: raw(INSERT, ["c2", "", now]))
    first["pragma_again"] = outcome(lambda: raw("PRAGMA user_version = 5"))
    first["insert_known"] = connection._litefs_classified.get(INSERT)
    first["pragma_known"] = connection._litefs_classified.get("PRAGMA user_version = 5")
    print(json.dumps(first, default=str), flush=True)
    sys.stdin.readline()
    return {
        "insert": outcome(lambda: raw(INSERT, ["c3", "", now])),
        "pragma": outcome(lambda: raw("PRAGMA user_version = 5")),
        "count": outcome(Entry.objects.count),
    }


def read_ioerror() -> dict[str, Any]:
    """On a replica (``.role`` read as replica), a SELECT fails with an I/O error: that is not
    a refused write, the error stands (not NotPrimary)."""
    from django.db.backends.sqlite3.base import SQLiteCursorWrapper

    from litefs.django import mixin

    connection.ensure_connection()
    real_role, real_execute = mixin.read_role, SQLiteCursorWrapper.execute

    def failing(self: Any, query: str, params: Any = None) -> Any:
        if query.lstrip().upper().startswith("SELECT"):
            import sqlite3

            raise sqlite3.OperationalError("disk I/O error")
        return real_execute(self, query, params)

    mixin.read_role = lambda mount: "replica"  # type: ignore[assignment]
    SQLiteCursorWrapper.execute = failing  # type: ignore[method-assign]
    try:
        return {"count": outcome(Entry.objects.count)}
    finally:
        mixin.read_role = real_role  # type: ignore[assignment]
        SQLiteCursorWrapper.execute = real_execute  # type: ignore[method-assign]


def phases(count: str) -> dict[str, Any]:
    """``ops()`` now, then again after each line read from stdin (the test changes the cluster
    in between), in one process: the same connection sees the role change."""
    results = []
    for i in range(int(count)):
        if i:
            sys.stdin.readline()
        results.append(ops())
        print(json.dumps(results[-1], default=str), flush=True)
    return {"phases": len(results)}


def wait_replicated() -> dict[str, Any]:
    """litefs.django.wait_replicated where it cannot wait: inside a transaction, and with no
    proxy (the tests' shim runs without `run`, so $LITEFS_PY_PROXY is unset)."""
    import litefs.django

    def inside() -> None:
        with transaction.atomic():
            litefs.django.wait_replicated()

    def refused_proxy() -> None:
        os.environ["LITEFS_PY_PROXY"] = "http://127.0.0.1:9"  # discard: nothing listens
        try:
            litefs.django.wait_replicated(timeout=1.0)
        finally:
            del os.environ["LITEFS_PY_PROXY"]

    os.environ.pop("LITEFS_PY_PROXY", None)
    return {
        "inside": outcome(inside),
        "no_proxy": outcome(litefs.django.wait_replicated),
        "refused": outcome(refused_proxy),
        "bad_timeout": outcome(lambda: litefs.django.wait_replicated(timeout=61)),
    }


def main() -> None:
    name, *args = sys.argv[1:]
    fn = {
        "ops": ops,
        "hold": hold,
        "write_txn": write_txn,
        "names": names,
        "client": client,
        "lost_role": lost_role,
        "phases": phases,
        "bypass": bypass,
        "role_reads": role_reads,
        "commit_refused": commit_refused,
        "classify_overflow": classify_overflow,
        "read_ioerror": read_ioerror,
        "wait_replicated": wait_replicated,
    }[name]
    print(json.dumps(fn(*args), default=str), flush=True)


if __name__ == "__main__":
    main()
