"""System checks of the ``litefs.django`` databases and of ``settings.LITEFS``.

Settings checks (registered by the ``litefs.django`` app, run by every ``manage.py check``):

- ``litefs.E001`` a database's NAME is not at the top of the LiteFS mount
- ``litefs.E003`` an unknown key in a database's OPTIONS
- ``litefs.E004`` an invalid ``OPTIONS["transaction_mode"]``
- ``litefs.E005`` an unknown key in ``settings.LITEFS``
- ``litefs.E006`` an invalid value in ``settings.LITEFS``
- ``litefs.E007`` ``settings.LITEFS["CONFIG"]`` is not a valid litefs-py.yml

Database checks (tag ``database``: run by ``migrate`` and ``check --database``, through the
backend's validation, so also without the app installed):

- ``litefs.E002`` no litefs-py mount answers at the mount
- ``litefs.E010`` this node is not the primary (``migrate`` stops here). Not for the
  read-only ``migrate --check`` and ``migrate --plan`` (the app's ``migrate`` command, which
  says so with ``schema_reads.reading_schema_only``), which work on a replica.

Without ``litefs.django`` in INSTALLED_APPS, the settings checks run with the database checks.

At start-up (``AppConfig.ready``, so under gunicorn, uWSGI, runserver and every management
command), a process on a litefs-py node — its mount answers — stops with
``ImproperlyConfigured`` and the checks' messages when a settings check fails: a node that
would write its database outside the replicated mount, say, must not serve. Elsewhere (a
developer's machine without a mount, where a database outside the mount is plain SQLite) and
under ``manage.py check`` (which reports them itself) nothing is raised. Checks listed in
``SILENCED_SYSTEM_CHECKS`` are skipped.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping
from typing import Any

from django.core import checks
from django.core.exceptions import ImproperlyConfigured

from .._errors import ConfigError, LiteFSError, NotMounted
from .._state import state as read_state
from . import settings as litefs_settings
from .mixin import database_mount
from .schema_reads import only_reading

ENGINE = "litefs.django"

#: sqlite3.connect's keyword arguments, and the two options Django's SQLite backend takes.
KNOWN_OPTIONS = frozenset(
    {
        "timeout",
        "detect_types",
        "isolation_level",
        "check_same_thread",
        "factory",
        "cached_statements",
        "uri",
        "autocommit",
        "transaction_mode",
        "init_command",
    }
)
TRANSACTION_MODES = ("DEFERRED", "IMMEDIATE", "EXCLUSIVE")


def litefs_databases(databases: Iterable[str] | None = None) -> dict[str, Mapping[str, Any]]:
    """The aliases (all, or those in ``databases``) whose ENGINE is ``litefs.django``."""
    from django.conf import settings

    out: dict[str, Mapping[str, Any]] = {}
    for alias, spec in settings.DATABASES.items():
        if databases is not None and alias not in databases:
            continue
        if spec.get("ENGINE") == ENGINE:
            out[alias] = spec
    return out


def _is_memory(name: Any) -> bool:
    name = os.fspath(name) if name else ""
    return not name or name == ":memory:" or "mode=memory" in name


def check_database_settings(alias: str, spec: Mapping[str, Any], mount: str) -> list[Any]:
    errors: list[Any] = []
    name = spec.get("NAME")
    if not _is_memory(name) and database_mount(name, mount) is None:
        errors.append(
            checks.Error(
                f"DATABASES[{alias!r}]['NAME'] ({name}) is not at the top of the LiteFS mount "
                f"{mount}.",
                hint=(
                    f"Put the database directly in {mount} (LiteFS replicates only the files "
                    "at the top of its mount), or set LITEFS['MOUNT'] (or $LITEFS_DIR) to the "
                    "directory the litefs-py mount is at."
                ),
                id="litefs.E001",
            )
        )
    options = spec.get("OPTIONS") or {}
    unknown = sorted(set(options) - KNOWN_OPTIONS)
    if unknown:
        errors.append(
            checks.Error(
                f"DATABASES[{alias!r}]['OPTIONS'] has unknown key(s): {', '.join(unknown)}.",
                hint=f"Known: {', '.join(sorted(KNOWN_OPTIONS))}.",
                id="litefs.E003",
            )
        )
    mode = options.get("transaction_mode")
    if mode is not None and (not isinstance(mode, str) or mode.upper() not in TRANSACTION_MODES):
        errors.append(
            checks.Error(
                f"DATABASES[{alias!r}]['OPTIONS']['transaction_mode'] is {mode!r}.",
                hint=(
                    "Use IMMEDIATE (the default here: writers wait for each other at BEGIN), "
                    "EXCLUSIVE, DEFERRED, or None."
                ),
                id="litefs.E004",
            )
        )
    return errors


def _template_problem(value: Any) -> str | None:
    """Why ``value.format(primary=...)`` would fail for every request, or None."""
    if not isinstance(value, str):
        return None
    try:
        value.format(primary="x")
    except (KeyError, IndexError) as e:
        return f"the placeholder {{{e.args[0]}}} is not known"
    except ValueError as e:
        return f"it is not a valid format string ({e})"
    return None


def check_litefs_settings() -> list[Any]:
    errors: list[Any] = []
    try:
        given = litefs_settings.raw()
    except TypeError as e:
        return [checks.Error(str(e), id="litefs.E006")]
    unknown = sorted(set(given) - set(litefs_settings.DEFAULTS))
    if unknown:
        errors.append(
            checks.Error(
                f"settings.LITEFS has unknown key(s): {', '.join(unknown)}.",
                hint=f"Known: {', '.join(sorted(litefs_settings.DEFAULTS))}.",
                id="litefs.E005",
            )
        )
    s = litefs_settings.get()
    lag = s.max_lag_ms
    if lag is not None and (isinstance(lag, bool) or not isinstance(lag, int) or lag < 0):
        errors.append(
            checks.Error(
                f"settings.LITEFS['MAX_LAG_MS'] is {lag!r}.",
                hint="A number of milliseconds >= 0, or None to not judge replication lag.",
                id="litefs.E006",
            )
        )
    if s.replica_writes not in litefs_settings.REPLICA_WRITE_MODES:
        errors.append(
            checks.Error(
                f"settings.LITEFS['REPLICA_WRITES'] is {s.replica_writes!r}.",
                hint=(
                    "'auto' (the default: 'replay' on Fly.io, else 'refuse'), 'refuse' (503), "
                    "'replay' (Fly.io's fly-replay header), 'redirect' (307 to PRIMARY_URL) or "
                    "None."
                ),
                id="litefs.E006",
            )
        )
    if s.replica_writes == "redirect" and not (
        isinstance(s.primary_url, str) and "{primary}" in s.primary_url
    ):
        errors.append(
            checks.Error(
                "settings.LITEFS['PRIMARY_URL'] must be set, with '{primary}' in it, when "
                "REPLICA_WRITES is 'redirect'.",
                hint="e.g. 'https://{primary}.internal:8000' ({primary}: the primary's hostname).",
                id="litefs.E006",
            )
        )
    if s.replica_writes in ("replay", "auto") and not (
        s.replay_header and isinstance(s.replay_value, str)
    ):
        errors.append(
            checks.Error(
                "settings.LITEFS['REPLAY_HEADER'] and ['REPLAY_VALUE'] must be strings.",
                hint="e.g. 'fly-replay' and 'instance={primary}'.",
                id="litefs.E006",
            )
        )
    for key, value in (("PRIMARY_URL", s.primary_url), ("REPLAY_VALUE", s.replay_value)):
        problem = _template_problem(value)
        if problem:
            errors.append(
                checks.Error(
                    f"settings.LITEFS[{key!r}] is {value!r}: {problem}.",
                    hint=(
                        "'{primary}' is the only placeholder (the primary's hostname); write "
                        "other braces doubled: '{{' and '}}'."
                    ),
                    id="litefs.E006",
                )
            )
    if s.config is not None:
        from .litefs_yml import litefs_py_yml

        try:
            from ..config import validate

            validate(litefs_py_yml())
        except (ConfigError, OSError, TypeError) as e:
            errors.append(
                checks.Error(
                    f"settings.LITEFS['CONFIG']: {e}",
                    hint="It is litefs-py.yml, as a dict or a file path (see `litefs-py config "
                    "check`).",
                    id="litefs.E007",
                )
            )
    return errors


def check_settings(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """The settings checks, for every ``litefs.django`` database."""
    errors = check_litefs_settings()
    mount = litefs_settings.get().mount
    for alias, spec in litefs_databases().items():
        errors += check_database_settings(alias, spec, mount)
    return errors


def _describe(message: Any) -> str:
    text = f"{message.id}: {message.msg}"
    return text + (f"\n    HINT: {message.hint}" if message.hint else "")


def fail_fast() -> None:
    """Raises ImproperlyConfigured on a litefs-py node whose settings checks fail (see above)."""
    from django.conf import settings

    if sys.argv[1:2] == ["check"]:
        return
    silenced = set(getattr(settings, "SILENCED_SYSTEM_CHECKS", ()))
    errors = [e for e in check_settings() if e.is_serious() and e.id not in silenced]
    if not errors:
        return
    mount = litefs_settings.get().mount
    try:
        read_state(mount)
    except LiteFSError:
        return  # no litefs-py node here: `manage.py check` reports them
    raise ImproperlyConfigured(
        f"litefs.django: this process runs on the litefs-py node mounted at {mount}, and its "
        "settings are not valid for it:\n" + "\n".join(_describe(e) for e in errors)
    )


def check_runtime(alias: str, name: Any) -> list[Any]:
    """The mount answers, and this node is the primary (for ``migrate``)."""
    mount = litefs_settings.get().mount
    if database_mount(name, mount) is None:
        return []
    try:
        s = read_state(mount)
    except NotMounted as e:
        return [
            checks.Error(
                f"database {alias!r}: no litefs-py mount answers at {mount}: {e}",
                hint=(
                    "Start `litefs-py run` (or `litefs-py mount`) first, or point "
                    "LITEFS['MOUNT'] / $LITEFS_DIR at the mount."
                ),
                id="litefs.E002",
            )
        ]
    except LiteFSError as e:
        return [checks.Error(f"database {alias!r}: {e}", id="litefs.E002")]
    if s.is_primary or only_reading():
        return []
    if s.primary:
        hint = f"Run it on the primary, {s.primary} (this node, {s.hostname}, is {s.role})."
    else:
        hint = "No primary is known yet (an election?): retry in a moment."
    return [
        checks.Error(
            f"database {alias!r}: this node is not the primary: it cannot migrate or write.",
            hint=hint,
            id="litefs.E010",
        )
    ]
