"""What this node is, for the pages: litefs-py's view of the cluster, or "plain" off a mount."""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings

import litefs


@dataclass(frozen=True)
class Node:
    name: str
    role: str
    primary: str | None

    @property
    def is_primary(self) -> bool:
        return self.role in ("primary", "plain")


def current() -> Node:
    if settings.PLAIN_DB:
        return Node(name=settings.NODE_NAME or "plain", role="plain", primary=None)
    try:
        s = litefs.state(settings.LITEFS_DIR)
    except litefs.LiteFSError:
        return Node(name=settings.NODE_NAME or "?", role="unknown", primary=None)
    return Node(name=settings.NODE_NAME or s.hostname, role=s.role, primary=s.primary)
