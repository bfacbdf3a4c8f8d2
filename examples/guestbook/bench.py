#!/usr/bin/env python3
"""Requests per second of the guestbook: on a plain directory vs through the litefs-py shim.

Same app, same backend (``litefs.django``), same server (gunicorn, ``--workers``), same load,
same run; the configurations take turns (``--rounds``) so that drift hits them alike:

``plain``
    the database in a plain directory (outside any mount: the backend is plain SQLite, WAL,
    ``BEGIN IMMEDIATE``).
``shim``
    ``litefs-py mount --lower <plain dir> <mnt>`` (a one-node cluster, primary): the database
    through the shim, the backend reading ``.role`` as in production.
``litefs``
    (with a LiteFS binary) one node of ``litefs-py run``: the shim over the real LiteFS, the
    production stack (a one-node cluster, so no replication traffic).
``litefs-direct``
    the same node's LiteFS without the shim: the app's database on LiteFS's own mount (the
    shim's lower dir), as a plain LiteFS deployment has it. ``litefs`` / ``litefs-direct`` is
    the shim's cost in production.

Workloads: ``read`` = ``GET /api/entries?limit=20`` (a page of rows and a count, as JSON);
``write`` = ``POST /api/entries`` (one INSERT transaction). The load is ``--clients`` processes,
each sending one request at a time on a new connection (gunicorn's sync workers close it).
Prints a table and writes JSON (``--out``, default ``target/bench/guestbook-<time>.json``).

    sudo examples/guestbook/.venv/bin/python examples/guestbook/bench.py [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import multiprocessing as mp
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cluster import HERE, ROOT, Cluster
from litefs import testing
from litefs.testing import ClusterError, free_port, litefs_binary, try_request

READ_PATH = "/api/entries?limit=20"
WRITE_BODY = json.dumps({"name": "bench", "message": "x" * 100}).encode()


def _client(host: str, port: int, workload: str, duration: float, q: mp.Queue) -> None:
    lat: list[float] = []
    errors = 0
    end = time.monotonic() + duration
    while True:
        t0 = time.monotonic()
        if t0 >= end:
            break
        try:
            c = http.client.HTTPConnection(host, port, timeout=10)
            if workload == "read":
                c.request("GET", READ_PATH)
            else:
                c.request(
                    "POST",
                    "/api/entries",
                    body=WRITE_BODY,
                    headers={"Content-Type": "application/json"},
                )
            r = c.getresponse()
            r.read()
            c.close()
            ok = r.status == (200 if workload == "read" else 201)
        except (OSError, http.client.HTTPException):
            ok = False
        if ok:
            lat.append(time.monotonic() - t0)
        else:
            errors += 1
    q.put((lat, errors))


def measure(host: str, port: int, workload: str, clients: int, duration: float) -> dict:
    q: mp.Queue = mp.Queue()
    procs = [
        mp.Process(target=_client, args=(host, port, workload, duration, q)) for _ in range(clients)
    ]
    t0 = time.monotonic()
    for p in procs:
        p.start()
    results = [q.get(timeout=duration + 60) for _ in procs]
    for p in procs:
        p.join(timeout=10)
    elapsed = time.monotonic() - t0
    lat = sorted(x for r, _ in results for x in r)
    errors = sum(e for _, e in results)
    n = len(lat)
    return {
        "requests": n,
        "errors": errors,
        "seconds": round(elapsed, 3),
        "rps": round(n / elapsed, 1),
        "p50_ms": round(lat[n // 2] * 1000, 2) if n else None,
        "p99_ms": round(lat[min(n - 1, int(n * 0.99))] * 1000, 2) if n else None,
    }


class Server:
    """start.py (migrate, then gunicorn) in a session of its own, stopped by PID."""

    def __init__(self, name: str, bind: str, env: dict[str, str], workers: int, log: Path):
        self.name, self.bind = name, bind
        self.host, port = bind.rsplit(":", 1)
        self.port = int(port)
        full = {
            **os.environ,
            **env,
            "GUESTBOOK_BIND": bind,
            "GUESTBOOK_WORKERS": str(workers),
            "PYTHONUNBUFFERED": "1",
        }
        with open(log, "ab") as f:
            self.proc = subprocess.Popen(
                [sys.executable, str(HERE / "start.py")],
                cwd=HERE,
                env=full,
                stdin=subprocess.DEVNULL,
                stdout=f,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.log = log

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ClusterError(f"{self.name}: the app exited:\n{self.log.read_text()[-3000:]}")
            r = try_request(f"http://{self.bind}/api/entries?limit=0", timeout=2)
            if r is not None and r.status == 200:
                return
            time.sleep(0.1)
        raise ClusterError(f"{self.name}: not ready after {timeout} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    ap.add_argument("--no-litefs", action="store_true", help="skip the litefs-py run config")
    ap.add_argument("--quick", action="store_true", help="1 round of 2 s")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if args.quick:
        args.duration, args.rounds = 2.0, 1
    if os.geteuid() != 0:
        print("bench.py: run as root (FUSE mounts)", file=sys.stderr)
        return 1

    work = Path(tempfile.mkdtemp(prefix="guestbook-bench."))
    servers: list[Server] = []
    shims: testing.MountFactory | None = None
    cluster: Cluster | None = None
    mnt = work / "mnt"
    try:
        host = "127.0.0.1"
        # plain
        (work / "plain").mkdir()
        servers.append(
            Server(
                "plain",
                f"{host}:{free_port([host])}",
                {"GUESTBOOK_PLAIN_DB": str(work / "plain/guestbook.db")},
                args.workers,
                work / "plain.log",
            )
        )
        servers[-1].wait_ready()
        # shim over a plain dir
        (work / "lower").mkdir()
        mnt.mkdir()
        shims = testing.MountFactory(work, testing.litefs_py_binary(ROOT, ("release", "debug")))
        shim = shims.start(work / "lower", mnt, wait=False)
        shim.wait_ready(timeout=20)
        servers.append(
            Server(
                "shim",
                f"{host}:{free_port([host])}",
                {"LITEFS_DIR": str(mnt)},
                args.workers,
                work / "shim-app.log",
            )
        )
        servers[-1].wait_ready()
        # litefs-py run with the real LiteFS
        if not args.no_litefs and litefs_binary() is not None:
            cluster = Cluster(size=1, work=work / "litefs", ip_base=40, app_workers=args.workers)
            cluster.start_all()
            cluster.wait_primary(60)
            cluster.wait_ready(timeout=90)
            node = cluster.nodes[0]
            s = Server.__new__(Server)
            port = node.ports.app
            s.name, s.bind, s.host, s.port = "litefs", f"{node.ip}:{port}", node.ip, port
            servers.append(s)
            # The same LiteFS without the shim: the app on LiteFS's own mount (its lower dir).
            servers.append(
                Server(
                    "litefs-direct",
                    f"{host}:{free_port([host])}",
                    {"GUESTBOOK_PLAIN_DB": str(node.dir / "lower/direct.db")},
                    args.workers,
                    work / "litefs-direct.log",
                )
            )
            servers[-1].wait_ready()

        results: dict[str, dict[str, list[dict]]] = {
            s.name: {"read": [], "write": []} for s in servers
        }
        # A first write so that reads see rows, and a short warm-up of every path.
        for s in servers:
            for w in ("write", "read"):
                measure(s.host, s.port, w, 1, 0.5)
        for rnd in range(args.rounds):
            for w in ("read", "write"):
                for s in servers:
                    m = measure(s.host, s.port, w, args.clients, args.duration)
                    results[s.name][w].append(m)
                    print(
                        f"round {rnd + 1}/{args.rounds} {w:<5} {s.name:<14} {m['rps']:>8.1f} req/s"
                        f"  p50 {m['p50_ms']} ms  p99 {m['p99_ms']} ms  errors {m['errors']}",
                        flush=True,
                    )
    finally:
        for s in servers:
            if hasattr(s, "proc"):
                s.stop()
        if cluster is not None:
            cluster.close()
        if shims is not None:
            # SIGTERM, SIGKILL after a bound, and nothing left mounted at mnt.
            for problem in shims.cleanup():
                print(f"bench.py: {problem}", file=sys.stderr)

    summary: dict[str, dict[str, dict]] = {}
    for name, by_w in results.items():
        summary[name] = {}
        for w, ms in by_w.items():
            rps = [m["rps"] for m in ms]
            summary[name][w] = {
                "rps_median": round(statistics.median(rps), 1),
                "rps_min": min(rps),
                "rps_max": max(rps),
                "p50_ms_median": statistics.median(m["p50_ms"] for m in ms),
                "p99_ms_median": statistics.median(m["p99_ms"] for m in ms),
                "errors": sum(m["errors"] for m in ms),
            }
    print(
        f"\nguestbook, gunicorn --workers {args.workers}, {args.clients} clients, "
        f"{args.rounds} x {args.duration:g} s per cell (median; ratio to plain)"
    )
    print(f"{'config':<14} {'read req/s':>12} {'ratio':>6} {'write req/s':>12} {'ratio':>6}")
    base = summary["plain"]

    def ratio(cells: dict, w: str) -> str:
        b = base[w]["rps_median"]
        return f"{cells[w]['rps_median'] / b:>6.2f}" if b else f"{'-':>6}"

    for name, cells in summary.items():
        r, w = cells["read"]["rps_median"], cells["write"]["rps_median"]
        print(f"{name:<14} {r:>12.1f} {ratio(cells, 'read')} {w:>12.1f} {ratio(cells, 'write')}")
        for k, v in summary[name].items():
            v["ratio_to_plain"] = (
                round(v["rps_median"] / base[k]["rps_median"], 3) if base[k]["rps_median"] else None
            )
    out = args.out or ROOT / "target/bench" / time.strftime("guestbook-%Y%m%d-%H%M%S.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "bench": "guestbook",
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "host": {
                    "kernel": platform.release(),
                    "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                },
                "params": {
                    "workers": args.workers,
                    "clients": args.clients,
                    "duration_s": args.duration,
                    "rounds": args.rounds,
                    "read": f"GET {READ_PATH}",
                    "write": "POST /api/entries",
                },
                "summary": summary,
                "runs": results,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"JSON: {out}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
