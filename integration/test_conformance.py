"""POSIX conformance through the shim: pjdfstest (every test that passes on the plain lower
dir must pass through the mount) and fsx (random I/O, no miscompare).

Both tools come from crates.io (`cargo install pjdfstest fsx`). Without them these tests are
skipped locally, and fail when $CI is set (CI installs them).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from litefs import testing

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent
PJDFSTEST_CONFIG = HERE / "pjdfstest.toml"
PJDFSTEST_TIMEOUT = 900
FSX_OPS = 100_000
FSX_TIMEOUT = 900

#: Tests that pass on the lower dir and are skipped (not failed) through FUSE, and why.
KNOWN_SKIPS = {
    "link::link_count_max": "glibc's pathconf(_PC_LINK_MAX) cannot know a FUSE file "
    "system's limit, so pjdfstest cannot tell how many links to make",
}

ANSI = re.compile(r"\x1b\[[0-9;]*m")
RESULT = re.compile(r"^(\S+)\s+(ok|skipped|FAILED|PASSED UNEXPECTEDLY|failed as expected)\s*$")


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path:
        return path
    message = f"{name} is not on PATH (install it with `cargo install {name}`)"
    if os.environ.get("CI"):
        pytest.fail(f"{message}; CI must install it", pytrace=False)
    pytest.skip(message)


@pytest.fixture
def pjdfstest_bin() -> str:
    return require_tool("pjdfstest")


@pytest.fixture
def fsx_bin() -> str:
    return require_tool("fsx")


@pytest.fixture
def say(capsys):
    """Prints straight to the terminal (not captured): the skipped-test list and the fsx seed
    are worth seeing on every run."""

    def say(*lines: str) -> None:
        with capsys.disabled():
            print()
            for line in lines:
                print(line)

    return say


@pytest.fixture
def public_tmp():
    """A temporary dir that pjdfstest's unprivileged users can traverse (pytest's tmp_path
    sits under a 0700 dir). Removed after the mounts in it are gone."""
    base = Path(tempfile.mkdtemp(prefix="litefs-py-pjdfstest-"))
    os.chmod(base, 0o755)
    yield base
    if not any(p.startswith(str(base) + os.sep) for p, _ in testing.mount_points()):
        shutil.rmtree(base, ignore_errors=True)


def parse_pjdfstest(output: str) -> dict[str, tuple[str, list[str]]]:
    """{test name: (status, reason lines)} from pjdfstest's report."""
    results: dict[str, tuple[str, list[str]]] = {}
    last = None
    for raw in ANSI.sub("", output).splitlines():
        m = RESULT.match(raw)
        if m:
            last = m.group(1)
            results[last] = (m.group(2), [])
        elif raw.startswith("\t") and last is not None:
            results[last][1].append(raw.strip())
        elif raw.strip():
            last = None
    return results


def run_pjdfstest(binary: str, path: Path) -> tuple[dict[str, tuple[str, list[str]]], str]:
    env = dict(os.environ, NO_COLOR="1")
    try:
        proc = subprocess.run(
            [binary, "-c", str(PJDFSTEST_CONFIG), "-p", str(path)],
            capture_output=True,
            text=True,
            timeout=PJDFSTEST_TIMEOUT,
            cwd=path,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"pjdfstest on {path} did not finish within {PJDFSTEST_TIMEOUT} s: {e}")
    output = proc.stdout + proc.stderr
    results = parse_pjdfstest(output)
    summary = [line for line in ANSI.sub("", output).splitlines() if line.startswith("Summary")]
    assert summary, (
        f"no summary from pjdfstest on {path} (exit {proc.returncode}):\n{output[-3000:]}"
    )
    assert len(results) > 100, f"only {len(results)} results parsed:\n{output[-3000:]}"
    return results, output, summary[-1]


def test_pjdfstest_through_the_shim_matches_the_lower_dir(
    pjdfstest_bin, public_tmp, mount_factory, say
):
    # (public_tmp before mount_factory: it is then torn down after the unmount.)
    pjdfstest = pjdfstest_bin
    lower = public_tmp / "lower"
    mnt = public_tmp / "mnt"
    for d in (lower, mnt):
        d.mkdir()
        os.chmod(d, 0o755)

    baseline, _, base_summary = run_pjdfstest(pjdfstest, lower)
    assert os.listdir(lower) == [], "pjdfstest left files in the lower dir"

    # pjdfstest switches to other users, so the mount must let them in.
    m = mount_factory.start(lower, mnt, extra_args=["--allow-other"])
    shim, shim_output, shim_summary = run_pjdfstest(pjdfstest, mnt)

    regressions = []
    for name, (status, _) in sorted(baseline.items()):
        if status != "ok":
            continue
        through, reasons = shim.get(name, ("missing", []))
        if through == "ok" or (through == "skipped" and name in KNOWN_SKIPS):
            continue
        regressions.append(f"{name}: {through} {' | '.join(reasons)}")

    lines = [
        f"pjdfstest on the lower dir: {base_summary}",
        f"pjdfstest through the shim: {shim_summary}",
        "skipped through the shim:",
    ]
    for name, (status, reasons) in sorted(shim.items()):
        if status == "skipped":
            known = KNOWN_SKIPS.get(name)
            why = f" [passes on the lower dir; known FUSE limit: {known}]" if known else ""
            lines.append(f"  {name}: {'; '.join(reasons)}{why}")
    say(*lines)

    assert not regressions, (
        f"{len(regressions)} pjdfstest tests pass on the lower dir but not through the shim:\n"
        + "\n".join(regressions)
        + f"\n\nlast output:\n{shim_output[-3000:]}"
    )
    assert m.proc.poll() is None, "the shim died during pjdfstest"
    assert (mnt / ".role").read_text() == "primary\n"


def test_fsx_through_the_shim(fsx_bin, shim, tmp_path, say):
    fsx = fsx_bin
    seed = os.environ.get("FSX_SEED", "20251124")
    artifacts = tmp_path / "fsx-artifacts"
    artifacts.mkdir()
    args = [
        fsx,
        "-N",
        str(FSX_OPS),
        "-S",
        seed,
        "-P",
        str(artifacts),
        str(shim.mnt / "fsxfile"),
    ]
    say(f"fsx seed {seed} (set FSX_SEED to change): {' '.join(args)}")
    try:
        proc = subprocess.run(
            args,
            capture_output=True,
            text=True,
            timeout=FSX_TIMEOUT,
            cwd=tmp_path,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"fsx did not finish within {FSX_TIMEOUT} s (seed {seed}): {e}")
    output = proc.stdout + proc.stderr
    saved = sorted(os.listdir(artifacts))
    assert proc.returncode == 0, (
        f"fsx failed (exit {proc.returncode}, seed {seed}, artifacts {saved}):\n{output[-5000:]}"
    )
    assert "miscompare" not in output.lower(), output[-5000:]
    assert "All operations completed A-OK" in output, output[-5000:]
    # The file fsx worked on is the lower file.
    with contextlib.suppress(FileNotFoundError):
        assert os.path.getsize(shim.lower / "fsxfile") == os.path.getsize(shim.mnt / "fsxfile")
