"""Raft groups (pysyncobj behind beemeshd.consensus) over the in-memory wire, virtual time; and
the consensus path's defences: crafted frames, pickles, terms and senders are refused, counted,
and nothing they name is executed."""

from __future__ import annotations

import base64
import os
import pickle
import random

import pytest
import trio

from beemeshd.consensus import Driver, ProposalFailed, RaftGroup, RaftTiming, codec
from beemeshd.consensus import clock as raft_clock
from beemeshd.consensus.wire import MemoryNet, MemoryWire

EXECUTED: list = []


def pwned(*args):  # what a crafted pickle tries to call
    EXECUTED.append(args)


class Evil:
    def __init__(self, fn=pwned, args=("pwned",)):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return (self.fn, self.args)


class Counter:
    """A tiny state machine: ("add", n) commands; followers may forward only their own peer's."""

    def __init__(self):
        self.applied_log, self.roles, self.leaders = [], [], []

    def initial_state(self):
        return {"n": 0, "by": []}

    def apply(self, state, cmd, index):
        state["n"] += cmd[1]
        state["by"].append(cmd[2])
        return state["n"]

    def check(self, cmd):
        if type(cmd) is not tuple or len(cmd) != 3 or cmd[0] != "add" or type(cmd[1]) is not int:
            raise ValueError("not an add")
        return cmd

    def may_forward(self, cmd, peer):
        return cmd[2] == peer

    def applied(self, cmd, result, index):
        self.applied_log.append((index, cmd, result))

    def role_changed(self, leader):
        self.roles.append(leader)

    def leader_changed(self, leader, term):
        self.leaders.append((leader, term))


async def until(cond, timeout=10.0, step=0.01):
    with trio.fail_after(timeout):
        while not cond():
            await trio.sleep(step)


class Cluster:
    def __init__(self, nursery, n=3, timing=RaftTiming(), seed=1, peers=None):
        self.nursery = nursery
        self.net = MemoryNet(latency=0.002, rng=random.Random(seed))
        self.timing = timing
        self.rng = random.Random(seed)
        self.drivers = {}
        for p in peers or [chr(ord("a") + i) for i in range(n)]:
            self.add_driver(p)
        self.groups = {}

    def add_driver(self, peer):
        d = Driver(MemoryWire(self.net, peer), **self.timing.driver_args(), clock=trio.current_time,
                   rng=random.Random(self.rng.random()), incarnation=f"i{len(self.drivers)}")
        self.drivers[peer] = d
        return d

    async def start(self):
        for d in self.drivers.values():
            await self.nursery.start(d.run)

    def found(self, gid="g", peers=None):
        peers = peers or list(self.drivers)
        ids = [self.drivers[p].node_id for p in peers]
        for p in peers:
            self.groups[(gid, p)] = RaftGroup(gid, self.drivers[p].node_id, ids, Counter(), self.drivers[p],
                                              timing=self.timing)
        return [self.groups[(gid, p)] for p in peers]

    def leader(self, gid="g"):
        ls = [g for (k, _), g in self.groups.items() if k == gid and g.is_leader and not g.closed]
        return ls[0] if len(ls) == 1 else None


@pytest.fixture
async def cluster(nursery):
    c = Cluster(nursery)
    await c.start()
    return c


async def test_elects_commits_and_fails_over(cluster, autojump_clock):
    gs = cluster.found()
    t0 = trio.current_time()
    await until(lambda: cluster.leader() is not None)
    assert trio.current_time() - t0 < 1.0
    follower = next(g for g in gs if not g.is_leader)
    assert await follower.propose(("add", 5, follower.node_id.split("/")[0])) == 5
    await until(lambda: all(g.state["n"] == 5 for g in gs))
    old = cluster.leader()
    cluster.net.down.add(old.node_id.split("/")[0])
    t0 = trio.current_time()
    await until(lambda: any(g.is_leader for g in gs if g is not old))
    assert trio.current_time() - t0 < 1.0
    new = next(g for g in gs if g.is_leader and g is not old)
    assert new.term > old.term and True in new.machine.roles
    assert await new.propose(("add", 2, "x")) == 7
    # the cut-off old leader cannot commit anything
    with pytest.raises(ProposalFailed):
        await old.propose(("add", 100, "x"), timeout=1.0)
    cluster.net.down.clear()
    await until(lambda: all(g.state["n"] == 7 for g in gs) and not old.is_leader)
    assert all(g.state["by"] == [follower.node_id.split("/")[0], "x"] for g in gs)


