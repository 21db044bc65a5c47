"""StatefulSets on the mesh (issue 9): a consensus group per StatefulSet, leases with fencing
tokens, and never two copies of an ordinal.

Each StatefulSet gets a Raft group (beemeshd/consensus) among the peers its replicas are placed
on, topped up to `group_size` members; it lives as long as the workload (created on Deploy,
following placement, dissolved on Delete: its id is NAMESPACE/NAME@CREATED). The group
replicates the lease table of beemeshd/core/lease.py; this module wires it to the daemon:

- Members (who and which change next: beemeshd/core/groups.py). The founders — named by the
  Deploy's own decision, alike on every peer — create the group under member ids PEER/0. Any
  peer that should be a member later (a replica moved to it, a top-up, a restarted daemon) asks
  a member to join (signed request /beemesh/raft-join/1) under a fresh id; the leader adds it,
  then removes what is no longer wanted, one change at a time. A member id is never reused
  (stateful/groups.json): the groups keep no journal, and Raft assumes a member remembers its
  votes and its log.
- Pods (beemeshd/stateful_pods.py). The agent runs an ordinal's pod only while this peer holds
  its lease, past its fence file; stateful pods that may not run are stopped at once; a lease file
  per running pod lets the lease watchdog (a separate process) kill it if beemeshd cannot.
- Healing. The group's leader re-places an ordinal whose peer is gone once the lease wait has run
  out (placement leaves StatefulSets alone): an auction among live peers, then a "heal" decision.
- Views. `lease_of` (Get's Replica.lease) and `group_of` (Explain's group): a peer outside the
  group asks members (beemeshd/stateful_views.py); events LeaseGranted, LeaseLost and
  LeaderChanged on Watch, gossiped by the member each is about so that every peer's Watch shows
  them once (beemeshd/stateful_events.py); `counters` for GetInfo.
- Shutdown. A stopping daemon hands its ordinals over (a heal decision), stops their pods and
  releases their leases: they run elsewhere within seconds, not after the lease wait.
- History. Every start and stop of a stateful pod is logged as `lease history {json}`.

- Re-forming. A group that lost a majority of its members for good (two of three peers gone, or
  restarted at once) cannot elect a leader again. Its lowest live member founds it again as
  BASE#USEC once that majority is gone for good: proved (their peers joined under new ids, or
  answered a probe that they have no member under them) or, unless `Settings.refound_after` is
  0, assumed (declared dead by the failure detector for that long while this peer sees most of
  its mesh alive). The new table is sealed until its seed, which marks every ordinal as held by
  someone unknown above every token the old group could mint: the grantor waits W before any
  grant (beemeshd/stateful_refound.py). Safety argument and the case it cannot cover: README,
  "Re-forming a group".
"""

from __future__ import annotations

import itertools
import logging
import secrets
import time
from dataclasses import dataclass, field, replace
from functools import partial

import trio

from beemeshd import errors
from beemeshd.consensus import Driver, ProposalFailed, RaftGroup, RaftTiming
from beemeshd.consensus.leases import LeaseKeeper, LeaseMachine
from beemeshd.consensus.wire import MeshWire
from beemeshd.core import lease as L
from beemeshd.core.catalog import Decision, Key
from beemeshd.core.groups import (base_of, creating, desired_peers, founders, group_id, next_change, peer_of,
                                   refounded_at, refounder)
from beemeshd.stateful_events import GroupEvents
from beemeshd.stateful_files import StatefulFiles, boottime
from beemeshd.stateful_pods import PodGuard
from beemeshd.stateful_refound import PROTO_RAFT_JOIN, Refounding
from beemeshd.stateful_views import PROTO_LEASES, RemoteLeases

log = logging.getLogger("beemeshd.stateful")

MANAGE_INTERVAL = 0.5
JOIN_TTL = 30.0  # seconds a leader remembers a join request
ORPHAN_AFTER = 10.0  # seconds without a leader before a member asks whether it was removed


