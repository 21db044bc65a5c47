"""Bounded failure detection (SWIM-style) in a large view: probes per interval, silence counted
from our own probes, suspicion and death spread as rumours and refuted by a newer record."""

import random

from beemeshd.core import protocol as proto
from beemeshd.core.membership import (
    ALIVE, DEAD, JOINED, LEFT, RECOVERED, SUSPECT, SUSPECTED, Membership, Timings,
)

T = Timings(ping_interval=0.5, suspect_after=1.5, dead_after=3.0, redial_min=1.0, redial_max=5.0,
            forget_after=60.0, probe_fanout=3, probe_all=16)


def view(n: int, t: Timings = T, seed: int = 1) -> Membership:
    m = Membership("me", t, rng=random.Random(seed))
    for i in range(n):
        m.learned(f"p{i:02d}", {"uptimeSeconds": 0.0, "addresses": []}, b"r", 5, 0.0)
        m.heard(f"p{i:02d}", 0.0)
    return m


def answer(m: Membership, targets, now: float, dead=()) -> None:
    for pid in targets:
        if pid not in dead:
            m.heard(pid, now)


def test_a_small_view_still_probes_everyone():
    m = view(3)
    assert not m.bounded
    assert sorted(m.probe_targets(1.0)) == ["p00", "p01", "p02"]


def test_a_large_view_probes_probe_fanout_peers_an_interval_each_once_a_round():
    m = view(30)
    assert m.bounded
    seen = []
    now = 0.5
    for _ in range(10):
        m.tick(now)
        targets = m.probe_targets(now)
        assert len(targets) == 3
        answer(m, targets, now + 0.01)
        seen += targets
        now += 0.5
    assert sorted(seen) == sorted(f"p{i:02d}" for i in range(30))  # a shuffled round: each once
    assert m.counts() == {ALIVE: 30, SUSPECT: 0, DEAD: 0}  # nobody suspected for being unasked


def test_silence_counts_from_our_probe_and_what_we_detect_is_spread():
    m = view(30)
    victim = None
    now, events = 0.5, []
    while now < 20:
        events += m.tick(now)
        targets = m.probe_targets(now)
        if victim is None and targets:
            victim = targets[0]
        answer(m, targets, now + 0.01, dead={victim})
        now += 0.5
        if m.get(victim).state == DEAD:
            break
    assert [(e, p) for e, p in events if p == victim] == [(SUSPECTED, victim), (LEFT, victim)]
    assert [e for e, p in events if p != victim] == []
    assert m.take_rumours() == [(victim, "suspect", 5), (victim, "dead", 5)]
    assert m.take_rumours() == []


def test_a_suspect_rumour_counts_down_here_too_unless_the_peer_speaks():
    m = view(30)
    assert m.rumour("p01", "suspect", 5, 10.0) == [(SUSPECTED, "p01")]
    assert m.rumour("p02", "suspect", 5, 10.0) == [(SUSPECTED, "p02")]
    assert m.heard("p02", 10.6) == [(RECOVERED, "p02")]  # it spoke: alive again
    events = []
    for now in (10.5, 11.0, 11.5, 12.0):
        events += m.tick(now)
    assert events == [(LEFT, "p01")]  # dead_after − suspect_after = 1.5 s after the rumour
    assert m.get("p02").state == ALIVE
    assert m.take_rumours() == []  # others' news is not ours to repeat


def test_rumours_about_an_older_record_are_void_and_dead_ones_are_final():
    m = view(30)
    m.learned("p03", {"uptimeSeconds": 0.0, "addresses": []}, b"r2", 9, 1.0)  # it refuted: seq 9
    assert m.rumour("p03", "suspect", 5, 2.0) == []
    assert m.rumour("p03", "dead", 5, 2.0) == []
    assert m.rumour("p04", "dead", 5, 2.0) == [(LEFT, "p04")]
    assert m.get("p04").state == DEAD
    assert m.rumour("p04", "dead", 5, 2.1) == [] and m.rumour("nobody", "suspect", 1, 2.1) == []
    assert m.heard("p04", 3.0) == [(JOINED, "p04")]  # a dead peer that speaks has returned


def test_dead_peers_are_redialled_a_bounded_number_at_a_time():
    m = view(40)
    for i in range(20):
        m.rumour(f"p{i:02d}", "dead", 5, 0.0)
    m.tick(0.5)
    due = [p for p in m.probe_targets(1.5) if m.get(p).state == DEAD]
    assert len(due) == 3  # probe_fanout of the 20 due
    m.tick(2.0)
    due += [p for p in m.probe_targets(2.0) if m.get(p).state == DEAD]
    assert len(set(due)) == 6


def test_rumours_on_the_wire_are_strictly_checked():
    assert proto.rumours({"rumours": [["p", "dead", 3]]}) == [("p", "dead", 3)]
    assert proto.rumours({"revocations": {}}) == []
    for bad in ([["p", "gone", 3]], [["p", "dead", True]], [["p", "dead"]], "x", [[1, "dead", 3]]):
        try:
            proto.rumours({"rumours": bad})
        except proto.Malformed:
            continue
        raise AssertionError(f"accepted {bad!r}")


# --- the same on the in-memory mesh -----------------------------------------------------------

import pytest  # noqa: E402
import trio  # noqa: E402

from beemeshd.mesh.fake import FakeMesh, FakeNetwork  # noqa: E402

