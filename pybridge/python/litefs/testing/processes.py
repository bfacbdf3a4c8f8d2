"""The binaries under test, their environment, and stopping processes we started.

Every signal here goes to a PID of a process the caller started (a ``Popen`` of its own, or a
child of one found through ``/proc``), never to a process found by name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "MissingBinary",
    "children",
    "cmdline",
    "daemon_env",
    "find_workspace",
    "litefs_binary",
    "litefs_py_binary",
    "stop_process",
]


class MissingBinary(LookupError):
    """A binary the tests need is not there; the message says how to get it."""


def find_workspace(start: Path | None = None) -> Path | None:
    """The cargo workspace at or above ``start`` (default: the working directory): the first
    directory whose ``Cargo.toml`` has a ``[workspace]`` table."""
    here = (start or Path.cwd()).resolve()
    for d in (here, *here.parents):
        manifest = d / "Cargo.toml"
        with contextlib.suppress(OSError):
            if "[workspace]" in manifest.read_text():
                return d
    return None


def litefs_py_binary(
    workspace: Path | None = None, profiles: Sequence[str] = ("debug", "release")
) -> Path:
    """The ``litefs-py`` binary under test: ``$LITEFS_PY_BIN``; else the first of
    ``<target>/<profile>/litefs-py`` that exists (``<target>``: ``$CARGO_TARGET_DIR``, else the
    workspace's ``target``; the workspace: ``workspace``, else the one above the working
    directory); else ``litefs-py`` on PATH. Raises :class:`MissingBinary`."""
    env = os.environ.get("LITEFS_PY_BIN")
    if env:
        return Path(env)
    root = workspace or find_workspace()
    target_env = os.environ.get("CARGO_TARGET_DIR")
    target = Path(target_env) if target_env else (root / "target" if root else None)
    if target is not None:
        for profile in profiles:
            candidate = target / profile / "litefs-py"
            if candidate.is_file():
                return candidate
    found = shutil.which("litefs-py")
    if found:
        return Path(found)
    raise MissingBinary(
        "no litefs-py binary: run `cargo build` in the repo, or set LITEFS_PY_BIN to the binary"
    )


def litefs_binary() -> str | None:
    """LiteFS: ``$LITEFS`` (if it is a file), else ``litefs`` on PATH, else ``~/go/bin/litefs``;
    None if there is none."""
    env = os.environ.get("LITEFS")
    if env:
        return env if os.path.isfile(env) else None
    found = shutil.which("litefs")
    if found:
        return found
    home = Path.home() / "go" / "bin" / "litefs"
    return str(home) if home.is_file() else None


def daemon_env(**extra: str) -> dict[str, str]:
    """The environment for a ``litefs-py`` process: ours, logging at ``info`` unless
    ``$LITEFS_PY_LOG`` says otherwise, no colours, and no ``$LITEFS_PY_SECRET`` (a test
    cluster's secret comes from its own file), plus ``extra``."""
    env = dict(os.environ)
    env.setdefault("LITEFS_PY_LOG", "info")
    env["NO_COLOR"] = "1"
    env.pop("LITEFS_PY_SECRET", None)
    env.update(extra)
    return env


def children(pid: int) -> list[int]:
    """The PIDs of the children of ``pid`` (every thread's), from ``/proc``."""
    out: list[int] = []
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/children") as f:
                out.extend(int(c) for c in f.read().split())
    return out


def cmdline(pid: int) -> str:
    """The command line of ``pid``, space-separated; empty when it is gone (or a zombie)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def stop_process(
    proc: subprocess.Popen[bytes],
    timeout: float,
    sig: int | None = signal.SIGTERM,
    group: bool = False,
) -> tuple[int, bool]:
    """Sends ``sig`` to ``proc`` (if it still runs; None: the caller has signalled it already),
    waits up to ``timeout`` seconds, then SIGKILLs it (its process group with ``group``: it must
    lead a session of its own). Returns (exit status, whether SIGKILL was needed). Waits for the
    exit at most 10 s after SIGKILL."""
    if sig is not None and proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
    try:
        return proc.wait(timeout=timeout), False
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                proc.kill()
        return proc.wait(timeout=10), True
