"""Partial views: beyond view_max members the view is a Kademlia table (core/routing.py,
core/membership.py), lookups find what it does not hold (mesh/base.py), and placement still
stores, reports and heals (placement.py). Pure core first, then FakeMesh peers in virtual time."""

from __future__ import annotations

import dataclasses
import random

import pytest
import trio

from beemeshd.core import protocol as proto
from beemeshd.core import routing
from beemeshd.core.catalog import holders, point_of
from beemeshd.core.membership import ALIVE, DEAD, Membership, Timings
from beemeshd.mesh.fake import FakeMesh, FakeNetwork
from tests.unit.test_placement import Peer, deploy, deployment

T = Timings(ping_interval=0.5, suspect_after=1.5, dead_after=3.0, probe_fanout=2, view_max=20, near=4,
            bucket_size=2)


def names(n: int, prefix: str = "peer") -> list[str]:
    return [f"{prefix}{i:04d}" for i in range(n)]


def test_past_view_max_the_view_keeps_its_neighbourhood_and_the_longest_lived_per_bucket():
    m = Membership("me", T)
    me = routing.point("me")
    peers = names(200)
    for t, pid in enumerate(peers[:19]):
        m.heard(pid, float(t))
    assert not m.partial and len(m.members) == 19  # below view_max: everyone
    m.heard(peers[19], 19.0)  # the 20th: a table now
    assert m.partial
    first20 = peers[:20]
    near = set(routing.closest(me, first20, T.near))
    age = {p: routing.age_class(19.0 - t) for t, p in enumerate(first20)}  # heard at t, now 19
    for bucket in {routing.bucket(me, routing.point(p)) for p in first20}:
        mine = [p for p in first20 if routing.bucket(me, routing.point(p)) == bucket]
        kept = [p for p in mine if p in m.members and p not in near]
        dropped = [p for p in mine if p not in m.members]
        # the longest alive of each bucket stay (by age class), besides the near ones
        assert len(kept) <= T.bucket_size
        if dropped:  # a full bucket (near ones may count among its best), none younger than a dropped one
            assert len([p for p in mine if p in m.members]) >= T.bucket_size
            assert all(age[p] >= max(age[q] for q in dropped) for p in kept)
    for t, pid in enumerate(peers[20:], start=20):
        m.heard(pid, float(t))
    assert set(routing.closest(me, peers, T.near)) <= set(m.members)  # the true neighbourhood
    assert len(m.members) <= T.near + T.bucket_size * 10
    far = max(peers, key=lambda p: me ^ routing.point(p))  # bucket 0: full long ago
    assert far not in m.members
    # a newcomer nearer than the neighbourhood gets in; one in a full far bucket does not
    newcomers = names(4000, "new")
    nearer = next(p for p in newcomers if (me ^ routing.point(p)) < min(me ^ routing.point(q) for q in peers))
    farther = next(p for p in newcomers if routing.bucket(me, routing.point(p)) == 0)
    assert m.heard(nearer, 300.0) and nearer in m.members
    assert m.heard(farther, 300.0) == [] and farther not in m.members
    assert not m.learned(farther, {"addresses": [], "uptimeSeconds": 0.0}, b"x", 1, 300.0)


def test_within_an_age_class_peers_keep_different_contacts():
    """Strictly oldest first, every peer would keep the same oldest few of a region (and route
    every lookup through them); peers of one age class are chosen by nearness to the chooser."""
    others = names(400, "old")
    chosen = []
    for who in names(20, "me"):
        me = routing.point(who)
        far = [p for p in others if routing.bucket(me, routing.point(p)) == 0]
        kept = routing.table(me, [(p, True, float(i % 3)) for i, p in enumerate(far)], 0, 4, now=1000.0)
        assert len(kept) == 4
        chosen.append(frozenset(kept))
    assert len(set(chosen)) >= 15
    me = routing.point("me0000")
    far = [p for p in others if routing.bucket(me, routing.point(p)) == 0]
    kept = routing.table(me, [(p, True, 0.0 if i < 2 else 900.0) for i, p in enumerate(far)], 0, 4, now=1000.0)
    assert set(far[:2]) <= kept  # an older class still wins


