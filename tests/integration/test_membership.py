"""Mesh membership with real beemeshd processes (as the test user), the real varlinkctl and
beemeshctl, real libp2p on loopback (and, where a daemon listens on every address, inside a
network namespace this module creates).

Members are made the way a user makes them: CreateMesh on the first daemon, a one-time join
token (Invite → Join) for the second, `beemeshctl mesh invite --peer` + `mesh join` for the
third. Intruders: a daemon that belongs to no mesh, one that runs an open mesh (accepts anyone),
a bare libp2p host, and daemons with an expired, a forged and another mesh's credential. None of
them gets into a member's view, none is asked to bid, and what they send is dropped and counted.
Daemons use no Podman (an endpoint that refuses at once): every peer declines work for that
reason, which shows exactly which peers a Deploy asked.
"""

from __future__ import annotations

import json
import os
import stat
import time

import pytest
import trio

from tests.conftest import VENV, User
from tests.integration.daemons import Daemon, TestMesh
from tests.integration.test_mesh import Injector, _bare_host, hello, info, peers, states, wait_for
from tests.integration.test_mesh import two_namespaces  # noqa: F401 - a fixture used below

BASE = {"mesh_mdns": False, "podman_endpoint": "tcp://127.0.0.1:9", "log_level": "info",
        "mesh_listen": ["/ip4/127.0.0.1/tcp/0"]}
POD = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "probe"},
       "spec": {"containers": [{"name": "c", "image": "localhost/beemesh-busybox:latest"}]}}


class Daemons:
    """Daemons a test started (no credentials unless given); stopped and removed at teardown."""

    def __init__(self, user: User):
        self.user = user
        self.all: list[Daemon] = []

    def start(self, extra: dict | None = None, *, user: User | None = None, before=None) -> Daemon:
        d = Daemon(user or self.user, (user or self.user).tempdir(), {**BASE, **(extra or {})})
        if before is not None:
            before(d)
        self.all.append(d)
        return d.start(timeout=30)

    def close(self) -> None:
        import shutil

        for d in self.all:
            try:
                d.stop(timeout=10)
            except Exception:
                pass
            shutil.rmtree(d.home, ignore_errors=True)


def call(d: Daemon, method: str, params: dict | None = None) -> dict:
    r = d.call(method, params or {})
    assert r.rc == 0, f"{method}: {r.err} {r.out}"
    return r.json


def ctl(d: Daemon, *args: str):
    return d.user.run([str(VENV / "bin" / "beemeshctl"), *args], env=d.user.env(BEEMESH_ADDRESS=d.address))


def membership(d: Daemon) -> dict:
    return call(d, "GetMembership")["membership"]


def asked(d: Daemon, manifest: dict) -> set[str]:
    """Peers a Deploy on `d` asked: nobody runs Podman here, so each says why it declines
    (NoCapacity); a daemon that is alone says RuntimeUnavailable instead: only itself."""
    r = d.call("Deploy", {"manifest": manifest})
    if r.error == "io.beemesh.Mesh.RuntimeUnavailable":
        return {info(d)["peerId"]}
    assert r.error == "io.beemesh.Mesh.NoCapacity", (r.err, r.out)
    return {x["peer"] for x in r.json["reasons"] if x["reason"] != "did not answer in time"}


@pytest.fixture(scope="module")
def members(user, varlinkctl):
    ds = Daemons(user)
    try:
        a, b, c = (ds.start() for _ in range(3))
        ids = [info(d)["peerId"] for d in (a, b, c)]
        assert membership(a)["credential"] == "missing" and peers(a).keys() == {ids[0]}  # alone at first
        t0 = time.monotonic()
        m = call(a, "CreateMesh", {"name": "itest"})["membership"]
        assert m["holdsMeshKey"] and m["credential"] == "valid"
        token = call(a, "Invite", {})  # a one-time join token
        assert token["kind"] == "token" and token["invitation"].startswith("bmj1.")
        call(b, "Join", {"invitation": token["invitation"]})
        out = ctl(a, "mesh", "invite", "--peer", ids[2], "--ttl", "30d")  # beemeshctl prints it alone
        assert out.returncode == 0, out.stderr
        credential = out.stdout.strip()
        assert credential.startswith("bmc1.") and "valid until" in out.stderr
        joined = ctl(c, "mesh", "join", credential)
        assert joined.returncode == 0 and "joined mesh itest" in joined.stdout, joined.stderr
        took = wait_for(lambda: all(states(d).get(p) in ("self", "alive") for d in (a, b, c) for p in ids), 20,
                        "members see each other")
        print(f"\ninit + token join + credential join -> full views {time.monotonic() - t0:.2f} s "
              f"(after the last join: {took:.2f} s)")
        yield ds, (a, b, c), ids, token["invitation"]
    finally:
        ds.close()


