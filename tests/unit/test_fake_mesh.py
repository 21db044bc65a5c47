"""The mesh on the in-memory network, under trio's MockClock (virtual time: these run in ms)."""

import pytest
import trio

from beemeshd.core import protocol as proto
from beemeshd.mesh import PeerUnreachable, RemoteError, listen_addresses
from beemeshd.mesh.fake import FakeMesh, FakeNetwork


@pytest.fixture
def net():
    return FakeNetwork(latency=0.002, jitter=0.002, seed=5)


def states(m: FakeMesh) -> dict[str, str]:
    return {p.peer_id: p.state for p in m.peers()}


async def until(cond, timeout: float) -> float:
    t0 = trio.current_time()
    with trio.fail_after(timeout):
        while not cond():
            await trio.sleep(0.01)
    return trio.current_time() - t0


def full(ms) -> bool:
    return all(sum(s == "alive" for s in states(m).values()) == len(ms) - 1 for m in ms if m.running)


async def start(nursery, net, n: int, **kw) -> list[FakeMesh]:
    first = FakeMesh(net, **kw)
    ms = [first] + [FakeMesh(net, bootstrap=[first.peer_id], **kw) for _ in range(n - 1)]
    for m in ms:
        await nursery.start(m.run)
    return ms


async def test_peers_join_through_one_bootstrap_peer(net, autojump_clock):
    async with trio.open_nursery() as nursery:
        ms = await start(nursery, net, 10)
        took = await until(lambda: full(ms), 5)
        assert took <= 1.5  # one probe round to the bootstrap peer, one to everyone it told us about
        view = ms[4].peers()
        assert view[0].state == "self" and view[0].peer_id == ms[4].peer_id
        other = next(p for p in view if p.peer_id == ms[7].peer_id)
        assert other.addresses == ms[7].addresses() and other.record["capacity"]["pods"] == 0
        assert other.last_seen == pytest.approx(net.epoch + trio.current_time(), abs=1)
        nursery.cancel_scope.cancel()


async def test_publish_reaches_every_peer_once_including_the_sender(net, autojump_clock):
    async with trio.open_nursery() as nursery:
        ms = await start(nursery, net, 6)
        await until(lambda: full(ms), 5)
        got = {m.peer_id: [] for m in ms}

        async def listen(m, stream):
            async for env in stream:
                got[m.peer_id].append(env)

        for m in ms:
            nursery.start_soon(listen, m, m.subscribe(proto.TOPIC_TASKS))
        await trio.sleep(0)
        await ms[2].publish(proto.TOPIC_TASKS, {"want": "web"})
        await trio.sleep(1)
        assert all(len(v) == 1 for v in got.values())
        env = got[ms[5].peer_id][0]
        assert (env.sender, env.topic, env.payload) == (ms[2].peer_id, proto.TOPIC_TASKS, {"want": "web"})
        with pytest.raises(ValueError):
            ms[0].subscribe("not/a/topic")
        nursery.cancel_scope.cancel()


async def test_requests_replies_errors_and_unreachable_peers(net, autojump_clock):
    async with trio.open_nursery() as nursery:
        a, b, c = await start(nursery, net, 3)
        await until(lambda: full([a, b, c]), 5)

        async def echo(env):
            return {"from": env.sender, "n": env.payload["n"] + 1}

        async def broken(env):
            raise RuntimeError("disk full")

        b.handle("/beemesh/echo/1", echo)
        b.handle("/beemesh/broken/1", broken)
        assert await a.request(b.peer_id, "/beemesh/echo/1", {"n": 1}, 1) == {"from": a.peer_id, "n": 2}
        with pytest.raises(RemoteError, match="disk full"):
            await a.request(b.peer_id, "/beemesh/broken/1", {}, 1)
        with pytest.raises(RemoteError, match="no handler"):
            await a.request(b.peer_id, "/beemesh/nothing/1", {}, 1)
        c.kill()
        t0 = trio.current_time()
        with pytest.raises(PeerUnreachable):
            await a.request(c.peer_id, "/beemesh/echo/1", {"n": 1}, 2)
        assert trio.current_time() - t0 < 0.1  # refused at once
        net.partition({a.peer_id}, {b.peer_id})
        with pytest.raises(PeerUnreachable, match="within 2 s"):
            await a.request(b.peer_id, "/beemesh/echo/1", {"n": 1}, 2)  # silence: the time-out ends it
        nursery.cancel_scope.cancel()


async def test_a_killed_peer_is_suspect_then_dead_then_rejoins(net, autojump_clock):
    async with trio.open_nursery() as nursery:
        ms = await start(nursery, net, 5)
        await until(lambda: full(ms), 5)
        seen = []
        ms[0].on_peer_event = lambda kind, peer: seen.append((trio.current_time(), kind, peer))
        victim = ms[3]
        t0 = trio.current_time()
        victim.kill()
        took = await until(lambda: all(states(m)[victim.peer_id] == "dead" for m in ms if m is not victim), 10)
        timings = ms[0].timings
        assert took <= timings.dead_after + timings.ping_interval + 0.1
        kinds = [k for _, k, p in seen if p == victim.peer_id]
        assert kinds == ["PeerSuspect", "PeerLeft"]
        assert seen[0][0] - t0 >= timings.suspect_after - timings.ping_interval
        await nursery.start(victim.run)  # same identity
        await until(lambda: full(ms), 3)
        assert [k for _, k, p in seen if p == victim.peer_id][-1] == "PeerJoined"
        nursery.cancel_scope.cancel()