async def test_members_join_and_leave_one_at_a_time(cluster, autojump_clock):
    a, b, c = cluster.found(peers=["a", "b", "c"])
    await until(lambda: cluster.leader() is not None)
    leader = cluster.leader()
    for i in range(30):
        await leader.propose(("add", 1, "x"))
    d_driver = cluster.add_driver("d")
    await cluster.nursery.start(d_driver.run)
    d = RaftGroup("g", d_driver.node_id, leader.members, Counter(), d_driver, timing=cluster.timing, passive=True)
    await leader.add_member(d.node_id)
    await until(lambda: d.state["n"] == 30)
    assert d_driver.node_id in leader.members and len(leader.members) == 4
    victim = next(g for g in (a, b, c) if g is not leader)
    await leader.remove_member(victim.node_id)
    victim.close()
    assert victim.node_id not in leader.members
    assert await d.propose(("add", 1, "d")) == 31


async def test_a_member_far_behind_catches_up_from_a_plain_data_snapshot(nursery, autojump_clock):
    timing = RaftTiming(compact_entries=20)
    c = Cluster(nursery, timing=timing)
    await c.start()
    gs = c.found()
    await until(lambda: c.leader() is not None)
    leader = c.leader()
    lagging = next(g for g in gs if g is not leader)
    c.net.partition({lagging.node_id.split("/")[0]})
    for _ in range(60):
        await leader.propose(("add", 1, "x"))
    await trio.sleep(1.0)  # compaction runs on a tick
    assert leader._getRaftLogSize() < 30  # so the lagging member needs the snapshot
    c.net.heal()
    await until(lambda: lagging.state["n"] == 60)
    assert sum(d.counters["consensusUnsafe"] + d.counters["consensusErrors"] for d in c.drivers.values()) == 0


def test_safe_loads_builds_plain_data_and_refuses_everything_else(tmp_path):
    plain = ({codec.PeerNode("a/1")}, (b"\x00\xff", 3, 1), ["x", None, 2.5, {"k": [1]}])
    assert codec.safe_loads(pickle.dumps(plain, 2)) == plain
    marker = tmp_path / "marker"
    for payload in (Evil(), Evil(os.system, (f"touch {marker}",)), Evil(eval, ("1+1",)),
                    Evil(__import__, ("os",)), Counter()):
        with pytest.raises(pickle.UnpicklingError):
            codec.safe_loads(pickle.dumps(payload, 2))
    with pytest.raises(pickle.UnpicklingError):  # bytes spelled with another codec
        codec.safe_loads(pickle.dumps(Evil(__import__("_codecs").encode, ("x", "rot13")), 2))
    assert not marker.exists() and EXECUTED == []
    # pysyncobj itself now decodes through it
    import pysyncobj.pickle
    assert pysyncobj.pickle.loads is codec.safe_loads


@pytest.mark.parametrize("frame", [None, 5, "x", {"not": "a list"}, [["g", "a/i0"]], ["i", "1", []],
                                   ["i", 1, [["g", "a/i0"]]], ["i", 1, [["g", "a/i0", "b/0", {"type": "x"}]]],
                                   ["i", 2, [["g", "a/i0", "b/0", {"type": "append_entries", "term": 1,
                                                                   "commit_index": 1, "prevLogIdx": 1,
                                                                   "prevLogTerm": 0, "entries": [["%%", 1, 1]]}]]]])
