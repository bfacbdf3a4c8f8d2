"""Replicated durability for commits made outside the proxy: :func:`wait_replicated`.

With ``proxy.durability: replicated`` the proxy holds the answer to a write until replicas
confirmed it (docs/proxy.md, "Replicated durability"). Code that writes outside a proxied
request (a management command, a task queue worker, a view reached without the proxy) asks
the same of its node's proxy here: ``GET /.litefs-py/replicated`` on loopback waits until
``proxy.min-replicas`` replicas' LiteFS have everything this node's LiteFS has committed so far,
so a commit that returned before the call is covered.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from ._errors import LiteFSError

__all__ = ["PROXY_ENV", "NotReplicated", "Replicated", "wait_replicated"]

#: Set by ``litefs-py run`` for the app when ``proxy:`` is configured: the proxy's URL.
PROXY_ENV = "LITEFS_PY_PROXY"
_PATH = "/.litefs-py/replicated"


@dataclass(frozen=True)
class Replicated:
    """What :func:`wait_replicated` waited for, and who confirmed it."""

    #: The replicas (node ids) whose LiteFS confirmed the positions.
    replicas: tuple[int, ...]
    #: How many were needed (``proxy.min-replicas``).
    needed: int
    #: Database name -> TXID: this node's positions when the call came.
    positions: dict[str, int]


class NotReplicated(LiteFSError):
    """The commits were not confirmed by enough replicas within the timeout, or cannot be waited
    for here (not the primary, ``durability: async``, no proxy). A commit already made stays
    committed on the primary: it is not replicated, and is lost if the primary fails before a
    replica has it. ``replicas`` and ``needed`` say how far it got."""

    def __init__(self, message: str, replicas: tuple[int, ...] = (), needed: int = 0) -> None:
        super().__init__(message)
        self.replicas = replicas
        self.needed = needed

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.replicas, self.needed))


def wait_replicated(timeout: float | None = None, proxy: str | None = None) -> Replicated:
    """Waits until everything this node (the primary) has committed so far is on
    ``proxy.min-replicas`` replicas; raises :class:`NotReplicated` if it is not within
    ``timeout`` seconds (default: ``proxy.replica-wait``, at most 60).

    ``proxy`` is the node's proxy URL; default ``$LITEFS_PY_PROXY``, which ``litefs-py run``
    sets for the app.
    """
    # A bad argument is the caller's error, whatever the environment.
    if timeout is not None and not 0 <= timeout <= 60:
        raise ValueError(f"timeout={timeout}: must be 0 to 60 seconds")
    base = proxy or os.environ.get(PROXY_ENV)
    if not base:
        raise NotReplicated(
            f"no proxy to ask: ${PROXY_ENV} is not set (litefs-py run sets it when "
            "litefs-py.yml has a proxy: section) and no proxy URL was given"
        )
    url = base.rstrip("/") + _PATH
    wait_s = 60.0
    if timeout is not None:
        url += f"?timeout-ms={int(timeout * 1000)}"
        wait_s = timeout
    # Loopback, no proxy of the environment's in between.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=wait_s + 5) as resp:
            body = json.load(resp)
    except urllib.error.HTTPError as e:
        try:
            body = json.load(e)
        except ValueError:
            raise NotReplicated(f"{url}: {e.code} {e.reason}") from e
        raise NotReplicated(
            f"not replicated: {body.get('error') or e.reason} ({url})",
            tuple(body.get("replicas") or ()),
            int(body.get("needed") or 0),
        ) from e
    except (OSError, ValueError) as e:
        raise NotReplicated(f"{url}: {e}") from e
    return Replicated(
        replicas=tuple(body["replicas"]),
        needed=int(body["needed"]),
        positions={db: int(p["txid"]) for db, p in body["positions"].items()},
    )