def test_init_invite_and_join_through_the_real_tools(members):
    _, (a, b, c), ids, token = members
    ms = [membership(d) for d in (a, b, c)]
    assert len({m["meshId"] for m in ms}) == 1 and all(m["credential"] == "valid" for m in ms)
    assert [m["holdsMeshKey"] for m in ms] == [True, False, False]
    assert ms[0]["verifiedPeers"] == 2 and ms[0]["pendingTokens"] == 0
    month = 30 * 86400e6
    assert abs(ms[2]["expiresUSec"] - ms[2]["issuedUSec"] - month) < 1e6  # --ttl 30d
    # the token worked once: a second peer cannot use it (the error comes through varlinkctl)
    r = b.call("Join", {"invitation": token})
    assert r.error == "io.beemesh.Mesh.InvalidCredential", r.err
    # files: the key only where the mesh was made, everything 0600
    key_dir, state_dir = a.home / "config" / "mesh", a.home / "state" / "mesh"
    for f in (key_dir / "mesh.key", key_dir / "mesh.json", state_dir / "credential.json", state_dir / "tokens.json"):
        assert stat.S_IMODE(os.stat(f).st_mode) == 0o600, f
    assert not (b.home / "config" / "mesh" / "mesh.key").exists()
    assert (b.home / "config" / "mesh" / "mesh.json").exists()
    status = ctl(b, "mesh", "status")
    assert status.returncode == 0 and "itest" in status.stdout and "valid" in status.stdout
    # a member that lacks the key cannot invite
    r = b.call("Invite", {})
    assert r.error == "io.beemesh.Mesh.MeshKeyRequired", r.err
    # every member's record carries the credential; the view is the three of them
    for d in (a, b, c):
        assert set(peers(d)) == set(ids)


def test_peers_without_a_credential_cannot_join_bid_or_place(members):
    ds, (a, b, c), ids, _ = members
    boot = info(a)["meshAddresses"][0]
    before = info(a)["counters"]
    lonely = ds.start({"mesh_bootstrap": [boot]})  # belongs to no mesh: refuses everyone, dials no one
    stranger = ds.start({"mesh_bootstrap": [boot], "mesh_open": True})  # an open mesh: accepts anyone
    outsiders = {info(lonely)["peerId"], info(stranger)["peerId"]}
    wait_for(lambda: info(a)["counters"]["refusedPeers"] > before["refusedPeers"], 10, "the stranger refused")
    time.sleep(3)  # a few redials
    for d in (a, b, c):
        assert not outsiders & set(peers(d))
    assert set(peers(lonely)) == {info(lonely)["peerId"]} and membership(lonely)["credential"] == "missing"
    assert info(lonely)["meshAddresses"][0].startswith("/ip4/127.0.0.1/")
    # a Deploy on a member asks the members only; the outsiders' Deploys reach nobody
    assert asked(b, POD) == set(ids)
    assert asked(stranger, POD) == {info(stranger)["peerId"]}
    assert asked(lonely, POD) == {info(lonely)["peerId"]}
    for d in (a, b, c):
        r = d.call("Get", {"name": "probe"})
        assert r.error == "io.beemesh.Mesh.WorkloadNotFound"


async def test_a_bare_libp2p_host_is_dropped_counted_and_disconnected(members):
    from libp2p.io.utils import read_exactly
    from libp2p.peer.id import ID
    from libp2p.peer.peerinfo import info_from_p2p_addr
    import multiaddr

    from beemeshd.core import protocol as proto
    from beemeshd.placement import PROTO_BID

    _, (a, b, c), ids, _ = members
    target = await trio.to_thread.run_sync(info, a)
    before = target["counters"]
    seed = os.urandom(32)
    signer = proto.Signer(seed)
    async with trio.open_nursery() as nursery:
        inj: Injector = await _bare_host(nursery, seed)
        await inj.host.connect(info_from_p2p_addr(multiaddr.Multiaddr(target["meshAddresses"][0])))
        await inj.pubsub.subscribe(proto.TOPIC_TASKS)
        t0 = time.monotonic()
        # genuine envelopes, signed by a valid libp2p identity that has no credential
        for i in range(5):
            raw = signer.seal(PROTO_BID, "req", {"task": {"n": i}}, time.time())
            stream = await inj.host.new_stream(ID.from_base58(ids[0]), [PROTO_BID])
            await stream.write(len(raw).to_bytes(4, "big") + raw)
            with trio.fail_after(5), pytest.raises(Exception):
                await read_exactly(stream, 4)  # no answer: the stream is reset
        for i in range(20):
            await inj.pubsub.publish(proto.TOPIC_TASKS, signer.seal(proto.TOPIC_TASKS, "pub", {"n": i}, time.time()))
        assert await hello(inj, signer, ids[0], None) == {}  # showing no credential: refused
        with trio.fail_after(10):  # and then the connection is closed by the member
            while inj.host.get_network().connections.get(ID.from_base58(ids[0])):
                await trio.sleep(0.05)
        print(f"\nbare host disconnected {time.monotonic() - t0:.2f} s after it connected")
        nursery.cancel_scope.cancel()
    after = await trio.to_thread.run_sync(info, a)
    assert after["counters"]["nonMemberMessages"] - before["nonMemberMessages"] >= 5
    assert after["counters"]["refusedPeers"] > before["refusedPeers"]
    assert not await trio.to_thread.run_sync(lambda: {signer.peer_id} & set(peers(a)))


