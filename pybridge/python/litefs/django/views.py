"""Health endpoints, as JSON. Wire them in urls.py::

    from litefs.django import views as litefs_views

    urlpatterns = [
        path("litefs/health", litefs_views.health),        # 200 healthy / 503 + reasons
        path("litefs/ready", litefs_views.readiness),      # the same verdict, short body
        path("litefs/live", litefs_views.liveness),        # 503 only if the mount is gone
        path("litefs/primary", litefs_views.primary),      # 200 only on the primary
    ]

*Healthy* means: the mount answers, a primary is known (this node or another), LiteFS is
mounted and serving (when litefs-py runs it), and a replica's lag is within
``LITEFS["MAX_LAG_MS"]``. Liveness fails only when the mount is gone (restarting the process can
help); a replica that lags or a cluster that elects is not dead.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

from .._errors import LiteFSError, NotMounted
from .._state import State
from .._state import state as read_state
from . import settings as litefs_settings


def _state() -> tuple[State | None, list[str], str]:
    s = litefs_settings.get()
    try:
        st = read_state(s.mount)
    except NotMounted as e:
        return None, [f"not mounted: {e}"], s.mount
    except LiteFSError as e:
        return None, [str(e)], s.mount
    return st, list(st.problems(s.max_lag_ms)), s.mount


def _summary(st: State) -> dict[str, Any]:
    return {
        "role": st.role,
        "primary": st.primary,
        "is_primary": st.is_primary,
        "hostname": st.hostname,
        "node_id": st.node_id,
        "term": st.term,
        "leader_id": st.leader_id,
        "quorum_ok": st.quorum_ok,
        "lag_ms": st.lag_ms,
        "litefs_mounted": st.litefs_mounted,
        "litefs_serving": st.litefs_serving,
        "version": st.version,
    }


def _response(ok: bool, body: dict[str, Any]) -> JsonResponse:
    body = {"status": "ok" if ok else "unavailable", **body}
    return JsonResponse(body, status=200 if ok else 503)


@never_cache
@require_safe
def health(request: HttpRequest) -> JsonResponse:
    """200 when healthy, else 503; the body has the reasons and the node's view."""
    st, reasons, mount = _state()
    body: dict[str, Any] = {"reasons": reasons, "mount": mount}
    if st is not None:
        body.update(_summary(st))
    return _response(not reasons, body)


@never_cache
@require_safe
def readiness(request: HttpRequest) -> JsonResponse:
    """Ready to take traffic: the same verdict as :func:`health`, a short body."""
    st, reasons, _ = _state()
    body: dict[str, Any] = {"reasons": reasons}
    if st is not None:
        body["role"] = st.role
    return _response(not reasons, body)


@never_cache
@require_safe
def liveness(request: HttpRequest) -> JsonResponse:
    """503 only when no litefs-py mount answers (the daemon is gone)."""
    st, reasons, _ = _state()
    if st is None:
        return _response(False, {"reasons": reasons})
    return _response(True, {"reasons": [], "role": st.role})


@never_cache
@require_safe
def primary(request: HttpRequest) -> JsonResponse:
    """200 on the primary only (for a load balancer that sends writes there), else 503 with
    the primary's hostname."""
    st, reasons, _ = _state()
    if st is None:
        return _response(False, {"reasons": reasons})
    if st.is_primary:
        return _response(True, {"reasons": [], "role": st.role, "primary": st.primary})
    why = f"this node is {st.role}" + (f"; the primary is {st.primary}" if st.primary else "")
    return _response(False, {"reasons": [why], "role": st.role, "primary": st.primary})
