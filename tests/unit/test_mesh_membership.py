"""Mesh membership enforced on the in-memory mesh (the same MeshBase code as libp2p), with the
daemon's MeshMembership (files in tmp_path) doing init, invite, join and revoke. MockClock."""

from __future__ import annotations

import os
import stat

import pytest
import trio

from beemeshd import errors
from beemeshd.config import Config
from beemeshd.core import credentials as cr
from beemeshd.core import protocol as proto
from beemeshd.core.admission import Admission
from beemeshd.mesh import PeerUnreachable
from beemeshd.mesh.fake import FakeMesh, FakeNetwork
from beemeshd.mesh_keys import MeshKeys
from beemeshd.mesh_membership import MeshMembership


@pytest.fixture
def net():
    return FakeNetwork(latency=0.002, jitter=0.002, seed=7)


class Peer:
    """A FakeMesh with the daemon's membership service and its own directories."""

    def __init__(self, net: FakeNetwork, root, name: str, bootstrap=(), *, open_mesh=False):
        d = root / name
        self.config = Config(socket_path=d / "sock", state_dir=d / "state", config_dir=d / "config",
                             registry_dir=d / "reg", mesh_mdns=False, mesh_listen=("/memory",))
        self.seed = os.urandom(32)
        pid = proto.Signer(self.seed).peer_id
        self.membership = MeshMembership(self.config, pid, wall=lambda: net.epoch + trio.current_time())
        self.mesh = FakeMesh(net, self.seed, bootstrap=[b.peer_id for b in bootstrap],
                             admission=None if open_mesh else self.membership.admission)
        self.membership.attach(self.mesh)
        self.peer_id = pid

    def states(self) -> dict[str, str]:
        return {p.peer_id: p.state for p in self.mesh.peers() if p.state != "self"}

    async def start(self, nursery) -> "Peer":
        await nursery.start(self.mesh.run)
        return self


async def until(cond, timeout: float) -> float:
    t0 = trio.current_time()
    with trio.fail_after(timeout):
        while not cond():
            await trio.sleep(0.05)
    return trio.current_time() - t0


def sees(observer: Peer, others) -> bool:
    s = observer.states()
    return all(s.get(o.peer_id) == "alive" for o in others)


async def founded(nursery, net, tmp_path, n: int) -> list[Peer]:
    """A mesh created on the first peer; the others admitted with credentials (invite --peer)."""
    a = Peer(net, tmp_path, "a")
    await a.membership.create("home")
    await a.start(nursery)
    out = [a]
    for i in range(1, n):
        p = Peer(net, tmp_path, f"p{i}")
        await p.start(nursery)
        await p.membership.join(a.membership.invite(p.peer_id, None, None)["invitation"])
        out.append(p)
    await until(lambda: all(sees(x, [y for y in out if y is not x]) for x in out), 10)
    return out


async def test_strangers_are_never_members_and_their_messages_are_counted(net, tmp_path, autojump_clock):
    async with trio.open_nursery() as nursery:
        ms = await founded(nursery, net, tmp_path, 3)
        a = ms[0]
        assert a.membership.status()["credential"] == "valid" and a.membership.status()["holdsMeshKey"]
        got, own = [], []

        async def listen(m, out):
            async for env in m.mesh.subscribe(proto.TOPIC_TASKS):
                out.append(env.sender)

        nursery.start_soon(listen, ms[1], got)
        nursery.start_soon(listen, a, own)
        stranger = await Peer(net, tmp_path, "x", [a], open_mesh=True).start(nursery)  # accepts anyone
        lonely = await Peer(net, tmp_path, "y", [a]).start(nursery)  # closed, belongs to no mesh
        await trio.sleep(5)
        before = [m.mesh.counters["nonMemberMessages"] for m in ms]
        await stranger.mesh.publish(proto.TOPIC_TASKS, {"task": "run me"})
        await a.mesh.publish(proto.TOPIC_TASKS, {"task": "genuine"})
        with pytest.raises(PeerUnreachable):  # direct requests get no answer at all
            await stranger.mesh.request(a.peer_id, proto.PROTO_SYNC, proto.sync_payload([]), 1.0)
        await trio.sleep(1)
        for m in ms:
            assert stranger.peer_id not in m.states() and lonely.peer_id not in m.states()
            assert m.mesh.counters["refusedPeers"] == 0  # the stranger never offered a credential
        grew = [m.mesh.counters["nonMemberMessages"] - b for m, b in zip(ms, before)]
        assert grew[0] >= 2 and min(grew) >= 1  # the task everywhere, the request at a
        assert got == [a.peer_id]  # the stranger's task never reached a subscriber
        assert own == [a.peer_id]  # a member hears its own messages (it is no stranger to itself)
        assert lonely.states() == {} and lonely.membership.status()["credential"] == "missing"
        nursery.cancel_scope.cancel()