def test_bad_frames_are_counted_not_raised(frame):
    d = Driver(MemoryWire(MemoryNet(), "b"), clock=lambda: 0.0)
    d.register(type("G", (), {"group_id": "g", "node_id": "b/0", "otherNodes": {codec.PeerNode("a/i0")},
                              "closed": False, "raftCurrentTerm": 0, "passive": False,
                              "check_entry": lambda self, data: None, "check_forward": lambda self, d, p: None,
                              "member_ids": lambda self: frozenset({"a/i0"})})())
    d.receive("a", frame)
    assert d.counters["consensusMalformed"] == 1


@pytest.mark.parametrize("data", [b"", b"\xff", b"[1,", b"[NaN]", b"[" * 100_000 + b"]" * 100_000,
                                  b" " * (codec.MAX_FRAME + 1)])
def test_undecodable_frames_are_rejected(data):
    with pytest.raises(codec.Rejected):
        codec.decode(data)


def test_a_frame_overtaken_by_a_later_one_is_dropped_not_delivered():
    """pysyncobj assumes FIFO links (TCP): an older append_entries delivered late would cut the
    follower's log."""
    d = Driver(MemoryWire(MemoryNet(), "b"), clock=lambda: 0.0)
    d.receive("a", ["x", 2, []])
    d.receive("a", ["x", 1, []])
    d.receive("a", ["x", 2, []])
    assert d.stats["framesOutOfOrder"] == 2
    d.receive("a", ["y", 1, []])  # a restarted sender counts afresh
    assert d.stats["framesOutOfOrder"] == 2


def test_codec_round_trips_messages_with_bytes_as_base64():
    v = ["i", 3, [["g", "a/0", "b/0", {"type": "append_entries", "term": 2, "commit_index": 5, "prevLogIdx": 4,
                                       "prevLogTerm": 2, "entries": [(b"\x00\xff", 5, 2)]}]]]
    wire = codec.decode(codec.encode([v[0], v[1], [[*v[2][0][:3], codec.for_wire(v[2][0][3])]]]))
    msg = codec.check_message(wire[2][0][3], lambda data: None, lambda data: None)
    assert msg["entries"] == [(b"\x00\xff", 5, 2)] and msg["term"] == 2


