"""The node's view of the cluster, read from the shim's virtual files.

Every call reads the current state; nothing is cached, so a role change is seen at the next call.
The role (``is_primary()``, the Django backend's checks) comes from the shim's shared state page
when there is one: a read-only page of memory that the shim rewrites whenever it publishes, found
once per process through ``.health`` (``state_page``), and read with a seqlock: no FUSE round trip
per call. Its ``primary`` carries the same deadline as ``.role``: past it, the page says
``electing`` even if the daemon is stopped. Without a page (a shim that has none, a closed page
after the daemon stopped, a CPU that orders loads weakly) the role is read from ``.role``
through the mount (a few microseconds: the shim answers from memory, and the read runs in Rust
with the GIL released). ``state()`` reads the page's mirror of ``.health`` the same way (the same
fields; the ages are measured now from the stamps the shim published, as ``.health`` measures
them when it is opened), and ``.health`` through the mount without one. The mount is the
``mount`` argument, else ``$LITEFS_DIR``, else ``/litefs`` (looked up at each call, never at
import).
"""

from __future__ import annotations

import json
import mmap
import os
import platform
import stat
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, Literal

from . import _native
from ._errors import LiteFSError, NoPrimary, NotMounted, _not_primary_class

__all__ = [
    "DEFAULT_MOUNT",
    "Role",
    "State",
    "is_primary",
    "mount_path",
    "primary",
    "require_primary",
    "state",
    "wait_for_primary",
]

#: Where the shim is mounted when neither an argument nor ``$LITEFS_DIR`` says otherwise.
DEFAULT_MOUNT = "/litefs"

#: What ``.role`` says. ``electing``: no primary known here (an election, a partition, or a new
#: leader waiting out its predecessor's lease). ``witness``: a raft voter without data.
Role = Literal["primary", "replica", "electing", "witness"]

Mount = str | os.PathLike[str]


def mount_path(mount: Mount | None = None) -> str:
    """The mount to read: ``mount``, else ``$LITEFS_DIR``, else ``/litefs``."""
    if mount is not None:
        return os.fspath(mount)
    return os.environ.get("LITEFS_DIR") or DEFAULT_MOUNT


