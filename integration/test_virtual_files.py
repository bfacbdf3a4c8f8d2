"""The files the shim answers itself at the mount root: `.primary`, `.role`, `.health`.

On a single node (no cluster config) this node is primary: `.primary` is absent (LiteFS
semantics), `.role` is "primary\\n", `.health` one JSON object and a newline. They are
read-only, cannot be created, removed or renamed, and never reach the lower dir.
"""

from __future__ import annotations

import errno
import json
import os
import stat

import pytest

VIRTUAL = (".primary", ".role", ".health")
READ_ONLY_ERRNOS = (errno.EACCES,)
PINNED_ERRNOS = (errno.EPERM, errno.EACCES)


def expect_errno(errnos: tuple[int, ...], fn, *args) -> None:
    try:
        result = fn(*args)
    except OSError as e:
        assert e.errno in errnos, f"{fn.__name__}{args}: {e!r}, expected {errnos}"
    else:
        if isinstance(result, int) and fn is os.open:
            os.close(result)
        pytest.fail(
            f"{fn.__name__}{args} succeeded, expected {[errno.errorcode[e] for e in errnos]}"
        )


def assert_lower_has_no_virtual_names(lower) -> None:
    present = [n for n in VIRTUAL if os.path.lexists(lower / n)]
    assert not present, f"virtual names leaked into the lower dir: {present}"


def read_health(mnt) -> dict:
    text = (mnt / ".health").read_text()
    assert text.endswith("\n") and text.count("\n") == 1, repr(text)
    health = json.loads(text)
    assert isinstance(health, dict)
    return health


def test_contents_on_a_single_node(shim):
    assert (shim.mnt / ".role").read_text() == "primary\n"
    with pytest.raises(FileNotFoundError):
        (shim.mnt / ".primary").read_text()
    with pytest.raises(FileNotFoundError):
        os.stat(shim.mnt / ".primary")
    assert not os.path.lexists(shim.mnt / ".primary")
    health = read_health(shim.mnt)
    for key in ("role", "primary", "term", "quorum_ok", "version"):
        assert key in health, f"{key} missing from {health}"
    assert health["role"] == "primary"
    assert health["quorum_ok"] is True
    assert isinstance(health["term"], int) and health["term"] >= 1
    assert isinstance(health["version"], str) and health["version"]
    assert health["primary"] == health.get("hostname", health["primary"])
    assert_lower_has_no_virtual_names(shim.lower)


@pytest.mark.shim(extra_args=["--hostname", "node-test-7"])
def test_hostname_option_shows_in_health(shim):
    health = read_health(shim.mnt)
    assert health["primary"] == "node-test-7"
    assert health.get("hostname") == "node-test-7"