def test_a_pinned_peer_enters_the_table_is_probed_every_interval_and_one_nobody_knows_is_dead():
    m = Membership("me", T, rng=random.Random(1))
    peers = names(100)
    for pid in peers:
        m.heard(pid, 0.0)
    me = routing.point("me")
    outside = [p for p in names(3000, "far") if routing.bucket(me, routing.point(p)) == 0][:2]
    assert m.heard(outside[0], 1.0) == [] and outside[0] not in m.members  # bucket 0 is full
    m.pins = {outside[0]}
    assert m.heard(outside[0], 1.0) and m.get(outside[0]).state == ALIVE  # pinned: admitted
    probed = [outside[0] in m.probe_targets(1.0 + 0.5 * i) for i in range(1, 9)]
    for i in range(1, 9):  # it answers each probe
        m.heard(outside[0], 1.0 + 0.5 * i + 0.01)
    others = [p for p in m.members if p != outside[0]]
    assert all(probed)  # every interval (the others: probe_fanout of ~40 an interval)
    assert len(others) > 4 * T.probe_fanout
    m.trim(10.0)
    assert outside[0] in m.members  # trimming keeps what is pinned
    m.pins = {outside[0], outside[1]}
    m.absent(outside[1], 10.0)  # a lookup found nobody who knows it
    assert m.get(outside[1]).state == DEAD
    m.pins = set()
    m.trim(20.0)
    assert outside[0] not in m.members and outside[1] not in m.members


@pytest.mark.parametrize("probe_all", [16, 4], ids=["probing-all", "bounded"])
def test_a_pinned_peer_never_reached_is_dead_not_forgotten(probe_all):
    """A runner that died before this holder first reached it: its record came in a lookup,
    no probe was ever answered. Forgotten, the runner would be untracked (not taken for dead)
    and its replicas would wait for the next lookup; pinned, it is dead here and stays."""
    m = Membership("me", dataclasses.replace(T, probe_all=probe_all), rng=random.Random(1))
    for pid in names(100):
        m.heard(pid, 0.0)
    assert m.partial and m.bounded == (probe_all == 4)
    me = routing.point("me")
    rec = {"addresses": [], "uptimeSeconds": 0.0}
    runner = next(p for p in names(3000, "far") if routing.bucket(me, routing.point(p)) == 0)
    nearer = next(p for p in names(4000, "new")
                  if (me ^ routing.point(p)) < min(me ^ routing.point(q) for q in names(100)))
    m.pins = {runner}
    assert m.learned(runner, rec, b"r", 1, 1.0) and m.learned(nearer, rec, b"n", 1, 1.0)
    assert m.get(runner).state == m.get(nearer).state == "pending"
    for i in range(1, 13):  # 6 s: twice dead_after, and nobody answers
        m.tick(1.0 + 0.5 * i)
        for pid in names(100):
            m.heard(pid, 1.0 + 0.5 * i)
    assert m.get(runner).state == DEAD
    assert nearer not in m.members  # not pinned: forgotten, as before
    m.trim(8.0)
    assert m.get(runner).state == DEAD  # kept while pinned


def test_a_refused_newcomer_is_admitted_once_its_bucket_loses_a_member():
    """admits() remembers whom it refused (the same records come back in every reply); the
    answer must change when room opens."""
    m = Membership("me", T)
    for t, pid in enumerate(names(100)):
        m.heard(pid, float(t))
    me = routing.point("me")
    farther = next(p for p in names(4000, "new") if routing.bucket(me, routing.point(p)) == 0)
    assert not m.admits(farther) and not m.admits(farther)
    held = [p for p in m.members if routing.bucket(me, routing.point(p)) == 0]
    assert len(held) >= T.bucket_size
    for p in held:
        m.forget(p)
    assert m.admits(farther)
    assert m.heard(farther, 200.0) and farther in m.members


def test_a_table_says_the_mesh_is_large_even_while_nearly_empty():
    """A newcomer told by its bootstrap peer that the mesh is large makes its view a table with
    a few far peers in it: their density suggests a small mesh. Placement would then gossip a
    workload's news to everyone (a small mesh's way) instead of sending it to the holders."""
    mesh = FakeMesh(FakeNetwork(seed=1), random.Random(7).randbytes(32), timings=T)
    me = routing.point(mesh.peer_id)
    for pid in [p for p in names(400) if routing.bucket(me, routing.point(p)) <= 1][:3]:
        mesh.membership.heard(pid, 0.0)
    assert mesh.size_estimate() == 4.0  # a full view: exact
    assert mesh.membership.become_partial(0.0)
    assert mesh.membership.size_estimate() < T.view_max / 2  # the density of three far peers
    assert mesh.size_estimate() >= T.view_max / 2  # but a table means at least this many


