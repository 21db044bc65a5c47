"""One Raft group member: pysyncobj's SyncObj behind a narrow interface, driven from trio.

pysyncobj runs with autoTick=False (no thread: the driver ticks it, beemeshd/consensus/driver.py),
useFork=False and no journal (in-memory log; compaction snapshots stay in memory too), dynamic
membership on. Its transport is `GroupTransport`, which hands every outgoing message to the
driver; the driver batches them per peer and delivers what arrives, checked, back into the group.

The group replicates one plain dict, `state`, changed only by `machine.apply(state, cmd, index)`
for committed commands. Snapshots pickle the SyncObj's attributes set *after* SyncObj.__init__:
that is `state` alone (everything else is set before, see __init__), so a snapshot is plain data
that beemeshd.consensus.codec.safe_loads can rebuild.

Node ids are "PEER_ID/INCARNATION": a restarted daemon comes back as a new member (added by the
leader), never as an old one with its votes and log forgotten — Raft's safety assumes a member
that voted or acknowledged an entry remembers it, and we keep no journal.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import trio
from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, replicated
from pysyncobj.transport import Transport

from beemeshd.consensus import clock as raft_clock
from beemeshd.consensus import codec
from beemeshd.consensus.codec import PeerNode, peer_of

log = logging.getLogger("beemeshd.consensus")

FAILURES = {v: k.lower() for k, v in vars(FAIL_REASON).items() if not k.startswith("_")}


class _ReappendIsBenign(logging.Filter):
    """pysyncobj logs CRITICAL "truncating already-applied log entries" whenever a follower gets
    entries again from an older position (a stale reset reply moved the leader's next index
    back, which pipelined heartbeats make routine): it truncates after the previous entry and
    appends the same entries again. Committed entries are in every later leader's log, so what
    comes back is identical — the simulator checks that every member applied the same command at
    every index. Demoted to DEBUG so that journald is not flooded with false alarms."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.CRITICAL and record.msg.startswith("truncating already-applied"):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger("beemeshd.consensus").isEnabledFor(logging.DEBUG)
        return True


logging.getLogger("pysyncobj.syncobj").addFilter(_ReappendIsBenign())


@dataclass(frozen=True)
class RaftTiming:
    """Timers, in seconds of the group's clock.

    Failure detection is per peer, not per group: peers that share any group exchange a frame
    every `pulse` (all groups' messages ride on it, see driver.py), and when the peer of a group's
    leader has been silent for `suspect`, its followers elect at once, one member at a time in an
    order that differs per group (the driver's "hurry"). A group without a leader (a new one) is
    hurried the same way. pysyncobj's own timers stay as the slow path: leaders heartbeat every
    `heartbeat` (they carry the commit index; what idle groups cost grows with it), election
    timeouts of `election_min`..`election_max` (more than three heartbeats, pysyncobj checks) catch
    what the pulse cannot see (a leader whose peer answers but whose group is stuck), and a
    partitioned leader steps down after `leader_fallback` (nothing here trusts is_leader for
    safety: leases do that). The driver ticks every `tick`: votes, proposals and new entries go
    out at once. `suspect` 0 turns hurrying off (failover then takes an election timeout)."""

    tick: float = 0.05
    heartbeat: float = 0.5
    election_min: float = 2.0
    election_max: float = 4.0
    leader_fallback: float = 4.0
    pulse: float = 0.15
    suspect: float = 0.4
    compact_entries: int = 2000  # in-memory log compaction: entries ...
    compact_seconds: float = 300.0  # ... or age

    def driver_args(self, rate: float = 1.0) -> dict:
        """The Driver's timers (`rate`: a simulated peer's clock rate). Frames go out every pulse,
        or every heartbeat if that is shorter: heartbeats that waited for a slower pulse would
        reach followers late, and with short election timeouts depose healthy leaders."""
        return {"tick": self.tick * rate, "poll": min(self.pulse, self.heartbeat) * rate,
                "suspect": self.suspect * rate, "hurry_step": self.hurry_step * rate}

    @property
    def hurry_step(self) -> float:
        """How long each member waits after the one ranked before it: long enough for that one's
        vote request to arrive (it rides on the next pulse at the latest)."""
        return 2 * min(self.pulse, self.heartbeat) + self.tick

    def conf(self, on_state_changed) -> SyncObjConf:
        return SyncObjConf(
            autoTick=False, useFork=False, journalFile=None, fullDumpFile=None,
            dynamicMembershipChange=True, appendEntriesUseBatch=True, commandsWaitLeader=True,
            appendEntriesPeriod=self.heartbeat, raftMinTimeout=self.election_min,
            raftMaxTimeout=self.election_max, leaderFallbackTimeout=self.leader_fallback,
            connectionTimeout=max(3.5, self.election_max), logCompactionMinEntries=self.compact_entries,
            logCompactionMinTime=self.compact_seconds, onStateChanged=on_state_changed)


