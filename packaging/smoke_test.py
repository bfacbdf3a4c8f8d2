"""Installs a built wheel into a fresh venv, with no Rust or Go on PATH, and uses it as a user
would: ``litefs-py version``, ``import litefs``, then a one-node ``litefs-py run`` with the
LiteFS the wheel carries, whose app writes to SQLite through the mount. Given the sdist too, it
checks that a source build without Rust stops at once and says what it needs.

    python3 packaging/smoke_test.py dist/litefs_py-...-manylinux_2_17_x86_64.whl [dist/...tar.gz]

Needs root and /dev/fuse (it mounts). Stops what it started, by PID, also on failure.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

# Bounds: a run that has not finished by then has failed (the app's own wait is shorter).
RUN_TIMEOUT_S = 120
APP_WAIT_S = 60

APP = textwrap.dedent(
    """
    import os, sqlite3, sys, time
    mount = os.environ["LITEFS_DIR"]
    deadline = time.monotonic() + float(sys.argv[1])
    role = ""
    while time.monotonic() < deadline:
        role = open(os.path.join(mount, ".role")).read().strip()
        if role == "primary":
            break
        time.sleep(0.1)
    else:
        sys.exit(f"smoke app: .role says {role!r}, not primary, after {sys.argv[1]} s")
    db = sqlite3.connect(os.path.join(mount, "smoke.db"))
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE IF NOT EXISTS t (v TEXT)")
    with db:
        db.execute("INSERT INTO t VALUES ('written through the bundled LiteFS')")
    n = db.execute("SELECT count(*) FROM t").fetchone()[0]
    db.close()
    print(f"SMOKE OK role=primary rows={n}", flush=True)
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fail(msg: str) -> None:
    sys.exit(f"smoke test: {msg}")


def mounts_under(venv: Path, root: Path) -> list[str]:
    """The FUSE mounts at or below ``root``, deepest first, read with the installed wheel's own
    test kit (``litefs.testing``: the one mountinfo reader of the Python side)."""
    python = venv / "bin/python"
    if not python.exists():
        return []  # nothing was installed, so nothing was mounted
    code = (
        "import sys\n"
        "from litefs.testing.mountinfo import fuse_mounts_under\n"
        "print('\\n'.join(fuse_mounts_under(sys.argv[1])))"
    )
    out = subprocess.run(
        [str(python), "-c", code, str(root)], capture_output=True, text=True, check=True
    ).stdout
    return [line for line in out.splitlines() if line]


def check_sdist_without_rust(sdist: Path, venv: Path, env: dict[str, str]) -> None:
    """``pip install`` of the sdist on a machine without cargo: it must fail before compiling,
    with the in-tree backend's message naming Rust, not maturin's attempt to download one."""
    res = subprocess.run(
        [str(venv / "bin/pip"), "install", "--no-deps", str(sdist)],
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    out = res.stdout + res.stderr
    if res.returncode == 0:
        fail(f"the sdist installed without Rust on PATH:\n{out}")
    if "building from source needs Rust (cargo" not in out or "rustup" in out.replace(
        "https://rustup.rs", ""
    ):
        fail(f"a source build without Rust does not say what it needs:\n{out}")
    print("smoke test: the sdist without Rust stops and says it needs Rust (cargo)")


def main() -> None:
    if len(sys.argv) not in (2, 3) or not sys.argv[1].endswith(".whl"):
        fail("usage: smoke_test.py WHEEL [SDIST]")
    if len(sys.argv) == 3 and not sys.argv[2].endswith(".tar.gz"):
        fail(f"{sys.argv[2]}: the sdist is a .tar.gz")
    wheel = Path(sys.argv[1]).resolve()
    sdist = Path(sys.argv[2]).resolve() if len(sys.argv) == 3 else None
    if os.geteuid() != 0 or not Path("/dev/fuse").exists():
        fail("needs root and /dev/fuse (litefs-py run mounts LiteFS and the shim)")
    tmp = Path(tempfile.mkdtemp(prefix="litefs-py-smoke-"))
    proc: subprocess.Popen[str] | None = None
    try:
        venv = tmp / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(venv / "bin/pip"), "install", "--quiet", "--no-index", "--no-deps", str(wheel)],
            check=True,
        )
        # A user's machine: the venv and the system, no cargo, no go.
        path = f"{venv / 'bin'}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        for tool in ("cargo", "go", "litefs"):
            found = shutil.which(tool, path=path)
            if found:
                fail(f"{tool} is on the test PATH ({found}): the wheel must work without it")
        env = {"PATH": path, "HOME": str(tmp), "LANG": "C.UTF-8"}

        version = subprocess.run(
            ["litefs-py", "version"], env=env, capture_output=True, text=True, check=True
        ).stdout
        print(version, end="")
        if "_bin/litefs (LiteFS v0.5.14" not in version:
            fail(f"litefs-py version does not name the bundled LiteFS v0.5.14:\n{version}")
        subprocess.run([str(venv / "bin/python"), "-c", "import litefs"], env=env, check=True)

        (tmp / "app.py").write_text(APP)
        config = tmp / "litefs-py.yml"
        raft, http, lease, litefs_http = (free_port() for _ in range(4))
        config.write_text(
            textwrap.dedent(
                f"""\
                node:
                  id: 1
                  hostname: smoke
                  raft-addr: 127.0.0.1:{raft}
                  http-addr: 127.0.0.1:{http}
                cluster:
                  bootstrap: true
                  peers:
                    1: 127.0.0.1:{raft}
                  data-dir: {tmp}/raft
                mount:
                  dir: {tmp}/mnt
                  lower: {tmp}/lower
                lease:
                  addr: 127.0.0.1:{lease}
                litefs:
                  data-dir: {tmp}/litefs
                  http-addr: 127.0.0.1:{litefs_http}
                """
            )
        )
        proc = subprocess.Popen(
            [
                "litefs-py",
                "run",
                "--config",
                str(config),
                "--",
                str(venv / "bin/python"),
                str(tmp / "app.py"),
                str(APP_WAIT_S),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        try:
            out, _ = proc.communicate(timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGTERM)
            out, _ = proc.communicate(timeout=30)
            fail(f"litefs-py run did not finish within {RUN_TIMEOUT_S} s:\n{out}")
        print(out, end="")
        if proc.returncode != 0 or "SMOKE OK role=primary rows=1" not in out:
            fail(f"litefs-py run exited {proc.returncode} without the app's SMOKE OK")
        if "LiteFS started" not in out and "litefs" not in out.lower():
            fail("the run's log does not show LiteFS starting")
        left = mounts_under(venv, tmp)
        if left:
            fail(f"mounts left after a clean stop: {left}")
        if sdist is not None:
            # pip itself (and its isolated build env) needs the index, so no --no-index here.
            check_sdist_without_rust(sdist, venv, {**env, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
        print(f"smoke test: ok ({wheel.name})")
    finally:
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        venv = tmp / "venv"
        for point in mounts_under(venv, tmp):
            subprocess.run(["umount", "-l", point], check=False)
        if not mounts_under(venv, tmp):
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
