#!/usr/bin/env python3
"""A local guestbook cluster: N nodes of ``litefs-py run`` with the real LiteFS, on loopback.

    cluster.py up     [--nodes 3] [--dir DIR]   start, print the URLs, run until Ctrl-C
    cluster.py demo   [--dir DIR]               the scripted tour (scripts/demo runs it)

Every node looks like a host of its own: node N has the loopback address 127.0.0.(10+N) (any
127.x address is loopback on Linux), which is also its litefs-py hostname (what ``.primary``
shows), and the same ports as the others on it: raft, status, lease API, LiteFS and the app.
So a replica's redirect to ``http://{primary}:<app port>`` reaches the primary.

Each node runs ``litefs-py run --config nN/litefs-py.yml -- python start.py``: raft, the lease
API, LiteFS (its FUSE mount at ``nN/lower``), the shim at ``nN/mnt`` (``$LITEFS_DIR``), then
start.py (migrate on the primary, wait for the replicated schema on a replica) and gunicorn.

Processes: each ``litefs-py run`` is started in a session of its own, so its process group is
exactly it and the app it starts (start.py, gunicorn and its workers); LiteFS runs in a group of
its own (litefs-py puts it there) and is found as the run's child whose command line names this
node's litefs.yml. ``kill -9`` of a node is SIGKILL to that process group and to that LiteFS;
then any mount left at the node's paths is detached. Nothing else is ever signalled.

Also a library: the integration tests and bench.py use :class:`Cluster`.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent

# The ports every node uses, as offsets from a base chosen free at start-up.
RAFT, STATUS, LEASE, LITEFS_HTTP, APP = range(5)


class ClusterError(Exception):
    pass


def litefs_py_binary() -> str:
    """``$LITEFS_PY_BIN``, else the workspace's release build, else the debug build, else PATH."""
    env = os.environ.get("LITEFS_PY_BIN")
    if env:
        return env
    target = Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "target")
    for profile in ("release", "debug"):
        p = target / profile / "litefs-py"
        if p.is_file():
            return str(p)
    found = shutil.which("litefs-py")
    if found:
        return found
    raise ClusterError("no litefs-py binary: cargo build --release, or set $LITEFS_PY_BIN")


def litefs_binary() -> str | None:
    """``$LITEFS``, else ``litefs`` on PATH, else ``~/go/bin/litefs``; None if there is none."""
    env = os.environ.get("LITEFS")
    if env:
        return env if os.path.isfile(env) else None
    found = shutil.which("litefs")
    if found:
        return found
    p = Path.home() / "go/bin/litefs"
    return str(p) if p.is_file() else None


def _is_mounted(path: Path) -> bool:
    target = str(path)
    with open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 1 and fields[1].replace("\\040", " ") == target:
                return True
    return False