class StateMachine(Protocol):
    """What a group replicates. `apply` must be deterministic and must not raise."""

    def initial_state(self) -> dict: ...
    def apply(self, state: dict, cmd: Any, index: int) -> Any: ...
    def check(self, cmd: Any) -> Any:
        """The command if it is well formed (plain data), else ValueError."""
    def may_forward(self, cmd: Any, sender_peer: str) -> bool:
        """Whether a member may hand this command to the leader for that peer."""
    def applied(self, cmd: Any, result: Any, index: int) -> None:
        """After a committed command was applied (on this member)."""
    def role_changed(self, leader: bool) -> None:
        """This member became leader (True) or stopped being it (False)."""
    def leader_changed(self, leader: str | None, term: int) -> None:
        """The leader this member knows of changed (checked after every tick)."""


class ProposalFailed(Exception):
    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


class GroupTransport(Transport):
    """pysyncobj's side of the driver: `send` queues, the driver delivers."""

    def __init__(self, driver, group_id: str, node_id: str):
        super().__init__(None, None, None)
        self.driver, self.group_id, self.node_id = driver, group_id, node_id

    @property
    def ready(self) -> bool:
        return True

    def send(self, node, message) -> bool:
        return self.driver.enqueue(self.group_id, self.node_id, node.id, message)

    def addNode(self, node) -> None:
        self.driver.member_added(self.group_id, node.id)

    def dropNode(self, node) -> None:
        self.driver.member_dropped(self.group_id, node.id)

    def destroy(self) -> None:
        self.driver.unregister(self.group_id)

    # the driver feeds these (names follow pysyncobj's)
    def deliver(self, node_id: str, message: dict) -> None:
        self._onMessageReceived(PeerNode(node_id), message)

    def connected(self, node_id: str, up: bool) -> None:
        (self._onNodeConnected if up else self._onNodeDisconnected)(PeerNode(node_id))


