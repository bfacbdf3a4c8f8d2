"""The behaviour of the ``litefs.django`` backend, as a mixin over Django's SQLite backend.

How a write on a replica is stopped, in three layers (none of them parses SQL):

1. **The state, asked before a statement that may write.** SQLite itself says which statements
   write: an authorizer callback sees every statement as SQLite prepares it, with its actions
   (``SQLITE_INSERT``, ``SQLITE_CREATE_TABLE``...). The backend remembers, per SQL text, whether
   it writes; before such a statement (and before any statement it has not seen yet) it reads
   ``.role`` (a few microseconds, in memory in the shim). Reads never pay for that read.
2. **SQLite refuses.** On a replica the connection runs with ``PRAGMA query_only`` on, and the
   authorizer denies write actions: SQLite raises ``SQLITE_READONLY`` or ``SQLITE_AUTH`` for
   anything that would write, including ``executescript`` and ``PRAGMA user_version = ...``.
3. **LiteFS refuses.** Under ``litefs-py run`` a replica's LiteFS rejects writes itself (I/O or
   read-only errors): those errors are checked against the state too.

Any of these becomes :class:`litefs.NotPrimary` (a ``django.db.DatabaseError``) naming the
primary, raised from the SQLite error. Within a transaction that began ``BEGIN IMMEDIATE`` on
the primary, the state is not asked again per statement: the write lock is held, and if the node
lost the primary role meanwhile, LiteFS refuses the commit.

On the primary, transactions begin ``IMMEDIATE`` (SQLite takes the write lock at ``BEGIN``, so
a second writer waits for it, up to the busy timeout, instead of failing at its first write or
at commit with ``database is locked``) and the database is switched to WAL. Both are defaults:
``OPTIONS["transaction_mode"]`` and an ``OPTIONS["init_command"]`` that sets ``journal_mode``
win. On a replica, transactions begin ``DEFERRED`` (a read transaction) whatever the option.

Databases outside the LiteFS mount (in-memory ones, e.g. Django's test databases by default)
are plain SQLite: nothing is checked for them.
"""

from __future__ import annotations

import os
import sqlite3
import weakref
from typing import TYPE_CHECKING, Any

from django.db.backends.sqlite3.base import SQLiteCursorWrapper
from django.db.utils import DatabaseError as DjangoDatabaseError

from .._errors import LiteFSError, _not_primary_class
from .._state import read_role
from .._state import state as read_state
from . import settings as litefs_settings
from .schema_reads import only_reading

if TYPE_CHECKING:
    from collections.abc import Callable

