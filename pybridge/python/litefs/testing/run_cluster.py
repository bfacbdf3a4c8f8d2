"""A cluster of ``litefs-py run`` nodes with the real LiteFS, on loopback.

Every node has its own directory (raft data, LiteFS's data, LiteFS's mount at ``lower/``, the
shim at ``mnt/``, its litefs-py.yml and ``run.log``) and its own ports. By default all nodes
listen on 127.0.0.1 with ports of their own and are called ``node-<id>``. With ``ip_base``,
node N looks like a host of its own: address and hostname ``127.0.0.<ip_base+N>`` (any 127.x
address is loopback on Linux) and the same port numbers as the others, so that a URL built
from the primary's hostname and one node's app port reaches the primary.

Each node runs ``litefs-py run --config <dir>/litefs-py.yml -- APP``. Processes: each run is
started in a session of its own, so its process group is exactly it and its app; LiteFS runs in
a group of its own (litefs-py puts it there) and is found as the run's child whose command line
names this node's litefs.yml. Only those PIDs are ever signalled, and only the mounts at a
node's ``lower/`` and ``mnt/`` are ever detached.

With ``proxy``, each node's litefs-py.yml has a ``proxy:`` section: litefs-py's HTTP proxy
listens on the app port (what clients and :attr:`RunNode.url` use) and passes requests to the
app on a port of its own (:attr:`NodePorts.target`, :attr:`RunNode.app_url`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from .http import try_request
from .mountinfo import detach, is_mounted
from .ports import free_port
from .processes import (
    MissingBinary,
    children,
    cmdline,
    daemon_env,
    litefs_binary,
    litefs_py_binary,
    stop_process,
)
from .waiting import poll_until
from .yml import LiteFSYml, NodeYml, write_secret

__all__ = ["RUN_STOP_TIMEOUT", "ClusterError", "NodePorts", "RunCluster", "RunNode"]

#: How long a node may take to stop after SIGTERM (app, shim, then LiteFS).
RUN_STOP_TIMEOUT = 40.0
#: The app that nodes run when the caller names none: the tests drive the mount themselves.
IDLE_APP: tuple[str, ...] = ("sleep", "100000")


class ClusterError(Exception):
    """The cluster did not do what was waited for, or a node's run exited; the message has
    the nodes' log tails where they help."""


@dataclass(frozen=True)
class NodePorts:
    """A node's TCP ports: raft, status (``node.http-addr``), lease API, LiteFS, and the app's
    (which the kit only passes on). With a proxy, ``app`` is the proxy's (where clients
    connect) and ``target`` the app's behind it; without, ``target`` is None."""

    raft: int
    status: int
    lease: int
    litefs: int
    app: int
    target: int | None = None


@dataclass
class RunNode:
    """One node of a :class:`RunCluster` and, while it runs, its processes."""

    id: int
    ip: str
    hostname: str
    dir: Path
    ports: NodePorts
    proc: subprocess.Popen[bytes] | None = None
    litefs_pid: int | None = None
    #: How often it was started (``run.log`` marks each start).
    starts: int = 0

    @property
    def name(self) -> str:
        """The node's hostname (what ``.primary`` shows when it is the primary)."""
        return self.hostname

    @property
    def url(self) -> str:
        """The base URL clients use on this node: its proxy's, else its app's."""
        return f"http://{self.ip}:{self.ports.app}"

    @property
    def app_url(self) -> str:
        """The app's own base URL (behind the proxy, if there is one)."""
        return f"http://{self.ip}:{self.ports.target or self.ports.app}"

    @property
    def mnt(self) -> Path:
        """The shim's mount point (``$LITEFS_DIR`` of the app)."""
        return self.dir / "mnt"

    @property
    def lower(self) -> Path:
        """LiteFS's mount point, under the shim."""
        return self.dir / "lower"

    @property
    def config(self) -> Path:
        """The node's litefs-py.yml."""
        return self.dir / "litefs-py.yml"

    @property
    def log_path(self) -> Path:
        """Everything the run (and its app, and LiteFS) wrote."""
        return self.dir / "run.log"

    @property
    def running(self) -> bool:
        """Whether its ``litefs-py run`` was started and has not exited."""
        return self.proc is not None and self.proc.poll() is None

    def role(self) -> str | None:
        """What ``.role`` says, or None (not mounted)."""
        try:
            return (self.mnt / ".role").read_text().strip()
        except OSError:
            return None

    def primary(self) -> str | None:
        """What ``.primary`` says: this node's hostname when the file is absent (LiteFS
        semantics: absent on the primary), None when it is empty or the mount is not there."""
        if not is_mounted(self.mnt):
            return None
        try:
            return (self.mnt / ".primary").read_text().strip() or None
        except FileNotFoundError:
            return self.hostname
        except OSError:
            return None

    def output(self) -> str:
        """The whole ``run.log``."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of ``run.log``."""
        return "\n".join(self.output().splitlines()[-lines:])

    def find_litefs(self) -> int | None:
        """LiteFS as this node's run started it: the run's child whose command line names this
        node's generated litefs.yml (remembered, for after the run is gone)."""
        if not self.running:
            pid = self.litefs_pid
            return pid if pid is not None and self.is_our_litefs(pid) else None
        assert self.proc is not None
        for child in children(self.proc.pid):
            if self.is_our_litefs(child):
                self.litefs_pid = child
                return child
        return None

    def is_our_litefs(self, pid: int) -> bool:
        """Whether ``pid`` runs LiteFS with this node's litefs.yml."""
        cmd = cmdline(pid)
        return " mount " in f" {cmd} " and str(self.dir / "raft" / "litefs.yml") in cmd


