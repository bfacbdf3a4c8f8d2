"""Loopback ports for test nodes: free when chosen, and never handed out twice by one process."""

from __future__ import annotations

import socket
import threading
from collections.abc import Sequence

__all__ = ["free_port"]

_HANDED_OUT: set[int] = set()
_LOCK = threading.Lock()
#: Bounded: a busy machine may refuse a few candidates, never hundreds.
_TRIES = 1000


def _bindable(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(hosts: Sequence[str] = ("127.0.0.1",)) -> int:
    """A TCP port free right now on every address of ``hosts`` and not handed out before by
    this process.

    The socket is closed at once and the node binds later, so the kernel may offer one port
    twice; without the record two addresses of one cluster (a raft port, a LiteFS port) could
    collide. Several ``hosts`` (e.g. ``127.0.0.11``-``13``) get the same port on each, so that
    nodes that look like hosts of their own share their port numbers.
    """
    if not hosts:
        raise ValueError("free_port: no host given")
    with _LOCK:
        for _ in range(_TRIES):
            with socket.socket() as s:
                s.bind((hosts[0], 0))
                port = int(s.getsockname()[1])
            if port in _HANDED_OUT:
                continue
            if all(_bindable(h, port) for h in hosts[1:]):
                _HANDED_OUT.add(port)
                return port
    raise OSError(f"no port free on all of {list(hosts)} after {_TRIES} tries")
