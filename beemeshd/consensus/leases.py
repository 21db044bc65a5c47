"""The lease rules (beemeshd/core/lease.py) run on one member of a StatefulSet's group.

`LeaseMachine` is the group's replicated state machine: the lease table, plus the member-local
memory the rules need (the grantor's `seen`, the holder's leases). `LeaseKeeper` is the trio
task that acts on it:

- as leader: grant each wanted ordinal to its wanted peer when the rules allow (free: at once;
  held by someone else: W after the last renewal this leader saw, W counted from its election);
- as holder: renew every held ordinal that is wanted here or still has a pod here (t_send noted
  on the holder clock before proposing), release an ordinal once its pod is gone and it is
  wanted elsewhere, and report the highest token in local fence files (the leader grants to
  no peer before its report: the table floor must be above it);
- for the pod controller (the agent in the daemon, a fake in the simulator): `may_run(o)` is
  the token under which ordinal o's pod may run now, or None — then it must not be started, and
  a running one must be stopped at once. `changed` fires whenever that may have changed.

Clocks are injected: `holder_clock` (CLOCK_BOOTTIME in the daemon) and `grantor_clock`
(CLOCK_MONOTONIC); the simulator gives each peer drifting clocks on virtual time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import trio

from beemeshd.consensus.raft import ProposalFailed, RaftGroup
from beemeshd.core import lease as L

log = logging.getLogger("beemeshd.leases")

# (kind, ordinal or None, peer or None, token or None, message)
EventSink = Callable[[str, int | None, str | None, int | None, str], None]


class LeaseMachine:
    """StateMachine for RaftGroup: the lease table and this member's view of it."""

    def __init__(self, peer: str, timing: L.Timing, holder_clock, grantor_clock, *, self_stop: bool = True,
                 on_event: EventSink | None = None, floor: int = 0, sealed: bool = False):
        self.peer = peer
        self.floor = floor  # the table's first floor: the same on every member (token_base)
        self.sealed = sealed  # a re-founded group: no grant before its seed
        self.timing = timing
        self.holder_clock = holder_clock
        self.grantor_clock = grantor_clock
        self.grantor = L.Grantor(timing)
        self.holder = L.Holder(peer, timing, self_stop=self_stop)
        self.group: RaftGroup | None = None
        self.on_event = on_event or (lambda *a: None)
        self.changed = trio.Event()
        self.leader: str | None = None
        self.term = 0

    def table(self) -> L.LeaseTable:
        return L.LeaseTable(self.group.state)

    # -- StateMachine ---------------------------------------------------------------------------
    def initial_state(self) -> dict:
        return L.new_state(self.floor, self.sealed)

    def apply(self, state: dict, cmd, index: int):
        return L.LeaseTable(state).apply(cmd, index)

    def check(self, cmd):
        return L.check_command(cmd)

    def may_forward(self, cmd, sender_peer: str) -> bool:
        """A follower may only hand over its own renewals, releases and reports: grants come from
        the leader's rules, never from a member's say-so (a deposed leader's stale grants too)."""
        return ((cmd[0] in (L.RENEW, L.RELEASE) and cmd[2] == sender_peer)
                or (cmd[0] == L.REPORT and cmd[1] == sender_peer))

    def applied(self, cmd, result, index: int) -> None:
        self.grantor.applied(cmd, self.grantor_clock())
        if cmd[0] == L.GRANT and result[0] == "ok":
            self.on_event("LeaseGranted", cmd[1], cmd[2], result[1], f"token {result[1]}")
        self.sync()

    def role_changed(self, leader: bool) -> None:
        if leader:
            self.grantor.became_leader(self.table(), self.grantor_clock())
        self._wake()

    def leader_changed(self, leader: str | None, term: int) -> None:
        self.leader, self.term = leader, term
        if leader is not None:
            self.on_event("LeaderChanged", None, leader, None, f"term {term}")
        self._wake()

    # -- the holder's view ----------------------------------------------------------------------
    def sync(self) -> None:
        granted, lost = self.holder.sync(self.table())
        for o, token in lost:
            lease = self.table().get(o)
            why = "released" if lease is None or lease.holder is None else f"now held by {lease.holder}"
            self.on_event("LeaseLost", o, self.peer, token, why)
        if granted or lost:
            self._wake()

    def may_run(self, ordinal: int, headroom: float = 0.0) -> int | None:
        return self.holder.may_run(ordinal, self.holder_clock(), headroom)

    def _wake(self) -> None:
        self.changed.set()
        self.changed = trio.Event()


