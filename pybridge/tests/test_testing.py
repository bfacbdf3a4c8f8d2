"""litefs.testing's own parts that need no mount: ports, the litefs-py.yml builder, mountinfo,
bounded waits and stopping a process by PID. (Its mounts and clusters are exercised by every
other test here, by integration/ and by the guestbook example.)"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from litefs import config, testing


def test_free_port_is_never_handed_out_twice():
    ports = [testing.free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)


def test_free_port_of_several_hosts_is_free_on_each():
    hosts = ["127.0.0.51", "127.0.0.52", "127.0.0.53"]
    port = testing.free_port(hosts)
    for host in hosts:
        with socket.socket() as s:
            s.bind((host, port))


def test_node_yml_is_a_valid_litefs_py_yml(tmp_path: Path):
    yml = testing.NodeYml(
        id=2,
        hostname="node-2",
        raft_addr="127.0.0.1:20002",
        http_addr="127.0.0.1:20012",
        peers={1: "127.0.0.1:20001", 2: "127.0.0.1:20002"},
        secret_file=testing.write_secret(tmp_path / "secret"),
        data_dir=tmp_path / "raft",
        mount_dir=tmp_path / "mnt",
        lower=tmp_path / "lower",
        lease_addr="127.0.0.1:20022",
        lease_ttl="3s",
        litefs=testing.LiteFSYml("/usr/bin/litefs", tmp_path / "ld", "127.0.0.1:20032"),
        run_grace="5s",
    )
    effective = config.validate(yml.render())
    assert effective["node"]["id"] == 2 and effective["node"]["hostname"] == "node-2"
    assert effective["cluster"]["peers"] == {"1": "127.0.0.1:20001", "2": "127.0.0.1:20002"}
    assert effective["mount"]["dir"] == str(tmp_path / "mnt")
    assert effective["litefs"]["advertise-url"] == "http://127.0.0.1:20032"
    assert (tmp_path / "secret").stat().st_mode & 0o777 == 0o600
    assert yml.write(tmp_path / "litefs-py.yml").read_text() == yml.render()


def test_run_cluster_with_a_proxy_writes_a_valid_proxy_section(tmp_path: Path):
    """Only the configs (nothing is started): each node's proxy listens on the port clients
    use (``url``) and passes to the app's own port (``app_url``)."""
    with testing.RunCluster(
        2,
        tmp_path / "c",
        ip_base=60,
        litefs="/usr/bin/litefs",
        litefs_py=Path("/nonexistent/litefs-py"),
        run_args=["--migrate", "true"],
        proxy={"primary-wait": "7s"},
    ) as c:
        for n in c.nodes:
            effective = config.validate(n.config.read_text())
            proxy = effective["proxy"]
            assert n.ports.target is not None and n.ports.target != n.ports.app
            assert proxy["addr"] == f"{n.ip}:{n.ports.app}" == n.url.removeprefix("http://")
            assert proxy["target"] == f"{n.ip}:{n.ports.target}"
            assert n.app_url == f"http://{n.ip}:{n.ports.target}"
            assert proxy["advertise-url"] == n.url
            assert proxy["primary-wait"] == "7s"
        assert c.run_args == ["--migrate", "true"]
    with testing.RunCluster(
        1, tmp_path / "p", litefs="/usr/bin/litefs", litefs_py=Path("/nonexistent/litefs-py")
    ) as plain:
        (n,) = plain.nodes
        assert n.ports.target is None and n.app_url == n.url
        assert "\nproxy:" not in n.config.read_text()


def test_mountinfo_sees_the_root_and_no_fuse_mount_in_a_fresh_dir(tmp_path: Path):
    assert testing.is_mounted("/")
    assert testing.fstype_at("/") is not None
    assert not testing.is_mounted(tmp_path)
    assert testing.fuse_mounts_under(tmp_path) == []
    assert not testing.detach(tmp_path)


def test_waits_are_bounded():
    t0 = time.monotonic()
    assert not testing.wait_until(lambda: False, 0.2)
    with pytest.raises(TimeoutError, match=r"nothing: not after 0\.2 s"):
        testing.poll_until(lambda: None, 0.2, "nothing")
    assert testing.poll_until(lambda: 7, 0.2, "seven") == 7
    with pytest.raises(TimeoutError, match="did not return within"):
        testing.call_with_timeout(lambda: time.sleep(5), 0.2)
    assert time.monotonic() - t0 < 3


def test_stop_process_kills_what_ignores_sigterm():
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print(1, flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"1\n"
    rc, killed = testing.stop_process(proc, timeout=0.5)
    assert killed and rc == -signal.SIGKILL
    proc.stdout.close()