#: Authorizer actions that write. The TEMP variants too: on a replica ``query_only`` refuses
#: writes to the temp schema as well, so they are refused (as NotPrimary) like any other.
WRITE_ACTIONS = frozenset(
    {
        sqlite3.SQLITE_CREATE_TEMP_INDEX,
        sqlite3.SQLITE_CREATE_TEMP_TABLE,
        sqlite3.SQLITE_CREATE_TEMP_TRIGGER,
        sqlite3.SQLITE_CREATE_TEMP_VIEW,
        sqlite3.SQLITE_DROP_TEMP_INDEX,
        sqlite3.SQLITE_DROP_TEMP_TABLE,
        sqlite3.SQLITE_DROP_TEMP_TRIGGER,
        sqlite3.SQLITE_DROP_TEMP_VIEW,
        sqlite3.SQLITE_INSERT,
        sqlite3.SQLITE_UPDATE,
        sqlite3.SQLITE_DELETE,
        sqlite3.SQLITE_CREATE_INDEX,
        sqlite3.SQLITE_CREATE_TABLE,
        sqlite3.SQLITE_CREATE_TRIGGER,
        sqlite3.SQLITE_CREATE_VIEW,
        sqlite3.SQLITE_CREATE_VTABLE,
        sqlite3.SQLITE_DROP_INDEX,
        sqlite3.SQLITE_DROP_TABLE,
        sqlite3.SQLITE_DROP_TRIGGER,
        sqlite3.SQLITE_DROP_VIEW,
        sqlite3.SQLITE_DROP_VTABLE,
        sqlite3.SQLITE_ALTER_TABLE,
        sqlite3.SQLITE_REINDEX,
        sqlite3.SQLITE_ANALYZE,
    }
)
#: PRAGMAs that take a value without writing the database: settings of the connection, and
#: the introspection ones whose argument is a table or index name. Any other PRAGMA given a
#: value (``user_version = 5``, ``journal_mode = WAL``, ``schema_version = ...``) counts as a
#: write; the authorizer sees it only as ``SQLITE_PRAGMA``.
CONNECTION_PRAGMAS = frozenset(
    {
        "analysis_limit",
        "automatic_index",
        "busy_timeout",
        "cache_size",
        "cache_spill",
        "case_sensitive_like",
        "cell_size_check",
        "checkpoint_fullfsync",
        "defer_foreign_keys",
        "foreign_key_check",
        "foreign_key_list",
        "foreign_keys",
        "fullfsync",
        "hard_heap_limit",
        "ignore_check_constraints",
        "index_info",
        "index_list",
        "index_xinfo",
        "integrity_check",
        "legacy_alter_table",
        "mmap_size",
        "query_only",
        "quick_check",
        "read_uncommitted",
        "recursive_triggers",
        "reverse_unordered_selects",
        "secure_delete",
        "soft_heap_limit",
        "synchronous",
        "table_info",
        "table_list",
        "table_xinfo",
        "temp_store",
        "threads",
        "trusted_schema",
        "writable_schema",
    }
)
_SQLITE_PRAGMA = sqlite3.SQLITE_PRAGMA
_SQLITE_OK = sqlite3.SQLITE_OK
_SQLITE_DENY = sqlite3.SQLITE_DENY
# Result codes (sqlite3 names them from Python 3.11 on, with ``sqlite_errorcode``; on 3.10 the
# error message is matched instead).
_READONLY = 8
_IOERR = 10
_AUTH = 23
#: How many distinct statements the write/read classification remembers per connection.
_CLASSIFIED_MAX = 4096


def database_mount(name: Any, mount: str) -> str | None:
    """``mount`` if the database file ``name`` is at the top of it (where LiteFS replicates
    databases), else ``None`` (in-memory, elsewhere, or a URI)."""
    if not name:
        return None
    name = os.fspath(name)
    if name == ":memory:" or name.startswith("file:") or "mode=memory" in name:
        return None
    parent = os.path.dirname(os.path.abspath(name))
    if os.path.realpath(parent) == os.path.realpath(mount):
        return mount
    return None


def _is_memory(name: Any) -> bool:
    name = os.fspath(name) if name else ""
    return not name or name == ":memory:" or "mode=memory" in name


class LiteFSCursor(SQLiteCursorWrapper):
    """The SQLite cursor of the backend: asks the state before statements that may write and
    turns SQLite's refusals into :class:`litefs.NotPrimary`. One class for all connections; the
    connection it belongs to is ``self.litefs`` (``None`` for a database outside the mount).
    Only the ``execute*`` methods map errors: SQLite makes every change of a statement at its
    first step, which ``execute`` takes (``RETURNING`` rows are buffered), so a write refusal
    cannot surface in a ``fetch*``."""

    litefs: LiteFSMixin | None = None

    def execute(self, query: str, params: Any = None) -> Any:
        db = self.litefs
        if db is None:
            return super().execute(query, params)
        db._litefs_before(query)
        try:
            return super().execute(query, params)
        except sqlite3.Error as e:
            if db._litefs_after_error(e):
                return super().execute(query, params)
            raise
        finally:
            db._litefs_after(query)

    def executemany(self, query: str, param_list: Any) -> Any:
        db = self.litefs
        if db is None:
            return super().executemany(query, param_list)
        param_list = list(param_list)  # a retry must see the same parameters
        db._litefs_before(query)
        try:
            return super().executemany(query, param_list)
        except sqlite3.Error as e:
            if db._litefs_after_error(e):
                return super().executemany(query, param_list)
            raise
        finally:
            db._litefs_after(query)

    def executescript(self, sql_script: str) -> Any:
        db = self.litefs
        if db is None:
            return super().executescript(sql_script)
        # A script is prepared statement by statement as it runs: not classified, not retried.
        db._litefs_before(None)
        try:
            return super().executescript(sql_script)
        except sqlite3.Error as e:
            db._litefs_after_error(e, retry=False)
            raise
        finally:
            db._litefs_current = None


