"""litefs: high availability for SQLite apps on LiteFS, without Consul.

The node's view of the cluster, from the litefs-py mount's virtual files::

    import litefs

    litefs.is_primary()          # True on the one node where writes succeed
    s = litefs.state()           # role, primary, lag_ms, term, healthy, ... (immutable)
    litefs.wait_for_primary(30)  # at start-up: until some node is primary
    litefs.wait_replicated()     # durability: replicated, after a commit outside the proxy

The mount is the ``mount`` argument, else ``$LITEFS_DIR``, else ``/litefs``. Django: set
``ENGINE`` to ``"litefs.django"`` (see :mod:`litefs.django`). litefs-py.yml validation and the
generated LiteFS config: :mod:`litefs.config`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import _native, config
from ._errors import ConfigError, LiteFSError, NoPrimary, NotMounted
from ._replication import NotReplicated, Replicated, wait_replicated
from ._state import (
    DEFAULT_MOUNT,
    Role,
    State,
    is_primary,
    mount_path,
    primary,
    require_primary,
    state,
    wait_for_primary,
)

if TYPE_CHECKING:
    from ._errors import NotPrimary

__version__: str = _native.VERSION

__all__ = [
    "DEFAULT_MOUNT",
    "ConfigError",
    "LiteFSError",
    "NoPrimary",
    "NotMounted",
    "NotPrimary",
    "NotReplicated",
    "Replicated",
    "Role",
    "State",
    "__version__",
    "config",
    "is_primary",
    "mount_path",
    "primary",
    "require_primary",
    "state",
    "wait_for_primary",
    "wait_replicated",
]


def __getattr__(name: str) -> Any:
    # NotPrimary is built on first use (it subclasses django.db.DatabaseError when Django is
    # installed, and importing Django costs more than `import litefs` should): see _errors.py.
    if name == "NotPrimary":
        from . import _errors

        return _errors.NotPrimary
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
