"""litefs-py.yml for test nodes, built from typed fields (no hand-written templates), and the
cluster secret file it names."""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import to_yaml

__all__ = ["LiteFSYml", "NodeYml", "write_secret"]


@dataclass(frozen=True)
class LiteFSYml:
    """The ``litefs:`` section: the LiteFS that ``litefs-py run`` starts under the shim."""

    binary: str
    data_dir: Path
    http_addr: str
    #: How the other nodes reach this LiteFS; default ``http://<http_addr>``.
    advertise_url: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The section as a mapping with the file's key names."""
        return {
            "binary": self.binary,
            "data-dir": os.fspath(self.data_dir),
            "http-addr": self.http_addr,
            "advertise-url": self.advertise_url or f"http://{self.http_addr}",
        }


@dataclass(frozen=True)
class NodeYml:
    """One node's litefs-py.yml: ``node``, ``cluster``, ``mount``, ``lease`` and, for
    ``litefs-py run``, ``litefs`` and ``run``. Durations are strings as in the file (``3s``);
    None leaves the key out (litefs-py's default)."""

    id: int
    hostname: str
    raft_addr: str
    http_addr: str
    peers: Mapping[int, str]
    secret_file: Path
    data_dir: Path
    mount_dir: Path
    lower: Path
    lease_addr: str
    bootstrap: bool = False
    lease_ttl: str | None = None
    litefs: LiteFSYml | None = None
    run_grace: str | None = None
    #: ``mount.data-path`` (``auto``, ``passthrough``, ``symlink``); None: the default.
    data_path: str | None = None
    #: Further top-level sections or keys, merged in last (e.g. ``{"raft": {...}}``).
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The document as a mapping with the file's key names."""
        lease: dict[str, Any] = {"addr": self.lease_addr}
        if self.lease_ttl is not None:
            lease["ttl"] = self.lease_ttl
        doc: dict[str, Any] = {
            "node": {
                "id": self.id,
                "hostname": self.hostname,
                "raft-addr": self.raft_addr,
                "http-addr": self.http_addr,
            },
            "cluster": {
                "bootstrap": self.bootstrap,
                "peers": dict(sorted(self.peers.items())),
                "secret-file": os.fspath(self.secret_file),
                "data-dir": os.fspath(self.data_dir),
            },
            "mount": {"dir": os.fspath(self.mount_dir), "lower": os.fspath(self.lower)},
            "lease": lease,
        }
        if self.data_path is not None:
            doc["mount"]["data-path"] = self.data_path
        if self.litefs is not None:
            doc["litefs"] = self.litefs.to_dict()
        if self.run_grace is not None:
            doc["run"] = {"grace": self.run_grace}
        doc.update(self.extra)
        return doc

    def render(self) -> str:
        """The litefs-py.yml text."""
        return to_yaml(self.to_dict())

    def write(self, path: Path) -> Path:
        """Writes :meth:`render` to ``path``; returns ``path``."""
        path.write_text(self.render())
        return path


def write_secret(path: Path) -> Path:
    """A fresh random cluster secret in ``path`` (mode 0600); returns ``path``."""
    path.write_text(secrets.token_hex(16) + "\n")
    path.chmod(0o600)
    return path
