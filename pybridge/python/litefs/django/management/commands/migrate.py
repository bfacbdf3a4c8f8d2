"""Django's ``migrate``, with its read-only forms allowed on a replica.

``migrate --check`` and ``migrate --plan`` (without ``--prune``, which writes) read the
migration table only, so the ``litefs.E010`` check (not the primary) does not stop them: on a
replica they answer "is the schema up to date?" from the replicated database. Every other
``migrate`` still stops on a replica with ``litefs.E010`` before it changes anything.
"""

from __future__ import annotations

from typing import Any

from django.core.management.commands.migrate import Command as DjangoMigrate

from litefs.django.schema_reads import reading_schema_only


class Command(DjangoMigrate):
    def execute(self, *args: Any, **options: Any) -> Any:
        reads_only = (options.get("check_unapplied") or options.get("plan")) and not options.get(
            "prune"
        )
        if not reads_only:
            return super().execute(*args, **options)
        with reading_schema_only():
            return super().execute(*args, **options)
