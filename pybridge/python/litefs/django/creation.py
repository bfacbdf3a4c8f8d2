"""Test databases of the ``litefs.django`` backend: WAL-aware copies of Django's SQLite ones.

The backend runs databases in WAL mode, where the database file alone can lack the latest
transactions (they are in ``-wal`` until a checkpoint). Django's SQLite backend copies the file
to clone a test database for parallel runs and removes only the file when it destroys one; here
the WAL is checkpointed into the file before the copy, and ``-wal``/``-shm``/``-journal`` go
with the file (a stale ``-wal`` next to a new database with the same name would be replayed
into it).
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from django.db.backends.sqlite3.creation import DatabaseCreation as SQLiteDatabaseCreation

SIDECARS = ("-wal", "-shm", "-journal")


def remove_sidecars(name: Any) -> None:
    """Removes SQLite's ``-wal``, ``-shm`` and ``-journal`` files of database ``name``."""
    for suffix in SIDECARS:
        with contextlib.suppress(FileNotFoundError):
            os.remove(f"{os.fspath(name)}{suffix}")


class DatabaseCreation(SQLiteDatabaseCreation):
    def _create_test_db(self, verbosity: int, autoclobber: bool, keepdb: bool = False) -> Any:
        name = super()._create_test_db(verbosity, autoclobber, keepdb)
        if not keepdb and not self.is_in_memory_db(name) and not os.path.exists(name):
            remove_sidecars(name)
        return name

    def _clone_test_db(self, suffix: Any, verbosity: int, keepdb: bool = False) -> None:
        source = self.connection.settings_dict["NAME"]
        if not self.is_in_memory_db(source):
            target = self.get_test_db_clone_settings(suffix)["NAME"]
            if not (keepdb and os.access(target, os.F_OK)):
                # Fold the WAL into the file that is about to be copied.
                with self.connection.cursor() as cursor:
                    cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                remove_sidecars(target)
        super()._clone_test_db(suffix, verbosity, keepdb)

    def _destroy_test_db(self, test_database_name: Any, verbosity: int) -> None:
        super()._destroy_test_db(test_database_name, verbosity)
        if test_database_name and not self.is_in_memory_db(test_database_name):
            remove_sidecars(test_database_name)