def test_expired_forged_and_foreign_credentials_cannot_join(members, user):
    from beemeshd import mesh_keys

    ds, (a, b, c), ids, _ = members
    keys = mesh_keys.load(a.home / "config")
    real = TestMesh(keys.name)
    real.keys = keys  # the test mesh *is* the daemons' mesh: same key pair
    forger = TestMesh(keys.name)
    forger.keys = mesh_keys.MeshKeys(keys.name, keys.public, os.urandom(32))  # claims it, other key
    elsewhere = TestMesh("elsewhere")
    boot = {"mesh_bootstrap": [info(a)["meshAddresses"][0]]}
    before = info(a)["counters"]["refusedPeers"]
    expired = ds.start(boot, before=lambda d: real.admit(d, issued=time.time() - 7200, ttl=3600))
    forged = ds.start(boot, before=lambda d: forger.admit(d))
    foreign = ds.start(boot, before=lambda d: elsewhere.admit(d))
    bad = {info(d)["peerId"]: d for d in (expired, forged, foreign)}
    assert membership(expired)["credential"] == "expired" and membership(forged)["credential"] == "invalid"
    assert membership(foreign)["credential"] == "valid" and membership(foreign)["meshName"] == "elsewhere"
    wait_for(lambda: info(a)["counters"]["refusedPeers"] >= before + 3, 15, "three refusals")
    time.sleep(2)
    for d in (a, b, c):
        assert not set(bad) & set(peers(d))
    # each refusal says why, in the member's log
    log = a.log_text()
    for pid, why in zip(bad, ("expired", "badSignature", "wrongMesh")):
        assert any(pid in line and why in line for line in log.splitlines() if "refused peer" in line), (pid, why)
    assert asked(c, POD) == set(ids)
    for d in bad.values():
        assert asked(d, POD) == {info(d)["peerId"]}


def test_mesh_init_opens_a_running_daemon_to_its_addresses(two_namespaces, user):  # noqa: F811
    """Without a mesh a daemon listens on loopback only; `mesh init` makes the running daemon (same
    process, same peer id) listen on its other addresses too — here the namespace's veth."""
    net = two_namespaces
    ds = Daemons(user)
    try:
        d = ds.start({"mesh_listen": []}, user=net.users[0])
        pid, proc = info(d)["peerId"], d.proc.pid
        assert all(a.startswith("/ip4/127.0.0.1/") for a in info(d)["meshAddresses"])
        call(d, "CreateMesh", {"name": "ns"})
        wait_for(lambda: any(f"/ip4/{net.addrs[0]}/" in x for x in info(d)["meshAddresses"]), 5, "listening")
        assert not any(x.startswith("/ip4/127.") for x in info(d)["meshAddresses"])  # not advertised
        assert info(d)["peerId"] == pid and d.proc.pid == proc and d.proc.poll() is None
        # a second daemon in the other namespace joins with a token, across the veth
        e = ds.start({"mesh_listen": []}, user=net.users[1])
        call(e, "Join", {"invitation": call(d, "Invite", {})["invitation"]})
        wait_for(lambda: states(d).get(info(e)["peerId"]) == "alive" and states(e).get(pid) == "alive", 15,
                 "joined across the namespaces")
        assert any(f"/ip4/{net.addrs[1]}/" in x for x in info(e)["meshAddresses"])
    finally:
        ds.close()


def test_revocation_drops_a_peer_everywhere(members):
    ds, (a, b, c), ids, _ = members
    d = ds.start()
    call(d, "Join", {"invitation": call(a, "Invite", {})["invitation"]})
    did = info(d)["peerId"]
    wait_for(lambda: all(states(x).get(did) == "alive" for x in (a, b, c)), 15, "the fourth member is seen")
    def refusals() -> int:
        return sum(info(x)["counters"]["refusedPeers"] for x in (a, b, c))

    before = refusals()
    out = ctl(a, "mesh", "revoke", did)
    assert out.returncode == 0 and "revocation list version 1" in out.stdout, out.stderr
    t0 = time.monotonic()
    wait_for(lambda: all(did not in peers(x) for x in (a, b, c)), 10, "the revoked peer dropped everywhere")
    print(f"\nrevoke -> dropped by all three members after {time.monotonic() - t0:.2f} s")
    assert membership(b)["revokedPeers"] == [did] and membership(b)["revocationVersion"] == 1
    wait_for(lambda: membership(d)["credential"] == "revoked", 10, "the revoked peer knows")
    wait_for(lambda: refusals() > before, 20, "the revoked peer's redial refused")  # it keeps trying
    assert all(did not in peers(x) for x in (a, b, c))
    assert asked(a, POD) == set(ids)
    # the revocation was persisted where the daemon keeps it
    saved = json.loads((b.home / "state" / "mesh" / "revocations.json").read_text())
    assert saved["payload"]["peers"] == [did]
