"""beemeshd as the test user, driven by the real varlinkctl (systemd 257)."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import threading
import time

from tests.conftest import ROOT, VENV
from tests.integration.daemons import Daemon, varlinkctl

IDL = ROOT / "interfaces" / "io.beemesh.Mesh.varlink"


def test_interface_file_is_valid_for_systemd():
    r = varlinkctl("validate-idl", str(IDL))
    assert r.rc == 0, r.err
    assert "interface io.beemesh.Mesh" in r.out


def test_info_and_introspect(daemon):
    r = varlinkctl("info", daemon.address)
    assert r.rc == 0, r.err
    assert "beemeshd" in r.out and "io.beemesh.Mesh" in r.out
    r = varlinkctl("introspect", daemon.address, "io.beemesh.Mesh")
    assert r.rc == 0, r.err
    assert "method Deploy(" in r.out
    assert "# One Kubernetes object" in r.out  # the comments are the manual: they must come through


def test_getinfo(daemon, user):
    r = daemon.call("GetInfo")
    assert r.rc == 0, r.err
    info = r.json["info"]
    assert info["user"] == user.name
    assert info["address"] == daemon.address
    assert info["socketActivated"] is False
    assert info["peerId"].startswith("12D3KooW")
    # the peer id persists across restarts (identity under the state directory)
    daemon.stop()
    again = Daemon(user, daemon.home).start()
    try:
        assert again.call("GetInfo").json["info"]["peerId"] == info["peerId"]
    finally:
        again.stop()


def test_more_stream_and_plain_list(daemon):
    r = daemon.call("ListPeers", {}, "--more")
    assert r.rc == 0, r.err
    peers = [line["peer"] for line in r.lines]
    assert [p["state"] for p in peers] == ["self"]
    r = daemon.call("ListPeers")
    assert r.rc == 0 and r.json["peers"][0]["peerId"] == peers[0]["peerId"]


def test_wrong_parameter_type_is_named(daemon):
    r = daemon.call("Scale", {"name": "web", "replicas": "three"})
    assert r.rc == 1
    assert r.error == "org.varlink.service.InvalidParameter"
    assert r.json == {"parameter": "replicas"}


def test_unknown_method(daemon):
    r = varlinkctl("call", daemon.address, "io.beemesh.Mesh.Frobnicate", "{}")
    assert r.rc == 1 and r.error == "org.varlink.service.MethodNotFound"


def test_unimplemented_methods_answer_a_documented_error(user, user_tmp, varlinkctl):
    alone = Daemon(user, user_tmp, {"mesh_enabled": False}).start()
    try:
        r = alone.call("Explain", {"name": "web"})
        assert r.rc == 1 and r.error == "io.beemesh.Mesh.NotImplemented"
        assert r.json["method"] == "Explain" and "mesh_enabled" in r.json["reason"]
    finally:
        assert alone.stop() == 0


def test_socket_permissions_and_registry_link(daemon):
    assert stat.S_IMODE(daemon.socket_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(daemon.socket_path.parent.stat().st_mode) == 0o700
    link = daemon.home / "registry" / "io.beemesh.Mesh"
    assert os.readlink(link) == str(daemon.socket_path)
    r = varlinkctl("call", f"unix:{link}", "io.beemesh.Mesh.GetInfo", "{}")
    assert r.rc == 0


def _raw(daemon, payload: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(daemon.socket_path))
        data = b""
        try:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            while chunk := s.recv(65536):
                data += chunk
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server closed on us mid-send: that is the expected answer to garbage
        return data


def test_garbage_partial_and_oversize_clients_do_not_disturb_others(daemon):
    # a client that holds a half-sent message open while others work
    lingering = socket.socket(socket.AF_UNIX)
    lingering.connect(str(daemon.socket_path))
    lingering.sendall(b'{"method": "io.beemesh.Mesh.GetIn')
    assert _raw(daemon, b"\x00\xff garbage \xfe\0") == b""          # closed, no reply
    assert _raw(daemon, b"A" * (5 << 20)) == b""                      # over the 4 MiB limit
    assert _raw(daemon, b'{"method": "io.beemesh.Mesh.GetInfo"') == b""  # partial, then EOF
    results = []

    def client():
        results.append(daemon.call("GetInfo").rc)

    threads = [threading.Thread(target=client) for _ in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [0] * 40
    info = daemon.call("GetInfo").json["info"]
    assert info["counters"]["badConnections"] == 3
    lingering.close()


def test_sigterm_exits_zero_and_removes_socket(daemon):
    idle = socket.socket(socket.AF_UNIX)
    idle.connect(str(daemon.socket_path))  # an idle client must not hold the daemon up
    t0 = time.monotonic()
    assert daemon.stop(signal.SIGTERM) == 0
    assert time.monotonic() - t0 < 5
    assert not daemon.socket_path.exists()
    assert idle.recv(10) == b""
    idle.close()


def test_watch_stream_ends_cleanly_at_shutdown(daemon):
    p = subprocess.Popen([str(ROOT / "scripts" / "varlinkctl"), "call", "--more", daemon.address,
                          "io.beemesh.Mesh.Watch", "{}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(0.5)
    assert p.poll() is None  # streaming
    assert daemon.stop() == 0
    p.wait(10)


def test_refuses_to_run_as_root(tmp_path):
    p = subprocess.run([str(VENV / "bin" / "beemeshd"), "--socket", str(tmp_path / "s")],
                       capture_output=True, text=True, timeout=30,
                       env={"PATH": "/usr/bin:/bin", "XDG_RUNTIME_DIR": str(tmp_path)})
    assert p.returncode == 1
    assert "refusing to run as root" in p.stderr
    assert not (tmp_path / "s").exists()


def test_second_daemon_on_same_socket_is_refused(daemon, user):
    p = user.run([str(VENV / "bin" / "beemeshd"), "--config", str(daemon.home / "beemeshd.toml")], timeout=30)
    assert p.returncode != 0 and "another beemeshd" in p.stderr
    assert daemon.call("GetInfo").rc == 0  # the first one is untouched
