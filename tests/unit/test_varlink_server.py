"""The Varlink server over an in-memory transport: protocol, checks, streams, isolation, shutdown."""

from __future__ import annotations

import json

import pytest
import trio
import trio.testing

from beemeshd import errors
from beemeshd.api import handlers as handlers_mod
from beemeshd.api.idl import Interface
from beemeshd.api.server import VarlinkServer, encode

IFACE = Interface.load()


class Handlers:
    """Test doubles for a few methods; each records what it got."""

    def __init__(self):
        self.seen = []
        self.gate = trio.Event()

    async def GetInfo(self, call):
        self.seen.append(("GetInfo", call.oneway))
        return {"info": _info()}

    async def Get(self, call, name, namespace=None, kind=None):
        self.seen.append(("Get", name, namespace, kind))
        if name == "missing":
            raise errors.WorkloadNotFound(name, namespace or "default")
        if name == "boom":
            raise RuntimeError("kaboom")
        if name == "badreply":
            return {"workload": {"name": name}}
        if name == "slow":
            await self.gate.wait()
        raise errors.NotImplementedYet("Get", "test")

    async def ListPeers(self, call):
        return await handlers_mod.stream_list(call, "peer", "peers", [_peer(f"p{i}") for i in range(3)])

    async def Watch(self, call, namespace=None, name=None, peers=None):
        async def gen():
            i = 0
            while True:
                yield {"event": {"type": "PeerJoined", "timestampUSec": i, "peer": f"p{i}"}}
                i += 1
                await trio.sleep(0.01)

        return gen()


def _info():
    return {
        "version": "t", "peerId": None, "uptimeSeconds": 1.5, "user": "u", "address": "unix:/x",
        "socketActivated": False, "stateDirectory": "/s",
        "runtime": {"name": "fake", "endpoint": "", "available": True, "startedByBeemesh": False,
                    "network": "slirp4netns", "networksAvailable": ["slirp4netns"]},
        "meshAddresses": [], "peersAlive": 0, "peersSuspect": 0, "peersDead": 0, "workloads": 0,
        "localReplicas": 0,
        "counters": {k: 0 for k in ("forgedMessages", "staleMessages", "replayedMessages",
                                    "malformedMessages", "refusedPeers", "nonMemberMessages", "badConnections",
                                    "forgedPolicies", "stalePolicies", "consensusRejected")},
    }


def _peer(pid):
    cap = {k: 1 for k in ("cpuMillis", "cpuFreeMillis", "memoryBytes", "memoryFreeBytes", "pods", "podsFree")}
    return {"peerId": pid, "state": "alive", "addresses": [], "uptimeSeconds": 1.0, "capacity": cap,
            "lastSeenUSec": 0, "version": "t", "runtime": "fake", "network": "slirp4netns", "labels": {}}


class Client:
    def __init__(self, stream):
        self.stream = stream
        self.buf = b""

    async def send_raw(self, data: bytes):
        await self.stream.send_all(data)

    async def call(self, method, parameters=None, **flags):
        msg = {"method": method, "parameters": parameters or {}}
        msg.update(flags)
        await self.stream.send_all(encode(msg))
        return await self.reply()

    async def reply(self):
        while b"\0" not in self.buf:
            data = await self.stream.receive_some(65536)
            if not data:
                raise EOFError
            self.buf += data
        msg, _, self.buf = self.buf.partition(b"\0")
        return json.loads(msg)

    async def closed(self) -> bool:
        with trio.move_on_after(2):
            while True:
                try:
                    data = await self.stream.receive_some(65536)
                except trio.BrokenResourceError:
                    return True
                if not data:
                    return True
        return False


@pytest.fixture
async def env(nursery):
    handlers = Handlers()
    bad = []
    server = VarlinkServer(IFACE, handlers, version="t", max_message=4096, grace=1.0,
                           on_bad_connection=lambda: bad.append(1))

    async def connect():
        client_side, server_side = trio.testing.memory_stream_pair()
        nursery.start_soon(server.serve_stream, server_side)
        return Client(client_side)

    return server, handlers, connect, bad


async def test_service_info_and_description(env):
    _, _, connect, _ = env
    c = await connect()
    r = await c.call("org.varlink.service.GetInfo")
    assert r["parameters"]["interfaces"] == ["org.varlink.service", "io.beemesh.Mesh"]
    r = await c.call("org.varlink.service.GetInterfaceDescription", {"interface": "io.beemesh.Mesh"})
    assert r["parameters"]["description"] == IFACE.text
    r = await c.call("org.varlink.service.GetInterfaceDescription", {"interface": "io.nope"})
    assert r == {"error": "org.varlink.service.InterfaceNotFound", "parameters": {"interface": "io.nope"}}


@pytest.mark.parametrize(
    "params, bad",
    [
        ({"name": 3}, "name"),                       # wrong type
        ({}, "name"),                                # missing required
        ({"name": "x", "nme": 1}, "nme"),            # unknown parameter
        ({"name": "x", "kind": "Job"}, "kind"),      # enum value outside the set
        ({"name": "x", "kind": 3}, "kind"),          # non-string enum (crashes python-varlink)
        ({"name": None}, "name"),                    # null for a required field
    ],
)
async def test_invalid_parameters_are_named(env, params, bad):
    _, handlers, connect, _ = env
    c = await connect()
    r = await c.call("io.beemesh.Mesh.Get", params)
    assert r == {"error": "org.varlink.service.InvalidParameter", "parameters": {"parameter": bad}}
    assert handlers.seen == []  # the handler never ran


