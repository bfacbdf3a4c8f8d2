"""``manage.py litefs_status [--json]``: this node's view of the cluster and the databases."""

from __future__ import annotations

import json
from typing import Any, ClassVar

from django.core.management.base import BaseCommand, CommandError, CommandParser

from litefs._errors import LiteFSError
from litefs._state import state as read_state
from litefs.django import settings as litefs_settings
from litefs.django.checks import litefs_databases
from litefs.django.mixin import database_mount


class Command(BaseCommand):
    help = "Shows this node's LiteFS role, the primary, replication lag, and the databases."
    requires_system_checks: ClassVar[list[str]] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="Print JSON.")

    def handle(self, *args: Any, **options: Any) -> None:
        s = litefs_settings.get()
        try:
            st = read_state(s.mount)
        except LiteFSError as e:
            raise CommandError(str(e)) from e
        databases = {
            alias: {
                "name": str(spec.get("NAME")),
                "in_mount": database_mount(spec.get("NAME"), s.mount) is not None,
            }
            for alias, spec in litefs_databases().items()
        }
        problems = list(st.problems(s.max_lag_ms))
        if options["json"]:
            out = {
                "mount": s.mount,
                "healthy": not problems,
                "problems": problems,
                "databases": databases,
                "health": dict(st.raw),
            }
            self.stdout.write(json.dumps(out, indent=2))
            return
        rows = [
            ("mount", s.mount),
            ("role", st.role),
            ("primary", st.primary or "(none known)"),
            ("this node", f"{st.hostname} (id {st.node_id})"),
            ("raft term", f"{st.term}, leader {st.leader_id}"),
            ("lag", "-" if st.lag_ms is None else f"{st.lag_ms} ms"),
            ("healthy", "yes" if not problems else "no: " + "; ".join(problems)),
        ]
        for alias, db in databases.items():
            where = "" if db["in_mount"] else "  (NOT in the mount)"
            rows.append((f"database {alias}", f"{db['name']}{where}"))
        width = max(len(k) for k, _ in rows)
        for key, value in rows:
            self.stdout.write(f"{key:<{width}}  {value}")