class RunCluster:
    """``size`` nodes of ``litefs-py run`` under ``work`` (a temp dir, removed by
    :meth:`close`, when None); each runs ``app`` (default: it sleeps) in ``app_cwd`` (default:
    its own dir). Use as a context manager, or call :meth:`close`: it stops every node, also
    after a failure. Subclasses add environment per node with :meth:`node_env`; ``env``
    (for every node) wins over it. ``run_args`` go to every ``litefs-py run`` before ``--``
    (e.g. ``["--migrate", "python manage.py migrate"]``). ``proxy``: put litefs-py's proxy in
    front of each node's app (see the module's doc); a mapping adds keys to the ``proxy:``
    section (e.g. ``{"primary-wait": "10s"}``)."""

    def __init__(
        self,
        size: int = 3,
        work: Path | None = None,
        *,
        ip_base: int | None = None,
        app: Sequence[str] = IDLE_APP,
        app_cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        lease_ttl: str | None = None,
        run_grace: str = "5s",
        litefs_py: Path | None = None,
        litefs: str | None = None,
        run_args: Sequence[str] = (),
        proxy: bool | Mapping[str, Any] = False,
    ) -> None:
        self.size = size
        self.bin = litefs_py or litefs_py_binary()
        found = litefs or litefs_binary()
        if found is None:
            raise MissingBinary(
                "no litefs binary: install LiteFS v0.5.14 (scripts/setup) or set $LITEFS"
            )
        self.litefs = found
        self.app = list(app)
        self.run_args = list(run_args)
        self.app_cwd = app_cwd
        self.env = dict(env or {})
        self.own_work = work is None
        self.work = Path(tempfile.mkdtemp(prefix="litefs-py-cluster.")) if work is None else work
        self.work.mkdir(parents=True, exist_ok=True)
        #: What went wrong while stopping nodes gracefully (a run that needed SIGKILL, a LiteFS
        #: that outlived its run, a mount left behind); :meth:`close` returns it.
        self.problems: list[str] = []
        secret = write_secret(self.work / "secret")
        nodes = range(1, size + 1)
        count = 6 if proxy is True or isinstance(proxy, Mapping) else 5
        if ip_base is not None:
            ips = {i: f"127.0.0.{ip_base + i}" for i in nodes}
            shared = NodePorts(*(free_port(list(ips.values())) for _ in range(count)))
            ports = dict.fromkeys(nodes, shared)
            hostnames = ips
        else:
            ips = dict.fromkeys(nodes, "127.0.0.1")
            ports = {i: NodePorts(*(free_port() for _ in range(count))) for i in nodes}
            hostnames = {i: f"node-{i}" for i in nodes}
        peers = {i: f"{ips[i]}:{ports[i].raft}" for i in nodes}
        self.nodes: list[RunNode] = []
        for i in nodes:
            node = RunNode(
                id=i, ip=ips[i], hostname=hostnames[i], dir=self.work / f"n{i}", ports=ports[i]
            )
            for d in ("raft", "lower", "mnt", "litefs-data"):
                (node.dir / d).mkdir(parents=True, exist_ok=True)
            p = node.ports
            extra: dict[str, Any] = {}
            if p.target is not None:
                extra["proxy"] = {
                    "addr": f"{node.ip}:{p.app}",
                    "target": f"{node.ip}:{p.target}",
                    # Explicit: the default (http://<hostname>:<port>) needs a resolvable name.
                    "advertise-url": f"http://{node.ip}:{p.app}",
                    **(proxy if isinstance(proxy, Mapping) else {}),
                }
            NodeYml(
                id=i,
                hostname=node.hostname,
                raft_addr=peers[i],
                http_addr=f"{node.ip}:{p.status}",
                bootstrap=i == 1,
                peers=peers,
                secret_file=secret,
                data_dir=node.dir / "raft",
                mount_dir=node.mnt,
                lower=node.lower,
                lease_addr=f"{node.ip}:{p.lease}",
                lease_ttl=lease_ttl,
                litefs=LiteFSYml(self.litefs, node.dir / "litefs-data", f"{node.ip}:{p.litefs}"),
                run_grace=run_grace,
                extra=extra,
            ).write(node.config)
            self.nodes.append(node)

    # --- processes ---------------------------------------------------------------------------

    def node_env(self, node: RunNode) -> dict[str, str]:
        """Environment added for ``node``'s run (inherited by LiteFS and the app); none here."""
        return {}

    def start(self, node: RunNode) -> None:
        """Starts ``node``'s ``litefs-py run`` (first detaching mounts left at its paths)."""
        if node.running:
            raise ClusterError(f"node {node.id} already runs")
        self._detach_mounts(node)
        env = daemon_env(PYTHONUNBUFFERED="1")
        env.update(self.node_env(node))
        env.update(self.env)
        node.starts += 1
        with open(node.log_path, "ab") as log:
            log.write(f"\n==== start #{node.starts} ====\n".encode())
            log.flush()
            node.proc = subprocess.Popen(
                [
                    str(self.bin),
                    "run",
                    "--config",
                    str(node.config),
                    *self.run_args,
                    "--",
                    *self.app,
                ],
                cwd=self.app_cwd or node.dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        node.litefs_pid = None

    def start_all(self) -> None:
        """Starts every node."""
        for n in self.nodes:
            self.start(n)

    def kill9(self, node: RunNode) -> None:
        """SIGKILL to the node's run and app (their process group) and to its LiteFS; then
        detaches what they left mounted."""
        if node.proc is None:
            return
        litefs = node.find_litefs()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(node.proc.pid, signal.SIGKILL)
        if litefs is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(litefs, signal.SIGKILL)
        node.proc.wait(timeout=10)
        self._settle(node, litefs, graceful=False)

    def stop(self, node: RunNode, timeout: float = RUN_STOP_TIMEOUT) -> int | None:
        """SIGTERM to the node's run (it stops the app, the shim, LiteFS in order); SIGKILL
        after ``timeout``. Returns the run's exit status."""
        return self.stop_many([node], timeout).get(node.id)

    def stop_many(
        self, nodes: Sequence[RunNode], timeout: float = RUN_STOP_TIMEOUT
    ) -> dict[int, int | None]:
        """:meth:`stop` for several nodes at once (one deadline); their exit statuses."""
        running = [n for n in nodes if n.proc is not None]
        litefs = {n.id: n.find_litefs() for n in running}
        for n in running:
            if n.running:
                assert n.proc is not None
                with contextlib.suppress(ProcessLookupError):
                    n.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        codes: dict[int, int | None] = {}
        for n in running:
            assert n.proc is not None
            left = max(0.1, deadline - time.monotonic())
            # Signalled above, once: a second SIGTERM makes a primary's run stop waiting for
            # its handoff and passes the signal on to the app at once.
            codes[n.id], killed = stop_process(n.proc, left, sig=None, group=True)
            if killed:
                self.problems.append(f"node {n.id}: litefs-py run did not stop within {timeout} s")
            # The app's processes, should any have outlived the run (same process group).
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(n.proc.pid, signal.SIGKILL)
            self._settle(n, litefs[n.id], graceful=True)
        return codes

    def _settle(self, node: RunNode, litefs: int | None, graceful: bool) -> None:
        if litefs is not None and node.is_our_litefs(litefs):
            if graceful:
                self.problems.append(f"node {node.id}: LiteFS (pid {litefs}) outlived its run")
            with contextlib.suppress(ProcessLookupError):
                os.kill(litefs, signal.SIGKILL)
            with contextlib.suppress(TimeoutError):
                poll_until(lambda: True if not node.is_our_litefs(litefs) else None, 5, "LiteFS")
        node.proc = None
        node.litefs_pid = None
        left = self._detach_mounts(node)
        if graceful and left:
            self.problems.append(f"node {node.id}: {', '.join(left)} still mounted; umount -l")

    @staticmethod
    def _detach_mounts(node: RunNode) -> list[str]:
        # The shim's watchdog unmounts mnt when its daemon dies (give it a second); LiteFS's
        # mount stays behind when LiteFS is killed.
        return [str(p) for p, wait in ((node.mnt, 1.0), (node.lower, 0.0)) if detach(p, wait)]

    def close(self) -> list[str]:
        """Stops every node (also after a failure), detaches what is left mounted, removes the
        work dir if it made it (unless :attr:`own_work` was cleared, to keep the logs).
        Returns :attr:`problems`."""
        try:
            self.stop_many(self.nodes)
        finally:
            for n in self.nodes:
                self._detach_mounts(n)
            if self.own_work:
                shutil.rmtree(self.work, ignore_errors=True)
        return self.problems

    def __enter__(self) -> RunCluster:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- looking -----------------------------------------------------------------------------

    def check_alive(self, nodes: Sequence[RunNode] | None = None) -> None:
        """Raises :class:`ClusterError` (with its log) if a started node's run has exited."""
        for n in nodes or self.nodes:
            if n.proc is not None and n.proc.poll() is not None:
                code = n.proc.returncode
                raise ClusterError(f"node {n.id}'s litefs-py run exited ({code}):\n{n.log_tail()}")

    def primary(self) -> RunNode | None:
        """The running node whose ``.role`` says primary."""
        for n in self.nodes:
            if n.running and n.role() == "primary":
                return n
        return None

    def wait_primary(self, timeout: float = 60.0) -> RunNode:
        """Until a running node says primary; that node."""

        def found() -> RunNode | None:
            self.check_alive()
            return self.primary()

        try:
            return poll_until(found, timeout, "a primary")
        except TimeoutError:
            raise ClusterError(f"no primary after {timeout:g} s\n" + self.logs()) from None

    def wait_roles(self, timeout: float = 60.0) -> tuple[RunNode, list[RunNode]]:
        """Until one node says primary and every other replica: (primary, replicas)."""

        def settled() -> tuple[RunNode, list[RunNode]] | None:
            self.check_alive()
            roles = {n.id: n.role() for n in self.nodes}
            primaries = [n for n in self.nodes if roles[n.id] == "primary"]
            replicas = [n for n in self.nodes if roles[n.id] == "replica"]
            if len(primaries) == 1 and len(replicas) == len(self.nodes) - 1:
                return primaries[0], replicas
            return None

        try:
            return poll_until(settled, timeout, "one primary and replicas", interval=0.1)
        except TimeoutError:
            roles = {n.id: n.role() for n in self.nodes}
            raise ClusterError(
                f"no primary + replicas after {timeout:g} s: {roles}\n" + self.logs()
            ) from None

    def wait_ready(
        self, nodes: Sequence[RunNode] | None = None, timeout: float = 120.0, path: str = "/readyz"
    ) -> None:
        """Until every node's app (default: every started node's) answers ``path`` with 200."""
        todo = list(nodes or [n for n in self.nodes if n.proc is not None])
        deadline = time.monotonic() + timeout
        while todo and time.monotonic() < deadline:
            self.check_alive(todo)
            r = try_request(todo[0].url + path, timeout=2)
            if r is not None and r.status == 200:
                todo.pop(0)
            else:
                time.sleep(0.1)
        if todo:
            raise ClusterError(
                f"node(s) {[n.id for n in todo]} not ready after {timeout:g} s\n" + self.logs()
            )

    def logs(self) -> str:
        """Every node's log tail, with its path."""
        return "\n".join(
            f"---- node {n.id} ({n.log_path}) ----\n{n.log_tail()}" for n in self.nodes
        )
