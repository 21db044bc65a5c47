"""The mesh with real beemeshd processes (as the test user), the real varlinkctl, real libp2p.

Daemons use no Podman (an endpoint that refuses at once) and no mDNS unless a test is about mDNS,
so that nothing but the mesh varies. Network traffic stays on loopback or inside network
namespaces this module creates (and deletes). Every daemon gets a credential of one test mesh
before it starts (TestMesh), so membership is enforced here as in production; listening is
pinned to loopback (a member would otherwise listen on every address).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass

import pytest
import trio

from tests.conftest import VARLINKCTL, User
from tests.integration.daemons import Daemon, TestMesh

MESH = {"mesh_mdns": False, "podman_endpoint": "tcp://127.0.0.1:9", "log_level": "info",
        "mesh_listen": ["/ip4/127.0.0.1/tcp/0"]}


def info(d: Daemon) -> dict:
    r = d.call("GetInfo")
    assert r.rc == 0, r.err
    return r.json["info"]


def peers(d: Daemon) -> dict[str, dict]:
    r = d.call("ListPeers", {}, "--more")
    assert r.rc == 0, r.err
    return {line["peer"]["peerId"]: line["peer"] for line in r.lines}


def states(d: Daemon) -> dict[str, str]:
    return {pid: p["state"] for pid, p in peers(d).items()}


def wait_for(cond, timeout: float, what: str, interval: float = 0.1) -> float:
    """Seconds until cond() held; AssertionError naming `what` after `timeout`."""
    t0 = time.monotonic()
    while True:
        if cond():
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(interval)


class Pool:
    """Daemons a test started; all stopped (and their directories removed) at teardown."""

    def __init__(self, user: User, mesh: TestMesh | None = None):
        self.user = user
        self.mesh = mesh or TestMesh()
        self.daemons: list[Daemon] = []

    def start(self, extra: dict | None = None, *, home=None, user: User | None = None) -> Daemon:
        d = Daemon(user or self.user, home or self.user.tempdir(), {**MESH, **(extra or {})})
        self.mesh.admit(d)
        self.daemons.append(d)
        return d.start(timeout=30)

    def restart(self, d: Daemon) -> Daemon:
        return self.start(d.extra_config, home=d.home, user=d.user)

    def close(self) -> None:
        for d in self.daemons:
            try:
                d.stop(timeout=10)
            except Exception:
                pass
        for home in {d.home for d in self.daemons}:
            shutil.rmtree(home, ignore_errors=True)


def mesh_address(d: Daemon) -> str:
    addrs: list[str] = []
    wait_for(lambda: addrs.extend(info(d)["meshAddresses"]) or addrs, 10, "first peer listens")
    return addrs[0]


def all_see_all(ds: list[Daemon], ids: list[str]) -> bool:
    for d in ds:
        s = states(d)
        if any(s.get(pid) not in ("self", "alive") for pid in ids):
            return False
    return True


@pytest.fixture(scope="module")
def five(user, varlinkctl):
    pool = Pool(user)
    try:
        first = pool.start()
        boot = mesh_address(first)
        assert boot.startswith("/ip4/127.0.0.1/tcp/") and "/p2p/" in boot
        t0 = time.monotonic()
        ds = [first] + [pool.start({"mesh_bootstrap": [boot]}) for _ in range(4)]
        ids = [info(d)["peerId"] for d in ds]
        took = wait_for(lambda: all_see_all(ds, ids), 15, "five peers see each other")
        print(f"\n5 daemons: full views {took:.2f} s after the last start, "
              f"{time.monotonic() - t0:.2f} s after the first bootstrapped start")
        yield pool, ds, ids
    finally:
        pool.close()


def test_five_daemons_see_each_other_through_varlinkctl(five):
    _, ds, ids = five
    for d in ds:
        i = info(d)
        assert i["peersAlive"] == 4 and i["peersSuspect"] == 0 and i["peersDead"] == 0
        assert all(a.endswith("/p2p/" + i["peerId"]) for a in i["meshAddresses"])
    # ListPeers (more) through the real varlinkctl: self first, then the other four, fully described
    r = ds[1].call("ListPeers", {}, "--more")
    assert r.rc == 0, r.err
    listed = [line["peer"] for line in r.lines]
    assert listed[0]["state"] == "self" and listed[0]["peerId"] == ids[1]
    assert sorted(p["peerId"] for p in listed) == sorted(ids)
    for p in listed[1:]:
        assert p["state"] == "alive"
        assert p["addresses"] and p["addresses"][0].startswith("/ip4/127.0.0.1/tcp/")
        assert p["capacity"]["cpuMillis"] > 0 and p["capacity"]["pods"] == 110
        assert p["uptimeSeconds"] > 0 and p["version"] and p["runtime"].startswith("podman")
        assert abs(p["lastSeenUSec"] / 1e6 - time.time()) < 5


@dataclass(frozen=True)
class Injector:
    """A bare libp2p host (Noise + Yamux + GossipSub, no BeeMesh gate) for sending bad messages."""

    host: object
    pubsub: object


async def _bare_host(nursery, seed: bytes, rate: float = 10.0) -> Injector:
    """`rate`: messages per second and topic its GossipSub lets through (its own included)."""
    import multiaddr
    from libp2p import new_host
    from libp2p.crypto.ed25519 import Ed25519PrivateKey
    from libp2p.crypto.keys import KeyPair
    from libp2p.crypto.x25519 import create_new_key_pair
    from libp2p.network.config import ConnectionConfig
    from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11, GossipSub
    from libp2p.pubsub.pubsub import Pubsub
    from libp2p.security.noise.transport import PROTOCOL_ID as NOISE, Transport as Noise
    from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX, Yamux
    from libp2p.tools.anyio_service import background_trio_service

    priv = Ed25519PrivateKey.from_bytes(seed)
    kp = KeyPair(priv, priv.get_public_key())
    listen = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]
    host = new_host(key_pair=kp, sec_opt={NOISE: Noise(kp, noise_privkey=create_new_key_pair().private_key)},
                    muxer_opt={YAMUX: Yamux}, connection_config=ConnectionConfig(max_connections_per_peer=1),
                    listen_addrs=listen)
    gossip = GossipSub([PROTOCOL_ID_V11], degree=6, degree_low=4, degree_high=12, heartbeat_interval=0.5,
                       adaptive_gossip_enabled=False, max_messages_per_topic_per_second=rate)
    pubsub = Pubsub(host, gossip)

    async def serve(task_status=trio.TASK_STATUS_IGNORED):
        async with host.run(listen), background_trio_service(pubsub), background_trio_service(gossip):
            await pubsub.wait_until_ready()
            task_status.started()
            await trio.sleep_forever()

    await nursery.start(serve)
    return Injector(host, pubsub)


async def hello(inj: Injector, signer, target: str, credential) -> dict:
    """Say hello (/beemesh/hello/1) from a bare host, showing `credential` (or None); the reply's
    `ok` payload, or {} when refused or reset."""
    from libp2p.io.utils import read_exactly
    from libp2p.peer.id import ID

    from beemeshd.core import protocol as proto

    raw = signer.seal(proto.PROTO_HELLO, "req", {"credential": credential.wire() if credential else None,
                                                  "revocations": None}, time.time())
    try:
        stream = await inj.host.new_stream(ID.from_base58(target), [proto.PROTO_HELLO])
        await stream.write(len(raw).to_bytes(4, "big") + raw)
        with trio.fail_after(5):
            size = int.from_bytes(await read_exactly(stream, 4), "big")
            reply = proto.decode(await read_exactly(stream, size)).payload
    except Exception:
        return {}
    return reply.get("ok") or {}


async def test_forged_stale_replayed_and_garbage_messages_are_dropped_and_counted(five):
    from libp2p.io.utils import read_exactly
    from libp2p.peer.id import ID
    from libp2p.peer.peerinfo import info_from_p2p_addr

    from beemeshd.core import credentials as cr
    from beemeshd.core import protocol as proto

    pool, ds, ids = five
    target = ds[0]
    before = (await trio.to_thread.run_sync(info, target))["counters"]
    boot = (await trio.to_thread.run_sync(info, target))["meshAddresses"][0]
    seed = os.urandom(32)
    signer = proto.Signer(seed)
    credential = cr.issue(pool.mesh.keys, signer.peer_id, time.time(), 600)
    async with trio.open_nursery() as nursery:
        inj = await _bare_host(nursery, seed)
        await inj.host.connect(info_from_p2p_addr(__import__("multiaddr").Multiaddr(boot)))
        # a member (it shows a valid credential) that sends bad messages
        assert "credential" in await hello(inj, signer, ids[0], credential)
        await inj.pubsub.subscribe(proto.TOPIC_TASKS)
        with trio.fail_after(10):  # the target's subscriptions reached us: it will take our publishes
            while ID.from_base58(ids[0]) not in inj.pubsub.peer_topics.get(proto.TOPIC_TASKS, ()):
                await trio.sleep(0.05)
        now = time.time()
        good = signer.seal(proto.TOPIC_TASKS, "pub", {"probe": "replayed"}, now)
        forged = bytearray(signer.seal(proto.TOPIC_TASKS, "pub", {"probe": "forged"}, now))
        forged[10] ^= 0x01  # inside the signature
        stale = signer.seal(proto.TOPIC_TASKS, "pub", {"probe": "stale"}, now - 3600)
        # Over GossipSub: each is a distinct, correctly libp2p-signed gossip message.
        for raw in (good, good, bytes(forged), stale, b"\xde\xad\xbe\xef garbage"):
            await inj.pubsub.publish(proto.TOPIC_TASKS, raw)
        # Over a direct stream: garbage, and a genuine envelope of another peer relayed by us.
        other = proto.Signer(os.urandom(32)).seal(proto.PROTO_SYNC, "req", {"records": []}, now)
        for raw in (b"not an envelope at all", other):
            stream = await inj.host.new_stream(ID.from_base58(ids[0]), [proto.PROTO_SYNC])
            await stream.write(len(raw).to_bytes(4, "big") + raw)
            with trio.fail_after(5), pytest.raises(Exception):
                await read_exactly(stream, 4)  # no reply: the stream is reset
        want = {"forgedMessages": 2, "staleMessages": 1, "replayedMessages": 1, "malformedMessages": 2}

        def counted():
            c = info(target)["counters"]
            return {k: c[k] - before[k] for k in want} == want

        await trio.to_thread.run_sync(wait_for, counted, 10, "drops counted")
        nursery.cancel_scope.cancel()
    # nothing crashed: the target still serves, and still sees the other four alive
    s = await trio.to_thread.run_sync(states, target)
    assert all(s[pid] == "alive" for pid in ids[1:])
    others = await trio.to_thread.run_sync(info, ds[1])
    assert others["counters"]["forgedMessages"] == 0  # invalid messages were not forwarded


def test_kill_9_is_detected_within_5_s_and_a_restart_rejoins(five):
    pool, ds, ids = five
    victim, vid = ds[2], ids[2]
    survivors = [d for d in ds if d is not victim]
    watch = subprocess.Popen([str(VARLINKCTL), "call", "--more", survivors[0].address, "io.beemesh.Mesh.Watch",
                              json.dumps({"peers": True})], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.3)
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait(5)
        took = wait_for(lambda: all(states(d).get(vid) == "dead" for d in survivors), 10, "victim declared dead")
        print(f"\nkill -9 -> dead on all 4 survivors after {took:.2f} s")
        assert took <= 5
        again = pool.restart(victim)
        assert info(again)["peerId"] == vid  # same state directory, same identity
        ds[2] = again
        took = wait_for(lambda: all_see_all(ds, ids), 15, "restarted peer rejoined")
        print(f"restart -> alive everywhere after {took:.2f} s")
    finally:
        watch.terminate()
        out, _ = watch.communicate(timeout=10)
    events = [json.loads(line)["event"] for line in out.splitlines() if line.strip()]
    kinds = [e["type"] for e in events if e.get("peer") == vid]
    assert "PeerSuspect" in kinds and "PeerLeft" in kinds and "PeerJoined" in kinds, kinds
    assert kinds.index("PeerLeft") < len(kinds) - 1 - kinds[::-1].index("PeerJoined")


# --- network namespaces -------------------------------------------------------------------------


@dataclass(frozen=True)
class NetnsUser(User):
    """The test user, with its programs run inside a network namespace."""

    netns: str = ""

    def argv(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *super().argv(argv)]


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=10)


@pytest.fixture
def two_namespaces(user):
    """Namespaces A and B joined by a veth pair (10.231.x.1 <-> 10.231.x.2); `cut()`/`mend()` the link."""
    tag = os.getpid() % 10000
    ns = (f"bm5a{tag}", f"bm5b{tag}")
    veth = (f"bm5va{tag}", f"bm5vb{tag}")
    ips = (f"10.231.{tag % 250}.1", f"10.231.{tag % 250}.2")
    for n in ns:
        subprocess.run(["ip", "netns", "del", n], capture_output=True)
    try:
        for n in ns:
            sh("ip", "netns", "add", n)
        sh("ip", "link", "add", veth[0], "type", "veth", "peer", "name", veth[1])
        for n, v, ip in zip(ns, veth, ips):
            sh("ip", "link", "set", v, "netns", n)
            sh("ip", "-n", n, "addr", "add", f"{ip}/24", "dev", v)
            sh("ip", "-n", n, "link", "set", v, "up")
            sh("ip", "-n", n, "link", "set", "lo", "up")

        class Net:
            users = tuple(NetnsUser(user.name, user.uid, user.gid, user.home, netns=n) for n in ns)
            addrs = ips

            @staticmethod
            def cut():
                sh("ip", "-n", ns[0], "link", "set", veth[0], "down")

            @staticmethod
            def mend():
                sh("ip", "-n", ns[0], "link", "set", veth[0], "up")

        yield Net
    finally:
        for n in ns:
            subprocess.run(["ip", "netns", "del", n], capture_output=True)


@pytest.fixture
def pool(user):
    p = Pool(user)
    yield p
    p.close()


def test_partition_in_namespaces_and_heal(two_namespaces, pool):
    net = two_namespaces
    (ua, ub), (ipa, ipb) = net.users, net.addrs
    a1 = pool.start({"mesh_listen": [f"/ip4/{ipa}/tcp/0"]}, user=ua)
    boot = mesh_address(a1)
    a2 = pool.start({"mesh_listen": [f"/ip4/{ipa}/tcp/0"], "mesh_bootstrap": [boot]}, user=ua)
    b1 = pool.start({"mesh_listen": [f"/ip4/{ipb}/tcp/0"], "mesh_bootstrap": [boot]}, user=ub)
    b2 = pool.start({"mesh_listen": [f"/ip4/{ipb}/tcp/0"], "mesh_bootstrap": [boot]}, user=ub)
    ds = [a1, a2, b1, b2]
    ids = [info(d)["peerId"] for d in ds]
    wait_for(lambda: all_see_all(ds, ids), 15, "four peers across the veth see each other")

    def split_seen() -> bool:
        for side, other in (((a1, a2), ids[2:]), ((b1, b2), ids[:2])):
            for d in side:
                s = states(d)
                if any(s[pid] != "dead" for pid in other) or any(s[p] not in ("self", "alive") for p in
                                                                 (ids[:2] if d in (a1, a2) else ids[2:])):
                    return False
        return True

    net.cut()
    took = wait_for(split_seen, 10, "each side declares the other dead")
    print(f"\npartition -> other side dead on both sides after {took:.2f} s")
    net.mend()
    took = wait_for(lambda: all_see_all(ds, ids), 20, "views merge after healing")
    print(f"heal -> views merged after {took:.2f} s")


def test_mdns_finds_peers_of_a_named_mesh(two_namespaces, pool):
    """No bootstrap: two daemons of the same mesh, one per namespace, find each other by mDNS over
    the veth (the only place this suite lets multicast go)."""
    net = two_namespaces
    name = {"mesh_listen": [], "mesh_mdns": True}  # members: every address, mDNS under the mesh id
    a = pool.start(name, user=net.users[0])
    b = pool.start(name, user=net.users[1])
    ia, ib = info(a), info(b)
    # a member: it listens on the namespace's own address (no loopback), found by mDNS
    assert all(f"/ip4/{net.addrs[0]}/tcp/" in x for x in ia["meshAddresses"]), ia["meshAddresses"]
    took = wait_for(lambda: states(a).get(ib["peerId"]) == "alive" and states(b).get(ia["peerId"]) == "alive",
                    20, "mDNS discovery")
    print(f"\nmDNS: peers found each other after {took:.2f} s")