async def test_forged_and_expired_credentials_are_refused(net, tmp_path, autojump_clock):
    async with trio.open_nursery() as nursery:
        ms = await founded(nursery, net, tmp_path, 2)
        a, b = ms
        mesh_id = a.membership.keys.mesh_id
        wall = net.epoch + trio.current_time()
        other = os.urandom(32)
        forger = MeshKeys("home", bytes.fromhex(mesh_id), other)  # claims this mesh, another key

        def intruder(seed, cred_for) -> FakeMesh:
            pid = proto.Signer(seed).peer_id
            adm = Admission(pid, mesh_id, cred_for(pid))
            return FakeMesh(net, seed, bootstrap=[a.peer_id, b.peer_id], admission=adm)

        forged = intruder(os.urandom(32), lambda pid: cr.issue(forger, pid, wall))
        expired = intruder(os.urandom(32), lambda pid: cr.issue(a.membership.keys, pid, wall - 7200, ttl=3600))
        for m in (forged, expired):
            await nursery.start(m.run)
        await trio.sleep(5)
        for m in ms:
            assert forged.peer_id not in m.states() and expired.peer_id not in m.states()
            assert m.mesh.counters["refusedPeers"] >= 2
        assert a.membership.status()["verifiedPeers"] == 1  # b only
        nursery.cancel_scope.cancel()


async def test_a_one_time_token_admits_one_peer(net, tmp_path, autojump_clock):
    async with trio.open_nursery() as nursery:
        a = Peer(net, tmp_path, "a")
        await a.membership.create("home")
        await a.start(nursery)
        b = await Peer(net, tmp_path, "b").start(nursery)
        c = await Peer(net, tmp_path, "c").start(nursery)
        invite = a.membership.invite(None, 86400, 600)
        assert invite["kind"] == "token" and invite["invitation"].startswith("bmj1.")
        assert a.membership.status()["pendingTokens"] == 1
        # b has no bootstrap peer: the token says where to go
        status = await b.membership.join(invite["invitation"])
        assert status["credential"] == "valid" and status["meshId"] == a.membership.keys.mesh_id
        assert not status["holdsMeshKey"] and a.membership.status()["pendingTokens"] == 0
        took = await until(lambda: sees(a, [b]) and sees(b, [a]), 10)
        assert took < 3
        with pytest.raises(errors.InvalidCredential) as exc:
            await c.membership.join(invite["invitation"])
        assert exc.value.reason == cr.TOKEN_USED
        assert c.membership.status()["credential"] == "missing" and c.peer_id not in a.states()
        # the joined peer's files: its credential, mode 0600 in a 0700 directory; no mesh key
        d = b.config.state_dir / "mesh"
        assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(d / "credential.json").st_mode) == 0o600
        assert not (b.config.config_dir / "mesh" / "mesh.key").exists()
        assert "secret" not in (a.config.state_dir / "mesh" / "tokens.json").read_text()
        # a credential of another mesh is refused without changing anything
        other = Peer(net, tmp_path, "o")
        await other.membership.create("elsewhere")
        with pytest.raises(errors.MeshExists):
            await b.membership.join(other.membership.invite(b.peer_id, None, None)["invitation"])
        nursery.cancel_scope.cancel()


async def test_a_credential_for_another_peer_does_not_admit(net, tmp_path, autojump_clock):
    async with trio.open_nursery() as nursery:
        a = Peer(net, tmp_path, "a")
        await a.membership.create("home")
        await a.start(nursery)
        b = await Peer(net, tmp_path, "b").start(nursery)
        stolen = a.membership.invite(a.peer_id, None, None)["invitation"]
        with pytest.raises(errors.InvalidCredential) as exc:
            await b.membership.join(stolen)
        assert exc.value.reason == cr.WRONG_PEER
        assert b.membership.status()["meshId"] is None  # nothing was written
        nursery.cancel_scope.cancel()


