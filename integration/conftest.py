"""Fixtures for the litefs-py integration tests: real `litefs-py mount` processes over fresh
temporary directories, always stopped and unmounted afterwards.

`shim` mounts a fresh lower dir at a fresh mountpoint. Parametrize it indirectly:

    @pytest.mark.parametrize("shim", [{"data_path": "symlink"}], indirect=True)
    @pytest.mark.parametrize("shim", [{"extra_args": ["--allow-other"]}], indirect=True)

or with the marker `@pytest.mark.shim(data_path="symlink", extra_args=[...])`.
`mount_factory` starts further mounts (or one-shot CLI runs) with the same cleanup.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from litefs import testing

REPO = Path(__file__).resolve().parent.parent
#: Per-test limit applied when pytest-timeout is installed (not required).
DEFAULT_TEST_TIMEOUT = 600


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # A global per-test timeout, only when pytest-timeout is there (it is not required: every
    # wait in these tests is bounded on its own).
    if not config.pluginmanager.hasplugin("timeout"):
        return
    for item in items:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(DEFAULT_TEST_TIMEOUT))


@pytest.fixture(scope="session")
def litefs_bin() -> str:
    try:
        path = testing.litefs_py_binary(REPO)
    except testing.MissingBinary as e:
        pytest.fail(str(e), pytrace=False)
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(
            f"litefs-py binary not found at {path}: run `cargo build` in the repo, or set "
            "LITEFS_PY_BIN to the binary to test",
            pytrace=False,
        )
    if not os.path.exists("/dev/fuse"):
        pytest.fail("/dev/fuse is missing: these tests need FUSE", pytrace=False)
    return str(path)


@pytest.fixture
def mount_factory(litefs_bin, tmp_path):
    """Starts mounts with `.start(...)` and CLI runs with `.run(args)`; teardown stops every
    process it started (SIGTERM, then SIGKILL) and checks that no mount is left behind."""
    factory = testing.MountFactory(tmp_path, Path(litefs_bin))
    try:
        yield factory
    finally:
        problems = factory.cleanup()
        for m in factory.mounts:
            print(f"--- {' '.join(m.args)} (exit {m.proc.returncode}) ---\n{m.output()}")
            if m.err_log is not None:
                print(f"--- stderr ---\n{m.errors()}")
        if problems:
            pytest.fail("teardown: " + "; ".join(problems), pytrace=False)


@pytest.fixture
def shim(mount_factory, tmp_path, request) -> testing.Mount:
    """A ready `litefs-py mount` of a fresh `lower` dir at a fresh `mnt` dir."""
    opts: dict = {}
    marker = request.node.get_closest_marker("shim")
    if marker is not None:
        opts.update(marker.kwargs)
    if hasattr(request, "param"):
        opts.update(request.param)
    lower = tmp_path / "lower"
    mnt = tmp_path / "mnt"
    lower.mkdir()
    mnt.mkdir()
    for name, content in opts.pop("lower_files", {}).items():
        (lower / name).write_bytes(content)
    return mount_factory.start(
        lower,
        mnt,
        data_path=opts.pop("data_path", None),
        extra_args=opts.pop("extra_args", ()),
    )
