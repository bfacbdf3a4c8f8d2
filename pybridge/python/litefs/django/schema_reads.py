"""Whether the running command only reads the schema (``migrate --check``/``--plan``): then
neither the ``litefs.E010`` check nor the backend's ``prepare_database`` stops it on a replica.
Set by the app's ``migrate`` command."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

_READ_ONLY: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "litefs_django_read_only", default=False
)


@contextlib.contextmanager
def reading_schema_only() -> Iterator[None]:
    """Within: the command writes nothing, a replica may run it."""
    token = _READ_ONLY.set(True)
    try:
        yield
    finally:
        _READ_ONLY.reset(token)


def only_reading() -> bool:
    return _READ_ONLY.get()