MESH_T = Timings(ping_interval=0.5, suspect_after=1.5, dead_after=3.0, probe_fanout=4)


async def bounded_mesh(nursery, n: int, degree=None) -> tuple[FakeNetwork, list[FakeMesh]]:
    net = FakeNetwork(latency=0.002, jitter=0.002, seed=7, degree=degree)
    first = FakeMesh(net, timings=MESH_T, rng=random.Random(0))
    ms = [first] + [FakeMesh(net, bootstrap=[first.peer_id], timings=MESH_T, rng=random.Random(i))
                    for i in range(1, n)]
    for m in ms:  # started over time, as real peers are: their probe ticks are not in step
        await nursery.start(m.run)
        await trio.sleep(0.013)
    with trio.fail_after(20):
        while not all(m.membership.counts()[ALIVE] == n - 1 for m in ms):
            await trio.sleep(0.1)
    return net, ms


def state_of(m: FakeMesh, pid: str) -> str | None:
    member = m.membership.get(pid)
    return member.state if member is not None else None


async def test_a_large_mesh_probes_a_bounded_number_and_still_sees_a_death_everywhere(autojump_clock):
    async with trio.open_nursery() as nursery:
        net, ms = await bounded_mesh(nursery, 40)
        await trio.sleep(3)
        before = net.counts["probe"]
        await trio.sleep(5)
        probes = net.counts["probe"] - before
        assert probes <= 40 * (MESH_T.probe_fanout + 1) * 10  # all-to-all would be 40 × 39 × 10
        victim, rest = ms[7], ms[:7] + ms[8:]
        rumours_before = net.counts["gossip beemesh/membership"]
        victim.kill()
        t0 = trio.current_time()
        with trio.fail_after(10):
            while not all(state_of(m, victim.peer_id) == DEAD for m in rest):
                await trio.sleep(0.1)
        assert trio.current_time() - t0 <= MESH_T.dead_after + 2 * MESH_T.ping_interval + 0.5
        # a peer or two detected it and told the rest (suspect, then dead); each rumour reached
        # the 38 others, who did not repeat it
        told = (net.counts["gossip beemesh/membership"] - rumours_before) / 38
        assert 2 <= told <= 4
        assert all(state_of(m, p.peer_id) == ALIVE for m in rest for p in rest if p is not m)
        nursery.cancel_scope.cancel()


async def test_a_peer_refutes_a_false_suspicion_with_a_newer_record(autojump_clock):
    async with trio.open_nursery() as nursery:
        net, ms = await bounded_mesh(nursery, 30)
        accuser, accused = ms[3], ms[11]
        seen = []
        for m in ms:
            m.on_peer_event = lambda kind, peer: seen.append(kind) if peer == accused.peer_id else None
        seq = accuser.membership.get(accused.peer_id).record_seq
        await accuser.publish(proto.TOPIC_MEMBERSHIP, {"rumours": [[accused.peer_id, "suspect", seq]]})
        await trio.sleep(3)  # longer than a suspect takes to be declared dead
        assert seen.count("PeerSuspect") >= 20 and "PeerLeft" not in seen
        assert seen.count("PeerJoined") == seen.count("PeerSuspect")  # each recovered: it spoke since
        assert all(state_of(m, accused.peer_id) == ALIVE for m in ms if m is not accused)
        assert accused.membership.get(accused.peer_id) is None and accused.running
        assert accused.membership.get(accuser.peer_id).state == ALIVE
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("n", [30])
async def test_a_malformed_rumour_is_dropped_and_counted(autojump_clock, n):
    async with trio.open_nursery() as nursery:
        net, ms = await bounded_mesh(nursery, n)
        await ms[0].publish(proto.TOPIC_MEMBERSHIP, {"rumours": [[ms[1].peer_id, "gone", 1]]})
        await trio.sleep(0.1)
        assert sum(m.counters["malformedMessages"] for m in ms[1:]) == n - 1
        assert all(state_of(m, ms[1].peer_id) == ALIVE for m in ms[2:])
        nursery.cancel_scope.cancel()


async def test_a_view_sync_reply_fits_one_envelope_however_large_the_view(autojump_clock):
    """A newcomer's first sync asks for the whole view: ~1,500 records no longer fit one envelope
    (the answering peer's handler used to fail sealing it); it gets what fits, the rest later.
    (A full view of 3,000: view_max=0 keeps it from becoming a table.)"""
    m = FakeMesh(FakeNetwork(seed=1), timings=Timings(view_max=0))
    async with trio.open_nursery() as nursery:
        await nursery.start(m.run)
        for i in range(3000):
            pid = f"peer{i:04d}"
            m.membership.learned(pid, {"addresses": [], "uptimeSeconds": 0.0}, b"r" * 600 + pid.encode(), 1, 0.0)
            m.membership.heard(pid, 0.0)
        ask = proto.Envelope(proto.PROTO_SYNC, "req", "asker", 0.0, "0" * 32, {"records": [], "known": {}})
        reply = await m._handle_sync(ask)
        assert len(proto.canonical(reply)) < proto.MAX_ENVELOPE
        assert 500 < len(reply["records"]) < 3000
        m.signer.seal(proto.PROTO_SYNC, "rep", {"ok": reply}, 0.0)  # and it can be sent
        nursery.cancel_scope.cancel()
