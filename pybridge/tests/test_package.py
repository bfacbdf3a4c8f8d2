"""The installed package: config validation and rendering from Rust, the ``litefs-py`` command
that pip installs, ``python -m litefs``, typing files."""

from __future__ import annotations

import importlib.resources
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import litefs
from litefs import config, testing

CONFIG = """\
node:
  id: 1
  hostname: web-1
  raft-addr: 127.0.0.1:20301
  http-addr: 127.0.0.1:20311
cluster:
  bootstrap: true
  peers:
    1: 127.0.0.1:20301
mount:
  dir: /srv/app
  lower: /var/lib/litefs-py/lower
litefs:
  data-dir: /var/lib/litefs
"""


def test_validate_fills_defaults():
    c = config.validate(CONFIG)
    assert c["node"]["hostname"] == "web-1"
    assert c["mount"]["dir"] == "/srv/app"
    assert c["lease"]["addr"]  # a default filled in
    assert "hostname: web-1" in config.effective_yaml(CONFIG)


def test_render_litefs_yml():
    text = config.render_litefs_yml(CONFIG)
    assert "dir: /var/lib/litefs-py/lower" in text
    assert "type: consul" in text and "hostname: web-1" in text


def test_mapping_source_and_to_yaml():
    as_dict = {
        "node": {
            "id": 1,
            "hostname": "web-1",
            "raft-addr": "127.0.0.1:20301",
            "http-addr": "127.0.0.1:20311",
        },
        "cluster": {"bootstrap": True, "peers": {1: "127.0.0.1:20301"}},
        "mount": {"dir": Path("/srv/app"), "lower": "/var/lib/litefs-py/lower"},
        "litefs": {"data-dir": "/var/lib/litefs"},
    }
    assert config.validate(as_dict) == config.validate(CONFIG)
    assert config.render_litefs_yml(as_dict) == config.render_litefs_yml(CONFIG)
    assert (
        config.to_yaml({"a": {"b": [1, "x"]}, "c": None})
        == 'a:\n  b:\n    - 1\n    - "x"\nc: null\n'
    )


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        (CONFIG.replace("  id: 1\n", "  id: 0\n"), "node.id", "node.id"),
        (CONFIG + "bogus: 1\n", None, "bogus"),
        (
            CONFIG.replace("  bootstrap: true\n", "  bootstrap: true\n  colour: red\n"),
            "cluster",
            "colour",
        ),
        ("node: [", None, "litefs-py.yml"),
    ],
)
def test_errors_name_the_key(text, key, words):
    with pytest.raises(litefs.ConfigError) as info:
        config.validate(text)
    assert words in str(info.value)
    if key is not None:
        assert info.value.key == key
    assert isinstance(info.value, ValueError)


def test_dollar_refused_in_litefs_yml():
    # `$$` is a literal `$` in litefs-py.yml; LiteFS would expand it in litefs.yml: refused.
    with pytest.raises(litefs.ConfigError, match=r"\$"):
        config.render_litefs_yml(CONFIG.replace("data-dir: /var/lib/litefs", "data-dir: $$HOME"))


def test_environment_variables_are_expanded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LITEFS_PY_TEST_HOST", "web-7")
    c = config.validate(CONFIG.replace("hostname: web-1", "hostname: ${LITEFS_PY_TEST_HOST}"))
    assert c["node"]["hostname"] == "web-7"
    with pytest.raises(litefs.ConfigError, match=r"LITEFS_PY_TEST_UNSET\} is not set"):
        config.validate(CONFIG.replace("hostname: web-1", "hostname: ${LITEFS_PY_TEST_UNSET}"))


def test_warnings_two_voters():
    assert config.warnings(CONFIG) == []
    two = CONFIG.replace(
        "    1: 127.0.0.1:20301\n", "    1: 127.0.0.1:20301\n    2: 127.0.0.1:20302\n"
    ).replace("mount:", "  secret-file: /dev/null\nmount:")
    (warning,) = config.warnings(two)
    assert "two voters cannot fail over" in warning


def script() -> str:
    path = shutil.which("litefs-py", path=os.path.dirname(sys.executable))
    assert path, f"no litefs-py script next to {sys.executable}: is the package installed?"
    return path


def test_console_script_help_and_version():
    r = subprocess.run([script(), "--help"], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    assert "mount" in r.stdout and "config" in r.stdout and "run" in r.stdout
    r = subprocess.run([script(), "version"], capture_output=True, text=True, check=False)
    assert r.returncode == 0
    assert f"litefs-py {litefs.__version__}" in r.stdout and "v0.5.14" in r.stdout
    r = subprocess.run([script(), "no-such-command"], capture_output=True, text=True, check=False)
    assert r.returncode == 2 and "no-such-command" in r.stderr


def test_console_script_config_check(tmp_path: Path):
    f = tmp_path / "litefs-py.yml"
    f.write_text(CONFIG)
    r = subprocess.run(
        [script(), "config", "check", "--config", str(f)], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    assert f"{f}: ok" in r.stderr and r.stdout == config.effective_yaml(CONFIG)
    r = subprocess.run(
        [script(), "config", "litefs", "--config", str(f)], capture_output=True, text=True
    )
    assert r.returncode == 0 and r.stdout == config.render_litefs_yml(CONFIG)
    f.write_text(CONFIG + "bogus: 1\n")
    r = subprocess.run(
        [script(), "config", "check", "--config", str(f)], capture_output=True, text=True
    )
    assert r.returncode == 1 and "bogus" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_python_m_litefs_is_the_cli():
    r = subprocess.run([sys.executable, "-m", "litefs", "version"], capture_output=True, text=True)
    assert r.returncode == 0 and "expects LiteFS" in r.stdout


def test_console_script_mounts(tmp_path: Path, litefs_bin):
    """`litefs-py mount` run through the Python script: SIGTERM unmounts, exit 0."""
    lower, mnt = tmp_path / "lower", tmp_path / "mnt"
    lower.mkdir()
    mnt.mkdir()
    m = testing.Mount(
        lower, mnt, [script(), "mount", "--lower", str(lower), str(mnt)], tmp_path / "log"
    )
    try:
        m.wait_ready()
        assert litefs.is_primary(mnt)
        assert m.stop() == 0
        assert not m.is_mounted()
    finally:
        problems = m.cleanup()
    assert not problems, problems


def test_typing_files_installed():
    files = importlib.resources.files("litefs")
    assert files.joinpath("py.typed").is_file()
    assert files.joinpath("_native.pyi").is_file()
