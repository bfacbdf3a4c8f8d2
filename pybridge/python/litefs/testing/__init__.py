"""litefs.testing: real litefs-py processes for tests, always cleaned up.

Like ``django.test``, it ships with the package, so a project's tests (and this repository's:
``integration/``, ``pybridge/tests``, ``pybridge/bench``, ``examples/guestbook``) start nodes the
same way. Nothing here mocks: every helper starts the real ``litefs-py`` (and LiteFS), signals
only PIDs it started, detaches only mounts at paths it made, and bounds every wait.

- :mod:`~litefs.testing.ports`: :func:`free_port`, never the same port twice in one process;
- :mod:`~litefs.testing.yml`: :class:`NodeYml`, a node's litefs-py.yml from typed fields;
- :mod:`~litefs.testing.processes`: the binaries, the daemon's environment, stopping by PID;
- :mod:`~litefs.testing.mountinfo`: what is mounted where (``/proc/self/mountinfo``), detach;
- :mod:`~litefs.testing.waiting`: bounded polls, and calls that cannot hang on a wedged mount;
- :mod:`~litefs.testing.shim`: ``litefs-py mount`` processes and a raft cluster of them;
- :mod:`~litefs.testing.run_cluster`: :class:`RunCluster`, N ``litefs-py run`` nodes with the
  real LiteFS;
- :mod:`~litefs.testing.http`: one HTTP request to a node's app, redirects not followed.

Linux only; mounting needs root and ``/dev/fuse``.
"""

from __future__ import annotations

from .http import Response, request, try_request
from .mountinfo import (
    MountEntry,
    detach,
    fstype_at,
    fuse_mounts_under,
    is_mounted,
    mount_count,
    mount_points,
)
from .ports import free_port
from .processes import (
    MissingBinary,
    children,
    cmdline,
    daemon_env,
    find_workspace,
    litefs_binary,
    litefs_py_binary,
    stop_process,
)
from .run_cluster import RUN_STOP_TIMEOUT, ClusterError, NodePorts, RunCluster, RunNode
from .shim import (
    READY_TIMEOUT,
    STOP_TIMEOUT,
    WATCHDOG_TIMEOUT,
    Mount,
    MountFactory,
    MountNode,
    mount_args,
    mount_cluster,
    run_cli,
    wait_mount_roles,
)
from .waiting import call_with_timeout, poll_until, wait_until
from .yml import LiteFSYml, NodeYml, write_secret

__all__ = [
    "READY_TIMEOUT",
    "RUN_STOP_TIMEOUT",
    "STOP_TIMEOUT",
    "WATCHDOG_TIMEOUT",
    "ClusterError",
    "LiteFSYml",
    "MissingBinary",
    "Mount",
    "MountEntry",
    "MountFactory",
    "MountNode",
    "NodePorts",
    "NodeYml",
    "Response",
    "RunCluster",
    "RunNode",
    "call_with_timeout",
    "children",
    "cmdline",
    "daemon_env",
    "detach",
    "find_workspace",
    "free_port",
    "fstype_at",
    "fuse_mounts_under",
    "is_mounted",
    "litefs_binary",
    "litefs_py_binary",
    "mount_args",
    "mount_cluster",
    "mount_count",
    "mount_points",
    "poll_until",
    "request",
    "run_cli",
    "stop_process",
    "try_request",
    "wait_mount_roles",
    "wait_until",
    "write_secret",
]
