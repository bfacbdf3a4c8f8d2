#!/usr/bin/env python3
"""Runs Django's own test modules (``tests/runtests.py`` from the Django sdist) three times and
compares what passed:

1. ``stock``: ``django.db.backends.sqlite3``, database files in a plain directory;
2. ``litefs``: ``litefs.django`` with its defaults (IMMEDIATE, WAL), database files on a real
   ``litefs-py mount`` over a plain directory;
3. ``litefs-deferred``: the same, with ``OPTIONS["transaction_mode"] = None`` (Django's default
   ``BEGIN``: the user's OPTIONS win).

Run 3 must pass exactly what run 1 passes. Run 2 may differ from run 1 only in the tests listed
in ``BY_DESIGN`` (they assert Django's default ``BEGIN`` text, which ``litefs.django`` replaces
with ``BEGIN IMMEDIATE``); any other difference, in either direction, fails. Prints the counts
and the differences, writes everything as JSON (``--json``), exits 1 on a mismatch.

    python pybridge/tests/run_django_suite.py [--django-tests DIR] [MODULE ...]

Needs root and /dev/fuse (it mounts), ``target/debug/litefs-py`` (or ``$LITEFS_PY_BIN``), and
the ``litefs`` package installed in this interpreter.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from litefs import testing

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent

#: The sqlite backend's own modules (the issue's four first), then the ORM paths that write
#: through the backend: schema changes, bulk writes, locking, fixtures, introspection.
DEFAULT_MODULES = [
    "backends",
    "transactions",
    "basic",
    "migrations",
    "schema",
    "queries",
    "model_fields",
    "bulk_create",
    "update",
    "delete",
    "select_for_update",
    "fixtures",
    "test_utils",
    "introspection",
    "inspectdb",
    "get_or_create",
    "expressions",
    "aggregation",
    "db_functions",
    "model_forms",
]
DJANGO_VERSION = "5.2.19"

#: Tests that assert the SQL text of Django's default transaction start (``BEGIN``), which this
#: backend replaces with ``BEGIN IMMEDIATE`` by design. They pass with ``transaction_mode: None``
#: (run 3).
BY_DESIGN = {
    "backends.base.test_base.DatabaseWrapperLoggingTests.test_commit_debug_log": (
        "asserts the first query of atomic() is 'BEGIN'; litefs.django sends 'BEGIN IMMEDIATE'"
    ),
    "backends.sqlite.tests.TestTransactionMode.test_default_transaction_mode": (
        "asserts the default transaction mode is 'BEGIN'; litefs.django's is IMMEDIATE"
    ),
}


def default_tests_dir() -> Path:
    env = os.environ.get("DJANGO_TESTS_DIR")
    if env:
        return Path(env)
    return Path(sys.prefix) / "share" / "django-sdist" / f"django-{DJANGO_VERSION}" / "tests"


def run_suite(
    label: str,
    tests_dir: Path,
    modules: list[str],
    engine: str,
    db_dir: Path,
    out_dir: Path,
    parallel: str,
    options: dict | None = None,
    mount: Path | None = None,
) -> dict:
    results = out_dir / f"{label}.json"
    log = out_dir / f"{label}.log"
    env = dict(os.environ)
    env.update(
        DJSUITE_ENGINE=engine,
        DJSUITE_DB_DIR=str(db_dir),
        DJSUITE_RESULTS=str(results),
        DJSUITE_OPTIONS=json.dumps(options or {}),
        PYTHONPATH=os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")])),
    )
    if mount is not None:
        env["LITEFS_DIR"] = str(mount)
    cmd = [
        sys.executable,
        "runtests.py",
        "--settings",
        "djsuite.settings",
        "--parallel",
        parallel,
        "--noinput",
        *modules,
    ]
    started = time.monotonic()
    with open(log, "wb") as f:
        rc = subprocess.run(
            cmd, cwd=tests_dir, env=env, stdout=f, stderr=subprocess.STDOUT
        ).returncode
    took = time.monotonic() - started
    if not results.exists():
        tail = log.read_text(errors="replace")[-4000:]
        raise SystemExit(f"{label}: runtests.py wrote no results (exit {rc}); log {log}:\n{tail}")
    data = json.loads(results.read_text())
    data.update(label=label, exit=rc, seconds=round(took, 1), log=str(log))
    return data


def passed(run: dict) -> set[str]:
    return {t for t, o in run["outcomes"].items() if o == "pass"}


def summary(run: dict) -> str:
    counts = collections.Counter(run["outcomes"].values())
    parts = ", ".join(f"{k} {counts[k]}" for k in sorted(counts))
    return f"{run['label']:<16} {len(run['outcomes']):5} tests: {parts}  ({run['seconds']} s)"


def diff_lines(a: dict, b: dict) -> list[str]:
    out = []
    for test in sorted(set(a["outcomes"]) | set(b["outcomes"])):
        x, y = a["outcomes"].get(test, "absent"), b["outcomes"].get(test, "absent")
        if x != y:
            note = f"  [by design: {BY_DESIGN[test]}]" if test in BY_DESIGN else ""
            out.append(f"  {test}: {a['label']} {x}, {b['label']} {y}{note}")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", default=DEFAULT_MODULES)
    parser.add_argument("--django-tests", type=Path, default=None, help="the sdist's tests/")
    # One process by default: with file databases and parallel workers, Django's
    # ThreadSharing test closes the worker's connection when it was not open at the start of the
    # test (whether it was depends on the scheduling), and the rest of that worker's tests error;
    # seen with either backend (e.g. `backends.sqlite.tests.ThreadSharing
    # backends.test_ddl_references --parallel 2`). One process: the same order every run.
    parser.add_argument("--parallel", default="1", help="runtests.py --parallel (default 1)")
    parser.add_argument("--json", type=Path, help="write the three runs and the verdict here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    tests_dir = args.django_tests or default_tests_dir()
    if not (tests_dir / "runtests.py").is_file():
        print(
            f"no Django test suite at {tests_dir} (scripts/setup unpacks Django "
            f"{DJANGO_VERSION}'s sdist there; or pass --django-tests)",
            file=sys.stderr,
        )
        return 2
    import django

    if django.get_version() != DJANGO_VERSION:
        print(
            f"Django {django.get_version()} installed, the suite is {DJANGO_VERSION}",
            file=sys.stderr,
        )
        return 2

    tmp = Path(tempfile.mkdtemp(prefix="litefs-djsuite-"))
    plain, lower, mnt = tmp / "plain", tmp / "lower", tmp / "mnt"
    for d in (plain, lower, mnt):
        d.mkdir()
    factory = testing.MountFactory(tmp, testing.litefs_py_binary(REPO))
    runs: list[dict] = []
    try:
        m = factory.start(lower, mnt)
        common = dict(
            tests_dir=tests_dir, modules=args.modules, out_dir=tmp, parallel=args.parallel
        )
        runs.append(run_suite("stock", engine="django.db.backends.sqlite3", db_dir=plain, **common))
        runs.append(
            run_suite("litefs", engine="litefs.django", db_dir=m.mnt, mount=m.mnt, **common)
        )
        runs.append(
            run_suite(
                "litefs-deferred",
                engine="litefs.django",
                db_dir=m.mnt,
                mount=m.mnt,
                options={"transaction_mode": None},
                **common,
            )
        )
    finally:
        problems = factory.cleanup()
        if problems:
            print("mount cleanup: " + "; ".join(problems), file=sys.stderr)
    stock, lite, deferred = runs
    ok = not problems
    print(f"Django {DJANGO_VERSION} test modules: {' '.join(args.modules)}")
    for r in runs:
        print(summary(r))
    for r in (lite, deferred):
        for alias, db in r["databases"].items():
            if db["litefs_mount"] is None:
                ok = False
                print(f"{r['label']}: database {alias} ({db['name']}) was not on the mount")
        modes = {db["transaction_mode"] for db in r["databases"].values()}
        print(f"{r['label']}: transaction_mode {', '.join(map(str, sorted(modes, key=str)))}")

    unexpected_lite = (passed(stock) ^ passed(lite)) - set(BY_DESIGN)
    designed = (passed(stock) - passed(lite)) & set(BY_DESIGN)
    exact = passed(stock) == passed(deferred)
    print(
        f"pass lists: stock {len(passed(stock))}, litefs {len(passed(lite))}, "
        f"litefs-deferred {len(passed(deferred))}"
    )
    print(f"stock vs litefs-deferred: {'identical' if exact else 'DIFFERENT'}")
    for line in diff_lines(stock, deferred):
        print(line)
    print(
        f"stock vs litefs: {len(designed)} by design, {len(unexpected_lite)} unexpected "
        "difference(s) in the pass list"
    )
    for line in diff_lines(stock, lite):
        print(line)
    ok = ok and exact and not unexpected_lite
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "django": DJANGO_VERSION,
                    "modules": args.modules,
                    "ok": ok,
                    "by_design": BY_DESIGN,
                    "runs": runs,
                },
                indent=1,
                sort_keys=True,
            )
        )
    print("OK: the pass lists match" if ok else "FAILED: the pass lists differ")
    if not args.keep and ok:
        subprocess.run(["rm", "-rf", "--one-file-system", str(tmp)], check=False)
    else:
        print(f"logs in {tmp}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
