"""A cluster of ``litefs-py run`` nodes with the real LiteFS, on loopback, for the Django tests.

Every node has its own directory (raft data, LiteFS data, LiteFS's mount at ``lower/``, the shim
at ``mnt/``) and ports; its app only sleeps (the tests run Django themselves against ``mnt/``).
Each process is ours and is only signalled by its PID: the ``litefs-py run`` (our child) and,
if that had to be killed, the LiteFS it started (its PID from the run's log, checked against its
command line). ``stop()`` also detaches a mount left behind at ``lower/`` or ``mnt/``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import shimtest

SECRET = "pybridge-litefs-secret"
#: How long a node may take to stop after SIGTERM (app, shim, then LiteFS).
STOP_TIMEOUT = 30.0


def litefs_binary() -> str | None:
    """``$LITEFS``, else ``litefs`` on PATH, else ``~/go/bin/litefs``."""
    if os.environ.get("LITEFS"):
        return os.environ["LITEFS"]
    found = shutil.which("litefs")
    if found:
        return found
    home = Path.home() / "go" / "bin" / "litefs"
    return str(home) if home.is_file() else None


class RunNode:
    def __init__(self, root: Path, node_id: int, peers: dict[int, str], secret: Path, litefs: str):
        self.root = root
        self.id = node_id
        self.hostname = f"node-{node_id}"
        self.mnt = root / "mnt"
        self.lower = root / "lower"
        self.log = root / "run.log"
        self.config = root / "litefs-py.yml"
        self.proc: subprocess.Popen[bytes] | None = None
        root.mkdir(parents=True)
        litefs_http = f"127.0.0.1:{shimtest.free_port()}"
        peer_lines = "".join(f"    {i}: {a}\n" for i, a in sorted(peers.items()))
        self.config.write_text(
            f"node:\n  id: {node_id}\n  hostname: {self.hostname}\n"
            f"  raft-addr: {peers[node_id]}\n  http-addr: 127.0.0.1:{shimtest.free_port()}\n"
            f"cluster:\n  bootstrap: {'true' if node_id == 1 else 'false'}\n  peers:\n{peer_lines}"
            f"  secret-file: {secret}\n  data-dir: {root}/raft\n"
            f"mount:\n  dir: {self.mnt}\n  lower: {self.lower}\n"
            f"lease:\n  addr: 127.0.0.1:{shimtest.free_port()}\n"
            f"litefs:\n  binary: {litefs}\n  data-dir: {root}/litefs-data\n"
            f"  http-addr: {litefs_http}\n  advertise-url: http://{litefs_http}\n"
            "run:\n  grace: 5s\n"
        )

    def start(self) -> None:
        env = {k: v for k, v in shimtest.daemon_env().items() if k != "LITEFS_PY_SECRET"}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    str(shimtest.binary()),
                    "run",
                    "--config",
                    str(self.config),
                    "--",
                    "sleep",
                    "100000",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.root,
                start_new_session=True,
            )

    def role(self) -> str | None:
        try:
            return (self.mnt / ".role").read_text().strip()
        except OSError:
            return None

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def litefs_pid(self) -> int | None:
        """LiteFS's PID from the log, if that process still runs LiteFS with our config."""
        for line in self.output().splitlines():
            if "LiteFS started" in line and "pid=" in line:
                try:
                    pid = int(line.split("pid=")[1].split()[0])
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                except (ValueError, OSError):
                    return None
                return pid if str(self.root).encode() in cmdline else None
        return None

    def stop(self, sig: int = signal.SIGTERM) -> list[str]:
        """Stops the node (by its PID) and makes sure nothing of it is left; the problems."""
        problems: list[str] = []
        p = self.proc
        if p is not None and p.poll() is None:
            p.send_signal(sig)
            try:
                p.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                problems.append(
                    f"node {self.id}: litefs-py run did not stop within {STOP_TIMEOUT} s"
                )
                p.kill()
                p.wait(timeout=10)
        pid = self.litefs_pid()
        if pid is not None:
            problems.append(f"node {self.id}: LiteFS (pid {pid}) outlived its litefs-py run")
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
            time.sleep(0.3)
        for d in (self.mnt, self.lower):
            if shimtest.is_mounted(d):
                problems.append(f"node {self.id}: {d} still mounted; umount -l")
                subprocess.run(["umount", "-l", str(d)], check=False, timeout=10)
        return problems


class RunCluster:
    def __init__(self, base: Path, n: int, litefs: str):
        secret = base / "secret"
        secret.write_text(SECRET + "\n")
        peers = {i: f"127.0.0.1:{shimtest.free_port()}" for i in range(1, n + 1)}
        self.nodes = [RunNode(base / f"n{i}", i, peers, secret, litefs) for i in peers]

    def start(self) -> None:
        for n in self.nodes:
            n.start()

    def wait_roles(self, timeout: float = 60.0) -> tuple[RunNode, list[RunNode]]:
        """Until one node says primary and every other replica: (primary, replicas)."""
        deadline = time.monotonic() + timeout
        while True:
            for n in self.nodes:
                if n.proc is not None and n.proc.poll() is not None:
                    raise AssertionError(
                        f"node {n.id} exited ({n.proc.returncode}):\n{n.output()[-3000:]}"
                    )
            roles = {n.id: n.role() for n in self.nodes}
            primaries = [n for n in self.nodes if roles[n.id] == "primary"]
            replicas = [n for n in self.nodes if roles[n.id] == "replica"]
            if len(primaries) == 1 and len(replicas) == len(self.nodes) - 1:
                return primaries[0], replicas
            if time.monotonic() > deadline:
                tails = "\n".join(f"--- node {n.id}\n{n.output()[-2000:]}" for n in self.nodes)
                raise AssertionError(f"no primary + replicas after {timeout} s: {roles}\n{tails}")
            time.sleep(0.1)

    def stop(self) -> list[str]:
        problems: list[str] = []
        for n in reversed(self.nodes):
            problems += n.stop()
        return problems
