"""``litefs.django.middleware.ReplicaWriteMiddleware``: sends writes to the primary.

On a replica, a request with an unsafe method (anything but GET, HEAD, OPTIONS, TRACE) is not
run. Depending on ``LITEFS["REPLICA_WRITES"]``:

``"replay"`` (default)
    409 with the header ``LITEFS["REPLAY_HEADER"]: LITEFS["REPLAY_VALUE"]`` (default
    ``fly-replay: instance={primary}``): a proxy that understands it re-sends the request to
    the primary (Fly.io's does). The request itself is never run here.
``"redirect"``
    307 to ``LITEFS["PRIMARY_URL"]`` (``{primary}``: the primary's hostname) plus the path and
    query: the client re-sends it, method and body included.
``None``
    The middleware does nothing; views raise :class:`litefs.NotPrimary` on their first write.

While no primary is known: 503 with ``Retry-After: 1``. A safe request whose view tries to
write (:class:`litefs.NotPrimary`) is diverted the same way. An unsafe one that got through
(the role changed while it ran) gets 503 and is never replayed: with ``ATOMIC_REQUESTS`` on
every ``litefs.django`` database (and the view not excluded from it) its transaction was rolled
back, so the 503 says to retry it (``Retry-After: 1``); without, writes it made before may have
committed: the 503 says the outcome is unknown, without ``Retry-After``.
"""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse, HttpResponseBase, JsonResponse

from .._errors import LiteFSError, _NotPrimaryBase
from .._state import read_role
from .._state import state as read_state
from . import settings as litefs_settings

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})


def _unavailable(reason: str, retry: bool = True) -> JsonResponse:
    response = JsonResponse({"error": reason}, status=503)
    if retry:
        response["Retry-After"] = "1"
    return response


def _rolled_back(request: HttpRequest) -> bool:
    """Whether the view ran in a transaction (``ATOMIC_REQUESTS``) on every ``litefs.django``
    database, so that an exception out of it rolled everything back."""
    from .checks import litefs_databases

    match = getattr(request, "resolver_match", None)
    excluded: set[str] = getattr(getattr(match, "func", None), "_non_atomic_requests", set())
    databases = litefs_databases()
    return bool(databases) and all(
        spec.get("ATOMIC_REQUESTS") and alias not in excluded for alias, spec in databases.items()
    )


def divert(request: HttpRequest, primary: str | None) -> HttpResponse:
    """The answer that sends ``request`` to ``primary`` (per ``settings.LITEFS``)."""
    s = litefs_settings.get()
    if not primary:
        return _unavailable("no primary is known yet (an election); retry shortly")
    if s.replica_writes == "redirect" and s.primary_url:
        url = s.primary_url.format(primary=primary).rstrip("/") + request.get_full_path()
        response = HttpResponse(status=307)
        response["Location"] = url
        return response
    response = JsonResponse(
        {"error": f"this node is not the primary; writes go to {primary}", "primary": primary},
        status=409,
    )
    response[s.replay_header] = s.replay_value.format(primary=primary)
    return response


class ReplicaWriteMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        if request.method not in SAFE_METHODS:
            s = litefs_settings.get()
            if s.replica_writes is not None:
                try:
                    if read_role(s.mount) != "primary":
                        return divert(request, read_state(s.mount).primary)
                except LiteFSError as e:
                    return _unavailable(str(e))
        return self.get_response(request)

    def process_exception(
        self, request: HttpRequest, exception: Exception
    ) -> HttpResponseBase | None:
        if (
            not isinstance(exception, _NotPrimaryBase)
            or litefs_settings.get().replica_writes is None
        ):
            return None
        if request.method in SAFE_METHODS:
            return divert(request, exception.primary)
        if _rolled_back(request):
            return _unavailable(f"{exception}; the request was rolled back: retry it")
        return _unavailable(
            f"{exception}; the request was stopped part way: what it wrote before may have "
            "committed, its outcome is unknown (check before sending it again)",
            retry=False,
        )
