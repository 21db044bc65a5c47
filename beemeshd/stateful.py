"""StatefulSets on the mesh (issue 9): a consensus group per StatefulSet, leases with fencing
tokens, and never two copies of an ordinal.

Each StatefulSet gets a Raft group (beemeshd/consensus) among the peers its replicas are placed
on, topped up to `group_size` members; it lives as long as the workload (created on Deploy,
following placement, dissolved on Delete: its id is NAMESPACE/NAME@CREATED). The group
replicates the lease table of beemeshd/core/lease.py; this module wires it to the daemon:

- Members. The group is founded by the peers of the Deploy's own decision (`creating`): its
  replicas' peers, then its best other bidders, then peers that declined (all computed alike by
  every peer holding that decision), under member ids PEER/0. Any peer that should be a member
  later — a replica moved to it, a top-up, a daemon restarted — asks a member to join (signed
  request /beemesh/raft-join/1) under a fresh id PEER/INCARNATION-N; the leader adds it (one
  change at a time), then removes members no longer wanted: an older id of a restarted peer,
  peers neither wanted nor holding a lease (while the group stays at `group_size`; a leader that
  should go hands leadership over first). A member id is never reused (stateful/groups.json):
  the groups keep no journal, and Raft assumes a member remembers its votes and its log.
- Pods. The agent runs an ordinal's pod only while this peer holds its lease: `wanted()` filters
  placement's wishes, `before_create()` checks it again just before the create (with
  Settings.start_headroom to spare), checks the fence file (refusing a token lower than the one
  the ordinal last ran under here) and writes the new one, and the enforcement loop stops at once every stateful
  pod whose lease is gone or about to go. A lease file per running pod lets the lease watchdog
  (a separate process) kill it if beemeshd is not around to.
- Healing. The group's leader re-places an ordinal whose peer is gone once the lease wait has run
  out (placement leaves StatefulSets alone): an auction among live peers, then a "heal" decision.
- Views. `lease_of` (Get's Replica.lease), `group_of` (Explain's group), events LeaseGranted,
  LeaseLost and LeaderChanged on Watch; `counters` for GetInfo.
- History. Every start (create issued) and stop (pod gone) of a stateful pod is logged as one line
  `lease history {json}` on CLOCK_MONOTONIC, which beemeshd.core.history_check can judge.

A group that lost a majority of its members for good (two of three peers gone, or restarted at
once) cannot elect a leader: its leases run out and its ordinals stay stopped until it is deleted
and deployed again (tokens stay monotonic through the fence files). Re-founding it automatically
cannot be made safe without a second consensus (the lost members might only be partitioned away).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from functools import partial

import trio

from beemeshd import errors
from beemeshd.consensus import Driver, ProposalFailed, RaftGroup, RaftTiming
from beemeshd.consensus.codec import peer_of
from beemeshd.consensus.leases import LeaseKeeper, LeaseMachine
from beemeshd.consensus.wire import MeshWire
from beemeshd.core import lease as L
from beemeshd.core import render
from beemeshd.core.catalog import Decision, Key, distance
from beemeshd.events import make_event
from beemeshd.runtime.base import RuntimeFailure
from beemeshd.stateful_files import StatefulFiles, boottime

log = logging.getLogger("beemeshd.stateful")

PROTO_RAFT_JOIN = "/beemesh/raft-join/1"
ENFORCE_INTERVAL = 0.2
MANAGE_INTERVAL = 0.5
JOIN_TTL = 30.0  # seconds a leader remembers a join request
ORPHAN_AFTER = 10.0  # seconds without a leader before a member asks whether it was removed


def group_id(d: Decision) -> str:
    return f"{d.key[0]}/{d.key[2]}@{d.created_usec}"


def creating(d: Decision) -> bool:
    """Whether `d` is the decision that created this incarnation of the workload (placement stamps
    its creation and decision times together; any later decision — scale, heal — needs an auction
    in between). Only the peers holding that decision found the group, all with the same list."""
    return d.revision == 0 and 0 <= d.decided_usec - d.created_usec < 1000


def founders(d: Decision, size: int) -> list[str]:
    """The founding members, from the decision that created the workload: every peer a replica
    went to, then the other bidders best first, then peers that declined (they were alive)."""
    out: list[str] = []
    for _, p in d.assignments:
        if p is not None and p not in out:
            out.append(p)
    extra = [b.get("peer") for b in d.bids] + [p for p, _ in d.declined]
    for p in extra:
        if len(out) >= size:
            break
        if isinstance(p, str) and p not in out:
            out.append(p)
    return out


def desired_peers(d: Decision, alive: list[str], size: int) -> list[str]:
    """Who should be a member now: the replicas' peers, topped up with the live peers closest to
    the workload (XOR distance, as for manifest holders: stable while the mesh is)."""
    out = []
    for _, p in d.assignments:
        if p is not None and p not in out:
            out.append(p)
    for p in sorted(set(alive) - set(out), key=lambda p: distance(d.key, p)):
        if len(out) >= size:
            break
        out.append(p)
    return out


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


@dataclass
class LocalPod:
    key: Key
    ordinal: int
    token: int | None
    stopping: bool = False
    deadline: float | None = None  # what the lease file says (watchdog)
    adopted: bool = False


@dataclass
class Settings:
    lease: L.Timing = field(default_factory=L.Timing)
    raft: RaftTiming = field(default_factory=RaftTiming)
    group_size: int = 3

    @property
    def start_headroom(self) -> float:
        """A pod is started only if its lease outlasts the start by this much (half the time
        between renewals: right after one, there is room; right before the next, there is not)."""
        return self.lease.renew_every / 2


class Stateful:
    def __init__(self, mesh, placement, agent, runtime, events, files: StatefulFiles, *,
                 settings: Settings = Settings(), holder_clock=boottime, grantor_clock=time.monotonic,
                 watchdog: list[str] | None = None):
        self.mesh, self.placement, self.agent, self.runtime, self.events = mesh, placement, agent, runtime, events
        self.files = files
        self.settings = settings
        self.peer_id = mesh.peer_id
        self.holder_clock, self.grantor_clock = holder_clock, grantor_clock
        self.driver = Driver(MeshWire(mesh), tick=settings.raft.tick, clock=grantor_clock, reachable=self._reachable)
        self.members: dict[Key, Member] = {}
        self.pods: dict[str, LocalPod] = {}  # stateful pods of this peer, by pod name
        self.joins: dict[str, dict[str, tuple[str, float]]] = {}  # gid -> peer -> (node id, when)
        self.used = files.groups()  # gid -> member id this peer used last (never reused)
        self.watchdog = watchdog  # argv prefix of the lease watchdog (None: none, e.g. tests)
        self._watchdog_proc = None
        self._ids = itertools.count(1)
        self._runnable: set[tuple[Key, int]] = set()
        self._removed: set[str] = set()  # pods we removed that the agent may still list
        self._joining: set[Key] = set()
        self._nursery: trio.Nursery | None = None
        mesh.handle(PROTO_RAFT_JOIN, self._handle_join)

    # -- lifecycle --------------------------------------------------------------------------------
    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self.driver.run)
            nursery.start_soon(self._manage_loop)
            nursery.start_soon(self._enforce_loop)
            task_status.started()

    async def shutdown(self, timeout: float = 10.0) -> None:
        """Before the daemon exits: stop this peer's stateful pods (no one would renew their
        leases) and release the leases, so the ordinals move at once instead of after the wait."""
        with trio.move_on_after(timeout):
            for name, p in list(self.pods.items()):
                await self._stop(name, p, "beemeshd is stopping")
            async with trio.open_nursery() as n:
                for m in list(self.members.values()):
                    for o in list(m.machine.holder.held):
                        n.start_soon(self._release, m, o)

    async def _release(self, m: Member, o: int) -> None:
        token = m.machine.holder.token(o)
        if token is not None:
            try:
                await m.group.propose(L.release(o, self.peer_id, token), 2.0)
            except ProposalFailed:
                pass

    def _reachable(self) -> set[str]:
        return {p.peer_id for p in self.mesh.peers() if p.state in ("self", "alive", "suspect")}

    # -- the agent's hooks ------------------------------------------------------------------------
    def wanted(self, inner):
        """Filter placement's wishes: a stateful ordinal runs only under a lease."""
        for record in inner():
            w, generation, replicas = record
            if not w.is_stateful:
                yield record
                continue
            names = w.replica_names()
            keep = [r for r in replicas if r in names and self._may_run(w.key, names.index(r), w.namespace, r)]
            yield w, generation, keep

    def _may_run(self, key: Key, ordinal: int, namespace: str, replica: str) -> bool:
        m = self.members.get(key)
        if m is None:
            return False
        pod = render.pod_name(namespace, replica)
        if pod in self.agent.observed or pod in self.pods:
            return self.token_now(key, ordinal, pod) is not None
        return m.machine.may_run(ordinal, self.settings.start_headroom) is not None

    def token_now(self, key: Key, ordinal: int, pod: str | None = None) -> int | None:
        """The token under which the ordinal may run here now (None: it must not)."""
        m = self.members.get(key)
        token = m.machine.may_run(ordinal) if m is not None else None
        if token is None and pod is not None and m is None:
            # right after a restart, before this peer is back in the group: the lease file the
            # previous daemon wrote (same boot, CLOCK_BOOTTIME) still proves the lease
            doc = self.files.lease(pod)
            if doc is not None and self.holder_clock() < float(doc["deadline"]) - self.settings.lease.stop_margin / 2:
                token = int(doc["token"])
        return token

    async def before_create(self, d) -> None:
        """The last check before the agent creates a pod (RuntimeFailure refuses it)."""
        w = d.workload
        if not w.is_stateful:
            return
        m = self.members.get(w.key)
        token = m.machine.may_run(d.ordinal, self.settings.start_headroom) if m is not None else None
        if token is None:
            raise RuntimeFailure(f"{d.replica} holds no lease here (yet)")
        fence = self.files.fence(w.namespace, w.name, d.ordinal)
        if fence > token:  # the keeper raises the group's floor to it; the next grant beats it
            raise RuntimeFailure(f"{d.replica} is fenced: it last ran here under token {fence}, "
                                 f"the lease now has {token}")
        valid_until = m.machine.holder.valid_until(d.ordinal)
        deadline = valid_until - self.settings.lease.stop_margin / 2
        await trio.to_thread.run_sync(self._persist_start, w, d, token, deadline)
        self.pods[d.pod] = LocalPod(w.key, d.ordinal, token, deadline=deadline)
        self._history("start", w.key, d.ordinal, token)
        self._ensure_watchdog()

    def _persist_start(self, w, d, token: int, deadline: float) -> None:
        self.files.set_fence(w.namespace, w.name, d.ordinal, token)
        self.files.write_lease(d.pod, deadline, token, f"{w.namespace}/{d.replica}", self.peer_id)

    # -- views --------------------------------------------------------------------------------------
    def lease_of(self, key: Key, ordinal: int) -> dict | None:
        """Replica.lease: holder, token and end (µs since the epoch). The holder knows the end on
        its own clock; other members show when the lease could be granted again at the latest."""
        m = self.members.get(key)
        if m is None:
            return None
        lease = m.machine.table().get(ordinal)
        if lease is None or lease.holder is None:
            return None
        end = m.machine.holder.valid_until(ordinal) if lease.holder == self.peer_id else None
        if end is not None:
            left = end - self.holder_clock()
        else:
            seen = m.machine.grantor.seen.get(ordinal)
            left = (seen + self.settings.lease.regrant_after - self.grantor_clock()) if seen is not None else 0.0
        return {"holder": lease.holder, "token": lease.token, "expiresUSec": int((time.time() + left) * 1e6)}

    def group_of(self, key: Key) -> dict | None:
        m = self.members.get(key)
        if m is None:
            return None
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

    def _event(self, key: Key, kind: str, ordinal, peer, token, message) -> None:
        name = key[2]
        self.events.publish(make_event(kind, namespace=key[0], name=name,
                                       replica=f"{name}-{ordinal}" if ordinal is not None else None,
                                       peer=peer, message=message))
        self.agent.poke()

    def _history(self, kind: str, key: Key, ordinal: int, token: int | None) -> None:
        line = {"t": time.monotonic(), "ordinal": f"{key[0]}/{key[2]}-{ordinal}", "peer": self.peer_id,
                "token": token, "kind": kind}
        log.info("lease history %s", json.dumps(line))

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
            if (d is None or group_id(d) != m.gid) and not self._has_pods(key):
                self._close(m, forget=True)
        alive = self.placement.alive()
        for key, d in live.items():
            m = self.members.get(key)
            if m is not None and m.gid != group_id(d):
                continue  # the old group's pods are still stopping
            if key in self._joining:
                continue
            if m is None:
                if self.peer_id in desired_peers(d, alive, self.settings.group_size) or self._has_pods(key):
                    self._joining.add(key)
                    self._nursery.start_soon(self._found_or_join, d)
                continue
            now = self.grantor_clock()
            if m.group.leader is not None:
                m.leader_seen = now
            if m.group.passive or now - m.leader_seen > ORPHAN_AFTER:
                self._joining.add(key)
                self._nursery.start_soon(self._ask_to_join, m, d)
            if m.group.is_leader and not m.changing:
                m.changing = True
                self._nursery.start_soon(self._lead, m, d, alive)

    def _has_pods(self, key: Key) -> bool:
        return bool(self.agent.pods_of(key)) or any(p.key == key for p in self.pods.values())

    def _new_member(self, d: Decision, node_id: str, members: list[str], passive: bool) -> Member:
        key, gid = d.key, group_id(d)
        self.used[gid] = node_id
        self.files.set_group(gid, node_id)  # before it can vote: never reused, even after a crash
        machine = LeaseMachine(self.peer_id, self.settings.lease, self.holder_clock, self.grantor_clock,
                               on_event=partial(self._event, key), floor=L.token_base(d.created_usec))
        group = RaftGroup(gid, node_id, members, machine, self.driver, timing=self.settings.raft, passive=passive)
        keeper = LeaseKeeper(machine, group, wanted=partial(self._wanted_ordinals, key),
                             has_pod=partial(self._has_pod, key),
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
        if forget:
            self.used.pop(m.gid, None)
            self.files.set_group(m.gid, None)

    async def _found_or_join(self, d: Decision) -> None:
        try:
            gid = group_id(d)
            size = self.settings.group_size
            if creating(d) and gid not in self.used and self.peer_id in founders(d, size):
                self._new_member(d, f"{self.peer_id}/0", [f"{p}/0" for p in founders(d, size)], passive=False)
                return
            node = f"{self.peer_id}/{self.driver.incarnation}-{next(self._ids)}"
            reply = await self._join_request(d, node, None)
            if reply is not None and d.key not in self.members:
                self._new_member(d, node, reply["members"], passive=True)
        finally:
            self._joining.discard(d.key)

    async def _ask_to_join(self, m: Member, d: Decision) -> None:
        try:
            reply = await self._join_request(d, m.node_id, m.leader_hint)
            if reply is not None and not m.group.passive and m.node_id not in reply["members"]:
                log.info("removed from group %s: leaving it (joining again if still wanted)", m.gid)
                self._close(m, forget=False)
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
                reply = await self.mesh.request(peer, PROTO_RAFT_JOIN, {"group": group_id(d), "node": node}, 1.0)
                members = [str(x) for x in reply.get("members", [])]
                leader = reply.get("leader")
            except Exception as exc:  # unreachable, not a member: ask the next one
                log.debug("join %s via %s: %s", group_id(d), peer, exc)
                continue
            if not members:
                continue
            if m is not None:
                m.leader_hint = peer_of(leader) if isinstance(leader, str) and leader else None
            return {"members": members, "leader": leader}
        return None

    async def _handle_join(self, env) -> dict:
        p = env.payload
        gid, node = p.get("group"), p.get("node")
        if not isinstance(gid, str) or not isinstance(node, str) or not node.startswith(f"{env.sender}/"):
            raise ValueError("a peer joins as itself: {group, node: PEER/ID}")
        m = next((x for x in self.members.values() if x.gid == gid), None)
        if m is None:
            return {"members": [], "leader": None}
        if m.group.is_leader and node not in m.group.members:
            self.joins.setdefault(gid, {})[env.sender] = (node, self.grantor_clock())
        return {"members": m.group.members, "leader": m.group.leader}

    def _wanted_ordinals(self, key: Key) -> dict[int, str]:
        d = self.placement.catalog.entries.get(key)
        if d is None or d.deleted:
            return {}
        return {i: p for i, (_, p) in enumerate(d.assignments) if p is not None}

    def _has_pod(self, key: Key, ordinal: int) -> bool:
        return any(p.key == key and p.ordinal == ordinal for p in self.pods.values())

    # -- the leader's duties ------------------------------------------------------------------------
    async def _lead(self, m: Member, d: Decision, alive: list[str]) -> None:
        try:
            if not await self._change_members(m, d, alive):
                await self._heal(m, d, alive)
        except ProposalFailed as exc:
            log.debug("%s: leader duty failed: %s", m.gid, exc.reason)
        finally:
            m.changing = False

    async def _change_members(self, m: Member, d: Decision, alive: list[str]) -> bool:
        """At most one membership change; True if one was made."""
        g, size = m.group, self.settings.group_size
        config = g.members
        table = m.machine.table()
        holders = {lease.holder for _, lease in table.items() if lease.holder not in (None, L.UNKNOWN)}
        keep = set(desired_peers(d, alive, size)) | holders
        now = self.grantor_clock()
        pending = {p: n for p, (n, t) in self.joins.get(m.gid, {}).items() if now - t < JOIN_TTL}
        for peer, node in sorted(pending.items()):
            if peer in keep and node not in config:
                log.info("%s: adding %s", m.gid, node)
                await g.add_member(node)
                return True
        by_peer: dict[str, list[str]] = {}
        for n in config:
            by_peer.setdefault(peer_of(n), []).append(n)
        for peer, nodes in sorted(by_peer.items()):
            if len(nodes) > 1:  # a restarted peer joined again: its old id is gone for good
                newest = m.node_id if peer == self.peer_id else pending.get(peer)
                for n in nodes:
                    if newest in nodes and n != newest:
                        log.info("%s: removing %s (replaced by %s)", m.gid, n, newest)
                        await g.remove_member(n)
                        return True
        if len(config) > size:
            extra = sorted((peer_of(n) in alive, n) for n in config if peer_of(n) not in keep)
            for _, n in extra:
                if n == m.node_id:
                    g.transfer_leadership()  # a leader cannot remove itself: the next one will
                    return True
                log.info("%s: removing %s (no longer wanted)", m.gid, n)
                await g.remove_member(n)
                return True
        return False

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
        pl = self.placement
        w = pl.workload(d)
        held: dict[str, int] = {}
        for r, p in d.assignments:
            if r not in lost and p is not None:
                held[p] = held.get(p, 0) + 1
        placed, rules, bids, declined = await pl._auction(w, lost, held)
        if not any(placed.values()):
            return
        old = dict(d.assignments)
        all_rules = dict(d.rules)
        for r in lost:
            why = f"peer {old[r]} is gone and its lease ran out" if old.get(r) else "was unplaced"
            all_rules[r] = f"re-placed ({why}): {rules.get(r, '')}"
        healed = replace(d, assignments=tuple((r, placed.get(r) if r in lost else p) for r, p in d.assignments),
                         rules=tuple(all_rules.items()), bids=tuple(bids), declined=tuple(declined),
                         origin=self.peer_id, decided_usec=time.time_ns() // 1000, reason="heal",
                         revision=d.revision + 1)
        log.info("re-placing %s of %s/%s: %s", ", ".join(lost), d.key[0], d.key[2],
                 ", ".join(f"{r}->{placed.get(r)}" for r in lost))
        await pl.commit(healed)

    # -- enforcement ----------------------------------------------------------------------------------
    async def _enforce_loop(self) -> None:
        while True:
            try:
                self.enforce_once()
            except Exception:  # a bug here must not end enforcement
                log.exception("stateful enforcement failed")
            await trio.sleep(ENFORCE_INTERVAL)

    def enforce_once(self) -> None:
        """Stop every stateful pod here that may not run; refresh the watchdog's lease files;
        note pods that are gone."""
        self._removed &= set(self.agent.observed)  # the agent's list caught up with our removals
        for name, pod in self.agent.observed.items():
            lb = pod.labels
            if lb.get(render.KIND) != "StatefulSet" or name in self.pods or name in self._removed:
                continue
            # A pod this daemon did not start (it ran before a restart: its start is in the
            # previous daemon's log) is adopted, and kept only under a lease.
            key = (lb.get(render.NAMESPACE), "StatefulSet", lb.get(render.WORKLOAD))
            ordinal = int(lb.get(render.ORDINAL, "0") or 0)
            self.pods[name] = LocalPod(key, ordinal, self.token_now(key, ordinal, name), adopted=True)
        runnable = set()
        for name, p in list(self.pods.items()):
            if p.stopping:
                continue
            token = self.token_now(p.key, p.ordinal, name)
            if token is None or token != p.token:
                if p.adopted and p.token is None and token is not None:
                    p.token = token  # back in the group and still the holder: keep it running
                    continue
                p.stopping = True
                self._nursery.start_soon(self._stop, name, p, "its lease is gone" if token is None
                                         else f"the lease moved to token {token}")
                continue
            runnable.add((p.key, p.ordinal))
            m = self.members.get(p.key)
            until = m.machine.holder.valid_until(p.ordinal) if m is not None else None
            if until is not None and until - self.settings.lease.stop_margin / 2 != p.deadline:
                p.deadline = until - self.settings.lease.stop_margin / 2
                self.files.write_lease(name, p.deadline, p.token, f"{p.key[0]}/{p.key[2]}-{p.ordinal}", self.peer_id)
        for name, p in list(self.pods.items()):
            if not p.stopping and name not in self.agent.observed and name not in self.agent_creating():
                self._gone(name, p)
        for m in self.members.values():
            for o in m.machine.holder.held:
                if m.machine.may_run(o, self.settings.start_headroom) is not None:
                    runnable.add((m.key, o))
        if runnable != self._runnable:
            self._runnable = runnable
            self.agent.poke()

    def agent_creating(self) -> set[str]:
        return {n for n, mem in self.agent.memory.items() if mem.creating}

    async def _stop(self, name: str, p: LocalPod, why: str) -> None:
        log.info("stopping %s: %s", name, why)
        try:
            await self.runtime.remove_pod(name)
        except (errors.RuntimeUnavailable, RuntimeFailure) as exc:
            log.warning("could not stop %s: %s (the lease watchdog will, at its deadline)", name, exc)
            p.stopping = False
            return
        self._gone(name, p)

    def _gone(self, name: str, p: LocalPod) -> None:
        if self.pods.get(name) is p:
            del self.pods[name]
            self._removed.add(name)
            self.files.drop_lease(name)
            self._history("stop", p.key, p.ordinal, p.token)
            self.agent.poke()

    # -- the lease watchdog ---------------------------------------------------------------------------
    def _ensure_watchdog(self) -> None:
        if self.watchdog is None:
            return
        if self._watchdog_proc is not None and self._watchdog_proc.poll() is None:
            return
        try:  # its own session: a SIGKILL of the daemon (or of its process group) must not reach it
            self._watchdog_proc = subprocess.Popen([*self.watchdog], start_new_session=True, cwd="/",
                                                   stdin=subprocess.DEVNULL)
        except OSError as exc:
            log.error("cannot start the lease watchdog: %s", exc)


def watchdog_argv(state_dir, endpoint: str, podman_args: list[str]) -> list[str]:
    return [sys.executable, "-m", "beemeshd.lease_watchdog", str(state_dir), endpoint, str(os.getpid()),
            *podman_args]
