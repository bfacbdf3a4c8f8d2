"""The guestbook cluster's scripted tour (``cluster.py demo``, run by scripts/demo) and the
prompt of ``cluster.py up``."""

from __future__ import annotations

import http.client
import threading
import time

from api import POSITIONS_COOKIE, entries, failover, get_entries, post, served_by, wait_count
from litefs.testing import ClusterError, RunCluster, RunNode, try_request


def say(msg: str) -> None:
    print(msg, flush=True)


def table(c: RunCluster) -> str:
    """One line per node: address, ``.role``, ``.primary`` and the app's ``/readyz``."""
    rows = [f"   {'node':<6} {'address':<12} {'.role':<9} {'.primary':<12} app /readyz"]
    for n in c.nodes:
        if not n.running:
            rows.append(f"   {n.id:<6} {n.ip:<12} (stopped)")
            continue
        r = try_request(n.url + "/readyz", timeout=2)
        ready = "down" if r is None else str(r.status)
        role, primary = n.role() or "?", n.primary() or "(none)"
        rows.append(f"   {n.id:<6} {n.ip:<12} {role:<9} {primary:<12} {ready}")
    return "\n".join(rows)


def demo(c: RunCluster) -> float:
    """The tour; returns the failover time (kill -9 to the first accepted write), seconds."""
    first = c.nodes[0].ports
    say(
        f"== starting {c.size} guestbook nodes (work dir {c.work}): clients use each node's "
        f"litefs-py proxy on port {first.app}, gunicorn listens behind it on port {first.target}"
    )
    say(
        '   each: litefs-py run --config nN/litefs-py.yml --migrate "python manage.py migrate '
        '--no-input" -- gunicorn'
    )
    t0 = time.monotonic()
    c.start_all()
    p = c.wait_primary(90)
    c.wait_ready(timeout=120)
    say(f"   primary: node {p.id} ({p.ip}); every app ready after {time.monotonic() - t0:.1f} s")
    say(migrations(c))
    say(table(c))
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
        latest = d["entries"][0]["message"]
        say(
            f"   node {n.id} ({d['role']}) lists {d['count']} entries, latest {latest!r} "
            f"(replicated within {took * 1000:.0f} ms)"
        )

    written, cookies = forwarded_write(p, replicas[0])
    read_your_writes(replicas[-1], written, cookies)
    before = int(entries(p)["count"])
    for m in replicas:
        wait_count(m, before)

    say(
        f"\n== kill -9 the primary, node {p.id}: its litefs-py run (and proxy), its app, its LiteFS"
    )
    assert p.proc is not None
    pids = f"kill -KILL -- -{p.proc.pid} (litefs-py run + app); kill -KILL {p.find_litefs()}"
    say(f"   {pids} (LiteFS)")
    say("   then a write is POSTed through the survivors' proxies in turn until one is accepted")
    c.kill9(p)
    new, t_role, t_write = failover(c, p)
    say(
        f"   node {new.id} ({new.ip}) took over: its .role said primary {t_role * 1000:.0f} ms "
        f"after the kill; first write accepted {t_write * 1000:.0f} ms after the kill"
    )
    c.wait_ready([m for m in replicas if m is not new], timeout=60)
    d = entries(new)
    say(f"   node {new.id} lists {d['count']} entries ({before} from before the kill, + 1)")
    if int(d["count"]) != before + 1:
        raise ClusterError(f"expected {before + 1} entries on the new primary, got {d['count']}")
    say(table(c))
    other = next(m for m in replicas if m is not new)
    read_your_writes(
        other,
        written,
        cookies,
        f"\n== the cookie from before the failover, on a replica (node {other.id})\n"
        "   its TXIDs belong to the old raft term: not compared, the primary serves the read",
    )

    say(f"\n== restart node {p.id}: it rejoins as a replica")
    t0 = time.monotonic()
    c.start(p)
    c.wait_ready([p], timeout=120)
    wait_count(p, before + 1, timeout=30)
    d = entries(p)
    latest = d["entries"][0]["message"]
    say(
        f"   node {p.id} is {p.role()}, ready {time.monotonic() - t0:.1f} s after its start; "
        f"lists {d['count']} entries, latest {latest!r}"
    )
    r = post(p, "demo", f"sent to node {p.id} after it rejoined")
    say(f"   a POST to it: {r.status}, x-litefs-py-node: {r.headers.get('x-litefs-py-node')}")
    if r.status != 201 or served_by(r) != new.id:
        raise ClusterError(f"expected node {new.id} to serve it: {r.status} {r.body[:200]!r}")
    say(table(c))

    t_handoff = graceful_stop(c, new)
    say(f"\nfailover: {t_write * 1000:.0f} ms from kill -9 to the first write on the new primary")
    say(f"graceful stop: {t_handoff * 1000:.0f} ms from SIGTERM to the first write on the next one")
    return t_write


def migrations(c: RunCluster) -> str:
    """What each node's ``run --migrate`` did, from its log."""
    lines = []
    for n in c.nodes:
        log = n.output()
        if "this node is the primary: running the migrate command" in log:
            lines.append(f"   node {n.id} ran the migration (it was the primary)")
        else:
            waited = "waited, then " if "the app waits for the schema" in log else ""
            lines.append(
                f"   node {n.id} did not migrate: it {waited}started its app once the primary's "
                "migration had replicated to it"
            )
    return "\n".join(lines)