async def test_crafted_messages_from_members_and_strangers_are_refused_and_counted(cluster, tmp_path, autojump_clock):
    gs = cluster.found()
    await until(lambda: cluster.leader() is not None)
    leader = cluster.leader()
    await leader.propose(("add", 1, "x"))
    await until(lambda: all(g.state["n"] == 1 for g in gs))
    lp = leader.node_id.split("/")[0]
    member = next(g for g in gs if g is not leader)
    mp = member.node_id.split("/")[0]
    ld = cluster.drivers[lp]
    marker = tmp_path / "marker"

    seq = iter(range(1, 1000))

    def frame(src, body, dst=None, gid="g"):  # [sender incarnation, sequence, messages], as JSON brings it
        return codec.decode(codec.encode(["evil", next(seq), [[gid, src, dst or leader.node_id, body]]]))

    def b64(data):
        return base64.b64encode(data).decode()

    def regular(arg):
        return b64(b"\x00" + pickle.dumps((0, (arg,)), 2))

    def counted(name):
        return ld.counters[name]

    before = dict(ld.counters)
    # 1. a member forwards a command whose pickle calls os.system / our own function
    for evil in (Evil(os.system, (f"touch {marker}",)), Evil()):
        ld.receive(mp, frame(member.node_id, {"type": "apply_command", "command": regular(evil), "request_id": 1}))
    # 2. a "leader" ships the same inside a log entry
    entry = [regular(Evil(os.system, (f"touch {marker}",))), 99, member.term]
    ld.receive(mp, frame(member.node_id, {"type": "append_entries", "term": leader.term + 5, "commit_index": 99,
                                          "prevLogIdx": 1, "prevLogTerm": 0, "entries": [entry]}))
    # 3. a membership change or a raw pickle smuggled as a forwarded command
    ld.receive(mp, frame(member.node_id, {"type": "apply_command",
                                          "command": b64(b"\x02" + pickle.dumps(["rem", leader.node_id], 2))}))
    # 4. a well-formed command the state machine refuses to take from that peer (not its own)
    ld.receive(mp, frame(member.node_id, {"type": "apply_command", "command": regular(("add", 1000, "zz"))}))
    # 5. wrong term, unknown fields, a non-member, a spoofed sender, another incarnation
    ld.receive(mp, frame(member.node_id, {"type": "request_vote", "term": 0, "last_log_index": 0,
                                          "last_log_term": 0}))
    ld.receive(mp, frame(member.node_id, {"type": "response_vote", "term": leader.term, "extra": 1}))
    ld.receive("z", frame("z/0", {"type": "request_vote", "term": 99, "last_log_index": 99, "last_log_term": 99}))
    ld.receive(mp, frame(f"{lp}/i9", {"type": "response_vote", "term": 99}))
    ld.receive(mp, frame(f"{mp}/before-restart", {"type": "response_vote", "term": 99}))
    ld.receive(mp, frame(member.node_id, {"type": "response_vote", "term": 99}, dst=f"{lp}/old"))
    ld.receive(mp, frame(member.node_id, {"type": "response_vote", "term": 99}, gid="nope"))
    delta = {k: ld.counters[k] - before[k] for k in before}
    assert delta == {"consensusMalformed": 1, "consensusUnsafe": 3, "consensusRefused": 2, "consensusNonMember": 4,
                     "consensusStaleTerm": 1, "consensusUnknownGroup": 1, "consensusErrors": 0}
    assert not marker.exists() and EXECUTED == []
    # nothing reached the state machine and the group still works, under the same leader
    assert leader.is_leader and leader.state["n"] == 1 and counted("consensusErrors") == 0
    assert await leader.propose(("add", 1, "x")) == 2


async def test_groups_on_different_clocks_in_one_process(nursery, autojump_clock):
    """The simulator's use of the process-wide switch: a group whose clock runs 10× slower
    elects 10× later."""
    net = MemoryNet()
    timing = RaftTiming(heartbeat=0.2, election_min=0.65, election_max=1.3, leader_fallback=1.3)  # timers only
    fast, slow = {}, {}
    for peers, box, rate in (("abc", fast, 1.0), ("def", slow, 0.1)):
        for p in peers:
            box[p] = Driver(MemoryWire(net, p), clock=lambda r=rate: trio.current_time() * r,
                            rng=random.Random(p))
            await nursery.start(box[p].run)
    groups = {}
    for name, box in (("fast", fast), ("slow", slow)):
        ids = [d.node_id for d in box.values()]
        groups[name] = [RaftGroup(name, d.node_id, ids, Counter(), d, timing=timing) for d in box.values()]
    await until(lambda: any(g.is_leader for g in groups["fast"]))
    t_fast = trio.current_time()
    await until(lambda: any(g.is_leader for g in groups["slow"]))
    assert trio.current_time() > 5 * t_fast
    with raft_clock.using(lambda: 42.0):
        import pysyncobj.syncobj
        assert pysyncobj.syncobj.monotonicTime() == 42.0


# -- hurried elections: per-peer failure detection instead of per-group timeouts --------------------

NO_HURRY = RaftTiming(suspect=0.0)  # the same timers, elections only on pysyncobj's own timeouts


async def _founded(nursery, timing, groups):
    c = Cluster(nursery, timing=timing)
    await c.start()
    t0 = trio.current_time()
    for i in range(groups):
        c.found(f"g{i}")
    gids = [f"g{i}" for i in range(groups)]
    await until(lambda: all(c.leader(g) is not None for g in gids), timeout=30)
    return c, gids, trio.current_time() - t0


def _follow(c, gid, peer):
    return c.groups[(gid, peer)].leader