async def test_unknown_method_and_interface(env):
    _, _, connect, _ = env
    c = await connect()
    r = await c.call("io.beemesh.Mesh.Nope")
    assert r["error"] == "org.varlink.service.MethodNotFound"
    assert r["parameters"] == {"method": "io.beemesh.Mesh.Nope"}
    r = await c.call("com.example.Thing.Do")
    assert r["error"] == "org.varlink.service.InterfaceNotFound"


async def test_domain_errors_and_bugs_become_documented_errors(env):
    _, _, connect, _ = env
    c = await connect()
    r = await c.call("io.beemesh.Mesh.Get", {"name": "missing", "namespace": "ns"})
    assert r == {"error": "io.beemesh.Mesh.WorkloadNotFound", "parameters": {"name": "missing", "namespace": "ns"}}
    r = await c.call("io.beemesh.Mesh.Get", {"name": "boom"})
    assert r["error"] == "io.beemesh.Mesh.InternalError" and "kaboom" in r["parameters"]["reason"]
    r = await c.call("io.beemesh.Mesh.Get", {"name": "badreply"})
    assert r["error"] == "io.beemesh.Mesh.InternalError" and "reply.workload" in r["parameters"]["reason"]
    # the connection survives all of that
    r = await c.call("io.beemesh.Mesh.GetInfo")
    assert r["parameters"]["info"]["version"] == "t"


async def test_more_streams_with_continues_and_plain_call_gets_a_list(env):
    _, _, connect, _ = env
    c = await connect()
    await c.send_raw(encode({"method": "io.beemesh.Mesh.ListPeers", "more": True}))
    replies = [await c.reply() for _ in range(3)]
    assert [r.get("continues", False) for r in replies] == [True, True, False]
    assert [r["parameters"]["peer"]["peerId"] for r in replies] == ["p0", "p1", "p2"]
    r = await c.call("io.beemesh.Mesh.ListPeers")
    assert "continues" not in r and len(r["parameters"]["peers"]) == 3


async def test_watch_requires_more_and_hangup_ends_stream(env):
    server, _, connect, _ = env
    c = await connect()
    r = await c.call("io.beemesh.Mesh.Watch")
    assert r["error"] == "org.varlink.service.ExpectedMore"
    await c.send_raw(encode({"method": "io.beemesh.Mesh.Watch", "more": True}))
    first = await c.reply()
    second = await c.reply()
    assert first["continues"] and second["parameters"]["event"]["peer"] == "p1"
    await c.stream.aclose()
    with trio.fail_after(2):
        while server._conns:
            await trio.sleep(0.01)


async def test_oneway_gets_no_reply(env):
    _, handlers, connect, _ = env
    c = await connect()
    await c.send_raw(encode({"method": "io.beemesh.Mesh.GetInfo", "oneway": True}))
    r = await c.call("org.varlink.service.GetInfo")  # the next reply is for this call
    assert r["parameters"]["product"] == "beemeshd"
    assert handlers.seen == [("GetInfo", True)]


@pytest.mark.parametrize(
    "garbage",
    [b"this is not json\0", b'["a list"]\0', b'{"parameters": {}}\0', b"x" * 5000, b'{"method": "io.be'],
    ids=["not-json", "not-object", "no-method", "over-size", "partial-then-eof"],
)
async def test_bad_client_is_dropped_and_others_unaffected(env, garbage):
    _, _, connect, bad = env
    good = await connect()
    evil = await connect()
    await evil.send_raw(garbage)
    if garbage.startswith(b'{"method": "io.be'):
        await evil.stream.send_eof()
    assert await evil.closed()
    assert bad == [1]
    r = await good.call("io.beemesh.Mesh.GetInfo")
    assert r["parameters"]["info"]["user"] == "u"


async def test_pipelined_calls_are_answered_in_order(env):
    _, _, connect, _ = env
    c = await connect()
    await c.send_raw(encode({"method": "org.varlink.service.GetInfo"}) + encode({"method": "io.beemesh.Mesh.Nope"}))
    assert "vendor" in (await c.reply())["parameters"]
    assert (await c.reply())["error"] == "org.varlink.service.MethodNotFound"


async def test_shutdown_closes_idle_and_lets_inflight_finish(env, nursery):
    server, handlers, connect, _ = env
    idle = await connect()
    busy = await connect()
    await busy.send_raw(encode({"method": "io.beemesh.Mesh.Get", "parameters": {"name": "slow"}}))
    await trio.testing.wait_all_tasks_blocked()
    # run() owns the shutdown sequence; serve_stream connections are tracked the same way
    server._closing = True
    for conn in list(server._conns):
        if conn.idle_scope is not None:
            conn.scope.cancel()
    assert await idle.closed()
    handlers.gate.set()
    r = await busy.reply()
    assert r["error"] == "io.beemesh.Mesh.NotImplemented"  # the in-flight call got its answer
    assert await busy.closed()


def test_every_method_has_a_handler_and_every_handler_a_method():
    handler_names = {n for n in vars(handlers_mod.MeshHandlers) if n[:1].isupper()}
    assert handler_names == set(IFACE.methods)


def test_every_domain_error_is_declared_in_the_interface():
    declared = set(IFACE.errors)
    for cls in errors.BeeMeshError.__subclasses__():
        if cls is errors.InvalidParameter:
            continue  # maps to org.varlink.service.InvalidParameter
        assert cls.name in declared, cls