async def test_partition_then_heal(net, autojump_clock):
    async with trio.open_nursery() as nursery:
        ms = await start(nursery, net, 6)
        await until(lambda: full(ms), 5)
        left, right = {m.peer_id for m in ms[:3]}, {m.peer_id for m in ms[3:]}
        net.partition(left, right)

        def split():
            for m in ms:
                other = right if m.peer_id in left else left
                same = (left if m.peer_id in left else right) - {m.peer_id}
                s = states(m)
                if any(s[p] != "dead" for p in other) or any(s[p] != "alive" for p in same):
                    return False
            return True

        assert await until(split, 10) <= 4
        net.heal()
        assert await until(lambda: full(ms), 10) <= 6  # dead peers are redialled at most 5 s apart
        nursery.cancel_scope.cancel()


async def test_bad_messages_are_dropped_and_counted(net, autojump_clock):
    async with trio.open_nursery() as nursery:
        a, b = await start(nursery, net, 2)
        skewed = FakeMesh(net, bootstrap=[a.peer_id], clock_skew=45.0)
        await nursery.start(skewed.run)
        await until(lambda: full([a, b]), 5)
        got = []

        async def listen(stream):
            async for env in stream:
                got.append(env.payload)

        nursery.start_soon(listen, a.subscribe(proto.TOPIC_BIDS))
        await trio.sleep(0)
        now = net.epoch + trio.current_time()
        good = b.signer.seal(proto.TOPIC_BIDS, "pub", {"n": "good"}, now)
        forged = bytearray(b.signer.seal(proto.TOPIC_BIDS, "pub", {"n": "forged"}, now))
        forged[7] ^= 0x80
        for raw in (good, good, bytes(forged), b"garbage", b.signer.seal(proto.TOPIC_BIDS, "pub", {}, now - 31)):
            net.inject(a.peer_id, proto.TOPIC_BIDS, raw)
        await skewed.publish(proto.TOPIC_BIDS, {"n": "from the future"})  # 45 s ahead: stale to everyone
        await trio.sleep(0.5)
        assert got == [{"n": "good"}]
        c = a.counters
        assert (c["forgedMessages"], c["replayedMessages"], c["malformedMessages"]) == (1, 1, 1)
        assert c["staleMessages"] >= 2  # the skewed peer's records and sync requests are stale too
        assert skewed.peer_id not in {p.peer_id for p in a.peers() if p.state == "alive"}
        nursery.cancel_scope.cancel()


async def test_record_changes_reach_the_others(net, autojump_clock):
    async with trio.open_nursery() as nursery:
        a, b = await start(nursery, net, 2)
        await until(lambda: full([a, b]), 5)
        cap = dict.fromkeys(proto.CAPACITY_FIELDS, 7)
        b.set_record({"capacity": cap, "runtime": "podman 4.3.1", "network": "pasta", "version": "9",
                      "labels": {"zone": "x"}})

        def seen():
            rec = next(p for p in a.peers() if p.peer_id == b.peer_id).record
            return rec["capacity"] == cap and rec["labels"] == {"zone": "x"}

        assert await until(seen, 2) < 0.1  # republished at once, not at the next refresh
        with pytest.raises(proto.Malformed):
            b.set_record({"labels": {"zone": "x" * 100}})  # peers would drop it: refused here
        await trio.sleep(20)
        view = next(p for p in a.peers() if p.peer_id == b.peer_id)
        assert view.uptime_seconds == pytest.approx(b.peers()[0].uptime_seconds, abs=0.5)
        nursery.cancel_scope.cancel()


async def test_contacts_prefer_peers_seen_longest(net, autojump_clock):
    async with trio.open_nursery() as nursery:
        ms = await start(nursery, net, 3)
        await until(lambda: full(ms), 5)
        await trio.sleep(600)
        late = FakeMesh(net, bootstrap=[ms[0].peer_id])
        await nursery.start(late.run)
        await until(lambda: full([*ms, late]), 5)
        firsts = [ms[0].contacts(1)[0] for _ in range(300)]
        assert firsts.count(late.peer_id) < 10  # up 1 s vs 600 s
        nursery.cancel_scope.cancel()


async def test_a_hundred_peers_converge_in_virtual_time(autojump_clock):
    net = FakeNetwork(latency=0.005, seed=1)
    async with trio.open_nursery() as nursery:
        ms = await start(nursery, net, 100)
        assert await until(lambda: full(ms), 10) <= 2.5
        nursery.cancel_scope.cancel()


def test_listen_addresses_are_loopback_unless_the_mesh_is_named():
    class C:
        mesh_listen, mesh_name = (), ""

    assert listen_addresses(C) == ["/ip4/127.0.0.1/tcp/0"]
    C.mesh_listen = ("/ip4/10.0.0.1/tcp/4001",)
    assert listen_addresses(C) == ["/ip4/10.0.0.1/tcp/4001"]
    C.mesh_listen, C.mesh_name = (), "home"
    assert all(not a.startswith("/ip4/127.") for a in listen_addresses(C)) or \
        listen_addresses(C) == ["/ip4/127.0.0.1/tcp/0"]  # a host with only loopback
