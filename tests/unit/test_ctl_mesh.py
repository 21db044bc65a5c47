"""`beemeshctl mesh init|invite|join|revoke|status` against the real Varlink server (in a thread)
with fake membership handlers: what is sent, what is printed, which exit code."""

from __future__ import annotations

import argparse
import shutil
import socket
import tempfile
import threading

import pytest
import trio

from beemeshd import ctl, errors
from beemeshd.api.idl import Interface
from beemeshd.api.server import VarlinkServer

PEER = "12D3KooWGzBxo7KvTwVSh7bQXKKxDQ8K5TTmvFHYcTSKhqWkrd1a"
MESH_ID = "ab" * 32
NOW = 1_764_000_000_000_000


def membership(**kw) -> dict:
    m = {"meshName": "home", "meshId": MESH_ID, "holdsMeshKey": True, "open": False, "credential": "valid",
         "serial": "0123456789abcdef", "issuedUSec": NOW, "expiresUSec": NOW + 365 * 86400 * 10**6,
         "revocationVersion": 0, "revokedPeers": [], "revokedSerials": [], "verifiedPeers": 2, "pendingTokens": 1,
         "keyDirectory": "/home/u/.config/beemesh/mesh", "stateDirectory": "/home/u/.local/state/beemesh/mesh"}
    m.update(kw)
    return m


class Handlers:
    def __init__(self):
        self.calls: list[tuple[str, dict]] = []

    def _record(self, method, **params):
        self.calls.append((method, {k: v for k, v in params.items() if v is not None}))

    async def GetMembership(self, call):
        self._record("GetMembership")
        return {"membership": membership()}

    async def CreateMesh(self, call, name=None):
        self._record("CreateMesh", name=name)
        if name == "taken":
            raise errors.MeshExists("home", MESH_ID)
        return {"membership": membership(meshName=name or "beemesh")}

    async def Invite(self, call, peer=None, ttlSeconds=None, tokenTtlSeconds=None):
        self._record("Invite", peer=peer, ttlSeconds=ttlSeconds, tokenTtlSeconds=tokenTtlSeconds)
        if peer:
            return {"invitation": "bmc1.CRED", "kind": "credential", "serial": "00aa", "expiresUSec": NOW}
        return {"invitation": "bmj1.TOKEN", "kind": "token", "serial": None, "expiresUSec": NOW}

    async def Join(self, call, invitation):
        self._record("Join", invitation=invitation)
        if invitation == "bmj1.USED":
            raise errors.InvalidCredential("tokenUsed", "this join token was redeemed already")
        return {"membership": membership(holdsMeshKey=False)}

    async def Revoke(self, call, peer=None, serial=None):
        self._record("Revoke", peer=peer, serial=serial)
        return {"membership": membership(revocationVersion=3, revokedPeers=[peer] if peer else [])}


@pytest.fixture
def run(capsys, monkeypatch):
    handlers = Handlers()
    server = VarlinkServer(Interface.load(), handlers, version="t", grace=0.5)
    d = tempfile.mkdtemp(prefix="bmmesh")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(f"{d}/s")
    sock.listen()
    ready, token = threading.Event(), []

    async def serve():
        token.append(trio.lowlevel.current_trio_token())
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run, sock)
            ready.set()

    thread = threading.Thread(target=trio.run, args=(serve,), daemon=True)
    thread.start()
    assert ready.wait(5)

    def run(*argv, stdin: str | None = None):
        if stdin is not None:
            monkeypatch.setattr("sys.stdin", __import__("io").StringIO(stdin))
        rc = ctl.main(["-a", f"unix:{d}/s", *argv])
        out, err = capsys.readouterr()
        return rc, out, err

    run.calls = handlers.calls
    yield run
    trio.from_thread.run_sync(server.shutdown, trio_token=token[0])
    thread.join(5)
    shutil.rmtree(d, ignore_errors=True)


def test_init_sends_the_name_and_says_what_it_made(run):
    rc, out, _ = run("mesh", "init", "--name", "home")
    assert rc == 0 and run.calls[-1] == ("CreateMesh", {"name": "home"})
    assert out.startswith(f"created mesh home ({MESH_ID})")
    rc, _, err = run("mesh", "init", "--name", "taken")
    assert rc == 1 and "MeshExists: this peer already belongs to mesh home" in err


def test_invite_prints_only_the_invitation_on_stdout(run):
    rc, out, err = run("mesh", "invite")
    assert rc == 0 and out == "bmj1.TOKEN\n" and "one-time join token" in err
    assert run.calls[-1] == ("Invite", {})
    rc, out, err = run("mesh", "invite", "--peer", PEER, "--ttl", "30d", "--token-ttl", "2h")
    assert rc == 0 and out == "bmc1.CRED\n" and f"credential 00aa for {PEER}" in err
    assert run.calls[-1] == ("Invite", {"peer": PEER, "ttlSeconds": 30 * 86400, "tokenTtlSeconds": 7200})


def test_join_takes_the_invitation_as_argument_or_from_stdin(run):
    rc, out, _ = run("mesh", "join", "bmj1.TOKEN")
    assert rc == 0 and "joined mesh home" in out and run.calls[-1] == ("Join", {"invitation": "bmj1.TOKEN"})
    rc, _, _ = run("mesh", "join", "-", stdin="bmc1.CRED\n")
    assert rc == 0 and run.calls[-1] == ("Join", {"invitation": "bmc1.CRED"})
    rc, _, err = run("mesh", "join", "bmj1.USED")
    assert rc == 1 and "InvalidCredential: tokenUsed: this join token was redeemed already" in err


def test_revoke_needs_exactly_one_target(run):
    rc, out, _ = run("mesh", "revoke", PEER)
    assert rc == 0 and "revocation list version 3" in out and run.calls[-1] == ("Revoke", {"peer": PEER})
    rc, _, _ = run("mesh", "revoke", "--serial", "0123456789abcdef")
    assert rc == 0 and run.calls[-1] == ("Revoke", {"serial": "0123456789abcdef"})
    calls = len(run.calls)
    rc, _, err = run("mesh", "revoke")
    assert rc == 2 and "revoke needs PEER_ID or --serial" in err and len(run.calls) == calls


def test_status_text_and_json(run):
    rc, out, _ = run("mesh", "status")
    lines = dict(line.split(":", 1) for line in out.splitlines())
    assert rc == 0 and lines["Mesh"].strip() == f"home ({MESH_ID}), this peer holds its key"
    assert lines["Credential"].strip().startswith("valid, serial 0123456789abcdef")
    assert lines["Verified peers"].strip() == "2" and lines["Open"].strip() == "no"
    rc, out, _ = run("mesh", "status", "-o", "json")
    assert rc == 0 and __import__("json").loads(out)["meshId"] == MESH_ID


@pytest.mark.parametrize("text, seconds", [("90", 90), ("90s", 90), ("15m", 900), ("12h", 43200), ("30d", 2592000),
                                           ("2w", 1209600), ("1y", 31536000), ("0.5h", 1800)])
def test_durations(text, seconds):
    assert ctl.duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "-5m", "0", "5x"])
def test_bad_durations(text):
    with pytest.raises(argparse.ArgumentTypeError):
        ctl.duration(text)
