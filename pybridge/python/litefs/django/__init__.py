"""Django support: the database backend ``ENGINE = "litefs.django"`` and its companions.

``litefs.django.base``
    The backend: Django's SQLite backend, plus: ``BEGIN IMMEDIATE`` and WAL by default on the
    primary; on a replica, reads and read-only ``atomic()`` blocks work (``BEGIN DEFERRED``)
    and every write raises :class:`litefs.NotPrimary` naming the primary.
``litefs.django`` in ``INSTALLED_APPS``
    System checks of ``DATABASES`` and ``settings.LITEFS`` (ids ``litefs.E001``...) and the
    ``litefs_status`` management command. ``migrate`` on a replica stops with ``litefs.E010``
    whether or not the app is installed.
``litefs.django.views``
    ``health``, ``readiness``, ``liveness`` and ``primary`` (JSON, 200 or 503).
``litefs.django.middleware.ReplicaWriteMiddleware``
    On a replica, answers unsafe methods with a replay header or a redirect to the primary.
``litefs.django.healthchecks.LiteFS``
    A django-health-check 4.x check (optional dependency).
:func:`litefs.django.wait_replicated`
    With ``proxy.durability: replicated``: after a commit made outside a proxied request,
    waits until replicas confirmed it (raises :class:`litefs.NotReplicated` if they do not).

Settings are read when used, never at import: ``settings.LITEFS`` (see
:mod:`litefs.django.settings`).
"""

from __future__ import annotations

from .._replication import NotReplicated, Replicated
from .._replication import wait_replicated as _wait_replicated

__all__ = ["wait_replicated"]


def wait_replicated(using: str = "default", timeout: float | None = None) -> Replicated:
    """The same wait as the proxy's ``durability: replicated``, for code paths outside it.

    Call it after the transaction committed: ``transaction.on_commit(wait_replicated)``
    inside an ``atomic()`` block, or right after one (in autocommit, after the query). It
    waits for everything the node has committed so far, so every commit before the call is
    covered. Raises :class:`litefs.NotReplicated` inside a transaction of ``using`` (nothing
    of it is committed yet), and when replicas do not confirm within ``timeout`` seconds
    (default: ``proxy.replica-wait``): the commit stays on the primary, unreplicated.
    """
    from django.db import connections

    if connections[using].in_atomic_block:
        raise NotReplicated(
            f"wait_replicated() inside a transaction of {using!r}: nothing of it is committed "
            "yet; call it after the commit (transaction.on_commit(wait_replicated))"
        )
    return _wait_replicated(timeout)