class LeaseKeeper:
    """The trio side of one member: proposals on behalf of the rules, and expiry watching."""

    def __init__(self, machine: LeaseMachine, group: RaftGroup, *,
                 wanted: Callable[[], Mapping[int, str]], has_pod: Callable[[int], bool] = lambda o: False,
                 fence_floor: Callable[[], int] = lambda: 0, step: float = 0.1, propose_timeout: float = 2.0,
                 gate=None):
        self.m = machine
        self.group = group
        machine.group = group
        self.wanted = wanted  # ordinal -> peer that should run it (placement's view)
        self.has_pod = has_pod  # a pod of that ordinal exists here (running or stopping)
        self.fence_floor = fence_floor  # highest token in this peer's fence files for the workload
        self.step = step
        self.propose_timeout = propose_timeout
        self.gate = gate  # the simulator pauses a peer here
        self._inflight: set[tuple] = set()
        self._running: dict[int, int] = {}  # ordinal -> token this keeper last allowed (for LeaseLost)
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            while True:
                if self.gate is not None:
                    await self.gate()
                if not self.group.closed:
                    self.step_once()
                await trio.sleep(self.step)

    def step_once(self) -> None:
        m, table = self.m, self.m.table()
        wanted = dict(self.wanted())
        if self.group.is_leader:
            for cmd in m.grantor.grants(table, wanted, m.grantor_clock()):
                self._propose(("grant", cmd[1]), cmd)
        floor = self.fence_floor()
        if not table.reported(m.peer) or floor > table.state["floor"]:
            self._propose(("report",), L.report(m.peer, floor))
        keep = {o for o in m.holder.held if wanted.get(o) == m.peer or self.has_pod(o)}
        # A lease under a token below what this peer's fence files hold (a group created again
        # before the floor reached it) cannot start anything here: give it back for a new one.
        fenced = {o for o in m.holder.held if m.holder.token(o) < floor and not self.has_pod(o)}
        keep -= fenced
        for cmd in m.holder.due(m.holder_clock(), keep):
            self._propose(("renew", cmd[1]), cmd, renewal=True)
        for o in sorted(set(m.holder.held) - keep):
            self._propose(("release", o), L.release(o, m.peer, m.holder.token(o)))
        self._watch_expiry()

    def _watch_expiry(self) -> None:
        """LeaseLost for a lease that ran out here without the log saying so (partitioned)."""
        for o, token in list(self._running.items()):
            if self.m.may_run(o) != token:
                del self._running[o]
                if self.m.holder.token(o) == token:
                    self.m.on_event("LeaseLost", o, self.m.peer, token, "expired before a renewal committed")
        for o in self.m.holder.held:
            token = self.m.may_run(o)
            if token is not None:
                self._running[o] = token

    def _propose(self, key: tuple, cmd: tuple, renewal: bool = False) -> None:
        if key in self._inflight or self._nursery is None:
            if renewal:  # due() marked it as sent: undo, it goes with the next step
                self.m.holder.renewed(cmd[1], cmd[3], self.m.holder.held[cmd[1]].sending, False,
                                      self.m.holder_clock())
            return
        self._inflight.add(key)
        self._nursery.start_soon(self._propose_task, key, cmd, renewal)

    async def _propose_task(self, key: tuple, cmd: tuple, renewal: bool) -> None:
        sent_at = self.m.holder.held[cmd[1]].sending if renewal else None
        if key[0] == "release":
            self.m.holder.releasing(cmd[1], cmd[3])
        ok = False
        try:
            result = await self.group.propose(cmd, self.propose_timeout)
            ok = result == ("ok", cmd[3]) if renewal else result[0] == "ok"
            if not ok:
                log.debug("%s: %r refused: %s", self.group.group_id, cmd, result)
        except ProposalFailed as exc:
            log.debug("%s: %r failed: %s", self.group.group_id, cmd, exc.reason)
        finally:
            self._inflight.discard(key)
            if renewal:
                self.m.holder.renewed(cmd[1], cmd[3], sent_at, ok, self.m.holder_clock())
                self.m._wake()
            elif key[0] == "release":
                if ok:
                    self.m.holder.forget(cmd[1], cmd[3])
                else:  # still ours (or lost: then sync drops it): renew or release it again
                    self.m.holder.releasing(cmd[1], cmd[3], False)
