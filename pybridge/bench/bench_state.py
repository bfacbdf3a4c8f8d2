#!/usr/bin/env python3
"""Calls per second of ``litefs.is_primary()`` and ``litefs.state()``, next to plain
``os.path.exists`` calls, in the same run::

    python pybridge/bench/bench_state.py [--mount DIR] [--seconds S] [--cpu N] [--json FILE]

Without ``--mount`` it starts ``litefs-py mount`` (``$LITEFS_PY_BIN``, else
``target/debug/litefs-py``; needs root and /dev/fuse) over a temporary directory and stops it
(by its PID) afterwards. Each case runs for ``--seconds`` in 5 slices; the table shows the
median slice and the spread. ``--cpu N`` pins this process and the mount it starts to CPU N: a
FUSE round trip costs a few µs when client and daemon share a CPU, tens of µs when the daemon
must be woken on another one. JSON goes to ``target/bench/pystate-<time>.json`` unless ``--json``
says otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import litefs
from litefs import _native, testing

REPO = Path(__file__).resolve().parents[2]
SLICES = 5


def rate(fn: Callable[[], object], seconds: float) -> list[float]:
    """Calls per second of ``fn`` in each of SLICES slices of ``seconds / SLICES``."""
    fn()  # warm up (first lookups, imports)
    out = []
    for _ in range(SLICES):
        n, batch = 0, 64
        started = time.perf_counter()
        deadline = started + seconds / SLICES
        while True:
            for _ in range(batch):
                fn()
            n += batch
            now = time.perf_counter()
            if now >= deadline:
                break
        out.append(n / (now - started))
    return out


def cases(mount: str, plain_file: str) -> dict[str, Callable[[], object]]:
    primary_file = os.path.join(mount, ".primary")
    role_file = os.path.join(mount, ".role")

    def read_role() -> str:
        with open(role_file) as f:
            return f.read()

    return {
        "os.path.exists(local file)": lambda: os.path.exists(plain_file),
        "os.path.exists(<mount>/.primary)": lambda: os.path.exists(primary_file),
        "open(<mount>/.role).read()": read_role,
        "litefs.is_primary()": lambda: litefs.is_primary(mount),
        # What is_primary() did before the shared page (and does without one): .role through
        # the mount, in Rust without the GIL.
        "is_primary through the mount (.role)": lambda: _native.read_role(mount) == "primary",
        "litefs.state()": lambda: litefs.state(mount),
    }


def run(mount: str, seconds: float) -> dict:
    assert litefs.state(mount)  # answers
    with tempfile.NamedTemporaryFile() as plain:
        results = {}
        for name, fn in cases(mount, plain.name).items():
            slices = rate(fn, seconds)
            results[name] = {
                "calls_per_s": statistics.median(slices),
                "min": min(slices),
                "max": max(slices),
                "us_per_call": 1e6 / statistics.median(slices),
            }
    return results


def start_mount(tmp: Path) -> testing.MountFactory:
    """A ``litefs-py mount`` of ``tmp/lower`` at ``tmp/mnt``, ready; the factory stops it."""
    factory = testing.MountFactory(tmp, testing.litefs_py_binary(REPO))
    lower, mnt = tmp / "lower", tmp / "mnt"
    lower.mkdir()
    mnt.mkdir()
    factory.start(lower, mnt)
    return factory


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mount", help="an existing litefs-py mount (default: start one)")
    parser.add_argument("--seconds", type=float, default=5.0, help="per case (default 5)")
    parser.add_argument("--json", type=Path, help="where to write the results")
    parser.add_argument("--cpu", type=int, help="pin to this CPU (and the mount started here)")
    args = parser.parse_args()
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    factory = None
    tmp = None
    try:
        if args.mount:
            mount = args.mount
        else:
            tmp = Path(tempfile.mkdtemp(prefix="litefs-bench-state-"))
            factory = start_mount(tmp)
            mount = str(factory.mounts[0].mnt)
        results = run(mount, args.seconds)
    finally:
        if factory is not None:
            problems = factory.cleanup()
            if problems:
                print("mount cleanup: " + "; ".join(problems), file=sys.stderr)
    base = results["os.path.exists(local file)"]["calls_per_s"]
    print(f"{'call':<36} {'calls/s':>10} {'µs/call':>8} {'spread':>17} {'vs local exists':>15}")
    for name, r in results.items():
        spread = f"{r['min']:,.0f}-{r['max']:,.0f}"
        ratio = r["calls_per_s"] / base
        print(
            f"{name:<36} {r['calls_per_s']:>10,.0f} {r['us_per_call']:>8.1f} {spread:>17} "
            f"{ratio:>14.3f}x"
        )
    out = args.json or REPO / "target" / "bench" / f"pystate-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "litefs_version": litefs.__version__,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "seconds_per_case": args.seconds,
        "mount": "started" if factory is not None else "given",
        "cpu": args.cpu,
    }
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    print(f"JSON: {out}")
    if tmp is not None:
        os.rmdir(tmp / "mnt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
