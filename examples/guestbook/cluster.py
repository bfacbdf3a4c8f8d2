#!/usr/bin/env python3
"""A local guestbook cluster: N nodes of ``litefs-py run`` with the real LiteFS, on loopback.

    cluster.py up     [--nodes 3] [--dir DIR]   start, print the URLs, run until Ctrl-C
    cluster.py demo   [--dir DIR]               the scripted tour (scripts/demo runs it)

Every node looks like a host of its own: node N has the loopback address 127.0.0.(10+N) (any
127.x address is loopback on Linux), which is also its litefs-py hostname (what ``.primary``
shows), and the same ports as the others on it: raft, status, lease API, LiteFS, litefs-py's
HTTP proxy (the port clients use) and the app behind it.

Each node runs ``litefs-py run --config nN/litefs-py.yml --migrate "python manage.py migrate
--no-input" -- gunicorn``: raft, the lease API and the proxy, LiteFS (its FUSE mount at
``nN/lower``), the shim at ``nN/mnt`` (``$LITEFS_DIR``), then the migration on the primary (a
replica waits until the migrated schema has replicated to it), then gunicorn (configured by
gunicorn.conf.py). The proxy sends a replica's writes to the primary.

The cluster itself (processes, ports, litefs-py.yml, stopping by PID, detaching only the
nodes' own mounts) is :class:`litefs.testing.RunCluster`; this file adds the guestbook's app
and its environment. The tour and the prompt are in demo.py, the API calls in api.py. Also a
library: the tests and bench.py use :class:`Cluster`.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
from pathlib import Path

from demo import demo, repl, say, table
from litefs.testing import ClusterError, MissingBinary, RunCluster, RunNode, litefs_py_binary

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
#: What ``litefs-py run --migrate`` runs on the primary before the app (a shell command, in HERE).
MIGRATE = f"{shlex.quote(sys.executable)} manage.py migrate --no-input"
#: The app: gunicorn with gunicorn.conf.py (HERE), from this venv.
SERVER = (sys.executable, "-m", "gunicorn")


class Cluster(RunCluster):
    """``size`` guestbook nodes under ``work`` (a temp dir when None), addresses
    ``127.0.0.<ip_base+N>``, the default lease TTL, ``app_workers`` gunicorn workers each,
    behind litefs-py's proxy unless ``proxy`` is False (the benchmark measures the app alone)."""

    def __init__(
        self,
        size: int = 3,
        work: Path | None = None,
        ip_base: int = 10,
        app_workers: int = 2,
        env: dict[str, str] | None = None,
        proxy: bool = True,
    ) -> None:
        self.app_workers = app_workers
        super().__init__(
            size,
            work,
            ip_base=ip_base,
            app=SERVER,
            app_cwd=HERE,
            env=env,
            run_grace="10s",
            # The demo's build (scripts/demo: cargo build --release) first.
            litefs_py=litefs_py_binary(ROOT, ("release", "debug")),
            run_args=["--migrate", MIGRATE],
            proxy=proxy,
        )

    def node_env(self, node: RunNode) -> dict[str, str]:
        return {
            # Behind the proxy: its target (the app is reached through the proxy only).
            "GUESTBOOK_BIND": f"{node.ip}:{node.ports.target or node.ports.app}",
            "GUESTBOOK_WORKERS": str(self.app_workers),
            "DJANGO_ALLOWED_HOSTS": ",".join(n.ip for n in self.nodes),
            # Inherited by everything the node starts (LiteFS, the migration, gunicorn's workers): a
            # last-resort cleanup (scripts/demo's trap) finds this run's processes by it.
            "GUESTBOOK_CLUSTER": str(self.work),
        }


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
                    say(table(c))
                    say(f"\nprimary: node {p.id}. Every node serves the guestbook:")
                    for n in c.nodes:
                        say(f"   node {n.id}: {n.url}/   (log: {n.log_path})")
                    repl(c)
            except KeyboardInterrupt:
                pass
            say("\n== stopping (SIGTERM to each litefs-py run: the app, the shim, LiteFS, raft)")
        return 0
    except (ClusterError, MissingBinary) as e:
        print(f"cluster.py: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