@dataclass
class Member:
    """This peer's member of one StatefulSet's group."""

    key: Key
    gid: str
    node_id: str
    group: RaftGroup
    machine: LeaseMachine
    keeper: LeaseKeeper
    scope: trio.CancelScope
    since: float
    leader_seen: float
    leader_hint: str | None = None
    changing: bool = False  # a membership change or a heal is in flight (leader)
    heal_tried: tuple | None = None
    seed_floor: int = 0  # a re-founded group's founder: the floor its seed sets ...
    seed_ordinals: frozenset = frozenset()  # ... and the ordinals the old table had


@dataclass
class Settings:
    lease: L.Timing = field(default_factory=L.Timing)
    raft: RaftTiming = field(default_factory=RaftTiming)
    group_size: int = 3
    # Re-form a group whose member majority the failure detector has declared dead for this long
    # (seconds; 0: only when their peers prove it by joining under new ids). See README.
    refound_after: float = 0.0  # off: proofs only (config consensus_refound_after_seconds)

    @property
    def start_headroom(self) -> float:
        """A pod is started only if its lease outlasts the start by this much (half the time
        between renewals: right after one, there is room; right before the next, there is not)."""
        return self.lease.renew_every / 2


class Stateful:
    def __init__(self, mesh, placement, agent, runtime, events, files: StatefulFiles, *,
                 settings: Settings = Settings(), holder_clock=boottime, grantor_clock=time.monotonic,
                 wall_clock=time.time, watchdog: list[str] | None = None):
        self.mesh, self.placement, self.agent, self.runtime, self.events = mesh, placement, agent, runtime, events
        self.files = files
        self.settings = settings
        self.peer_id = mesh.peer_id
        self.holder_clock, self.grantor_clock = holder_clock, grantor_clock
        self.wall_clock = wall_clock  # only for showing lease ends as wall time (Get)
        # member ids of this daemon's joins start with its start time: newer than any before
        self.driver = Driver(MeshWire(mesh), **settings.raft.driver_args(),
                             clock=grantor_clock, reachable=self._reachable,
                             incarnation=f"{int(time.time()):x}.{secrets.token_hex(3)}")
        self.members: dict[Key, Member] = {}
        self.guard = PodGuard(self, agent, runtime, files, watchdog)
        self.joins: dict[str, dict[str, tuple[str, float]]] = {}  # gid -> peer -> (node id, when)
        self.used = files.groups()  # gid -> member id this peer used last (never reused)
        self._ids = itertools.count(1)
        self._offsets: dict[str, float] = {}
        self._joining: set[Key] = set()
        self._nursery: trio.Nursery | None = None
        self.refounding = Refounding(self)  # groups that lost their majority for good
        self.remote = RemoteLeases(self)  # Get on a peer outside the group asks a member
        self.group_events = GroupEvents(self)  # Watch on a peer outside the group too
        mesh.handle(PROTO_RAFT_JOIN, self._handle_join)
        mesh.handle(PROTO_LEASES, self.remote.handle)

    # -- lifecycle --------------------------------------------------------------------------------
    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self.driver.run)
            await nursery.start(self.group_events.run)
            nursery.start_soon(self._manage_loop)
            await nursery.start(self.guard.run)
            task_status.started()

    async def shutdown(self, timeout: float = 10.0) -> None:
        """Before the daemon exits: stop this peer's stateful pods (no one would renew their
        leases) and release the leases, so the ordinals move as soon as the peer is seen gone
        instead of after the lease wait."""
        self.guard.stopping = True  # the agent starts no stateful pod from now on
        with trio.move_on_after(timeout):
            for m in list(self.members.values()):
                await self._hand_over(m)
            await self.guard.stop_all()
            async with trio.open_nursery() as n:
                for m in list(self.members.values()):
                    for o in list(m.machine.holder.held):
                        n.start_soon(self._release, m, o)

    async def _hand_over(self, m: Member) -> None:
        """Place the ordinals this peer holds elsewhere (a "heal" decision: the group grants them
        to their new peers as soon as the releases below commit)."""
        d = self.placement.catalog.entries.get(m.key)
        if d is None or d.deleted:
            return
        mine = [r for i, (r, p) in enumerate(d.assignments) if p == self.peer_id and i in m.machine.holder.held]
        if mine:
            try:
                await self._replace(d, mine, "its peer is shutting down", avoid=frozenset({self.peer_id}))
            except (errors.BeeMeshError, trio.BrokenResourceError) as exc:
                log.warning("could not hand %s over: %s", ", ".join(mine), exc)

    async def _release(self, m: Member, o: int) -> None:
        token = m.machine.holder.token(o)
        if token is not None:
            try:
                await m.group.propose(L.release(o, self.peer_id, token), 2.0)
            except ProposalFailed:
                pass

    # -- the agent's hooks (beemeshd/stateful_pods.py) --------------------------------------------
    def wanted(self, inner):
        return self.guard.wanted(inner)

    async def before_create(self, d) -> None:
        await self.guard.before_create(d)

    @property
    def pods(self):
        return self.guard.pods

    def token_now(self, key: Key, ordinal: int, pod: str | None = None) -> int | None:
        return self.guard.token_now(key, ordinal, pod)

    def _reachable(self) -> set[str]:
        return {p.peer_id for p in self.mesh.peers() if p.state in ("self", "alive", "suspect")}

    # -- views --------------------------------------------------------------------------------------
    def lease_of(self, key: Key, ordinal: int) -> dict | None:
        """Replica.lease: holder, token and end (µs since the epoch). The holder knows the end on
        its own clock; other members show when the lease could be granted again at the latest.
        Outside the group: what members answered when Get last asked (`refresh_leases`)."""
        m = self.members.get(key)
        if m is None:
            return self.remote.get(key, ordinal)
        lease = m.machine.table().get(ordinal)
        if lease is None or lease.holder is None:
            return None
        end = m.machine.holder.valid_until(ordinal) if lease.holder == self.peer_id else None
        if end is not None:
            wall = end + self._offset("holder", self.holder_clock)
        else:
            seen = m.machine.grantor.seen.get(ordinal)
            wall = (seen + self.settings.lease.regrant_after + self._offset("grantor", self.grantor_clock)
                    if seen is not None else self.wall_clock())
        return {"holder": lease.holder, "token": lease.token, "expiresUSec": int(wall * 1e6)}

    async def refresh_leases(self, name: str, namespace: str | None, kind: str | None) -> None:
        """Before Get and Explain reply: a peer outside the StatefulSet's group asks its members
        (leases and the group's view)."""
        await self.remote.refresh(name, namespace, kind)

    def _offset(self, name: str, clock) -> float:
        """Wall time minus `clock`, kept while it stays within a second: the same lease shows the
        same expiry in every view (status reports are re-sent only when a row changes)."""
        now = self.wall_clock() - clock()
        before = self._offsets.get(name)
        if before is None or abs(now - before) > 1.0:
            self._offsets[name] = before = now
        return before

    def group_of(self, key: Key) -> dict | None:
        """Explain's group: this member's view; outside the group, what members answered when
        Explain or Get last asked (`refresh_leases`)."""
        m = self.members.get(key)
        if m is None:
            return self.remote.group(key)
        leader = m.group.leader
        return {"members": m.group.member_peers, "leader": peer_of(leader) if leader else None, "term": m.group.term}

    def pending_message(self, key: Key, ordinal: int) -> str | None:
        m = self.members.get(key)
        if m is None:
            return "waiting to join its StatefulSet's consensus group"
        lease = m.machine.table().get(ordinal)
        if lease is not None and lease.holder not in (None, self.peer_id):
            wait = m.machine.grantor.wait_left(m.machine.table(), ordinal, self.grantor_clock())
            more = f"; it can be granted again in {wait:.0f} s" if wait else ""
            return f"waiting for its lease: {lease.holder} holds it (token {lease.token}){more}"
        return "waiting for its lease"

    def counters(self) -> dict:
        c = self.driver.counters
        return {"consensusRejected": sum(v for k, v in c.items() if k != "consensusErrors")}

    def _event(self, key: Key, gid: str, kind: str, ordinal, peer, token, message) -> None:
        self.group_events.local(key, gid, kind, ordinal, peer, token, message)  # Watch, here and elsewhere
        self.agent.poke()

    # -- groups -------------------------------------------------------------------------------------
    async def _manage_loop(self) -> None:
        while True:
            try:
                await self.manage_once()
            except (errors.BeeMeshError, trio.BrokenResourceError) as exc:
                log.warning("stateful: %s", exc)
            await trio.sleep(MANAGE_INTERVAL)

    async def manage_once(self) -> None:
        live = {d.key: d for d in self.placement.catalog.live() if d.key[1] == "StatefulSet"}
        for key, m in list(self.members.items()):
            d = live.get(key)
            if (d is None or group_id(d) != base_of(m.gid)) and not self.guard.has_pods(key):
                self._close(m, forget=True)
        alive = self.placement.alive()
        self.refounding.note_down(alive)
        for key, d in live.items():
            m = self.members.get(key)
            if m is not None and base_of(m.gid) != group_id(d):
                continue  # the old group's pods are still stopping
            if key in self._joining:
                continue
            if m is None:
                size = self.settings.group_size
                # a founder founds even if no longer among the desired peers (bid order and distance
                # differ in larger meshes): without it the founders' group has no majority
                if (self.peer_id in desired_peers(d, await self._candidates(key, alive), size)
                        or self.guard.has_pods(key)
                        or (creating(d) and self.peer_id in founders(d, size) and group_id(d) not in self.used)):
                    self._joining.add(key)
                    self._nursery.start_soon(self._found_or_join, d)
                continue
            now = self.grantor_clock()
            if m.group.leader is not None:
                m.leader_seen = now
            if m.group.passive or now - m.leader_seen > ORPHAN_AFTER:
                if not m.group.passive and refounder(m.group.members, m.node_id, self.refounding.gone(m)):
                    self.refounding.refound(m, d)
                    continue
                self._joining.add(key)
                self._nursery.start_soon(self._ask_to_join, m, d)
            if m.group.is_leader and not m.changing:
                m.changing = True
                self._nursery.start_soon(self._lead, m, d, alive)

    def _new_member(self, d: Decision, node_id: str, members: list[str], passive: bool,
                    gid: str | None = None) -> Member:
        key, gid = d.key, gid or group_id(d)
        self.used[gid] = node_id
        self.files.set_group(gid, node_id)  # before it can vote: never reused, even after a crash
        again = refounded_at(gid)  # a re-founded group: its own floor, sealed until its seed
        machine = LeaseMachine(self.peer_id, self.settings.lease, self.holder_clock, self.grantor_clock,
                               on_event=partial(self._event, key, gid), sealed=again is not None,
                               floor=L.token_base(d.created_usec if again is None else again))
        group = RaftGroup(gid, node_id, members, machine, self.driver, timing=self.settings.raft, passive=passive)
        keeper = LeaseKeeper(machine, group, wanted=partial(self._wanted_ordinals, key),
                             has_pod=partial(self.guard.has_pod, key),
                             fence_floor=partial(self.files.fence_floor, key[0], key[2]))
        scope = trio.CancelScope()
        now = self.grantor_clock()
        m = Member(key, gid, node_id, group, machine, keeper, scope, since=now, leader_seen=now)
        self.members[key] = m
        self._nursery.start_soon(self._run_keeper, m)
        log.info("%s group %s as %s with %s", "joining" if passive else "founding", gid, node_id, ", ".join(members))
        return m

    async def _run_keeper(self, m: Member) -> None:
        with m.scope:
            await m.keeper.run()

    def _close(self, m: Member, forget: bool) -> None:
        log.info("leaving group %s", m.gid)
        m.scope.cancel()
        m.group.close()
        if self.members.get(m.key) is m:
            del self.members[m.key]
        if forget:  # the workload is gone: every group it had
            for gid in [g for g in self.used if base_of(g) == base_of(m.gid)]:
                self.used.pop(gid, None)
                self.files.set_group(gid, None)
            self.refounding.retired.pop(base_of(m.gid), None)

    async def _found_or_join(self, d: Decision) -> None:
        try:
            gid = group_id(d)
            size = self.settings.group_size
            if creating(d) and gid not in self.used and self.peer_id in founders(d, size):
                self._new_member(d, f"{self.peer_id}/0", [f"{p}/0" for p in founders(d, size)], passive=False)
                return
            node = f"{self.peer_id}/{self.driver.incarnation}-{next(self._ids)}"
            reply = await self._join_request(d, node, None)
            if reply is not None and d.key not in self.members and node not in self.refounding.disowned:
                self._new_member(d, node, reply["members"], passive=True, gid=reply["group"])
        finally:
            self._joining.discard(d.key)

    async def _ask_to_join(self, m: Member, d: Decision) -> None:
        try:
            reply = await self._join_request(d, m.node_id, m.leader_hint)
            if reply is not None and reply["group"] != m.gid and self.members.get(m.key) is m:
                log.info("group %s was founded again as %s: leaving the old one to join it", m.gid, reply["group"])
                self._close(m, forget=False)
            elif reply is not None and not m.group.passive and m.node_id not in reply["members"]:
                log.info("removed from group %s: leaving it (joining again if still wanted)", m.gid)
                self._close(m, forget=False)
            elif not m.group.passive and self.members.get(m.key) is m:
                await self.refounding.probe(m)  # which ids of live peers are gone for good
        finally:
            self._joining.discard(d.key)

    async def _join_request(self, d: Decision, node: str, hint: str | None) -> dict | None:
        """Ask a member about the group (and to be added): the leader hint first, then the founders
        and the peers that should be members. The first member's answer, or None."""
        m = self.members.get(d.key)
        targets = [hint] if hint else []
        targets += founders(d, self.settings.group_size) + desired_peers(d, self.placement.alive(),
                                                                          self.settings.group_size)
        if m is not None:
            targets += m.group.member_peers
        seen, asked = set(), 0
        for peer in targets:
            if peer in seen or peer == self.peer_id or asked >= 4:
                continue
            seen.add(peer)
            asked += 1
            try:
                # a member asks about its own group; a peer without one about the current one
                ask = {"group": m.gid, "node": node, "member": True} if m is not None else {"group": group_id(d),
                                                                                           "node": node}
                reply = await self.mesh.request(peer, PROTO_RAFT_JOIN, ask, 1.0)
                members = [str(x) for x in reply.get("members", [])]
                leader = reply.get("leader")
                gid = reply.get("group", group_id(d))
                if not isinstance(gid, str) or base_of(gid) != group_id(d):
                    raise ValueError(f"answered for group {gid!r}")
            except Exception as exc:  # unreachable, not a member: ask the next one
                log.debug("join %s via %s: %s", group_id(d), peer, exc)
                continue
            if not members:
                continue
            if m is not None:
                m.leader_hint = peer_of(leader) if isinstance(leader, str) and leader else None
            return {"members": members, "leader": leader, "group": gid}
        return None

    async def _handle_join(self, env) -> dict:
        p = env.payload
        gid, node = p.get("group"), p.get("node")
        if isinstance(gid, str) and isinstance(p.get("probe"), str):
            return self.refounding.answer_probe(gid, p["probe"])
        if not isinstance(gid, str) or not isinstance(node, str) or not node.startswith(f"{env.sender}/"):
            raise ValueError("a peer joins as itself: {group, node: PEER/ID}")
        m = next((x for x in self.members.values() if base_of(x.gid) == base_of(gid)), None)
        if m is None or m.group.passive:
            # a joiner no member has contacted yet knows the membership only from an answer like
            # this one, maybe of a generation since re-founded: two restarted members of an old
            # group would keep sending each other to it instead of to the survivor's new group
            return {"members": [], "leader": None}
        member = p.get("member") is True  # asked by a member of (some generation of) the group
        if not member:  # a peer joins afresh only without a member: any id it had here is gone for good
            for old in m.group.members:
                if peer_of(old) == env.sender and old != node:
                    self.refounding.retired.setdefault(base_of(gid), set()).add(old)
        if m.group.is_leader and node not in m.group.members and (not member or gid == m.gid):
            self.joins.setdefault(m.gid, {})[env.sender] = (node, self.grantor_clock())
        return {"members": m.group.members, "leader": m.group.leader, "group": m.gid}

    def _wanted_ordinals(self, key: Key) -> dict[int, str]:
        """Where placement wants each ordinal, as far as a lease can be granted there: to a peer
        the mesh still sees (a lease granted to a dead peer would only add a wait to its heal)."""
        d = self.placement.catalog.entries.get(key)
        if d is None or d.deleted:
            return {}
        alive = set(self.placement.alive())
        return {i: p for i, (_, p) in enumerate(d.assignments) if p is not None and p in alive}

    # -- the leader's duties ------------------------------------------------------------------------
    async def _lead(self, m: Member, d: Decision, alive: list[str]) -> None:
        try:
            if m.machine.table().sealed:  # a re-founded group: its seed before anything else
                await m.group.propose(L.seed(m.seed_floor, m.seed_ordinals | set(range(len(d.assignments)))), 2.0)
            elif not await self._change_members(m, d, alive):
                await self._heal(m, d, alive)
        except ProposalFailed as exc:
            log.debug("%s: leader duty failed: %s", m.gid, exc.reason)
        finally:
            m.changing = False

    async def _candidates(self, key: Key, alive: list[str]) -> list[str]:
        """The peers a group's desired members are drawn from (nearest to the key first): the alive
        ones in a full view; in a partial one the key's nearest peers as looked up, since tables
        differ from peer to peer and one lacking the nearer peers took itself for a member."""
        if not self.placement.partial():
            return alive
        return await self.placement.nearest(key, self.settings.group_size)

    async def _change_members(self, m: Member, d: Decision, alive: list[str]) -> bool:
        """At most one membership change (beemeshd/core/groups.py decides); True if one was made."""
        g, size = m.group, self.settings.group_size
        table = m.machine.table()
        holders = {lease.holder for _, lease in table.items() if lease.holder not in (None, L.UNKNOWN)}
        keep = set(desired_peers(d, await self._candidates(d.key, alive), size)) | holders
        now = self.grantor_clock()
        joins = {p: n for p, (n, t) in self.joins.get(m.gid, {}).items() if now - t < JOIN_TTL}
        change = next_change(g.members, m.node_id, keep, joins, set(alive), size)
        if change is None:
            return False
        op, node = change
        log.info("%s: %s %s", m.gid, op, node)
        if op == "add":
            await g.add_member(node)
        elif op == "remove":
            await g.remove_member(node)
        else:
            g.transfer_leadership()  # a leader cannot remove itself: the next one will
        return True

    async def _heal(self, m: Member, d: Decision, alive: list[str]) -> None:
        """Re-place ordinals whose peer is gone, once their lease cannot be held any more."""
        table, now = m.machine.table(), self.grantor_clock()
        lost = [r for i, (r, p) in enumerate(d.assignments)
                if (p is None or p not in alive) and m.machine.grantor.wait_left(table, i, now) == 0]
        if not lost:
            return
        attempt = (d.order(), tuple(alive))
        if m.heal_tried == attempt:
            return
        m.heal_tried = attempt
        await self._replace(d, lost, "is gone and its lease ran out")

    async def _replace(self, d: Decision, lost: list[str], why: str, avoid: frozenset = frozenset()) -> None:
        """An auction for `lost` replicas among the live peers, then a "heal" decision (what
        placement's healer does for stateless replicas; it leaves StatefulSets to us)."""
        pl = self.placement
        w = pl.workload(d)
        held: dict[str, int] = {}
        for r, p in d.assignments:
            if r not in lost and p is not None:
                held[p] = held.get(p, 0) + 1
        placed, rules, bids, declined = await pl._auction(w, lost, held, avoid=avoid)
        if not any(placed.values()):
            return
        old = dict(d.assignments)
        all_rules = dict(d.rules)
        for r in lost:
            all_rules[r] = f"re-placed ({f'peer {old[r]} {why}' if old.get(r) else 'was unplaced'}): {rules.get(r, '')}"
        healed = replace(d, assignments=tuple((r, placed.get(r) if r in lost else p) for r, p in d.assignments),
                         rules=tuple(all_rules.items()), bids=tuple(bids), declined=tuple(declined),
                         origin=self.peer_id, decided_usec=time.time_ns() // 1000, reason="heal",
                         revision=d.revision + 1)
        log.info("re-placing %s of %s/%s: %s", ", ".join(lost), d.key[0], d.key[2],
                 ", ".join(f"{r}->{placed.get(r)}" for r in lost))
        await pl.commit(healed)