def forwarded_write(p: RunNode, n: RunNode) -> tuple[int, dict[str, str]]:
    """A POST to the replica ``n``'s proxy, served by the primary ``p``'s app. Returns the new
    row's id and the cookies of the answer (the proxy's read-your-writes cookie)."""
    say(f"\n== a POST to a replica's proxy (node {n.id}) is served by the primary (node {p.id})")
    r = post(n, "demo", f"sent to node {n.id}, a replica")
    say(f"   POST {n.url}/api/entries")
    say(f"   {r.status}, x-litefs-py-node: {r.headers.get('x-litefs-py-node')}")
    if r.status != 201 or served_by(r) != p.id:
        raise ClusterError(f"expected the primary to serve it: {r.status} {r.body[:200]!r}")
    row = r.json()
    d = entries(p)
    there = any(e["id"] == row["id"] for e in d["entries"])
    say(f"   row id={row['id']} accepted by {row['node']}; in node {p.id}'s list: {there}")
    if not there:
        raise ClusterError(f"row {row['id']} is not on the primary")
    pos = r.cookies.get(POSITIONS_COOKIE)
    say(f"   the answer sets the read-your-writes cookie: {POSITIONS_COOKIE}={pos}")
    if pos is None:
        raise ClusterError(f"no {POSITIONS_COOKIE} cookie in the answer: {r.headers}")
    return int(row["id"]), r.cookies


def read_your_writes(
    n: RunNode, written: int, cookies: dict[str, str], title: str | None = None
) -> None:
    """A GET on the replica ``n`` with the cookie: served once ``n`` has row ``written``."""
    say(title or f"\n== read-your-writes: GET on a replica (node {n.id}) with that cookie, at once")
    r = get_entries(n, cookies)
    how = r.headers.get("x-litefs-py-read")
    say(
        f"   {r.status}, x-litefs-py-node: {r.headers.get('x-litefs-py-node')}, x-litefs-py-read: "
        + (how or f"(absent: node {n.id} had caught up, or waited until it had)")
    )
    d = r.json()
    there = any(e["id"] == written for e in d["entries"])
    say(f"   row id={written} visible in the answer: {there} ({d['count']} entries)")
    if r.status != 200 or not there:
        raise ClusterError(f"read-your-writes: row {written} not in {r.status} {r.body[:200]!r}")


def graceful_stop(c: RunCluster, p: RunNode) -> float:
    """SIGTERM to the primary's run: it hands the primary off before it stops. Returns the
    seconds from the signal to the first write another node accepted."""
    say(f"\n== stop the primary, node {p.id}, gracefully: SIGTERM to its litefs-py run")
    say("   it hands the primary to the freshest replica first (its app keeps serving), then stops")
    say("   meanwhile writes are POSTed through the other nodes' proxies")
    codes: list[int | None] = []
    by_old: list[float] = []
    stopper = threading.Thread(target=lambda: codes.append(c.stop(p)))
    stopper.start()
    try:
        new, _, t_write = failover(
            c, p, message=f"first write after node {p.id} was stopped", served_by_old=by_old
        )
    finally:
        stopper.join(timeout=90)
    if by_old:
        say(
            f"   {len(by_old)} of them still served by node {p.id} (x-litefs-py-node: {p.id}) "
            f"while it handed off, the last {by_old[-1] * 1000:.0f} ms after the SIGTERM"
        )
    pause = t_write - (by_old[-1] if by_old else 0.0)
    say(
        f"   node {new.id} ({new.ip}) accepted a write {t_write * 1000:.0f} ms after the SIGTERM: "
        f"writes paused {pause * 1000:.0f} ms for a handoff, not a failover"
    )
    log = p.log_path.read_text(errors="replace").splitlines()
    said = [
        ln for ln in log if "handed off before stopping" in ln or "handoff before stopping" in ln
    ]
    for ln in said[-1:]:
        say(f"   node {p.id}'s log: {ln.split('Z ', 1)[-1].strip()}")
    say(f"   node {p.id}'s litefs-py run exited with status {codes[0] if codes else '?'}")
    say(table(c))
    return t_write


HELP = """\
commands:  status | wait (for a primary) | kill N (kill -9 node N) | stop N (SIGTERM)
           start N | post N TEXT | get N | quit (or Ctrl-C, or end of input)"""


def repl(c: RunCluster) -> None:
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
                say(table(c))
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
                by = r.headers.get("x-litefs-py-node", "?")
                say(f"{r.status} (x-litefs-py-node: {by}) {r.body.decode(errors='replace')}")
            elif cmd == "get" and node is not None:
                d = entries(node)
                say(f"node {node.id} ({d['role']}): {d['count']} entries")
                for e in d["entries"][:5]:
                    say(f"   #{e['id']} {e['message']!r} accepted by {e['node']}")
            elif cmd:
                say(HELP)
        except (ClusterError, OSError, http.client.HTTPException) as e:
            say(f"error: {e}")