class RaftGroup(SyncObj):
    """A member of one group. Use it from the trio thread only (pysyncobj is not thread-safe)."""

    def __init__(self, group_id: str, node_id: str, members: list[str], machine: StateMachine, driver, *,
                 timing: RaftTiming = RaftTiming(), clock: Callable[[], float] | None = None,
                 rng: random.Random | None = None, passive: bool = False):
        # Attributes set before SyncObj.__init__ stay out of snapshots (it lists them as its own).
        self.group_id = group_id
        self.node_id = node_id
        self.machine = machine
        self.timing = timing
        self.clock = clock or driver.clock
        self.rng = rng or driver.rng
        # passive: a member that joins an existing group waits to be contacted by a member
        # before it reports anyone connected (and so before it can start an election)
        self.passive = passive
        self.connected_ids: set[str] = set()
        self.last_leader: str | None = None
        self.closed = False
        self.pushed: tuple | None = None  # (commit index, last log index) the followers were sent
        self.hurried: tuple | None = None  # the driver's (term, leader) it last hurried an election for
        # the driver's bookkeeping: tick it soon (something arrived or was proposed), connectivity
        # to refresh, when it last ticked, the member ids (cached: checked for every message)
        self.due = True
        self.reconnect = True
        self.ticked = -1e18
        self._member_ids: frozenset[str] | None = None
        self._transport = GroupTransport(driver, group_id, node_id)
        others = [PeerNode(m) for m in sorted(set(members)) if m != node_id]
        with raft_clock.using(self.clock, self.rng):
            super().__init__(PeerNode(node_id), others, timing.conf(self._state_changed),
                             transport=self._transport, nodeClass=PeerNode)
        self.state = machine.initial_state()  # the replicated state: the only thing snapshotted
        driver.register(self)

    # -- the narrow interface ---------------------------------------------------------------------
    @property
    def is_leader(self) -> bool:
        """This member believes it leads. Never proof: a partitioned leader believes it for
        `leader_fallback` seconds, but cannot commit anything."""
        return self._isLeader()

    @property
    def leader(self) -> str | None:
        node = self._getLeader()
        return node.id if node is not None else None

    @property
    def term(self) -> int:
        return self.raftCurrentTerm

    @property
    def members(self) -> list[str]:
        return sorted([n.id for n in self.otherNodes] + [self.node_id])

    @property
    def member_peers(self) -> list[str]:
        return sorted({peer_of(m) for m in self.members})

    async def propose(self, cmd, timeout: float = 2.0):
        """Replicate `cmd`; its result once committed and applied here. ProposalFailed otherwise
        (no leader, leader changed, timed out: the outcome may still be a commit later)."""
        return await self._call(lambda cb: self._command(cmd, callback=cb), timeout)

    async def add_member(self, node_id: str, timeout: float = 2.0) -> None:
        """On the leader: add a member (one change at a time; pysyncobj refuses overlapping ones)."""
        if not self.is_leader:
            raise ProposalFailed("not_leader")
        await self._call(lambda cb: self.addNodeToCluster(PeerNode(node_id), callback=cb), timeout)

    async def remove_member(self, node_id: str, timeout: float = 2.0) -> None:
        """On the leader: remove another member (a leader hands over first: transfer_leadership)."""
        if not self.is_leader or node_id == self.node_id:
            raise ProposalFailed("not_leader" if node_id != self.node_id else "request_denied")
        await self._call(lambda cb: self.removeNodeFromCluster(PeerNode(node_id), callback=cb), timeout)

    def transfer_leadership(self) -> bool:
        done = []
        self.due = True
        with raft_clock.using(self.clock, self.rng):
            self.transferLeadership(callback=lambda res, err: done.append(err))
        return done == [FAIL_REASON.SUCCESS]

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.destroy()

    # -- for the driver ---------------------------------------------------------------------------
    def member_ids(self) -> frozenset[str]:
        if self._member_ids is None:
            self._member_ids = frozenset(n.id for n in self.otherNodes)
        return self._member_ids

    def members_changed(self) -> None:
        self._member_ids = None
        self.reconnect = True

    def next_timer(self) -> float:
        """When pysyncobj next has something to do on its own: a leader's heartbeat, a follower's
        or candidate's election timeout (private attributes of the pinned pysyncobj 0.3.17)."""
        if self._SyncObj__raftState == 2:
            return self._SyncObj__newAppendEntriesTime
        return self._SyncObj__raftElectionDeadline

    def leaderless(self) -> bool:
        """A follower with no leader that has not voted in this term (so no election it knows of
        is under way): a new group, or one whose leader stepped down."""
        return (self._SyncObj__raftState == 0 and self._SyncObj__raftLeader is None
                and self._SyncObj__votedForNodeId is None)

    def following(self) -> str | None:
        """The leader this member follows (None when it is not a follower, or knows none)."""
        if self._SyncObj__raftState != 0 or self._SyncObj__raftLeader is None:
            return None
        return self._SyncObj__raftLeader.id

    def before_tick(self) -> tuple[float, int]:
        return self._SyncObj__newAppendEntriesTime, self._SyncObj__getCurrentLogIndex()

    def push_entries(self, before: tuple[float, int]) -> None:
        """After a tick on a leader: send new entries, or a commit index that advanced, now.
        pysyncobj (appendEntriesUseBatch) keeps both for its next heartbeat, which made every
        commit wait up to two heartbeats; with heartbeats slowed to keep idle groups cheap, lease
        renewals and grants would lag by a second. Everything proposed in one tick still travels
        together. `before`: before_tick(). If pysyncobj sent in the tick (its heartbeat time
        moved), that carried the new commit index but not the entries the tick appended after."""
        if self._SyncObj__raftState != 2:
            return
        due, last = before
        now = (self._SyncObj__raftCommitIndex, self._SyncObj__getCurrentLogIndex())
        sent = (now[0], last) if self._SyncObj__newAppendEntriesTime != due else self.pushed
        if now != sent:
            self._SyncObj__sendAppendEntries()
        self.pushed = now

    def elect_by(self, when: float) -> None:
        """Start an election at `when` at the latest (an earlier timer stays)."""
        if when < self._SyncObj__raftElectionDeadline:
            self._SyncObj__raftElectionDeadline = when

    # -- internals --------------------------------------------------------------------------------
    @replicated
    def _command(self, cmd):
        # pysyncobj increments raftLastApplied after this returns: this entry's index is one more
        index = self.raftLastApplied + 1
        result = self.machine.apply(self.state, cmd, index)
        try:
            self.machine.applied(cmd, result, index)
        except Exception:  # a bug in a listener must not stop the group
            log.exception("%s: listener failed after applying %r", self.group_id, cmd)
        return result

    def _state_changed(self, old: int, new: int) -> None:
        leader_now, leader_before = new == 2, old == 2  # pysyncobj's _RAFT_STATE.LEADER
        if leader_now != leader_before:
            try:
                self.machine.role_changed(leader_now)
            except Exception:
                log.exception("%s: role listener failed", self.group_id)

    async def _call(self, start, timeout: float):
        done = trio.Event()
        box: list = []

        def callback(result, error):
            box.append((result, error))
            done.set()

        with raft_clock.using(self.clock, self.rng):
            start(callback)
        self.due = True
        with trio.move_on_after(timeout):
            await done.wait()
        if not box:
            raise ProposalFailed("timeout")
        result, error = box[0]
        if error != FAIL_REASON.SUCCESS:
            raise ProposalFailed(FAILURES.get(error, str(error)))
        return result

    def check_entry(self, data: bytes) -> None:
        codec.unpickle_command(data, self.machine.check)

    def check_forward(self, data: bytes, sender_peer: str) -> None:
        if not data or data[0] != codec.REGULAR:
            raise codec.Rejected("consensusRefused", "only commands may be forwarded, not membership changes")
        cmd = codec.unpickle_command(data, self.machine.check)
        if not self.machine.may_forward(cmd, sender_peer):
            raise codec.Rejected("consensusRefused", f"{sender_peer} may not propose {cmd!r}")
