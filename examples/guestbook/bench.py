#!/usr/bin/env python3
"""Requests per second of the guestbook: on a plain directory vs through the litefs-py shim.

Same app, same backend (``litefs.django``), same server (gunicorn, ``--workers``), same load,
same run; the configurations take turns (``--rounds``) so that drift hits them alike:

``plain``
    the database in a plain directory (outside any mount: the backend is plain SQLite, WAL,
    ``BEGIN IMMEDIATE``).
``shim``
    ``litefs-py mount --config`` over a plain dir (a one-node raft cluster, primary): the
    database through the shim, the backend reading ``.role`` as in production.
``litefs``
    (with a LiteFS binary) one node of ``litefs-py run``: the shim over the real LiteFS, the
    production stack (a one-node cluster, so no replication traffic).
``litefs-proxy``
    the same node's app through litefs-py's proxy (``proxy:``, in front of it on that node):
    ``litefs-proxy`` / ``litefs`` is what the proxy costs a Django request.
``litefs-direct``
    the same node's LiteFS without the shim: the app's database on LiteFS's own mount (the
    shim's lower dir), as a plain LiteFS deployment has it. ``litefs`` / ``litefs-direct`` is
    the shim's cost in production.

Workloads: ``read`` = ``GET /api/entries?limit=20`` (a page of rows and a count, as JSON);
``write`` = ``POST /api/entries`` (one INSERT transaction). The load is ``--clients`` processes,
each sending one request at a time on a new connection (gunicorn's sync workers close it).
Prints a table with the ratio to ``plain`` and to ``litefs-direct`` (LiteFS alone), and the FUSE
requests per HTTP request that reach the shim, by operation (from its ``/metrics``, read before
and after each measurement): ``served`` counts the requests the shim answered, ``forwarded`` the
syscalls it made on its lower dir for them (over LiteFS each is a round trip into LiteFS's own
FUSE server), ``role`` the opens of ``.role``/``.health``/``.primary`` (the backend's role
checks that reached the shim). Writes JSON (``--out``, default
``target/bench/guestbook-<time>.json``).

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
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cluster import HERE, MIGRATE, ROOT, SERVER, Cluster
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


def scrape(addr: str | None) -> dict[str, float]:
    """The shim's FUSE counters from ``http://<addr>/metrics``: ``served:<op>``,
    ``forwarded:<op>`` and ``role:<file>``; empty without an address."""
    if addr is None:
        return {}
    host, port = addr.rsplit(":", 1)
    c = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        c.request("GET", "/metrics")
        text = c.getresponse().read().decode()
    finally:
        c.close()
    keys = {
        "litefs_py_fuse_requests_total": ("served", "op"),
        "litefs_py_fuse_lower_calls_total": ("forwarded", "op"),
        "litefs_py_fuse_virtual_opens_total": ("role", "file"),
    }
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or "{" not in line:
            continue
        name, rest = line.split("{", 1)
        if name not in keys:
            continue
        kind, label = keys[name]
        value = rest.split(f'{label}="', 1)[1].split('"', 1)[0]
        out[f"{kind}:{value}"] = float(rest.rsplit(" ", 1)[1])
    return out


def per_request(before: dict[str, float], after: dict[str, float], n: int) -> dict[str, float]:
    """The counters' growth divided by ``n`` HTTP requests (only those that grew)."""
    if not n:
        return {}
    return {
        k: round((after[k] - before.get(k, 0.0)) / n, 2)
        for k in sorted(after)
        if after[k] - before.get(k, 0.0) > 0
    }


def fuse_line(counts: dict[str, float]) -> str:
    """``served 12.0 (lookup 3.0 ...) forwarded 9.0 (...) role 1.0``: one line per cell."""
    if not counts:
        return ""
    parts = []
    for kind in ("served", "forwarded", "role"):
        items = {k.split(":", 1)[1]: v for k, v in counts.items() if k.startswith(kind + ":")}
        total = sum(v for op, v in items.items() if op != "forget")
        detail = " ".join(f"{op} {v:g}" for op, v in sorted(items.items(), key=lambda x: -x[1]))
        parts.append(f"{kind} {total:.1f}" + (f" ({detail})" if detail else ""))
    return "FUSE per request: " + "; ".join(parts)