def test_the_view_holds_everyone_again_when_the_mesh_shrinks():
    m = Membership("me", T)
    for pid in names(60):
        m.heard(pid, 0.0)
    assert m.partial and m.size_estimate() > T.view_max / 2
    for pid in list(m.members)[3:]:
        m.forget(pid)
    assert m.size_estimate() == 4.0  # fewer than a neighbourhood: exact
    m.tick(10.0)
    assert not m.partial
    m.heard("late", 10.5)
    assert "late" in m.members


async def _mesh(nursery, n: int, timings: Timings, seed: int = 5) -> tuple[FakeNetwork, list[FakeMesh]]:
    net = FakeNetwork(latency=0.002, seed=seed)
    rng = random.Random(seed)
    first = FakeMesh(net, rng.randbytes(32), timings=timings, rng=random.Random(1))
    peers = [first]
    await nursery.start(first.run)
    for i in range(n - 1):
        p = FakeMesh(net, rng.randbytes(32), bootstrap=[rng.choice(peers).peer_id], timings=timings,
                     rng=random.Random(i + 2))
        peers.append(p)
        await nursery.start(p.run)
        await trio.sleep(0.02)
    return net, peers


async def grow(nursery, make, n: int, timings: Timings, seed: int = 3) -> list:
    """n peers made by make(bootstrap) and started one after another, each bootstrapping off a
    random earlier one, with `timings` (their views become tables beyond timings.view_max)."""
    rng = random.Random(seed)
    peers: list = []
    for _ in range(n):
        p = make([rng.choice(peers).id] if peers else [])
        p.mesh.timings = p.mesh.membership.timings = timings
        peers.append(p)
        await nursery.start(p.run)
        await trio.sleep(0.05)
    return peers


async def test_lookups_find_the_nearest_peers_that_no_view_holds(nursery, autojump_clock):
    t = Timings(0.5, 1.5, 3.0, view_max=24, near=6, bucket_size=3)
    net, peers = await _mesh(nursery, 150, t)
    await trio.sleep(20)
    ids = [p.peer_id for p in peers]
    assert all(p.membership.partial for p in peers)
    assert max(len(p.membership.members) for p in peers) < 60  # not 149
    rng = random.Random(9)
    view_wrong = 0
    for i in range(30):
        target = rng.getrandbits(256)
        asker = peers[rng.randrange(len(peers))]
        truth = routing.closest(target, ids, 3)
        view_wrong += routing.closest(target, [asker.peer_id, *asker.membership.closest(target, 3)], 3) != truth
        assert await asker.lookup(target, 3) == truth
    assert view_wrong >= 10  # the views alone would have got these wrong: the lookups did the work


async def test_a_partial_view_mesh_stores_reports_and_heals(nursery, autojump_clock):
    """40 peers whose views hold ~12: a Deployment's holders (found by lookup) get its decision
    and status, and when a runner dies its healer (a holder, which pinned the runner) re-places
    the replica."""
    net = FakeNetwork(latency=0.002, seed=4)
    t = Timings(0.5, 1.0, 2.0, view_max=12, near=4, bucket_size=2)
    peers = await grow(nursery, lambda boot: Peer(net, bootstrap=boot, broadcast_max=8), 40, t)
    await trio.sleep(15)
    assert all(p.mesh.membership.partial for p in peers)
    assert sum(len(p.mesh.membership.members) for p in peers) / len(peers) < 15  # of 39
    ids = [p.id for p in peers]
    origin = peers[7]
    [w] = await deploy(origin, deployment(replicas=3, port=None), timeout=30)
    assert w["readyReplicas"] == 3
    key = ("default", "Deployment", "web")
    hs = holders(key, ids, 3)
    byid = {p.id: p for p in peers}
    d = origin.placement.catalog.entries[key]
    assert all(byid[h].placement.catalog.entries.get(key) == d for h in hs)
    await trio.sleep(5)  # status reports reach the holders; holders pin the runners
    runners = [p for _, p in d.assignments]
    for h in hs:
        assert set(runners) - {h} <= set(byid[h].mesh.membership.members)
    # a peer that neither holds nor runs it, whose view lacks a runner, still sees it whole
    # (fetched from the holders it looked up; a runner it does not track is not taken for dead)
    asker = next(p for p in peers if p.id not in hs and p.id not in runners
                 and not set(runners) <= set(p.mesh.membership.members))
    await asker.w.prepare("web")
    assert asker.w.get("web", None, None)["readyReplicas"] == 3
    victim = next(r for r in runners if r not in hs and r != origin.id)
    byid[victim].kill()
    with trio.fail_after(30):
        while True:
            cur = byid[hs[0] if hs[0] != victim else hs[1]].placement.catalog.entries[key]
            placed = [p for _, p in cur.assignments]
            if victim not in placed and all(
                    any(n.startswith("web") for n in byid[p].runtime.pod_names()) for p in placed):
                break
            await trio.sleep(0.5)
    assert cur.reason == "heal" and len(set(placed)) == 3


