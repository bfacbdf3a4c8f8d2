"""A django-health-check (4.x) check: ``litefs.django.healthchecks.LiteFS``.

django-health-check is optional: this module is the only one that imports it. Use it as::

    path("ht/", HealthCheckView.as_view(checks=[
        "health_check.checks.Database",
        "litefs.django.healthchecks.LiteFS",
        ("litefs.django.healthchecks.LiteFS", {"max_lag_ms": 2000}),
    ]))
"""

from __future__ import annotations

import dataclasses

from health_check.base import HealthCheck
from health_check.exceptions import ServiceUnavailable

from .._errors import LiteFSError
from .._state import state as read_state
from . import settings as litefs_settings


@dataclasses.dataclass
class LiteFS(HealthCheck):
    """Unavailable when the mount does not answer, no primary is known, LiteFS is down, or
    this replica lags more than ``max_lag_ms`` (default ``LITEFS["MAX_LAG_MS"]``)."""

    mount: str | None = None
    max_lag_ms: int | None = None

    def run(self) -> None:
        s = litefs_settings.get()
        mount = self.mount or s.mount
        try:
            st = read_state(mount)
        except LiteFSError as e:
            raise ServiceUnavailable(f"LiteFS mount {mount}: {e}") from e
        problems = st.problems(self.max_lag_ms if self.max_lag_ms is not None else s.max_lag_ms)
        if problems:
            raise ServiceUnavailable("; ".join(problems))
