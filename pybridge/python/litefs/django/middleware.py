"""``litefs.django.middleware.ReplicaWriteMiddleware``: what a replica answers to a write.

Behind litefs-py's proxy (``proxy:`` in litefs-py.yml) this middleware is not needed: the proxy
sends writes to the primary's app. Without it, on a replica a request with an unsafe method
(anything but GET, HEAD, OPTIONS, TRACE) is not run. Depending on ``LITEFS["REPLICA_WRITES"]``:

``"auto"`` (default)
    ``"replay"`` on Fly.io (``FLY_APP_NAME`` or ``FLY_ALLOC_ID`` in the environment, which
    Fly.io sets on its machines), ``"refuse"`` anywhere else.
``"refuse"``
    503 with ``Retry-After: 1`` and a short page saying that this node is a read-only replica
    and which node is the primary (HTML for a browser, JSON for a client that asks for JSON,
    else plain text). The request was not run: a load balancer may send it to another node
    (nginx's ``proxy_next_upstream http_503 non_idempotent``, HAProxy's ``retry-on 503``).
``"replay"``
    409 with the header ``LITEFS["REPLAY_HEADER"]: LITEFS["REPLAY_VALUE"]`` (default
    ``fly-replay: instance={primary}``): Fly.io's proxy re-sends the request to the primary and
    the client never sees the 409. Nothing else acts on that header.
``"redirect"``
    307 to ``LITEFS["PRIMARY_URL"]`` (``{primary}``: the primary's hostname) plus the path and
    query: the client re-sends it, method and body included, to another origin. Clients must
    reach every node there; Django's CSRF check needs every node's origin in
    ``CSRF_TRUSTED_ORIGINS`` and session and CSRF cookies that every node receives
    (docs/django.md, "Writes on a replica").
``None``
    The middleware does nothing; views raise :class:`litefs.NotPrimary` on their first write.

While no primary is known: 503 with ``Retry-After: 1``. A safe request whose view tries to
write (:class:`litefs.NotPrimary`) is diverted the same way. An unsafe one that got through
(the role changed while it ran) gets 503 and is never replayed: with ``ATOMIC_REQUESTS`` on
every ``litefs.django`` database (and the view not excluded from it) its transaction was rolled
back, so the 503 says to retry it (``Retry-After: 1``); without, writes it made before may have
committed: the 503 says the outcome is unknown, without ``Retry-After``. The same for an unsafe
request that ends in a database ``OperationalError`` on a node that is no longer the primary:
the role change's refusal, surfaced where the backend does not map it to ``NotPrimary``.
"""

from __future__ import annotations

import html
import os
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse, HttpResponseBase, JsonResponse

from .._errors import LiteFSError, _NotPrimaryBase
from .._state import read_role
from .._state import state as read_state
from . import settings as litefs_settings

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
#: Set by Fly.io on its machines: ``"auto"`` means ``"replay"`` there.
FLY_ENV = ("FLY_APP_NAME", "FLY_ALLOC_ID")


def mode() -> str | None:
    """The effective ``REPLICA_WRITES``: ``"auto"`` resolved for this environment."""
    chosen = litefs_settings.get().replica_writes
    if chosen == "auto":
        return "replay" if any(os.environ.get(k) for k in FLY_ENV) else "refuse"
    return chosen


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


def _lost_role(exception: Exception) -> bool:
    """A database ``OperationalError`` (SQLite's ``disk I/O error`` when LiteFS refuses a
    write) on a node that is no longer the primary."""
    from django.db import OperationalError

    if not isinstance(exception, OperationalError):
        return False
    try:
        return read_role(litefs_settings.get().mount) != "primary"
    except LiteFSError:
        return False


def _wants(request: HttpRequest, media_type: str) -> bool:
    accept = request.headers.get("Accept", "")
    return media_type in accept


def refuse(request: HttpRequest, primary: str) -> HttpResponse:
    """``"refuse"``: 503 + ``Retry-After``, in the form the client reads (HTML, JSON, text)."""
    what = (
        f"This node is a read-only replica: it does not run {request.method} requests. "
        f"Writes are served by the primary, {primary}."
    )
    advice = (
        "Send writes to the primary (a load balancer that routes unsafe methods to it), or put "
        "litefs-py's proxy in front of every node: it forwards them."
    )
    response: HttpResponse
    if _wants(request, "text/html"):
        page = (
            "<!doctype html><title>503 Read-only replica</title>"
            f"<h1>Read-only replica</h1><p>{html.escape(what)}</p>"
            "<p>Please try again in a moment.</p>"
        )
        response = HttpResponse(page, status=503, content_type="text/html; charset=utf-8")
    elif _wants(request, "application/json"):
        response = JsonResponse({"error": what, "primary": primary, "hint": advice}, status=503)
    else:
        text = f"{what}\n{advice}\n"
        response = HttpResponse(text, status=503, content_type="text/plain; charset=utf-8")
    response["Retry-After"] = "1"
    return response


def divert(request: HttpRequest, primary: str | None) -> HttpResponse:
    """The answer that sends ``request`` to ``primary`` (per ``settings.LITEFS``)."""
    s = litefs_settings.get()
    if not primary:
        return _unavailable("no primary is known yet (an election); retry shortly")
    how = mode()
    if how == "redirect" and s.primary_url:
        url = s.primary_url.format(primary=primary).rstrip("/") + request.get_full_path()
        response = HttpResponse(status=307)
        response["Location"] = url
        return response
    if how == "replay":
        response = JsonResponse(
            {"error": f"this node is not the primary; writes go to {primary}", "primary": primary},
            status=409,
        )
        response[s.replay_header] = s.replay_value.format(primary=primary)
        return response
    return refuse(request, primary)


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
        if litefs_settings.get().replica_writes is None:
            return None
        if isinstance(exception, _NotPrimaryBase):
            if request.method in SAFE_METHODS:
                return divert(request, exception.primary)
            why = str(exception)
        elif request.method not in SAFE_METHODS and _lost_role(exception):
            why = f"this node lost the primary role while the request ran ({exception})"
        else:
            return None
        if _rolled_back(request):
            return _unavailable(f"{why}; the request was rolled back: retry it")
        return _unavailable(
            f"{why}; the request was stopped part way: what it wrote before may have "
            "committed, its outcome is unknown (check before sending it again)",
            retry=False,
        )