async def test_a_workloads_nearest_peers_beyond_its_holders_are_looked_up(nursery, autojump_clock):
    """A StatefulSet's group (consensus_group_size) may be larger than its holders (3): its
    members are the k nearest peers to its point in the whole mesh, not in this peer's table."""
    net = FakeNetwork(latency=0.002, seed=4)
    t = Timings(0.5, 1.0, 2.0, view_max=12, near=4, bucket_size=2)
    peers = await grow(nursery, lambda boot: Peer(net, bootstrap=boot, broadcast_max=8), 40, t)
    await trio.sleep(15)
    ids = [p.id for p in peers]
    key = ("default", "StatefulSet", "db")
    truth = routing.closest(point_of(key), ids, 5)
    wrong = 0
    for p in peers[::4]:
        wrong += routing.closest(point_of(key), [p.id, *p.mesh.membership.closest(point_of(key), 5)], 5) != truth
        assert await p.placement.nearest(key, 5) == truth
        assert await p.placement.locate(key) == truth[:3]  # the holders: the first 3 of them
    assert wrong >= 3  # the tables alone would have got these wrong


async def test_a_newcomer_to_a_large_mesh_makes_its_view_a_table_at_once_and_floods_nothing(nursery, autojump_clock):
    """Peers whose views are tables say so in view sync: a newcomer does not gather view_max
    peers first (nor gossip its record to the whole mesh, as a full view does)."""
    t = Timings(0.5, 1.5, 3.0, view_max=24, near=6, bucket_size=3)
    net, peers = await _mesh(nursery, 80, t)
    await trio.sleep(10)
    assert all(p.membership.partial for p in peers)
    before = net.counts["gossip beemesh/records"]
    # (its own view_max is more than a bootstrap peer's table holds: gathering would not get there)
    newcomer = FakeMesh(net, random.Random(99).randbytes(32), bootstrap=[peers[3].peer_id],
                        timings=Timings(0.5, 1.5, 3.0, view_max=60, near=6, bucket_size=3))
    await nursery.start(newcomer.run)
    with trio.fail_after(2):
        while not newcomer.membership.partial:
            await trio.sleep(0.05)
    await trio.sleep(10)
    ids = [p.peer_id for p in peers]
    me = routing.point(newcomer.peer_id)
    assert set(routing.closest(me, ids, t.near)) <= set(newcomer.membership.members)  # found by lookup
    assert len(newcomer.membership.members) < 40
    assert net.counts["gossip beemesh/records"] == before
    nearest = routing.closest(me, ids, 1)[0]
    assert newcomer.peer_id in next(p for p in peers if p.peer_id == nearest).membership.members


async def test_records_a_table_has_no_room_for_are_not_signature_checked(nursery, autojump_clock):
    """Every lookup and view-sync reply carries ~20 records, most of peers a table refuses:
    their signatures are not checked (the cost of churn in a large mesh), unless a lookup
    asked for them (candidates, kept with their addresses)."""
    t = Timings(0.5, 1.5, 3.0, view_max=24, near=6, bucket_size=3)
    net, peers = await _mesh(nursery, 60, t)
    await trio.sleep(8)
    me = peers[0]
    assert me.membership.partial
    outside = [p for p in peers[1:] if p.peer_id not in me.membership.members]
    refused = [p for p in outside if not me.membership.admits(p.peer_id)]
    assert len(refused) >= 5
    payload = proto.sync_payload([p._record_raw for p in refused], partial=True)
    checked = []
    decode = me._decode
    me._decode = lambda raw: checked.append(raw) or decode(raw)
    me._merge(payload)
    assert checked == [] and not {p.peer_id for p in refused} & set(me.membership.members)
    found: list[str] = []
    me._merge(payload, found)
    assert len(checked) == len(refused) and set(found) == {p.peer_id for p in refused}


def test_a_sync_message_says_partial_only_as_true():

    from beemeshd.core import protocol as proto

    ok = proto.sync_payload([], near=5, partial=True)
    assert proto.sync_records(ok) == ([], None) and proto.sync_near(ok) == 5
    for bad in ({**ok, "partial": "yes"}, {**ok, "partial": False}, {**ok, "near": "zz" * 32}):
        with pytest.raises(proto.Malformed):
            proto.sync_records(bad)
            proto.sync_near(bad)