@dataclass(frozen=True, slots=True)
class State:
    """One reading of ``.health``: everything in it is from the same instant.

    ``primary`` is the primary's hostname (this node's own when it is the primary), ``None``
    while no primary is known. ``healthy`` means a primary is known and, when litefs-py manages
    LiteFS, LiteFS is mounted and serving; replication lag is judged by the caller (see
    :meth:`problems`).
    """

    mount: str
    role: str
    primary: str | None
    is_primary: bool
    healthy: bool
    hostname: str
    node_id: int
    term: int
    leader_id: int | None
    quorum_ok: bool
    lag_ms: int | None
    ms_since_quorum_ack: int | None
    ms_since_leader_contact: int | None
    litefs_mounted: bool | None
    litefs_serving: bool | None
    version: str
    #: The parsed ``.health`` object, read-only (fields added by newer shims appear here first).
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False, hash=False)

    @property
    def is_replica(self) -> bool:
        return self.role == "replica"

    def problems(self, max_lag_ms: int | None = None) -> tuple[str, ...]:
        """Why this node should not take traffic, in words (empty: it is fine).

        ``max_lag_ms``: a replica further behind than this is reported too.
        """
        out: list[str] = []
        if self.primary is None:
            out.append(f"no primary known (role: {self.role})")
        if self.litefs_mounted is False:
            out.append("LiteFS is not mounted")
        elif self.litefs_serving is False:
            out.append("LiteFS is not serving")
        if (
            max_lag_ms is not None
            and not self.is_primary
            and self.lag_ms is not None
            and self.lag_ms > max_lag_ms
        ):
            out.append(f"replication lag {self.lag_ms} ms exceeds {max_lag_ms} ms")
        return tuple(out)

    def __reduce__(self) -> tuple[Any, ...]:
        # ``raw`` is a read-only mapping view, which pickle cannot store: a dict goes instead.
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["raw"] = dict(self.raw)
        return (_rebuild_state, (values,))

    @classmethod
    def from_health(cls, mount: str, health: Mapping[str, Any]) -> State:
        """Builds a state from a parsed ``.health`` object (as the shim writes it)."""
        try:
            role = health["role"]
            primary = health.get("primary") or None
            litefs = health.get("litefs")
            mounted = serving = None
            if isinstance(litefs, Mapping):
                mounted = bool(litefs.get("mounted"))
                serving = bool(litefs.get("serving"))
            healthy = primary is not None and mounted is not False and serving is not False
            return cls(
                mount=mount,
                role=str(role),
                primary=primary,
                is_primary=role == "primary",
                healthy=healthy,
                hostname=str(health.get("hostname", "")),
                node_id=int(health.get("node_id", 0)),
                term=int(health.get("term", 0)),
                leader_id=health.get("leader_id"),
                quorum_ok=bool(health.get("quorum_ok")),
                lag_ms=health.get("lag_ms"),
                ms_since_quorum_ack=health.get("ms_since_quorum_ack"),
                ms_since_leader_contact=health.get("ms_since_leader_contact"),
                litefs_mounted=mounted,
                litefs_serving=serving,
                version=str(health.get("version", "")),
                raw=MappingProxyType(dict(health)),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise LiteFSError(f"{mount}/.health: unexpected content: {e!r}") from e


def _rebuild_state(values: dict[str, Any]) -> State:
    values = dict(values)
    values["raw"] = MappingProxyType(dict(values["raw"]))
    return State(**values)


def state(mount: Mount | None = None) -> State:
    """This node's view of the cluster, read from ``<mount>/.health``.

    Raises :class:`NotMounted` if no litefs-py mount answers there.
    """
    path = mount_path(mount)
    if _PAGE_OK:
        page = _page_for(path)
        mirrored = page.health() if page is not None else None
        if mirrored is not None:
            return State.from_health(path, mirrored)
    text = _native.read_health(path)
    try:
        health = json.loads(text)
    except ValueError as e:
        raise LiteFSError(f"{path}/.health: not JSON: {text[:80]!r}") from e
    if not isinstance(health, dict):
        raise LiteFSError(f"{path}/.health: not a JSON object: {text[:80]!r}")
    return State.from_health(path, health)


# The shared state page (the shim's `state_page` module): magic, seqlock counter, version,
# flags, role, padding, `primary` deadline on CLOCK_BOOTTIME (0: none), the length of the
# `.health` mirror, padding, the mirror.
_PAGE_MAGIC = int.from_bytes(b"LFPYROLE", "little")
_PAGE_VERSION = 1
_PAGE_SIZE = 4096
_PAGE_SEQ = struct.Struct("<Q")
_PAGE_BODY = struct.Struct("<IIIxxxxQI")
_PAGE_HEALTH = 48
_PAGE_CLOSED = 1
_PAGE_HAS_HEALTH = 2
_PAGE_ROLES = ("primary", "replica", "electing", "witness")
#: How often a process checks, through the mount, that its page is still the mount's.
_PAGE_RECHECK_S = 1.0
# A seqlock read in Python is three copies in program order: correct where the CPU keeps loads
# in order (x86); elsewhere the role is read through the mount.
_PAGE_OK = platform.machine() in ("x86_64", "AMD64", "i386", "i686")


class _Page:
    __slots__ = ("mm",)

    def __init__(self, mm: mmap.mmap) -> None:
        self.mm = mm

    def _read(self, with_health: bool) -> tuple[str, int, bytes | None] | None:
        """One consistent reading: (role as of now, `primary` deadline, the mirror if asked
        for and present), or None: not a page of this version, closed, or busy."""
        mm = self.mm
        if _PAGE_SEQ.unpack_from(mm, 0)[0] != _PAGE_MAGIC:
            return None
        for _ in range(1000):
            (s1,) = _PAGE_SEQ.unpack_from(mm, 8)
            if s1 & 1:
                continue
            version, flags, role, until, length = _PAGE_BODY.unpack_from(mm, 16)
            mirror = None
            if with_health and flags & _PAGE_HAS_HEALTH and length <= _PAGE_SIZE - _PAGE_HEALTH:
                mirror = mm[_PAGE_HEALTH : _PAGE_HEALTH + length]
            if _PAGE_SEQ.unpack_from(mm, 8)[0] != s1:
                continue
            if version != _PAGE_VERSION or flags & _PAGE_CLOSED or role >= len(_PAGE_ROLES):
                return None
            if role == 0 and until and time.clock_gettime_ns(time.CLOCK_BOOTTIME) >= until:
                return "electing", until, mirror
            return _PAGE_ROLES[role], until, mirror
        return None

    def role(self) -> str | None:
        """The role as of now, or None: not a page of this version, closed, or busy."""
        read = self._read(False)
        return None if read is None else read[0]

    def health(self) -> dict[str, Any] | None:
        """What ``.health`` says now, from the mirror, or None (no mirror: ask the mount)."""
        read = self._read(True)
        if read is None:
            return None
        role, until, mirror = read
        if mirror is None:
            return None
        try:
            health = json.loads(mirror)
        except ValueError:
            return None
        if not isinstance(health, dict):
            return None
        now = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        for stamp, age in (
            ("quorum_ack_boot_ns", "ms_since_quorum_ack"),
            ("leader_contact_boot_ns", "ms_since_leader_contact"),
        ):
            t = health.pop(stamp, None)
            health[age] = max(0, now - t) // 1_000_000 if isinstance(t, int) else None
        primary = role == "primary"
        health["role"] = role
        if role == "electing" and until:
            health["primary"] = None  # the primary answer ran out: no primary known
        health["primary_valid_ms"] = (until - now) // 1_000_000 if primary and until else None
        return health


#: Per mount: when it was last checked through the mount, and its page (None: it has none).
_pages: dict[str, tuple[float, _Page | None]] = {}


def _open_page(mount: str) -> _Page | None:
    """Maps the page ``<mount>/.health`` names, if it is one the reader can trust: a regular
    file owned by root or by this user, writable by nobody else (one FUSE read)."""
    try:
        path = json.loads(_native.read_health(mount)).get("state_page")
    except (ValueError, AttributeError):
        return None
    if not isinstance(path, str) or not path:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if (
            not stat.S_ISREG(st.st_mode)
            or st.st_mode & 0o022
            or st.st_uid not in (0, os.geteuid())
            or st.st_size < _PAGE_SIZE
        ):
            return None
        return _Page(mmap.mmap(fd, _PAGE_SIZE, mmap.MAP_SHARED, mmap.PROT_READ))
    except OSError:
        return None
    finally:
        os.close(fd)


def _page_for(mount: str) -> _Page | None:
    """The page of ``mount``, checked through the mount at most once a second per process."""
    now = time.monotonic()
    checked, page = _pages.get(mount, (0.0, None))
    if now - checked > _PAGE_RECHECK_S:
        # First use in this process, or time to check that the page is still the mount's (a
        # remount over another lower dir has another page): one read of .health.
        page = _open_page(mount)
        _pages[mount] = (now, page)
    return page


def read_role(mount: str) -> str:
    """``.role`` of ``mount`` (without its newline): from the shared page when there is one,
    else through the mount. Raises :class:`NotMounted` if no litefs-py mount answers there."""
    if _PAGE_OK:
        page = _page_for(mount)
        if page is not None:
            role = page.role()
            if role is not None:
                return role
            _pages.pop(mount, None)
    return _native.read_role(mount)


def is_primary(mount: Mount | None = None) -> bool:
    """Whether this node is the primary (its ``.role`` says ``primary``): the one node where
    writes succeed. Raises :class:`NotMounted` if no litefs-py mount answers there."""
    return read_role(mount_path(mount)) == "primary"


def primary(mount: Mount | None = None) -> str | None:
    """The primary's hostname (this node's own when it is the primary), or ``None`` while no
    primary is known."""
    return state(mount).primary


def require_primary(mount: Mount | None = None) -> State:
    """The state, if this node is the primary; else raises :class:`NotPrimary` naming the
    primary."""
    s = state(mount)
    if not s.is_primary:
        raise _not_primary_class()(primary=s.primary, hostname=s.hostname)
    return s


def wait_for_primary(
    timeout: float = 30.0, mount: Mount | None = None, *, interval: float = 0.05
) -> State:
    """Waits until a primary is known (this node or another) and returns that state.

    A mount that is not there yet is waited for too. On timeout raises :class:`NoPrimary`, or
    :class:`NotMounted` if the mount never answered.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            s = state(mount)
            if s.primary is not None:
                return s
            last: LiteFSError = NoPrimary(
                f"{mount_path(mount)}: no primary known after {timeout:g} s (role: {s.role})"
            )
        except NotMounted as e:
            last = e
        left = deadline - time.monotonic()
        if left <= 0:
            raise last
        time.sleep(min(interval, left))
