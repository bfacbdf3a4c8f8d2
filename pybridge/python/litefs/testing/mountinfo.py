"""What is mounted where, from ``/proc/self/mountinfo``, and detaching what tests left behind.

Nothing here touches the mount point itself, so a dead FUSE server cannot make a check hang.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
from typing import NamedTuple

from .waiting import wait_until

__all__ = [
    "MountEntry",
    "detach",
    "fstype_at",
    "fuse_mounts_under",
    "is_mounted",
    "mount_count",
    "mount_points",
]

PathLike = os.PathLike[str] | str


class MountEntry(NamedTuple):
    """One line of mountinfo: where, and the file system type (``fuse.litefs-py``...)."""

    path: str
    fstype: str


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mount_points() -> list[MountEntry]:
    """Every mount this process sees, in mount order."""
    out: list[MountEntry] = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            fields = line.rstrip("\n").split(" ")
            try:
                sep = fields.index("-")
            except ValueError:
                continue
            out.append(MountEntry(_unescape(fields[4]), fields[sep + 1]))
    return out


def _abs(path: PathLike) -> str:
    return os.path.abspath(os.fspath(path))


def mount_count(path: PathLike) -> int:
    """How many mounts are stacked exactly at ``path``."""
    want = _abs(path)
    return sum(1 for m in mount_points() if m.path == want)


def is_mounted(path: PathLike) -> bool:
    """Whether anything is mounted exactly at ``path``."""
    return mount_count(path) > 0


def fstype_at(path: PathLike) -> str | None:
    """The file system type of the top mount at ``path``, or None."""
    want = _abs(path)
    found = [m.fstype for m in mount_points() if m.path == want]
    return found[-1] if found else None


def fuse_mounts_under(directory: PathLike) -> list[str]:
    """The FUSE mounts at or below ``directory``, deepest first (the order to detach them)."""
    base = _abs(directory)
    found = [
        m.path
        for m in mount_points()
        if m.fstype.split(".")[0] in ("fuse", "fuseblk")
        and (m.path == base or m.path.startswith(base + os.sep))
    ]
    return sorted(found, reverse=True)


def detach(path: PathLike, wait: float = 0.0) -> bool:
    """Gives a mount at ``path`` up to ``wait`` seconds to go away by itself (e.g. the shim's
    watchdog), then detaches what is left (``umount -l``, each mount stacked there). Returns
    whether something had to be detached."""
    if wait > 0 and wait_until(lambda: not is_mounted(path), wait):
        return False
    detached = False
    # Bounded: one umount per stacked mount, plus one.
    for _ in range(mount_count(path) + 1):
        if not is_mounted(path):
            break
        detached = True
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(
                ["umount", "-l", os.fspath(path)], capture_output=True, timeout=10, check=False
            )
    return detached