@pytest.mark.parametrize("timing", [RaftTiming(), NO_HURRY], ids=["hurried", "control"])
async def test_new_groups_elect_at_once_without_split_votes(nursery, autojump_clock, timing):
    c, gids, took = await _founded(nursery, timing, 20)
    terms = [c.leader(g).term for g in gids]
    if timing.suspect:
        # one member runs first, the next only a hurry step later: one election each
        assert took < 0.5 and terms == [1] * 20
        assert len({c.leader(g).node_id for g in gids}) == 3  # first runners differ per group
    else:  # the control: an election timeout (2–4 s) first
        assert took > timing.election_min


@pytest.mark.parametrize("timing", [RaftTiming(), NO_HURRY], ids=["hurried", "control"])
async def test_a_dead_peers_groups_fail_over_after_one_suspicion_and_spread(nursery, autojump_clock, timing):
    c, gids, _ = await _founded(nursery, timing, 24)
    await trio.sleep(3)
    led = [g for g in gids if c.leader(g).node_id.startswith("a/")]
    assert led, "a leads some groups"
    before = {g: c.leader(g).term for g in led}
    c.net.down.add("a")
    t0 = trio.current_time()

    def moved():  # both survivors follow (or are) a new leader
        return all(_follow(c, g, p) not in (None, c.drivers["a"].node_id) for g in led for p in "bc")

    await until(moved, timeout=30)
    took = trio.current_time() - t0
    if timing.suspect:
        # noticed within a pulse after `suspect`, a vote request and the new leader's first
        # append each within a pulse: far below an election timeout (bench: 0.4 s on libp2p)
        assert took < timing.suspect + 3 * (timing.pulse + timing.tick) < timing.election_min
        new = {c.groups[(g, "b")].leader for g in led}
        assert len(new) == 2 or len(led) == 1  # both survivors take some of them over
        assert all(c.groups[(g, "b")].term == before[g] + 1 for g in led)  # no split vote
    else:
        assert took > timing.election_min


def test_a_stall_of_our_own_is_not_held_against_anyone():
    """A driver whose own loop stalled (a paused process) finds everyone silent when it wakes, with
    their frames still unread: it suspects nobody until a `suspect` period has passed."""
    now = [0.0]
    d = Driver(MemoryWire(MemoryNet(), "c"), clock=lambda: now[0], **RaftTiming().driver_args())
    d.last_heard.update(a=0.0, b=0.0)
    for _ in range(4):  # ticking on time, hearing from both
        now[0] += 0.05
        d.last_heard.update(a=now[0], b=now[0])
        d.tick_once()
    assert d.suspects == frozenset()
    now[0] += 1.0  # stalled: nothing heard, nothing read
    d.tick_once()
    assert d.suspects == frozenset()
    for _ in range(round(2 * RaftTiming().suspect / 0.05)):  # a's frames are read after the stall; b stays silent
        now[0] += 0.05
        d.last_heard["a"] = now[0]
        d.tick_once()
    assert d.suspects == frozenset({"b"})


@pytest.mark.parametrize("push", [True, False], ids=["pushed", "control"])
async def test_a_commit_reaches_every_member_before_the_next_heartbeat(nursery, autojump_clock, monkeypatch, push):
    """New entries and an advanced commit index go out at the next tick, not with the next
    heartbeat (pysyncobj's batching): lease renewals and grants apply everywhere at once."""
    if not push:
        monkeypatch.setattr(RaftGroup, "push_entries", lambda self, before: None)
    c = Cluster(nursery)
    await c.start()
    gs = c.found()
    await until(lambda: c.leader() is not None)
    await trio.sleep(2.0)
    took = []
    for i in range(1, 6):
        await trio.sleep(0.137 * i)  # anywhere between two heartbeats
        t0 = trio.current_time()
        await c.leader().propose(("add", 1, "x"))
        await until(lambda i=i: all(g.state["n"] == i for g in gs), step=0.001)
        took.append(trio.current_time() - t0)
    if push:
        assert max(took) < c.timing.heartbeat / 2
    else:
        assert max(took) > c.timing.heartbeat
