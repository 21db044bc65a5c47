"""ListPolicies / SetPolicy / RemovePolicy: beemeshctl → the real Varlink server (unix socket) → the real
handlers and PolicyStore; and the caller's user name that admission policies see."""

from __future__ import annotations

import getpass
import json
import shutil
import socket
import tempfile
import threading
from types import SimpleNamespace

import pytest
import trio

from beemeshd import ctl, mesh_keys
from beemeshd.api.handlers import MeshHandlers
from beemeshd.api.idl import Interface
from beemeshd.api.server import VarlinkServer, peer_user
from beemeshd.client import Client, VarlinkCallError
from beemeshd.policy_store import PolicyStore

BID = "package beemesh.bid\n\nimport rego.v1\n\ndeny contains \"busy\" if input.request.peer == \"x\"\n"
ADMIT = "package beemesh.admission\n\nimport rego.v1\n\ndeny contains \"no pods\" if input.manifest.kind == \"Pod\"\n"


class Daemon:
    """The real server in a thread, serving MeshHandlers over a node that only has policies."""

    def __init__(self, home, keys: bool):
        if keys:
            mesh_keys.create(home / "config", "api-mesh")
        self.store = PolicyStore(home / "config", home / "state", "12D3KooWApiTestPeer")
        self.store.load()
        node = SimpleNamespace(policies=self.store)
        self.server = VarlinkServer(Interface.load(), MeshHandlers(node), version="t", grace=0.5)
        self.dir = tempfile.mkdtemp(prefix="bmpol")
        self.address = f"unix:{self.dir}/io.beemesh.Mesh"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(f"{self.dir}/io.beemesh.Mesh")
        sock.listen()
        ready = threading.Event()

        async def run():
            self.token = trio.lowlevel.current_trio_token()
            async with trio.open_nursery() as nursery:
                await nursery.start(self.server.run, sock)
                ready.set()

        self.thread = threading.Thread(target=trio.run, args=(run,), daemon=True)
        self.thread.start()
        assert ready.wait(5)

    def stop(self):
        trio.from_thread.run_sync(self.server.shutdown, trio_token=self.token)
        self.thread.join(5)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def daemon(tmp_path):
    d = Daemon(tmp_path, keys=True)
    yield d
    d.stop()


@pytest.fixture
def run(daemon, capsys):
    def run(*argv):
        rc = ctl.main(["-a", daemon.address, *argv])
        out, err = capsys.readouterr()
        return rc, out, err

    return run


def test_set_list_and_remove_both_scopes(run, daemon, tmp_path):
    assert run("policy", "list") == (0, "", "No policies.\n")
    (tmp_path / "bid.rego").write_text(BID)
    (tmp_path / "admit.rego").write_text(ADMIT)
    assert run("policy", "set", "busy", str(tmp_path / "bid.rego")) == (0, "policy/busy set (node)\n", "")
    rc, out, _ = run("policy", "set", "no-pods", "--scope", "mesh", str(tmp_path / "admit.rego"))
    assert (rc, out) == (0, "policy/no-pods set (mesh, version 1)\n")
    rc, out, _ = run("policy", "list")
    table = [line.split() for line in out.splitlines()]
    assert table[0] == ["NAME", "SCOPE", "VERSION", "SET-BY", "AGE", "IN-FORCE"]
    assert [r[:3] for r in table[1:]] == [["busy", "node", "-"], ["no-pods", "mesh", "1"]]
    assert table[2][3] == "ApiTestPeer"[-8:] and table[1][-1] == table[2][-1] == "yes"
    rc, out, _ = run("policy", "list", "--scope", "mesh", "-o", "json")
    [p] = json.loads(out)
    assert (p["name"], p["text"], p["setBy"]) == ("no-pods", ADMIT, "12D3KooWApiTestPeer")
    assert run("policy", "rm", "no-pods", "--scope", "mesh") == (0, "policy/no-pods removed (mesh)\n", "")
    assert run("policy", "remove", "busy") == (0, "policy/busy removed (node)\n", "")
    assert run("policy", "list")[2] == "No policies.\n"


def test_bad_text_is_reported_at_its_line_and_changes_nothing(run, daemon, tmp_path):
    good, bad = tmp_path / "good.rego", tmp_path / "bad.rego"
    good.write_text(ADMIT)
    bad.write_text(ADMIT + "deny contains m if {\n  m := input.x ==\n}\n")
    assert run("policy", "set", "p", "--scope", "mesh", str(good))[0] == 0
    rc, out, err = run("policy", "set", "p", "--scope", "mesh", str(bad))
    assert (rc, out) == (1, "")
    assert err.startswith(f"beemeshctl: {bad}:7:") and err.count("\n") == 1
    [p] = daemon.store.list()
    assert p["version"] == 1 and p["text"] == ADMIT


def test_error_replies_carry_the_interface_parameters(daemon):
    with Client(daemon.address) as c:
        with pytest.raises(VarlinkCallError) as exc:
            c.call("SetPolicy", {"name": "p", "scope": "node", "text": "package beemesh.bid\n\ndeny contains {\n"})
        assert exc.value.name == "io.beemesh.Mesh.InvalidPolicy"
        assert set(exc.value.parameters) == {"name", "line", "column", "message"}
        with pytest.raises(VarlinkCallError) as exc:
            c.call("RemovePolicy", {"name": "nope", "scope": "mesh"})
        assert (exc.value.name, exc.value.parameters) == ("io.beemesh.Mesh.PolicyNotFound",
                                                          {"name": "nope", "scope": "mesh"})
        with pytest.raises(VarlinkCallError) as exc:
            c.call("SetPolicy", {"name": "Bad Name", "scope": "node", "text": BID})
        assert exc.value.name == "org.varlink.service.InvalidParameter"
        with pytest.raises(VarlinkCallError) as exc:
            c.call("SetPolicy", {"name": "p", "scope": "cluster", "text": BID})
        assert exc.value.name == "org.varlink.service.InvalidParameter"


def test_mesh_policies_need_the_mesh_key(tmp_path, capsys):
    d = Daemon(tmp_path, keys=False)
    try:
        (tmp_path / "admit.rego").write_text(ADMIT)
        rc = ctl.main(["-a", d.address, "policy", "set", "p", "--scope", "mesh", str(tmp_path / "admit.rego")])
        assert rc == 1 and "MeshKeyRequired: SetPolicy: this peer belongs to no mesh" in capsys.readouterr().err
    finally:
        d.stop()


async def test_the_caller_is_known_by_its_unix_user():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        assert peer_user(trio.SocketStream(trio.socket.from_stdlib_socket(a))) == getpass.getuser()
    assert peer_user(object()) is None
