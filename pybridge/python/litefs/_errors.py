"""The exceptions of the ``litefs`` package.

Every error the package raises is a :class:`LiteFSError`; an ``OSError`` from reading the mount
never escapes bare (it is the ``__cause__`` where there is one).

:class:`NotPrimary` also subclasses ``django.db.DatabaseError`` whenever Django can be imported,
so that ``except DatabaseError`` in Django code catches a write refused on a replica, and
``except litefs.NotPrimary`` catches it too, wherever it was raised (the Django backend or
:func:`litefs.require_primary`). The class is built on first access (PEP 562 module
``__getattr__``): importing ``django.db`` costs about 50 ms, which a script that only asks
``litefs.is_primary()`` should not pay. It is built once (under a lock), so there is exactly
one ``NotPrimary`` class per process, and it pickles by name like any other class.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

__all__ = ["ConfigError", "LiteFSError", "NoPrimary", "NotMounted", "NotPrimary"]


class LiteFSError(Exception):
    """Base class of every error raised by ``litefs``.

    ``errno`` is the OS error number when the error came from reading the mount, else ``None``.
    """

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.errno))


class NotMounted(LiteFSError):
    """No litefs-py mount answers at the path: the directory is missing, is a plain directory
    (no ``.role``), or its daemon exited (ENOTCONN)."""


class NoPrimary(LiteFSError, TimeoutError):
    """:func:`litefs.wait_for_primary` timed out: no node is known to be primary."""


class ConfigError(LiteFSError, ValueError):
    """litefs-py.yml (or ``settings.LITEFS``) is invalid. The message names the key at fault;
    ``key`` holds it when it is known (e.g. ``"cluster.peers"``)."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.key))


class _NotPrimaryBase(LiteFSError):
    """The behaviour of :class:`NotPrimary`; its bases are completed when it is built."""

    def __init__(
        self,
        message: str | None = None,
        primary: str | None = None,
        *,
        hostname: str | None = None,
    ) -> None:
        if message is None:
            here = f" ({hostname})" if hostname else ""
            if primary:
                message = f"this node{here} is not the primary: writes go to {primary}"
            else:
                message = f"this node{here} is not the primary, and no primary is known yet"
        super().__init__(message)
        #: The primary's hostname, as this node knows it (``None``: no primary known).
        self.primary = primary
        #: This node's hostname, when known.
        self.hostname = hostname

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_not_primary, (str(self), self.primary, self.hostname))


def _rebuild_not_primary(
    message: str, primary: str | None, hostname: str | None
) -> _NotPrimaryBase:
    return _not_primary_class()(message, primary, hostname=hostname)


_lock = threading.Lock()


def _not_primary_class() -> type[_NotPrimaryBase]:
    """The one ``NotPrimary`` class of this process, built on first use."""
    cls: type[_NotPrimaryBase] | None = globals().get("NotPrimary")
    if cls is None:
        with _lock:
            cls = globals().get("NotPrimary")
            if cls is None:
                cls = _build_not_primary()
                globals()["NotPrimary"] = cls
    return cls


def _build_not_primary() -> type[_NotPrimaryBase]:
    bases: tuple[type, ...] = (_NotPrimaryBase,)
    try:
        from django.db.utils import DatabaseError
    except ImportError:
        pass
    else:
        bases = (_NotPrimaryBase, DatabaseError)
    cls = type(
        "NotPrimary",
        bases,
        {
            "__module__": __name__,
            "__qualname__": "NotPrimary",
            "__doc__": (
                "A write was refused because this node is not the primary. ``primary`` is the "
                "primary's hostname (``None`` while none is known). Also a "
                "``django.db.DatabaseError`` when Django is installed."
            ),
        },
    )
    return cls


if TYPE_CHECKING:

    class NotPrimary(_NotPrimaryBase):
        """A write was refused because this node is not the primary."""

else:

    def __getattr__(name: str) -> Any:
        if name == "NotPrimary":
            return _not_primary_class()
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