def test_attributes_match_contents(shim):
    for name in (".role", ".health"):
        st = os.stat(shim.mnt / name)
        assert stat.S_ISREG(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o444
        assert st.st_size == len((shim.mnt / name).read_bytes()), name


def test_small_reads_see_one_rendering(shim):
    fd = os.open(shim.mnt / ".health", os.O_RDONLY)
    try:
        chunks = []
        while chunk := os.read(fd, 3):
            chunks.append(chunk)
    finally:
        os.close(fd)
    json.loads(b"".join(chunks))


def test_listing_shows_role_and_health(shim):
    (shim.mnt / "app.db").write_bytes(b"")
    os.mkdir(shim.mnt / "sub")
    names = os.listdir(shim.mnt)
    assert sorted(names) == [".health", ".role", "app.db", "sub"]
    # Only at the root.
    assert os.listdir(shim.mnt / "sub") == []
    with os.scandir(shim.mnt) as it:
        kinds = {e.name: e.is_file(follow_symlinks=False) for e in it}
    assert kinds[".role"] and kinds[".health"]


@pytest.mark.parametrize("name", [".role", ".health"])
def test_virtual_files_are_read_only(shim, name):
    path = shim.mnt / name
    before = path.read_bytes()
    expect_errno(READ_ONLY_ERRNOS, os.open, path, os.O_WRONLY)
    expect_errno(READ_ONLY_ERRNOS, os.open, path, os.O_RDWR)
    expect_errno(READ_ONLY_ERRNOS, os.open, path, os.O_WRONLY | os.O_APPEND)
    expect_errno(READ_ONLY_ERRNOS, os.open, path, os.O_RDONLY | os.O_TRUNC)
    expect_errno(READ_ONLY_ERRNOS, os.truncate, path, 0)
    expect_errno(PINNED_ERRNOS, os.unlink, path)
    expect_errno(PINNED_ERRNOS, os.rename, path, shim.mnt / "renamed")
    expect_errno(PINNED_ERRNOS, os.chmod, path, 0o666)
    expect_errno(PINNED_ERRNOS, os.chown, path, 1, 1)
    expect_errno(PINNED_ERRNOS, os.utime, path, (1, 1))
    expect_errno(PINNED_ERRNOS, os.link, path, shim.mnt / "hardlink")
    expect_errno((*PINNED_ERRNOS, errno.ENOTSUP), os.setxattr, path, "user.x", b"1")
    (shim.mnt / "victim").write_text("v")
    expect_errno(PINNED_ERRNOS, os.rename, shim.mnt / "victim", path)
    assert (shim.mnt / "victim").read_text() == "v"
    # Still there, unchanged, and nothing reached the lower dir.
    if name == ".role":
        assert path.read_bytes() == before
    else:
        read_health(shim.mnt)
    assert sorted(os.listdir(shim.lower)) == ["victim"]
    assert_lower_has_no_virtual_names(shim.lower)


def test_primary_cannot_be_created(shim):
    p = shim.mnt / ".primary"
    (shim.mnt / "src").write_text("s")
    expect_errno(PINNED_ERRNOS, os.open, p, os.O_CREAT | os.O_WRONLY, 0o644)
    expect_errno(PINNED_ERRNOS, os.open, p, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
    expect_errno(PINNED_ERRNOS, os.mkdir, p)
    expect_errno(PINNED_ERRNOS, os.symlink, "src", p)
    expect_errno(PINNED_ERRNOS, os.mkfifo, p)
    expect_errno(PINNED_ERRNOS, os.link, shim.mnt / "src", p)
    expect_errno(PINNED_ERRNOS, os.rename, shim.mnt / "src", p)
    with pytest.raises(OSError):
        p.write_text("somebody\n")
    assert not os.path.lexists(p)
    assert (shim.mnt / "src").read_text() == "s"
    assert sorted(os.listdir(shim.lower)) == ["src"]
    assert_lower_has_no_virtual_names(shim.lower)


def test_creating_over_role_and_health_is_refused(shim):
    for name in (".role", ".health"):
        expect_errno(
            (errno.EEXIST,),
            os.open,
            shim.mnt / name,
            os.O_CREAT | os.O_EXCL | os.O_WRONLY,
        )
        expect_errno((*PINNED_ERRNOS, errno.EEXIST), os.mkdir, shim.mnt / name)
        expect_errno((*PINNED_ERRNOS, errno.EEXIST), os.symlink, "x", shim.mnt / name)
    assert_lower_has_no_virtual_names(shim.lower)


def test_virtual_names_below_the_root_are_ordinary_files(shim):
    sub = shim.mnt / "sub"
    sub.mkdir()
    (sub / ".role").write_text("mine\n")
    assert (sub / ".role").read_text() == "mine\n"
    assert (shim.lower / "sub" / ".role").read_text() == "mine\n"
    assert_lower_has_no_virtual_names(shim.lower)


LOWER_SHADOWED = {
    ".role": b"replica\n",
    ".primary": b"other-node\n",
    ".health": b"{}\n",
}


@pytest.mark.shim(lower_files=LOWER_SHADOWED)
def test_lower_files_with_virtual_names_are_shadowed(shim):
    before = {n: os.stat(shim.lower / n) for n in LOWER_SHADOWED}
    assert (shim.mnt / ".role").read_text() == "primary\n"
    assert read_health(shim.mnt)["role"] == "primary"
    # This node is primary, so `.primary` is absent, whatever the lower dir holds.
    assert not os.path.lexists(shim.mnt / ".primary")
    names = os.listdir(shim.mnt)
    assert sorted(names) == [".health", ".role"], names
    # Writes are refused and the lower files are untouched.
    expect_errno(READ_ONLY_ERRNOS, os.open, shim.mnt / ".role", os.O_WRONLY)
    expect_errno(PINNED_ERRNOS, os.unlink, shim.mnt / ".role")
    expect_errno(PINNED_ERRNOS, os.open, shim.mnt / ".primary", os.O_CREAT | os.O_WRONLY)
    for name, content in LOWER_SHADOWED.items():
        assert (shim.lower / name).read_bytes() == content
        after = os.stat(shim.lower / name)
        assert (after.st_ino, after.st_mtime_ns, after.st_size) == (
            before[name].st_ino,
            before[name].st_mtime_ns,
            before[name].st_size,
        )
    assert "shadows" in shim.output()