class Server:
    """``manage.py migrate``, then gunicorn (gunicorn.conf.py) in a session of its own, stopped
    by PID: what ``litefs-py run --migrate`` does on a primary, without run."""

    def __init__(self, name: str, bind: str, env: dict[str, str], workers: int, log: Path):
        self.name, self.bind = name, bind
        #: The shim's node.http-addr (its /metrics), when the app runs on a shim.
        self.metrics_addr: str | None = None
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
            migrated = subprocess.run(
                shlex.split(MIGRATE), cwd=HERE, env=full, stdout=f, stderr=subprocess.STDOUT
            )
            if migrated.returncode != 0:
                raise ClusterError(f"{name}: migrate failed:\n{log.read_text()[-3000:]}")
            self.proc = subprocess.Popen(
                list(SERVER),
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


AUTOGROUP = Path("/proc/sys/kernel/sched_autogroup_enabled")


def autogroup_off() -> str | None:
    """Turns the kernel's autogroup scheduling off for the run; returns the setting to restore.

    With it on, each session shares the CPU as one group. Under ``litefs-py run`` the app and
    LiteFS are in one session (as they are under LiteFS's own ``exec``), while this script starts
    the other configurations' servers in sessions of their own: ``litefs-direct`` would get a
    CPU share of its own next to its LiteFS's, and the comparison would measure the scheduler
    (about 10 % of the read rate here), not the data path."""
    try:
        before = AUTOGROUP.read_text()
    except OSError:
        return None
    if before.strip() == "0":
        return None
    try:
        AUTOGROUP.write_text("0")
    except OSError as e:
        print(f"bench.py: could not turn autogroup scheduling off ({e})", file=sys.stderr)
        return None
    print("bench.py: autogroup scheduling off for this run (restored at the end)", flush=True)
    return before


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
    autogroup = autogroup_off()
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
        shims = testing.MountFactory(work, testing.litefs_py_binary(ROOT, ("release", "debug")))
        # A one-node raft cluster: the role comes from raft as in production, and the shim
        # serves /metrics on node.http-addr.
        (work / "shimc").mkdir()
        (shim_node,) = testing.mount_cluster(shims, work / "shimc", [1], ready_timeout=20)
        testing.wait_mount_roles([shim_node], timeout=30)
        mnt = shim_node.mnt
        servers.append(
            Server(
                "shim",
                f"{host}:{free_port([host])}",
                {"LITEFS_DIR": str(mnt)},
                args.workers,
                work / "shim-app.log",
            )
        )
        servers[-1].metrics_addr = http_addr(shim_node.config)
        servers[-1].wait_ready()
        # litefs-py run with the real LiteFS
        if not args.no_litefs and litefs_binary() is not None:
            # The node runs litefs-py's proxy in front of its app: `litefs` is the app straight
            # (the app's data path over the shim, against LiteFS alone), `litefs-proxy` the
            # same app through the proxy (what the proxy costs a Django request).
            cluster = Cluster(
                size=1, work=work / "litefs", ip_base=40, app_workers=args.workers, proxy=True
            )
            cluster.start_all()
            cluster.wait_primary(60)
            cluster.wait_ready(timeout=90)
            node = cluster.nodes[0]
            assert node.ports.target is not None
            for name, port in (("litefs", node.ports.target), ("litefs-proxy", node.ports.app)):
                s = Server.__new__(Server)
                s.name, s.bind, s.host, s.port = name, f"{node.ip}:{port}", node.ip, port
                s.metrics_addr = f"{node.ip}:{node.ports.status}"
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
                    before = scrape(s.metrics_addr)
                    m = measure(s.host, s.port, w, args.clients, args.duration)
                    m["fuse_per_request"] = per_request(
                        before, scrape(s.metrics_addr), m["requests"] + m["errors"]
                    )
                    results[s.name][w].append(m)
                    print(
                        f"round {rnd + 1}/{args.rounds} {w:<5} {s.name:<14} {m['rps']:>8.1f} req/s"
                        f"  p50 {m['p50_ms']} ms  p99 {m['p99_ms']} ms  errors {m['errors']}",
                        flush=True,
                    )
                    if m["fuse_per_request"]:
                        print(f"    {fuse_line(m['fuse_per_request'])}", flush=True)
    finally:
        if autogroup is not None:
            AUTOGROUP.write_text(autogroup)
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
                # The last round's counts (they barely move between rounds).
                "fuse_per_request": ms[-1].get("fuse_per_request", {}),
            }
    print(
        f"\nguestbook, gunicorn --workers {args.workers}, {args.clients} clients, "
        f"{args.rounds} x {args.duration:g} s per cell (median; ratios to plain and to LiteFS "
        "alone, litefs-direct, measured in the same run)"
    )
    print(
        f"{'config':<14} {'read req/s':>10} {'/plain':>7} {'/LiteFS':>7}"
        f" {'write req/s':>11} {'/plain':>7} {'/LiteFS':>7}"
    )
    base = summary["plain"]
    alone = summary.get("litefs-direct")

    def ratio(cells: dict, w: str, against: dict | None) -> float | None:
        b = against[w]["rps_median"] if against else 0
        return round(cells[w]["rps_median"] / b, 3) if b else None

    def cell(x: float | None) -> str:
        return f"{x:>7.2f}" if x is not None else f"{'-':>7}"

    for name, cells in summary.items():
        for k, v in cells.items():
            v["ratio_to_plain"] = ratio(cells, k, base)
            v["ratio_to_litefs_alone"] = ratio(cells, k, alone)
        r, w = cells["read"], cells["write"]
        print(
            f"{name:<14} {r['rps_median']:>10.1f} {cell(r['ratio_to_plain'])}"
            f" {cell(r['ratio_to_litefs_alone'])} {w['rps_median']:>11.1f}"
            f" {cell(w['ratio_to_plain'])} {cell(w['ratio_to_litefs_alone'])}"
        )
    if "litefs-proxy" in summary:
        app, prx = summary["litefs"], summary["litefs-proxy"]
        proxy_ratio = {w: ratio(prx, w, app) for w in ("read", "write")}
        for w in ("read", "write"):
            prx[w]["ratio_to_app"] = proxy_ratio[w]
        print(
            f"the proxy: litefs-proxy / litefs (the same app straight): read "
            f"{cell(proxy_ratio['read']).strip()}, write {cell(proxy_ratio['write']).strip()}"
        )
    for name, cells in summary.items():
        for w in ("read", "write"):
            if cells[w]["fuse_per_request"]:
                print(f"{name:<7} {w:<5} {fuse_line(cells[w]['fuse_per_request'])}")
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


def http_addr(config: Path) -> str:
    """``node.http-addr`` of a litefs-py.yml the test kit wrote."""
    for line in config.read_text().splitlines():
        key, _, value = line.strip().partition(":")
        if key == "http-addr":
            return value.strip().strip("'\"")
    raise ValueError(f"{config}: no http-addr")


if __name__ == "__main__":
    sys.exit(main())