def _port_free(ip: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((ip, port))
        except OSError:
            return False
    return True


def _children(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/children") as f:
                out.extend(int(c) for c in f.read().split())
    return out


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> object:
        return json.loads(self.body)


def request(
    url: str,
    method: str = "GET",
    data: dict[str, str] | None = None,
    timeout: float = 5.0,
) -> Response:
    """One HTTP request; redirects are not followed (the caller sees them)."""
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        body = json.dumps(data).encode() if data is not None else None
        headers = {"Content-Type": "application/json"} if body is not None else {}
        path = u.path + (f"?{u.query}" if u.query else "")
        conn.request(method, path or "/", body=body, headers=headers)
        r = conn.getresponse()
        return Response(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
    finally:
        conn.close()


def try_request(url: str, method: str = "GET", **kw: object) -> Response | None:
    try:
        return request(url, method, **kw)  # type: ignore[arg-type]
    except (OSError, http.client.HTTPException):
        return None


@dataclass
class Node:
    id: int
    ip: str
    dir: Path
    ports: dict[int, int]
    proc: subprocess.Popen[bytes] | None = None
    litefs_pid: int | None = None
    starts: int = 0

    @property
    def name(self) -> str:
        return self.ip

    @property
    def url(self) -> str:
        return f"http://{self.ip}:{self.ports[APP]}"

    @property
    def mnt(self) -> Path:
        return self.dir / "mnt"

    @property
    def config(self) -> Path:
        return self.dir / "litefs-py.yml"

    @property
    def log_path(self) -> Path:
        return self.dir / "run.log"

    @property
    def running(self) -> bool:
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
        if not _is_mounted(self.mnt):
            return None
        try:
            return (self.mnt / ".primary").read_text().strip() or None
        except FileNotFoundError:
            return self.ip
        except OSError:
            return None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def find_litefs(self) -> int | None:
        """LiteFS as this node's run started it: the run's child whose command line names this
        node's generated litefs.yml."""
        if not self.running:
            return (
                self.litefs_pid
                if self.litefs_pid and self._is_our_litefs(self.litefs_pid)
                else None
            )
        assert self.proc is not None
        for child in _children(self.proc.pid):
            if self._is_our_litefs(child):
                self.litefs_pid = child
                return child
        return None

    def _is_our_litefs(self, pid: int) -> bool:
        cmd = _cmdline(pid)
        return " mount " in f" {cmd} " and str(self.dir / "litefs.yml") in cmd


@dataclass
class Cluster:
    """``size`` nodes under ``work`` (a temp dir when None), addresses ``127.0.0.<ip_base+N>``."""

    size: int = 3
    work: Path | None = None
    ip_base: int = 10
    app_workers: int = 2
    env: dict[str, str] = field(default_factory=dict)
    nodes: list[Node] = field(default_factory=list)
    _own_work: bool = False

    def __post_init__(self) -> None:
        self.bin = litefs_py_binary()
        litefs = litefs_binary()
        if litefs is None:
            raise ClusterError(
                "no litefs binary: install LiteFS v0.5.14 (scripts/setup) or set $LITEFS"
            )
        self.litefs = litefs
        if self.work is None:
            self.work = Path(tempfile.mkdtemp(prefix="guestbook-cluster."))
            self._own_work = True
        self.work.mkdir(parents=True, exist_ok=True)
        ips = [f"127.0.0.{self.ip_base + i}" for i in range(1, self.size + 1)]
        base = self._free_ports(ips)
        ports = {k: base + k for k in (RAFT, STATUS, LEASE, LITEFS_HTTP, APP)}
        self.app_port = ports[APP]
        secret = self.work / "secret"
        secret.write_text(secrets.token_hex(16) + "\n")
        secret.chmod(0o600)
        for i, ip in enumerate(ips, 1):
            node = Node(id=i, ip=ip, dir=self.work / f"n{i}", ports=dict(ports))
            for d in ("raft", "lower", "mnt", "litefs-data"):
                (node.dir / d).mkdir(parents=True, exist_ok=True)
            node.config.write_text(self._config(node, ips, secret))
            self.nodes.append(node)

    @staticmethod
    def _free_ports(ips: list[str]) -> int:
        """A base port such that base..base+4 are free on every address (bounded tries)."""
        rng = secrets.SystemRandom()
        for _ in range(200):
            base = rng.randrange(21000, 29000, 10)
            if all(_port_free(ip, base + k) for ip in ips for k in range(5)):
                return base
        raise ClusterError("no free ports found in 21000-29000")

    def _config(self, n: Node, ips: list[str], secret: Path) -> str:
        peers = "".join(f"    {i}: {ip}:{n.ports[RAFT]}\n" for i, ip in enumerate(ips, 1))
        return f"""\
# Node {n.id} of the guestbook's local cluster (written by examples/guestbook/cluster.py).
node:
  id: {n.id}
  hostname: {n.ip}                 # what .primary shows; also where its app listens
  raft-addr: {n.ip}:{n.ports[RAFT]}
  http-addr: {n.ip}:{n.ports[STATUS]}
cluster:
  bootstrap: {"true" if n.id == 1 else "false"}
  peers:
{peers}  secret-file: {secret}
  data-dir: {n.dir}/raft
mount:
  dir: {n.dir}/mnt
  lower: {n.dir}/lower
lease:
  addr: {n.ip}:{n.ports[LEASE]}
  ttl: 3s
litefs:
  binary: {self.litefs}
  data-dir: {n.dir}/litefs-data
  http-addr: {n.ip}:{n.ports[LITEFS_HTTP]}
  advertise-url: http://{n.ip}:{n.ports[LITEFS_HTTP]}
run:
  grace: 10s
"""

    # --- processes ---------------------------------------------------------------------------

    def start(self, node: Node) -> None:
        if node.running:
            raise ClusterError(f"node {node.id} already runs")
        self._detach_mounts(node)
        env = {
            **os.environ,
            "GUESTBOOK_BIND": f"{node.ip}:{node.ports[APP]}",
            "GUESTBOOK_WORKERS": str(self.app_workers),
            "GUESTBOOK_PRIMARY_URL": f"http://{{primary}}:{node.ports[APP]}",
            "DJANGO_ALLOWED_HOSTS": ",".join(n.ip for n in self.nodes),
            "PYTHONUNBUFFERED": "1",
            # Inherited by everything the node starts (LiteFS, start.py, gunicorn's workers): a
            # last-resort cleanup (scripts/demo's trap) finds this run's processes by it.
            "GUESTBOOK_CLUSTER": str(self.work),
            "LITEFS_PY_LOG": os.environ.get("LITEFS_PY_LOG", "info"),
            **self.env,
        }
        env.pop("LITEFS_PY_SECRET", None)
        log = open(node.log_path, "ab")  # noqa: SIM115 (the child keeps it)
        node.starts += 1
        log.write(f"\n==== start #{node.starts} ====\n".encode())
        log.flush()
        try:
            node.proc = subprocess.Popen(
                [
                    self.bin,
                    "run",
                    "--config",
                    str(node.config),
                    "--",
                    sys.executable,
                    str(HERE / "start.py"),
                ],
                cwd=HERE,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()
        node.litefs_pid = None

    def start_all(self) -> None:
        for n in self.nodes:
            self.start(n)

    def kill9(self, node: Node) -> None:
        """SIGKILL to the node's run and app (their process group) and to its LiteFS."""
        if node.proc is None:
            return
        litefs = node.find_litefs()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(node.proc.pid, signal.SIGKILL)
        if litefs is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(litefs, signal.SIGKILL)
        node.proc.wait(timeout=10)
        self._settle(node, litefs)

    def stop(self, node: Node, timeout: float = 40.0) -> int | None:
        """SIGTERM to the node's run (it stops the app, the shim, LiteFS in order); SIGKILL
        after ``timeout``. Returns the run's exit status."""
        return self.stop_many([node], timeout).get(node.id)

    def stop_many(self, nodes: list[Node], timeout: float = 40.0) -> dict[int, int | None]:
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
            try:
                codes[n.id] = n.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(n.proc.pid, signal.SIGKILL)
                codes[n.id] = n.proc.wait(timeout=10)
            # The app's processes, should any have outlived the run (same process group).
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(n.proc.pid, signal.SIGKILL)
            self._settle(n, litefs[n.id])
        return codes

    def _settle(self, node: Node, litefs: int | None) -> None:
        if litefs is not None and node._is_our_litefs(litefs):
            with contextlib.suppress(ProcessLookupError):
                os.kill(litefs, signal.SIGKILL)
            for _ in range(100):
                if not node._is_our_litefs(litefs):
                    break
                time.sleep(0.05)
        node.proc = None
        node.litefs_pid = None
        self._detach_mounts(node)

    @staticmethod
    def _detach_mounts(node: Node) -> None:
        # The shim's watchdog unmounts mnt when its daemon dies; LiteFS's mount stays behind
        # when LiteFS is killed. Give the watchdog a moment, then detach what is left.
        for d in ("mnt", "lower"):
            path = node.dir / d
            for _ in range(40):
                if not _is_mounted(path):
                    break
                if d == "lower" or _ >= 20:
                    subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)
                time.sleep(0.05)

    def close(self) -> None:
        """Stops every node (also after a failure); removes the work dir if it made it."""
        try:
            self.stop_many(self.nodes)
        finally:
            for n in self.nodes:
                self._detach_mounts(n)
            if self._own_work and self.work is not None:
                shutil.rmtree(self.work, ignore_errors=True)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- looking -----------------------------------------------------------------------------

    def check_alive(self, nodes: list[Node] | None = None) -> None:
        for n in nodes or self.nodes:
            if n.proc is not None and n.proc.poll() is not None:
                code = n.proc.returncode
                raise ClusterError(f"node {n.id}'s litefs-py run exited ({code}):\n{n.log_tail()}")

    def primary(self) -> Node | None:
        """The running node whose ``.role`` says primary."""
        for n in self.nodes:
            if n.running and n.role() == "primary":
                return n
        return None

    def wait_primary(self, timeout: float = 60.0) -> Node:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            p = self.primary()
            if p is not None:
                return p
            time.sleep(0.05)
        raise ClusterError(f"no primary after {timeout:g} s\n" + self.logs())

    def wait_ready(self, nodes: list[Node] | None = None, timeout: float = 120.0) -> None:
        """Until every node's app answers ``/readyz`` with 200."""
        todo = list(nodes or [n for n in self.nodes if n.proc is not None])
        deadline = time.monotonic() + timeout
        while todo and time.monotonic() < deadline:
            self.check_alive(todo)
            r = try_request(todo[0].url + "/readyz", timeout=2)
            if r is not None and r.status == 200:
                todo.pop(0)
            else:
                time.sleep(0.1)
        if todo:
            raise ClusterError(
                f"node(s) {[n.id for n in todo]} not ready after {timeout:g} s\n" + self.logs()
            )

    def logs(self) -> str:
        return "\n".join(
            f"---- node {n.id} ({n.log_path}) ----\n{n.log_tail()}" for n in self.nodes
        )

    def table(self) -> str:
        rows = [f"   {'node':<6} {'address':<12} {'.role':<9} {'.primary':<12} app /readyz"]
        for n in self.nodes:
            if not n.running:
                rows.append(f"   {n.id:<6} {n.ip:<12} (stopped)")
                continue
            r = try_request(n.url + "/readyz", timeout=2)
            ready = "down" if r is None else str(r.status)
            role, primary = n.role() or "?", n.primary() or "(none)"
            rows.append(f"   {n.id:<6} {n.ip:<12} {role:<9} {primary:<12} {ready}")
        return "\n".join(rows)


# --- the demo ------------------------------------------------------------------------------------


def say(msg: str) -> None:
    print(msg, flush=True)


def post(node: Node, name: str, message: str) -> Response:
    return request(node.url + "/api/entries", "POST", {"name": name, "message": message})


def entries(node: Node) -> dict[str, object]:
    r = request(node.url + "/api/entries?limit=500")
    if r.status != 200:
        raise ClusterError(f"GET {node.url}/api/entries: {r.status} {r.body[:200]!r}")
    data = r.json()
    assert isinstance(data, dict)
    return data


def wait_count(node: Node, count: int, timeout: float = 10.0) -> float:
    """Seconds until ``node`` lists at least ``count`` entries."""
    t0 = time.monotonic()
    while True:
        r = try_request(node.url + "/api/entries?limit=0", timeout=2)
        if r is not None and r.status == 200 and r.json()["count"] >= count:  # type: ignore[index]
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise ClusterError(f"node {node.id} did not reach {count} entries in {timeout:g} s")
        time.sleep(0.02)


def failover(c: Cluster, old: Node, timeout: float = 60.0) -> tuple[Node, float, float]:
    """After ``old`` died: POSTs to every survivor until one accepts (201). Returns that node,
    the seconds until a survivor's ``.role`` said primary and until the write was accepted
    (both from now, the kill)."""
    t0 = time.monotonic()
    survivors = [n for n in c.nodes if n is not old and n.running]
    t_role: float | None = None
    while time.monotonic() - t0 < timeout:
        c.check_alive(survivors)
        for n in survivors:
            if t_role is None and n.role() == "primary":
                t_role = time.monotonic() - t0
            r = try_request(
                n.url + "/api/entries",
                "POST",
                data={"name": "demo", "message": f"first write after node {old.id} died"},
                timeout=2,
            )
            if r is not None and r.status == 201:
                t_write = time.monotonic() - t0
                return n, t_role if t_role is not None else t_write, t_write
        time.sleep(0.05)
    raise ClusterError(f"no write accepted within {timeout:g} s of the kill\n" + c.logs())


def demo(c: Cluster) -> float:
    """The tour; returns the failover time (kill -9 to the first accepted write), seconds."""
    say(f"== starting {c.size} guestbook nodes (work dir {c.work}, app port {c.app_port})")
    say("   each: litefs-py run --config nN/litefs-py.yml -- python start.py")
    t0 = time.monotonic()
    c.start_all()
    p = c.wait_primary(90)
    c.wait_ready(timeout=120)
    say(f"   primary: node {p.id} ({p.ip}); every app ready after {time.monotonic() - t0:.1f} s")
    say(c.table())
    replicas = [n for n in c.nodes if n is not p]

    say(f"\n== write on the primary: POST {p.url}/api/entries")
    for i in range(1, 4):
        r = post(p, "demo", f"hello #{i} before the failover")
        body = r.json()
        assert isinstance(body, dict)
        say(f"   {r.status} id={body['id']} accepted by {body['node']}")
    for n in replicas:
        took = wait_count(n, 3)
        d = entries(n)
        latest = d["entries"][0]["message"]  # type: ignore[index]
        say(
            f"   node {n.id} ({d['role']}) lists {d['count']} entries, latest {latest!r} "
            f"(replicated within {took * 1000:.0f} ms)"
        )

    n = replicas[0]
    say(f"\n== a POST to a replica (node {n.id}) is redirected to the primary")
    r = post(n, "demo", "sent to a replica")
    say(f"   {r.status} Location: {r.headers.get('location')}")
    if r.status != 307:
        raise ClusterError(f"expected a 307 from the replica, got {r.status}: {r.body[:200]!r}")
    r2 = request(r.headers["location"], "POST", {"name": "demo", "message": "sent to a replica"})
    say(f"   re-sent there: {r2.status}, accepted by {r2.json()['node']}")  # type: ignore[index]
    before = int(entries(p)["count"])  # type: ignore[arg-type]
    for m in replicas:
        wait_count(m, before)

    say(f"\n== kill -9 the primary, node {p.id}: its litefs-py run, its app, its LiteFS")
    assert p.proc is not None
    pids = f"kill -KILL -- -{p.proc.pid} (litefs-py run + app); kill -KILL {p.find_litefs()}"
    say(f"   {pids} (LiteFS)")
    c.kill9(p)
    new, t_role, t_write = failover(c, p)
    say(
        f"   node {new.id} ({new.ip}) took over: its .role said primary {t_role * 1000:.0f} ms "
        f"after the kill; first write accepted {t_write * 1000:.0f} ms after the kill"
    )
    c.wait_ready([m for m in replicas if m is not new], timeout=60)
    d = entries(new)
    say(f"   node {new.id} lists {d['count']} entries ({before} from before the kill, + 1)")
    if int(d["count"]) != before + 1:  # type: ignore[arg-type]
        raise ClusterError(f"expected {before + 1} entries on the new primary, got {d['count']}")
    say(c.table())

    say(f"\n== restart node {p.id}: it rejoins as a replica")
    t0 = time.monotonic()
    c.start(p)
    c.wait_ready([p], timeout=120)
    wait_count(p, before + 1, timeout=30)
    d = entries(p)
    latest = d["entries"][0]["message"]  # type: ignore[index]
    say(
        f"   node {p.id} is {p.role()}, ready {time.monotonic() - t0:.1f} s after its start; "
        f"lists {d['count']} entries, latest {latest!r}"
    )
    say(c.table())
    say(f"\nfailover: {t_write * 1000:.0f} ms from kill -9 to the first write on the new primary")
    return t_write


HELP = """\
commands:  status | wait (for a primary) | kill N (kill -9 node N) | stop N (SIGTERM)
           start N | post N TEXT | get N | quit (or Ctrl-C, or end of input)"""


def repl(c: Cluster) -> None:
    """``up``: a few commands on stdin to play with the cluster."""
    by_id = {str(n.id): n for n in c.nodes}
    say(HELP)
    while True:
        try:
            line = input("cluster> ").strip()
        except EOFError:
            return
        cmd, _, rest = line.partition(" ")
        arg, _, text = rest.strip().partition(" ")
        node = by_id.get(arg)
        try:
            if cmd in ("quit", "exit"):
                return
            if cmd == "status":
                say(c.table())
            elif cmd == "wait":
                t0 = time.monotonic()
                p = c.wait_primary(60)
                say(f"node {p.id} is primary ({time.monotonic() - t0:.1f} s)")
            elif cmd in ("kill", "stop", "start", "post", "get") and node is None:
                say(f"which node? 1..{c.size}")
            elif cmd == "kill" and node is not None:
                c.kill9(node)
                say(f"node {node.id} killed (its litefs-py run, app and LiteFS)")
            elif cmd == "stop" and node is not None:
                say(f"node {node.id} stopped with status {c.stop(node)}")
            elif cmd == "start" and node is not None:
                c.start(node)
                c.wait_ready([node], timeout=120)
                say(f"node {node.id} is up: {node.role()}")
            elif cmd == "post" and node is not None:
                r = post(node, "cli", text or "hello")
                where = r.headers.get("location", "")
                say(f"{r.status} {where or r.body.decode(errors='replace')}")
            elif cmd == "get" and node is not None:
                d = entries(node)
                say(f"node {node.id} ({d['role']}): {d['count']} entries")
                for e in d["entries"][:5]:  # type: ignore[index]
                    say(f"   #{e['id']} {e['message']!r} accepted by {e['node']}")
            elif cmd:
                say(HELP)
        except (ClusterError, OSError, http.client.HTTPException) as e:
            say(f"error: {e}")


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("command", choices=["up", "demo"])
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--dir", type=Path, help="work directory (default: a new temp dir, removed)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("cluster.py: run as root (FUSE mounts)", file=sys.stderr)
        return 1
    if args.dir is not None and args.dir.exists() and any(args.dir.iterdir()):
        print(f"cluster.py: {args.dir} is not empty", file=sys.stderr)
        return 1

    def on_sigterm(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        with Cluster(size=args.nodes, work=args.dir) as c:
            try:
                if args.command == "demo":
                    demo(c)
                else:
                    c.start_all()
                    p = c.wait_primary(90)
                    c.wait_ready(timeout=120)
                    say(c.table())
                    say(f"\nprimary: node {p.id}. Every node serves the guestbook:")
                    for n in c.nodes:
                        say(f"   node {n.id}: {n.url}/   (log: {n.log_path})")
                    repl(c)
            except KeyboardInterrupt:
                pass
            say("\n== stopping (SIGTERM to each litefs-py run: the app, the shim, LiteFS, raft)")
        return 0
    except ClusterError as e:
        print(f"cluster.py: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
