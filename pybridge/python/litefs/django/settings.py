"""``settings.LITEFS``: read when needed (never at import), with defaults and validation.

```python
LITEFS = {
    "MOUNT": "/litefs",            # default: $LITEFS_DIR, else /litefs
    "MAX_LAG_MS": 10_000,          # health: a replica further behind is unavailable (None: off)
    "REPLICA_WRITES": "auto",      # middleware: "auto", "refuse", "replay", "redirect", None
    "REPLAY_HEADER": "fly-replay",
    "REPLAY_VALUE": "instance={primary}",
    "PRIMARY_URL": None,           # "redirect": e.g. "https://{primary}.internal:8000"
    "CONFIG": None,                # litefs-py.yml as a dict, or a path (python -m litefs config)
}
```
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .._state import mount_path

DEFAULTS: dict[str, Any] = {
    "MOUNT": None,
    "MAX_LAG_MS": 10_000,
    "REPLICA_WRITES": "auto",
    "REPLAY_HEADER": "fly-replay",
    "REPLAY_VALUE": "instance={primary}",
    "PRIMARY_URL": None,
    "CONFIG": None,
}
REPLICA_WRITE_MODES = ("auto", "refuse", "replay", "redirect", None)


@dataclass(frozen=True, slots=True)
class LiteFSSettings:
    mount: str
    max_lag_ms: int | None
    replica_writes: str | None
    replay_header: str
    replay_value: str
    primary_url: str | None
    config: Mapping[str, Any] | str | None


def raw() -> Mapping[str, Any]:
    """``settings.LITEFS`` as given (an empty mapping when unset)."""
    from django.conf import settings

    value = getattr(settings, "LITEFS", None)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(f"settings.LITEFS must be a dict, not {type(value).__name__}")
    return value


def get() -> LiteFSSettings:
    """The effective settings (defaults filled in). Read at each call: cheap, and
    ``override_settings`` in tests works."""
    given = raw()
    merged = {**DEFAULTS, **given}
    mount = merged["MOUNT"]
    return LiteFSSettings(
        mount=os.fspath(mount) if mount else mount_path(None),
        max_lag_ms=merged["MAX_LAG_MS"],
        replica_writes=merged["REPLICA_WRITES"],
        replay_header=merged["REPLAY_HEADER"],
        replay_value=merged["REPLAY_VALUE"],
        primary_url=merged["PRIMARY_URL"],
        config=merged["CONFIG"],
    )
