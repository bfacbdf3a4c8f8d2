#!/usr/bin/env python3
"""The guestbook node's app command, run by ``litefs-py run --config nodeN.yml -- start.py``.

1. Waits (bounded) until a primary is known.
2. On the primary: ``migrate``. On a replica: migrations are never run there (the backend
   refuses them); the schema arrives by LiteFS replication, so it waits until the database file
   exists and has no unapplied migration. If this node becomes primary while it waits, it
   migrates itself.
3. Replaces itself with the WSGI server (gunicorn), so that ``litefs-py run``'s SIGTERM reaches
   the server directly.

``start.py [SERVER COMMAND...]``: the server command defaults to gunicorn on ``$GUESTBOOK_BIND``
(default 127.0.0.1:8000) with ``$GUESTBOOK_WORKERS`` sync workers (default 2).
``$GUESTBOOK_SCHEMA_TIMEOUT``: seconds to wait for a primary and the schema (default 120).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def log(msg: str) -> None:
    print(f"guestbook start: {msg}", file=sys.stderr, flush=True)


def pending_migrations() -> list[str]:
    """Migrations not applied to the database yet (reads only)."""
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    try:
        executor = MigrationExecutor(connection)
        plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
        return [f"{m.app_label}.{m.name}" for m, _ in plan]
    finally:
        connection.close()


def prepare(timeout: float) -> None:
    from django.conf import settings
    from django.core.management import call_command

    import litefs

    db = settings.DATABASES["default"]["NAME"]
    if settings.PLAIN_DB:
        call_command("migrate", interactive=False, verbosity=0)
        return
    deadline = time.monotonic() + timeout
    said = ""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise SystemExit(f"guestbook start: no schema after {timeout:g} s ({said})")
        s = litefs.wait_for_primary(left, settings.LITEFS_DIR)
        if s.is_primary:
            log(f"{s.hostname} is the primary: migrate")
            try:
                call_command("migrate", interactive=False, verbosity=1)
                return
            except litefs.NotPrimary as e:  # lost the role meanwhile: look again
                log(f"migrate stopped: {e}")
                continue
        # A replica: never create the file (LiteFS would refuse it); wait for replication.
        if not os.path.exists(db):
            why = f"waiting for {os.path.basename(db)} from the primary, {s.primary}"
        else:
            todo = pending_migrations()
            if not todo:
                log(f"{s.hostname} is {s.role}: the schema is replicated and up to date")
                return
            why = f"waiting for the primary ({s.primary}) to apply {', '.join(todo)}"
        if why != said:
            log(why)
            said = why
        time.sleep(0.2)


def main() -> None:
    os.chdir(HERE)
    sys.path.insert(0, str(HERE))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "guestbook.settings")
    import django

    django.setup()
    prepare(float(os.environ.get("GUESTBOOK_SCHEMA_TIMEOUT", "120")))
    server = sys.argv[1:] or [
        sys.executable,
        "-m",
        "gunicorn",
        "guestbook.wsgi",
        "--bind",
        os.environ.get("GUESTBOOK_BIND", "127.0.0.1:8000"),
        "--workers",
        os.environ.get("GUESTBOOK_WORKERS", "2"),
        "--graceful-timeout",
        "5",
        "--log-level",
        "warning",
    ]
    log(f"exec {' '.join(server)}")
    os.execvp(server[0], server)


if __name__ == "__main__":
    main()
