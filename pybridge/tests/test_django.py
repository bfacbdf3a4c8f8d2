"""The Django backend ``litefs.django`` and its companions, on real mounts, with Django running
the test project (``djproject/``) in subprocesses."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from conftest import (
    DJPROJECT,
    Cluster,
    client,
    django_env,
    manage,
    scenario,
    spawn_scenario,
    wait_cluster,
)
from litefs import testing

WRITES = (
    "save",
    "update",
    "delete",
    "raw_insert",
    "executemany",
    "executescript",
    "atomic_write",
    "pragma_write",
    "create_table",
    "temp_table",  # query_only refuses TEMP writes on a replica too
)
READS = ("count", "atomic_read", "count_after", "atomic_read_after", "journal_mode")


def migrate(mount: Path) -> None:
    r = manage(mount, "migrate", "--noinput")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Applying guest.0001_initial... OK" in r.stdout


def replicate(cluster: Cluster, name: str = "app.db") -> None:
    """What LiteFS would do: the primary's database file appears on the replica (the migrate
    process has exited, so its WAL is checkpointed into the file)."""
    src = cluster.primary.lower / name
    assert not Path(f"{src}-wal").exists()
    shutil.copy(src, cluster.replica.lower / name)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_migrate_and_write_on_primary(shim):
    migrate(shim.mnt)
    assert (shim.lower / "app.db").exists()  # through the mount, into the lower dir
    out = scenario(shim.mnt, "ops")
    for op in (*READS, *WRITES):
        assert out[op]["ok"], (op, out[op])
    assert out["journal_mode"]["value"] == "wal"
    assert out["count_after"]["value"] == 6  # orm, raw, m1, m2, s, atomic


def test_migrate_refused_on_replica(cluster: Cluster):
    migrate(cluster.primary.mnt)
    r = manage(cluster.replica.mnt, "migrate", "--noinput")
    assert r.returncode != 0
    assert "litefs.E010" in r.stderr, r.stderr
    assert "node-1" in r.stderr and "not the primary" in r.stderr
    # Also without the checks: the backend refuses before migrate changes anything.
    r = manage(cluster.replica.mnt, "migrate", "--noinput", "--skip-checks")
    assert r.returncode != 0
    assert "NotPrimary" in r.stderr and "migrations run on the primary only" in r.stderr
    assert "node-1" in r.stderr
    assert not (cluster.replica.lower / "app.db").exists()
    # A replica with the replicated database: still refused, the file untouched.
    replicate(cluster)
    before = digest(cluster.replica.lower / "app.db")
    r = manage(cluster.replica.mnt, "migrate", "--noinput")
    assert r.returncode != 0 and "litefs.E010" in r.stderr
    assert digest(cluster.replica.lower / "app.db") == before


def test_replica_reads_work_and_writes_raise_not_primary(cluster: Cluster):
    migrate(cluster.primary.mnt)
    assert scenario(cluster.primary.mnt, "ops")["save"]["ok"]
    r = manage(cluster.primary.mnt, "shell", "-c", "print()")  # closes: WAL checkpointed
    assert r.returncode == 0, r.stderr
    replicate(cluster)
    before = digest(cluster.replica.lower / "app.db")
    out = scenario(cluster.replica.mnt, "ops")
    for op in READS:
        assert out[op]["ok"], (op, out[op])
    assert out["count"]["value"] == 6
    assert len(out["atomic_read"]["value"]) == 6
    assert out["journal_mode"]["value"] == "wal"
    for op in WRITES:
        o = out[op]
        assert not o["ok"], (op, o)
        assert o["type"] == "NotPrimary", (op, o)
        assert o["not_primary"] and o["database_error"], (op, o)
        assert o["primary"] == "node-1", (op, o)
        assert "node-1" in o["message"] and "replica" in o["message"], (op, o)
    assert digest(cluster.replica.lower / "app.db") == before


def test_role_change_seen_by_an_open_connection(cluster: Cluster):
    """One process, one connection: writes work while the node is primary; once it loses the
    role (its only peer stops: no quorum), the same statements raise NotPrimary, reads go on."""
    migrate(cluster.primary.mnt)
    p = spawn_scenario(cluster.primary.mnt, "phases", "2")
    try:
        first = json.loads(p.stdout.readline())
        assert all(first[op]["ok"] for op in (*READS, *WRITES)), first
        cluster.replica.mount.stop()
        deadline = time.monotonic() + 10
        while cluster.primary.role() == "primary":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        p.stdin.write("go\n")
        p.stdin.flush()
        second = json.loads(p.stdout.readline())
    finally:
        err = p.communicate(timeout=30)[1]
    assert p.returncode == 0, err
    for op in READS:
        assert second[op]["ok"], (op, second[op])
    for op in WRITES:
        assert second[op]["not_primary"], (op, second[op])
        assert second[op]["primary"] is None
        assert "no primary is known" in second[op]["message"]


def test_write_lock_granted_after_demotion_is_given_back(
    mount_factory: testing.MountFactory, tmp_path: Path
):
    """The backend's write gate, second look (symlink data path: SQLite's locks do not cross
    the shim, so the shim's own gate cannot see them). A write transaction passes the role
    check at BEGIN IMMEDIATE while the primary is primary, then waits for the write lock held by
    another process; meanwhile the node loses the primary role (its only peer stops). Once the
    lock is granted, the backend asks again, rolls back, and raises NotPrimary: nothing is
    written."""
    cluster = wait_cluster(
        testing.mount_cluster(mount_factory, tmp_path, [1, 2], data_path="symlink")
    )
    assert (cluster.primary.mnt / ".role").read_text() == "primary\n"
    migrate(cluster.primary.mnt)
    assert (cluster.primary.mnt / "app.db").is_symlink()
    options = {"timeout": 60}
    holder = spawn_scenario(cluster.primary.mnt, "hold", "0", DJP_OPTIONS=options)
    waiter = None
    try:
        assert json.loads(holder.stdout.readline()) == {"locked": True}
        waiter = spawn_scenario(cluster.primary.mnt, "write_txn", "0", DJP_OPTIONS=options)
        assert json.loads(waiter.stdout.readline()) == {"starting": True}
        time.sleep(0.5)  # the waiter passed its role check and waits at BEGIN IMMEDIATE
        cluster.replica.mount.stop()
        deadline = time.monotonic() + 10
        while cluster.primary.role() == "primary":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        holder.stdin.write("commit\n")
        holder.stdin.flush()
        out = json.loads(waiter.stdout.readline())
    finally:
        err = holder.communicate(timeout=30)[1]
        if waiter is not None:
            waiter.communicate(timeout=30)
    assert holder.returncode == 0, err
    assert out.get("not_primary") and out["type"] == "NotPrimary", out
    names = scenario(cluster.primary.mnt, "names")
    assert "holder" in names and "waiter" not in names, names


def test_wait_replicated_says_why_it_cannot_wait(shim):
    migrate(shim.mnt)
    out = scenario(shim.mnt, "wait_replicated")
    for case in ("inside", "no_proxy", "refused"):
        assert not out[case]["ok"] and out[case]["type"] == "NotReplicated", (case, out[case])
    assert "inside a transaction" in out["inside"]["message"]
    assert "LITEFS_PY_PROXY is not set" in out["no_proxy"]["message"]
    assert "127.0.0.1:9" in out["refused"]["message"]
    assert out["bad_timeout"]["type"] == "ValueError", out["bad_timeout"]


def test_immediate_second_writer_waits(shim):
    """Default IMMEDIATE: a read-then-write transaction started while another process holds
    the write lock waits at BEGIN and succeeds once the holder commits; with DEFERRED (the
    user's option, respected) the same transaction reads, then fails at its write with
    "database is locked" when the holder commits."""
    migrate(shim.mnt)
    for mode, expect_ok in ((None, True), ("DEFERRED", False)):
        options = {"transaction_mode": mode} if mode else None
        holder = spawn_scenario(shim.mnt, "hold", "0.5", DJP_OPTIONS=options)
        waiter = None
        try:
            assert json.loads(holder.stdout.readline()) == {"locked": True}
            waiter = spawn_scenario(shim.mnt, "write_txn", "0.2", DJP_OPTIONS=options)
            assert json.loads(waiter.stdout.readline()) == {"starting": True}
            time.sleep(1.0)  # the waiter is in its transaction (or waiting to begin it)
            holder.stdin.write("commit\n")
            holder.stdin.flush()
            out = json.loads(waiter.stdout.readline())
        finally:
            err = holder.communicate(timeout=30)[1]
            if waiter is not None:
                waiter.communicate(timeout=30)
        assert holder.returncode == 0, err
        assert out["begin"] == (mode or "IMMEDIATE")
        if expect_ok:
            assert out["ok"], out
            assert out["seconds"] >= 1.2, out  # it waited for the holder's commit
        else:
            assert not out["ok"], out
            assert "locked" in out["message"], out


def test_user_options_respected(shim):
    migrate(shim.mnt)
    r = manage(shim.mnt, "shell", "-c", "print()")
    assert r.returncode == 0
    options = {"transaction_mode": "EXCLUSIVE", "init_command": "PRAGMA journal_mode=DELETE"}
    out = scenario(shim.mnt, "ops", DJP_OPTIONS=options)
    assert out["journal_mode"]["value"] == "delete"
    assert out["save"]["ok"] and out["atomic_write"]["ok"]
    assert scenario(shim.mnt, "write_txn", "0", DJP_OPTIONS=options)["begin"] == "EXCLUSIVE"


HEALTH = [["GET", "/health"], ["GET", "/ready"], ["GET", "/live"], ["GET", "/primary"]]


def test_health_views(cluster: Cluster, tmp_path: Path):
    health, ready, live, primary = client(cluster.primary.mnt, HEALTH)
    assert (health["status"], ready["status"], live["status"], primary["status"]) == (
        200,
        200,
        200,
        200,
    )
    assert health["body"]["status"] == "ok" and health["body"]["reasons"] == []
    assert health["body"]["role"] == "primary" and health["body"]["primary"] == "node-1"
    assert "no-cache" in health["headers"]["cache-control"]

    health, ready, live, primary = client(cluster.replica.mnt, HEALTH)
    assert (health["status"], ready["status"], live["status"], primary["status"]) == (
        200,
        200,
        200,
        503,
    )
    assert health["body"]["role"] == "replica" and health["body"]["primary"] == "node-1"
    assert primary["body"]["reasons"] == ["this node is replica; the primary is node-1"]

    # Not mounted: everything 503, with the reason.
    plain = tmp_path / "plain"
    plain.mkdir()
    for r in client(plain, HEALTH):
        assert r["status"] == 503
        assert "not mounted" in r["body"]["reasons"][0] or "not a litefs-py mount" in str(r)

    # No primary known (the primary stopped; two voters cannot elect): unhealthy, still live.
    cluster.primary.mount.stop()
    deadline = time.monotonic() + 10
    while cluster.replica.role() != "electing":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    health, ready, live, primary = client(cluster.replica.mnt, HEALTH)
    assert (health["status"], ready["status"], live["status"], primary["status"]) == (
        503,
        503,
        200,
        503,
    )
    assert health["body"]["reasons"] == ["no primary known (role: electing)"]
    assert health["body"]["status"] == "unavailable"


def test_health_check_plugin(shim, tmp_path: Path):
    (ok,) = client(shim.mnt, [["GET", "/hc?format=json"]])
    assert ok["status"] == 200, ok
    assert any("LiteFS" in k for k in ok["body"]), ok["body"]
    plain = tmp_path / "plain"
    plain.mkdir()
    (bad,) = client(plain, [["GET", "/hc?format=json"]])
    assert bad["status"] == 500, bad
    assert "not a litefs-py mount" in json.dumps(bad["body"])


def test_middleware_on_replica(cluster: Cluster):
    migrate(cluster.primary.mnt)
    replicate(cluster)
    before = digest(cluster.replica.lower / "app.db")
    browser = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
    post, get, safe_write, delete, page, api = client(
        cluster.replica.mnt,
        [
            ["POST", "/sign"],
            ["GET", "/entries"],
            ["GET", "/sign"],
            ["DELETE", "/entries"],
            ["POST", "/sign", browser],
            ["POST", "/sign", {"Accept": "application/json"}],
        ],
        DJP_MIDDLEWARE="1",
    )
    # The default off Fly.io ("auto" is "refuse"): 503 with Retry-After, readable, naming the
    # primary; no fly-replay, which nothing but Fly.io's proxy acts on.
    assert post["status"] == 503 and post["headers"]["retry-after"] == "1", post
    assert "fly-replay" not in post["headers"]
    assert post["headers"]["content-type"].startswith("text/plain"), post
    assert "read-only replica" in post["body"] and "primary, node-1" in post["body"], post
    assert get["status"] == 200 and get["body"] == {"names": []}
    # A GET whose view writes: diverted the same way.
    assert safe_write["status"] == 503 and "primary, node-1" in safe_write["body"], safe_write
    assert delete["status"] == 503 and "DELETE" in delete["body"], delete
    assert page["status"] == 503 and page["headers"]["content-type"].startswith("text/html")
    assert "<h1>Read-only replica</h1>" in page["body"] and "node-1" in page["body"], page
    assert api["status"] == 503 and api["body"]["primary"] == "node-1", api
    assert digest(cluster.replica.lower / "app.db") == before

    # On Fly.io (its machines have FLY_APP_NAME, FLY_ALLOC_ID) "auto" is "replay": 409 with
    # fly-replay, which Fly.io's proxy replays on the primary.
    for fly in ({"FLY_APP_NAME": "myapp"}, {"FLY_ALLOC_ID": "0123abcd"}):
        post, safe_write = client(
            cluster.replica.mnt, [["POST", "/sign"], ["GET", "/sign"]], DJP_MIDDLEWARE="1", **fly
        )
        assert post["status"] == 409 and post["headers"]["fly-replay"] == "instance=node-1"
        assert post["body"]["primary"] == "node-1"
        assert safe_write["status"] == 409, safe_write
    # Either mode, asked for, wins over where it runs.
    (post,) = client(
        cluster.replica.mnt,
        [["POST", "/sign"]],
        DJP_MIDDLEWARE="1",
        DJP_LITEFS={"REPLICA_WRITES": "replay"},
    )
    assert post["status"] == 409 and post["headers"]["fly-replay"] == "instance=node-1"
    (post,) = client(
        cluster.replica.mnt,
        [["POST", "/sign"]],
        DJP_MIDDLEWARE="1",
        DJP_LITEFS={"REPLICA_WRITES": "refuse"},
        FLY_APP_NAME="myapp",
    )
    assert post["status"] == 503 and "fly-replay" not in post["headers"], post
    assert digest(cluster.replica.lower / "app.db") == before

    redirect = {"REPLICA_WRITES": "redirect", "PRIMARY_URL": "https://{primary}.internal:8000"}
    (post,) = client(
        cluster.replica.mnt, [["POST", "/sign?x=1"]], DJP_MIDDLEWARE="1", DJP_LITEFS=redirect
    )
    assert post["status"] == 307
    assert post["headers"]["location"] == "https://node-1.internal:8000/sign?x=1"

    # Off: the view runs and its write raises NotPrimary (a 500 in Django).
    (post,) = client(
        cluster.replica.mnt,
        [["POST", "/sign"]],
        DJP_MIDDLEWARE="1",
        DJP_LITEFS={"REPLICA_WRITES": None},
    )
    assert post["status"] == 500

    # On the primary writes go through.
    post, boom = client(
        cluster.primary.mnt, [["POST", "/sign"], ["POST", "/boom"]], DJP_MIDDLEWARE="1"
    )
    assert post["status"] == 200
    # An unsafe request that raised NotPrimary after the middleware let it in is not replayed
    # (it may have done part of its work): 503, outcome unknown, no Retry-After.
    assert boom["status"] == 503 and "fly-replay" not in boom["headers"]
    assert "retry-after" not in boom["headers"], boom
    assert "outcome is unknown" in boom["body"]["error"], boom


def test_middleware_a_database_error_after_losing_the_role_is_a_503(cluster: Cluster):
    """An unsafe request whose database error escaped the backend (a write LiteFS refused when
    the role changed mid-request) gets the mid-request 503 on a node that is no longer the
    primary; on the primary, and for a GET, the error stands (a 500)."""
    migrate(cluster.primary.mnt)
    replicate(cluster)
    replica = scenario(cluster.replica.mnt, "lost_role", DJP_MIDDLEWARE="1")
    assert replica["post"]["status"] == 503 and replica["post"]["retry_after"] is None, replica
    error = replica["post"]["body"]["error"]
    assert "lost the primary role" in error and "disk I/O error" in error, error
    assert "outcome is unknown" in error, error
    assert replica["get"] is None and replica["post_integrity"] is None, replica
    primary = scenario(cluster.primary.mnt, "lost_role", DJP_MIDDLEWARE="1")
    assert primary == {"post": None, "get": None, "post_integrity": None}, primary


def test_middleware_unsafe_request_rolled_back_may_be_retried(shim):
    """With ATOMIC_REQUESTS the unsafe request that hit NotPrimary was rolled back: 503 with
    Retry-After; without, its earlier writes may have committed: no Retry-After."""
    migrate(shim.mnt)
    (atomic,) = client(shim.mnt, [["POST", "/boom"]], DJP_MIDDLEWARE="1", DJP_ATOMIC="1")
    assert atomic["status"] == 503 and atomic["headers"]["retry-after"] == "1", atomic
    assert "rolled back" in atomic["body"]["error"], atomic
    (plain,) = client(shim.mnt, [["POST", "/boom"]], DJP_MIDDLEWARE="1")
    assert plain["status"] == 503 and "retry-after" not in plain["headers"], plain
    assert "outcome is unknown" in plain["body"]["error"], plain


def test_middleware_without_primary(cluster: Cluster):
    cluster.primary.mount.stop()
    deadline = time.monotonic() + 10
    while cluster.replica.role() != "electing":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    (post,) = client(cluster.replica.mnt, [["POST", "/sign"]], DJP_MIDDLEWARE="1")
    assert post["status"] == 503 and post["headers"]["retry-after"] == "1"


def check_ids(r: subprocess.CompletedProcess[str]) -> set[str]:
    import re

    return set(re.findall(r"litefs\.[EW]\d{3}", r.stdout + r.stderr))


def test_system_checks(shim, tmp_path: Path):
    r = manage(shim.mnt, "check", "--database", "default")
    assert r.returncode == 0, r.stderr
    assert check_ids(r) == set()

    r = manage(shim.mnt, "check", DJP_DB=str(tmp_path / "elsewhere.db"))
    assert check_ids(r) == {"litefs.E001"}, r.stderr
    assert "HINT: Put the database directly in" in r.stderr

    r = manage(shim.mnt, "check", DJP_OPTIONS={"bogus": 1, "transaction_mode": "LAZY"})
    assert check_ids(r) == {"litefs.E003", "litefs.E004"}, r.stderr
    assert "bogus" in r.stderr and "LAZY" in r.stderr

    r = manage(shim.mnt, "check", DJP_LITEFS={"NOPE": 1, "MAX_LAG_MS": -1})
    assert check_ids(r) == {"litefs.E005", "litefs.E006"}, r.stderr
    assert "NOPE" in r.stderr

    r = manage(shim.mnt, "check", DJP_LITEFS={"REPLICA_WRITES": "redirect"})
    assert check_ids(r) == {"litefs.E006"} and "PRIMARY_URL" in r.stderr
    r = manage(shim.mnt, "check", DJP_LITEFS={"REPLICA_WRITES": "fly"})
    assert check_ids(r) == {"litefs.E006"} and "'refuse' (503)" in r.stderr, r.stderr
    for mode in ("auto", "refuse", "replay", None):
        r = manage(shim.mnt, "check", "--database", "default", DJP_LITEFS={"REPLICA_WRITES": mode})
        assert check_ids(r) == set(), (mode, r.stderr)

    # Other braces than {primary}: every diverted request would raise KeyError.
    bad = {"REPLICA_WRITES": "redirect", "PRIMARY_URL": "https://{primary}:{port}"}
    r = manage(shim.mnt, "check", DJP_LITEFS=bad)
    assert check_ids(r) == {"litefs.E006"}, r.stderr
    assert "{port}" in r.stderr and "doubled" in r.stderr, r.stderr
    r = manage(shim.mnt, "check", DJP_LITEFS={"REPLAY_VALUE": "instance={primary"})
    assert check_ids(r) == {"litefs.E006"} and "REPLAY_VALUE" in r.stderr, r.stderr

    node = {"id": 1, "hostname": "a", "raft-addr": "127.0.0.1:1", "bogus": 1}
    r = manage(shim.mnt, "check", DJP_LITEFS={"CONFIG": {"node": node}})
    assert check_ids(r) == {"litefs.E007"} and "bogus" in r.stderr, r.stderr

    plain = tmp_path / "plain"
    plain.mkdir()
    r = manage(plain, "check", "--database", "default")
    assert r.returncode != 0 and check_ids(r) == {"litefs.E002"}, r.stderr
    assert "no litefs-py mount answers" in r.stderr


def test_litefs_status(cluster: Cluster):
    r = manage(cluster.replica.mnt, "litefs_status", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["healthy"] is True and out["problems"] == []
    assert out["health"]["role"] == "replica" and out["health"]["primary"] == "node-1"
    assert out["databases"]["default"]["in_mount"] is True
    r = manage(cluster.replica.mnt, "litefs_status")
    assert r.returncode == 0, r.stderr
    lines = dict(line.split(None, 1) for line in r.stdout.splitlines() if line.strip())
    assert lines["role"].strip() == "replica"
    assert lines["primary"].strip() == "node-1"
    r = manage(cluster.replica.mnt.parent / "lower", "litefs_status")
    assert r.returncode != 0 and "not a litefs-py mount" in r.stderr


def test_python_m_litefs_config(tmp_path: Path):
    config = {
        "node": {
            "id": 1,
            "hostname": "web-1",
            "raft-addr": "127.0.0.1:20301",
            "http-addr": "127.0.0.1:20311",
        },
        "cluster": {"bootstrap": True, "peers": {1: "127.0.0.1:20301"}},
        "litefs": {"data-dir": "/var/lib/litefs"},
    }
    env = django_env("/srv/app")
    settings = tmp_path / "mysettings.py"
    settings.write_text(
        "from djproject.settings import *  # noqa\n"
        f"LITEFS = {{'MOUNT': '/srv/app', 'CONFIG': {config!r}}}\n"
    )
    cmd = [sys.executable, "-m", "litefs", "config", "--settings", "mysettings"]
    env["PYTHONPATH"] = f"{tmp_path}:{DJPROJECT}"
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tmp_path, check=False)
    assert r.returncode == 0, r.stderr
    assert "# litefs-py.yml" in r.stdout and "# litefs.yml" in r.stdout
    # The pip-installed `litefs-py` script is the same command.
    script = shutil.which("litefs-py", path=str(Path(sys.executable).parent))
    assert script is not None
    same = subprocess.run(
        [script, *cmd[3:]], env=env, capture_output=True, text=True, cwd=tmp_path, check=False
    )
    assert same.returncode == 0 and same.stdout == r.stdout, same.stderr
    own, lfs = r.stdout.split("---\n")
    assert "hostname: web-1" in own and "dir: /srv/app" in own
    assert "type: consul" in lfs and "hostname: web-1" in lfs
    out = tmp_path / "out"
    r = subprocess.run(
        [*cmd, "--output-dir", str(out)], env=env, capture_output=True, text=True, cwd=tmp_path
    )
    assert r.returncode == 0, r.stderr
    assert (out / "litefs-py.yml").read_text() == own.removeprefix("# litefs-py.yml\n")
    assert "lease:" in (out / "litefs.yml").read_text()
    for name in ("litefs-py.yml", "litefs.yml"):
        assert (out / name).stat().st_mode & 0o777 == 0o600, name

    settings.write_text(
        "from djproject.settings import *  # noqa\n"
        "LITEFS = {'CONFIG': {'node': {'id': 1, 'bogus': 2}}}\n"
    )
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tmp_path, check=False)
    assert r.returncode == 1 and "bogus" in r.stderr, r.stderr


def test_a_misconfigured_node_fails_at_start_up(shim, tmp_path: Path):
    """On a litefs-py node (the mount answers), a settings check that fails stops any process
    that sets Django up — a WSGI server's workers included — with the check's message."""
    settings = {"DJANGO_SETTINGS_MODULE": "djproject.settings"}
    env = django_env(shim.mnt, DJP_DB=str(tmp_path / "elsewhere.db"), **settings)
    load_app = "import django; django.setup(); print('served')"
    r = subprocess.run(
        [sys.executable, "-c", load_app], env=env, capture_output=True, text=True, timeout=60
    )
    assert r.returncode != 0 and "served" not in r.stdout, r.stdout
    assert "ImproperlyConfigured" in r.stderr and "litefs.E001" in r.stderr, r.stderr
    assert "HINT: Put the database directly in" in r.stderr
    # The same settings with the database in the mount start.
    env = django_env(shim.mnt, **settings)
    r = subprocess.run(
        [sys.executable, "-c", load_app], env=env, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0 and "served" in r.stdout, r.stderr


def test_database_outside_the_mount_is_plain_sqlite(tmp_path: Path):
    """A database outside the mount (e.g. a developer's local file) is plain SQLite: no state is
    read, writes work though no mount answers. The settings check still flags it (E001)."""
    db = str(tmp_path / "local.db")
    nomount = tmp_path / "nomount"
    r = manage(nomount, "migrate", "--noinput", DJP_DB=db)
    assert r.returncode != 0 and "litefs.E001" in r.stderr
    r = manage(nomount, "migrate", "--noinput", DJP_DB=db, DJP_ENGINE="django.db.backends.sqlite3")
    assert r.returncode == 0, r.stderr
    out = scenario(nomount, "ops", DJP_DB=db)
    assert all(out[op]["ok"] for op in WRITES), out
    assert out["journal_mode"]["value"] == "wal"


def test_open_connections_follow_a_failover(mount_factory, tmp_path: Path):
    """Three nodes; both replicas hold an open connection (writes refused). The primary stops;
    one replica is elected: on the same connection its writes now succeed, while the other
    replica's NotPrimary names the new primary."""
    nodes = testing.mount_cluster(mount_factory, tmp_path, [1, 2, 3])
    first = wait_cluster(nodes)
    replicas = [n for n in nodes if n is not first.primary]
    migrate(first.primary.mnt)
    for n in replicas:
        shutil.copy(first.primary.lower / "app.db", n.lower / "app.db")
    procs = {n.id: spawn_scenario(n.mnt, "phases", "2") for n in replicas}
    try:
        for n in replicas:
            before = json.loads(procs[n.id].stdout.readline())
            assert all(before[op]["not_primary"] for op in WRITES), before
            assert before["save"]["primary"] == first.primary.hostname
        first.primary.mount.stop()
        second = wait_cluster(replicas)
        for p in procs.values():
            p.stdin.write("go\n")
            p.stdin.flush()
        after = {i: json.loads(p.stdout.readline()) for i, p in procs.items()}
    finally:
        errs = {i: p.communicate(timeout=30)[1] for i, p in procs.items()}
    assert all(p.returncode == 0 for p in procs.values()), errs
    new = after[second.primary.id]
    for op in (*READS, *WRITES):
        assert new[op]["ok"], (op, new[op])
    other = after[second.replica.id]
    for op in WRITES:
        assert other[op]["not_primary"], (op, other[op])
        assert other[op]["primary"] == second.primary.hostname, (op, other[op])


def test_role_reads_per_request(shim):
    """Reads never read .role once seen; the classification survives reconnects. Per unit
    (connect, two reads, one write transaction): at connect, at BEGIN, once BEGIN IMMEDIATE
    holds the write lock (the write gate's second look), and nothing more."""
    migrate(shim.mnt)
    out = scenario(shim.mnt, "role_reads")
    first, *later = out["per_unit"]
    assert first > later[0], out
    assert later == [3, 3], out


def test_commit_refused_after_demotion_is_not_primary(shim):
    """A commit that fails (LiteFS refuses it: the node was demoted mid-atomic()) comes out of
    Django's error wrapping as NotPrimary, with the sqlite3 error as its cause."""
    migrate(shim.mnt)
    out = scenario(shim.mnt, "commit_refused")
    assert not out["ok"], out
    assert out["type"] == "NotPrimary" and out["not_primary"], out
    assert out["cause"] == "OperationalError" and "disk I/O" in out["cause_message"], out


def test_write_stays_a_write_after_the_classification_overflows(cluster: Cluster):
    """Once the per-connection classification is cleared (``_CLASSIFIED_MAX``), a write that
    sqlite3 had prepared before is not recorded as a read; a PRAGMA that sets a database value
    counts as a write. After the node loses the primary role (its only peer stops), both raise
    NotPrimary on the same connection; reads go on."""
    migrate(cluster.primary.mnt)
    p = spawn_scenario(cluster.primary.mnt, "classify_overflow")
    try:
        first = json.loads(p.stdout.readline())
        assert all(first[k]["ok"] for k in ("insert", "pragma", "insert_again")), first
        assert first["insert_known"] is True and first["pragma_known"] is True, first
        cluster.replica.mount.stop()
        deadline = time.monotonic() + 10
        while cluster.primary.role() == "primary":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        p.stdin.write("go\n")
        p.stdin.flush()
        out, err = p.communicate(timeout=30)
    finally:
        if p.returncode is None:
            p.kill()
            p.communicate()
    assert p.returncode == 0, err
    second = json.loads(out.strip().splitlines()[-1])
    assert second["count"]["ok"], second
    for op in ("insert", "pragma"):
        assert second[op]["not_primary"], (op, second[op])


def test_read_error_on_replica_is_not_not_primary(shim):
    """An I/O error on a SELECT on a replica is the read's own error, not NotPrimary."""
    migrate(shim.mnt)
    out = scenario(shim.mnt, "read_ioerror")["count"]
    assert not out["ok"], out
    assert out["type"] == "OperationalError" and not out["not_primary"], out
    assert "disk I/O error" in out["message"], out