def _authorizer(ref: weakref.ReferenceType[LiteFSMixin]) -> Callable[..., int]:
    """The connection's authorizer. Holds the wrapper weakly (no cycle through sqlite3)."""

    def authorize(
        action: int, arg1: str | None, arg2: str | None, dbname: str | None, source: str | None
    ) -> int:
        db = ref()
        if db is None:
            return _SQLITE_OK
        current = db._litefs_current
        if current is not None:
            db._litefs_seen = True  # prepared now: what it does is known
        if action not in WRITE_ACTIONS and (
            action != _SQLITE_PRAGMA or arg2 is None or (arg1 or "").lower() in CONNECTION_PRAGMAS
        ):
            return _SQLITE_OK
        db._litefs_saw_write = True
        if current is not None:
            db._litefs_classified[current] = True
        if db._litefs_primary:
            return _SQLITE_OK
        db._litefs_denied = True
        return _SQLITE_DENY

    return authorize


class LiteFSMixin:
    """Mix into a ``django.db.backends.sqlite3.base.DatabaseWrapper`` subclass (first)."""

    # Set by the sqlite3 wrapper (declared for type checkers).
    settings_dict: dict[str, Any]
    alias: str
    cursor: Callable[..., Any]
    connection: Any
    transaction_mode: str | None
    init_commands: list[str]

    #: The mount this database lives in, or None (not managed: plain SQLite).
    _litefs_mount: str | None = None
    #: What the last state read said (True also for unmanaged databases).
    _litefs_primary: bool = True
    #: Whether the SQLite connection has ``query_only`` on.
    _litefs_query_only: bool = False
    #: The transaction mode to use on the primary (user option, else IMMEDIATE).
    _litefs_primary_mode: str | None = "IMMEDIATE"
    #: The current transaction began as a write transaction on the primary.
    _litefs_write_txn: bool = False
    #: Switch the database to WAL at connect (no ``journal_mode`` in the user's init_command).
    _litefs_wal: bool = True
    #: The SQL text being run (set around execute for the authorizer), its classification,
    #: and whether the authorizer denied something in it.
    _litefs_current: str | None = None
    _litefs_classified: dict[str, bool]
    _litefs_denied: bool = False
    #: Whether the authorizer was called for the current statement (it is not when sqlite3
    #: reuses a statement it prepared before), and whether it saw a write action.
    _litefs_seen: bool = False
    _litefs_saw_write: bool = False
    #: A statement of the current transaction wrote (or is known to write).
    _litefs_txn_wrote: bool = False

    # --- connection set-up -------------------------------------------------------------------

    def get_connection_params(self) -> dict[str, Any]:
        options = self.settings_dict.get("OPTIONS") or {}
        params: dict[str, Any] = super().get_connection_params()  # type: ignore[misc]
        if "transaction_mode" not in options:
            self.transaction_mode = "IMMEDIATE"
        self._litefs_primary_mode = self.transaction_mode
        init = options.get("init_command") or ""
        self._litefs_wal = "journal_mode" not in init.lower() and not _is_memory(
            self.settings_dict.get("NAME")
        )
        self._litefs_mount = database_mount(
            self.settings_dict.get("NAME"), litefs_settings.get().mount
        )
        return params

    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        conn = super().get_new_connection(conn_params)  # type: ignore[misc]
        # What each statement does depends only on its text: the classification outlives the
        # connection (Django reconnects per request by default), one per wrapper (per thread).
        if "_litefs_classified" not in self.__dict__:
            self._litefs_classified = {}
        self._litefs_query_only = False
        self._litefs_write_txn = self._litefs_txn_wrote = False
        if self._litefs_mount is None:
            self._litefs_primary = True
            if self._litefs_wal:
                conn.execute("PRAGMA journal_mode = WAL")
            return conn
        try:
            primary = self._litefs_read_role()
            self._litefs_apply(conn, primary)
            # journal_mode is stored in the database: set on the primary, replicated by LiteFS.
            if primary and self._litefs_wal:
                conn.execute("PRAGMA journal_mode = WAL")
            conn.set_authorizer(_authorizer(weakref.ref(self)))
        except BaseException:
            conn.close()
            raise
        return conn

    def create_cursor(self, name: str | None = None) -> Any:
        cursor = self.connection.cursor(factory=LiteFSCursor)
        if self._litefs_mount is not None:
            cursor.litefs = self
        return cursor

    # --- transactions ------------------------------------------------------------------------

    def _start_transaction_under_autocommit(self) -> None:
        if self._litefs_mount is None:
            mode = self.transaction_mode
            self._litefs_write_txn = mode in ("IMMEDIATE", "EXCLUSIVE")
        else:
            primary = self._litefs_refresh()
            # On a replica only a read transaction can begin (and one that would take the write
            # lock fails under query_only).
            mode = self._litefs_primary_mode if primary else None
            self._litefs_write_txn = primary and mode in ("IMMEDIATE", "EXCLUSIVE")
        self._litefs_txn_wrote = False
        self.cursor().execute(f"BEGIN {mode}" if mode else "BEGIN")
        if self._litefs_write_txn and self._litefs_mount is not None:
            self._litefs_recheck_after_lock()

    def _litefs_recheck_after_lock(self) -> None:
        """The write gate, second look: the write lock is held now, so the role is asked once
        more. A process that passed the first look and then stalled (SIGSTOP, a frozen host)
        while another node became primary gives the lock back instead of writing. Over LiteFS
        the data path does not cross the shim (symlink mode), so this is the gate the shim
        keeps in passthrough mode (docs/architecture.md, "Data-path modes")."""
        if self._litefs_read_role():
            return
        self._litefs_write_txn = False
        conn = self.connection
        if conn is not None and conn.in_transaction:
            conn.execute("ROLLBACK")
        if conn is not None:
            self._litefs_apply(conn, False)
        raise self._litefs_not_primary(None)

    def _commit(self) -> None:
        wrote = self._litefs_write_txn or self._litefs_txn_wrote
        self._litefs_write_txn = self._litefs_txn_wrote = False
        try:
            super()._commit()  # type: ignore[misc]
        except (sqlite3.Error, DjangoDatabaseError) as e:
            # LiteFS refuses the commit of a node that lost the primary role mid-transaction.
            # Django's _commit wraps the sqlite3 error (wrap_database_errors): the original is
            # the cause.
            cause = e if isinstance(e, sqlite3.Error) else e.__cause__
            if self._litefs_mount is not None and isinstance(cause, sqlite3.Error):
                self._litefs_after_error(cause, retry=False, write=wrote)
            raise

    def _rollback(self) -> None:
        self._litefs_write_txn = self._litefs_txn_wrote = False
        super()._rollback()  # type: ignore[misc]

    def prepare_database(self) -> None:
        """Called by ``migrate`` before it changes anything (also under ``--skip-checks``)."""
        super().prepare_database()  # type: ignore[misc]
        # Not necessarily connected yet: where the database is, from the settings as they are.
        mount = database_mount(self.settings_dict.get("NAME"), litefs_settings.get().mount)
        if mount is not None and not only_reading():  # migrate --check/--plan: reads only
            s = read_state(mount)
            if not s.is_primary:
                raise _not_primary_class()(
                    f"database {self.alias!r}: migrations run on the primary only; this node "
                    f"({s.hostname}) is {s.role}"
                    + (f", the primary is {s.primary}" if s.primary else ", no primary known"),
                    s.primary,
                    hostname=s.hostname,
                )

    # --- the state ---------------------------------------------------------------------------

    def _litefs_read_role(self) -> bool:
        assert self._litefs_mount is not None
        primary = read_role(self._litefs_mount) == "primary"
        self._litefs_primary = primary
        return primary

    def _litefs_apply(self, conn: Any, primary: bool) -> None:
        """Turns ``query_only`` on for a replica, off for the primary (only when it changes)."""
        if self._litefs_query_only == (not primary):
            return
        current, self._litefs_current = self._litefs_current, None  # not the user's statement
        try:
            conn.execute(f"PRAGMA query_only = {0 if primary else 1}")
        finally:
            self._litefs_current = current
        self._litefs_query_only = not primary

    def _litefs_refresh(self) -> bool:
        """Reads the role and brings the connection in line with it."""
        primary = self._litefs_read_role()
        if self.connection is not None:
            self._litefs_apply(self.connection, primary)
        return primary

    def _litefs_before(self, query: str | None) -> None:
        """Before a statement: ask the state unless the statement is known to only read, or
        this transaction already holds the write lock on the primary."""
        self._litefs_denied = False
        self._litefs_seen = False
        self._litefs_saw_write = False
        if self._litefs_write_txn and self.connection.in_transaction:
            self._litefs_current = query
            return
        if query is None:
            self._litefs_refresh()
            return
        known = self._litefs_classified.get(query)
        if known is None:
            if len(self._litefs_classified) >= _CLASSIFIED_MAX:
                self._litefs_classified.clear()
                # sqlite3 reuses statements it prepared before without asking the authorizer
                # again: setting it anew expires them, so each is classified on its next run.
                self.connection.set_authorizer(_authorizer(weakref.ref(self)))
            self._litefs_refresh()
        elif known:
            self._litefs_refresh()
            if not self._litefs_primary:
                raise self._litefs_not_primary(None)
        self._litefs_current = query

    def _litefs_after(self, query: str | None) -> None:
        """After a statement ran (or failed): it only reads if the authorizer saw it and no
        write in it. Not seen (a statement sqlite3 had prepared before): it stays unknown."""
        self._litefs_current = None
        if query is not None and self._litefs_seen and not self._litefs_saw_write:
            self._litefs_classified.setdefault(query, False)
        if self._litefs_mount is not None and (
            self._litefs_saw_write or (query is not None and self._litefs_classified.get(query))
        ):
            conn = self.connection
            if conn is not None and conn.in_transaction:
                self._litefs_txn_wrote = True

    def _litefs_after_error(
        self, error: sqlite3.Error, retry: bool = True, write: bool = False
    ) -> bool:
        """After SQLite raised ``error``: raises :class:`litefs.NotPrimary` if this node is not
        the primary and the error is a refusal to write (the statement writes: the authorizer
        saw a write in it, it is known to write, or it ran in a write transaction; ``write``:
        the caller knows, e.g. a COMMIT); else ``error`` stands. Returns True if the statement
        should run once more (the node became primary since ``query_only`` was turned on, so
        SQLite refused before doing anything)."""
        code = getattr(error, "sqlite_errorcode", None)
        base = code & 0xFF if isinstance(code, int) else None
        message = str(error).lower()
        denied = self._litefs_denied and (base == _AUTH or "not authorized" in message)
        readonly = base == _READONLY or "readonly database" in message
        ioerr = base == _IOERR or "disk i/o error" in message
        if not (denied or readonly or ioerr):
            return False
        current = self._litefs_current
        wrote = (
            write
            or denied
            or self._litefs_saw_write
            or self._litefs_write_txn
            or (current is not None and self._litefs_classified.get(current) is True)
        )
        if not wrote:
            return False  # a read that failed (e.g. an I/O error): not a refused write
        was_query_only = self._litefs_query_only
        try:
            primary = self._litefs_refresh()
        except LiteFSError as e:
            raise e from error
        if not primary:
            raise self._litefs_not_primary(error) from error
        in_txn = self.connection is not None and self.connection.in_transaction
        return retry and (readonly or denied) and was_query_only and not in_txn

    def _litefs_not_primary(self, error: BaseException | None) -> Exception:
        assert self._litefs_mount is not None
        try:
            s = read_state(self._litefs_mount)
            primary, hostname, role = s.primary, s.hostname, s.role
        except LiteFSError:
            primary, hostname, role = None, None, "unknown"
        where = f"this node ({hostname})" if hostname else "this node"
        to = f"writes go to the primary, {primary}" if primary else "no primary is known yet"
        message = f"database {self.alias!r}: {where} is {role}, not the primary: {to}"
        return _not_primary_class()(message, primary, hostname=hostname)