async def test_revocation_spreads_expels_and_reaches_peers_that_were_away(net, tmp_path, autojump_clock):
    async with trio.open_nursery() as nursery:
        ms = await founded(nursery, net, tmp_path, 4)
        a, b, c, d = ms
        events = []
        b.mesh.on_peer_event = lambda kind, peer: events.append((kind, peer))
        d.mesh.kill()  # away while c is revoked
        await a.membership.revoke(c.peer_id, None)
        took = await until(lambda: c.peer_id not in b.states() and c.peer_id not in a.states(), 5)
        assert took < 1
        assert ("PeerLeft", c.peer_id) in events
        assert b.membership.status()["revokedPeers"] == [c.peer_id]
        assert (b.config.state_dir / "mesh" / "revocations.json").exists()  # persisted
        await until(lambda: c.membership.status()["credential"] == "revoked", 5)  # c heard it too
        before = b.mesh.counters["nonMemberMessages"]
        await c.mesh.publish(proto.TOPIC_BIDS, {"bid": 1})
        await trio.sleep(3)
        assert b.mesh.counters["nonMemberMessages"] > before and c.peer_id not in b.states()
        # d comes back knowing nothing of it: its first hello hands it the list
        await nursery.start(d.mesh.run)
        await until(lambda: d.membership.status()["revocationVersion"] == 1, 5)
        assert c.peer_id not in d.states()
        nursery.cancel_scope.cancel()


async def test_an_expiring_credential_drops_the_member(net, tmp_path, autojump_clock):
    async with trio.open_nursery() as nursery:
        ms = await founded(nursery, net, tmp_path, 2)
        a = ms[0]
        short = await Peer(net, tmp_path, "s").start(nursery)
        await short.membership.join(a.membership.invite(short.peer_id, 20, None)["invitation"])
        await until(lambda: sees(a, [short]), 5)
        took = await until(lambda: short.peer_id not in a.states() and short.peer_id not in ms[1].states(), 30)
        assert 10 < took < 25
        assert short.membership.status()["credential"] == "expired"
        nursery.cancel_scope.cancel()


async def test_strangers_join_requests_are_rate_limited(net, tmp_path, autojump_clock):
    async with trio.open_nursery() as nursery:
        a = Peer(net, tmp_path, "a")
        await a.membership.create("home")
        await a.start(nursery)
        stranger = FakeMesh(net)
        await nursery.start(stranger.run)
        refused = 0

        async def ask():
            nonlocal refused
            try:
                await stranger.request(a.peer_id, proto.PROTO_JOIN, {"secret": "0" * 64}, 1.0)
            except PeerUnreachable:
                refused += 1  # dropped unanswered: over the limit
            except Exception:
                pass  # answered: "no such token"

        async with trio.open_nursery() as burst:
            for _ in range(200):
                burst.start_soon(ask)
        limit = a.mesh.OPEN_BURST
        assert refused >= 200 - limit - 5 and a.mesh.counters["nonMemberMessages"] >= 200 - limit - 5
        nursery.cancel_scope.cancel()


def test_a_key_holder_renews_its_own_credential(tmp_path):
    now = [1_700_000_000.0]
    config = Config(socket_path=tmp_path / "s", state_dir=tmp_path / "state", config_dir=tmp_path / "config",
                    registry_dir=tmp_path / "r")
    pid = proto.Signer(os.urandom(32)).peer_id
    m = MeshMembership(config, pid, wall=lambda: now[0])
    trio.run(m.create, "home")
    first = m.admission.own
    now[0] = first.expires - 40 * cr.DAY
    m._renew_if_due()
    assert m.admission.own == first
    now[0] = first.expires - 20 * cr.DAY
    m._renew_if_due()
    assert m.admission.own.serial != first.serial and m.admission.own.expires > first.expires
    # a restarted daemon loads what was saved
    again = MeshMembership(config, pid, wall=lambda: now[0])
    assert again.admission.own == m.admission.own and again.status()["credential"] == "valid"
