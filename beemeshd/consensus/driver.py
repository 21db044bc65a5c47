"""One trio task per peer that ticks every Raft group of this peer and batches their traffic.

Each tick (RaftTiming.tick, 50 ms by default) the driver
1. tells each group which of its members are reachable (the mesh's failure detector, and for
   a passive joiner only once a member contacted it),
2. calls `doTick(0)` on each group (inside beemeshd.consensus.clock.using: its clock and rng),
3. exchanges ONE frame with every peer it shares a group with: the messages of all groups for
   that peer, answered with the messages that peer has queued for us (so replies to a heartbeat
   ride back on the same exchange); the peer with the lower id asks, see `_flush`.
Batching per peer is what makes many groups affordable: over libp2p one frame costs ≈ 0.4 ms of
CPU whatever it carries, and 100 groups sending one frame per message saturated a core. Frames
are JSON (beemeshd.consensus.codec), carried as is in the mesh's signed envelope.

Links are FIFO, as pysyncobj (written for TCP) assumes: it truncates a follower's log after the
previous entry of *any* append_entries, so an overtaken, older one would cut entries the follower
already acknowledged. A frame carries the sender's incarnation and a sequence number per link;
one that arrives after a later one is dropped (Raft copes with loss, not with reordering).

Every inbound message is checked before a group sees it (beemeshd.consensus.codec): the frame
must decode, the sender must be the peer the wire authenticated, a member of that group at
the node id the message claims, addressing this member's current incarnation, with a known
message shape and plain-data payloads; a term below the group's is dropped as stale. What is
dropped is counted in `counters` (GetInfo shows them) and logged at debug level.
"""

from __future__ import annotations

import logging
import random
import secrets
import time
import zlib
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Protocol

import trio

from beemeshd.consensus import clock as raft_clock
from beemeshd.consensus import codec
from beemeshd.consensus.codec import Rejected, peer_of

log = logging.getLogger("beemeshd.consensus")

PROTO_RAFT = "/beemesh/raft/1"
MAX_FRAME_BYTES = 256 << 10  # mesh envelopes carry ≤ 1 MiB
SWEEP = 1.0  # every group ticks at least this often (log compaction, a leader's quorum check)
COUNTERS = ("consensusMalformed", "consensusUnsafe", "consensusRefused", "consensusNonMember",
            "consensusStaleTerm", "consensusUnknownGroup", "consensusErrors")


class Wire(Protocol):
    """Point-to-point frames between peers: the mesh (MeshWire) or memory (MemoryWire)."""

    peer_id: str

    async def exchange(self, peer: str, frame: list, timeout: float) -> list | None:
        """Send one frame (JSON-able), return the peer's answer frame; raise on any failure."""

    def serve(self, handler: Callable[[str, object], Awaitable[list | None]]) -> None:
        """handler(authenticated sender peer id, decoded frame) -> answer frame or None."""


class Driver:
    def __init__(self, wire: Wire, *, tick: float = 0.05, clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None, incarnation: str | None = None,
                 reachable: Callable[[], set[str]] | None = None, exchange_timeout: float = 1.0,
                 max_queue: int = 5000, gate: Callable[[], Awaitable[None]] | None = None,
                 poll: float | None = None, suspect: float = 0.0, hurry_step: float = 0.25):
        self.wire = wire
        self.peer_id = wire.peer_id
        self.tick = tick
        self.poll = poll if poll is not None else tick  # see _flush (RaftTiming.pulse)
        self.suspect = suspect  # see _hurry (RaftTiming.suspect; 0: off)
        self.hurry_step = hurry_step
        self.clock = clock
        self.rng = rng or random.Random()
        self.incarnation = incarnation or secrets.token_hex(6)
        # peers the mesh believes alive (None: everyone is)
        self.reachable = reachable
        self.exchange_timeout = exchange_timeout
        self.max_queue = max_queue
        self.gate = gate  # the simulator pauses a peer here
        self.groups: dict[str, object] = {}
        self._alive: set[str] | None | bool = False  # the reachable set at the last tick
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.stats = {"framesSent": 0, "framesReceived": 0, "messagesSent": 0, "messagesReceived": 0,
                      "exchangesFailed": 0, "queueDropped": 0, "framesOutOfOrder": 0}
        self._seq_out: dict[str, int] = {}
        self._exchanged: dict[str, float] = {}  # peer -> when we last asked it or it asked us
        self._urgent: set[str] = set()  # peers with more than heartbeats queued
        self._seq_in: dict[str, tuple[str, int]] = {}
        self.last_heard: dict[str, float] = {}  # peer -> our clock when its last frame arrived
        self.suspects: frozenset[str] = frozenset()  # peers silent for `suspect` seconds
        self._ticked_at: float | None = None
        self._grace_until = -1e18  # after a stall of our own, nobody is newly suspected until then
        self._outbox: dict[str, list] = defaultdict(list)
        self._commit_sent: dict[tuple[str, str], int] = {}  # (group, member) -> commit index sent
        self._in_flight: set[str] = set()
        self._nursery: trio.Nursery | None = None
        wire.serve(self._serve)

    @property
    def node_id(self) -> str:
        return f"{self.peer_id}/{self.incarnation}"

    # -- groups -----------------------------------------------------------------------------------
    def register(self, group) -> None:
        if group.group_id in self.groups:
            raise ValueError(f"group {group.group_id} already runs here")
        self.groups[group.group_id] = group

    def unregister(self, group_id: str) -> None:
        self.groups.pop(group_id, None)
        for key in [k for k in self._commit_sent if k[0] == group_id]:
            del self._commit_sent[key]
        for peer, items in self._outbox.items():
            items[:] = [x for x in items if x[0] != group_id]

    def member_added(self, group_id: str, node_id: str) -> None:
        g = self.groups.get(group_id)
        if g is not None:
            g.members_changed()

    def member_dropped(self, group_id: str, node_id: str) -> None:
        self._commit_sent.pop((group_id, node_id), None)
        g = self.groups.get(group_id)
        if g is not None:
            g.connected_ids.discard(node_id)
            g.members_changed()

    # -- outbound ---------------------------------------------------------------------------------
    def enqueue(self, group_id: str, src: str, dst: str, message: dict) -> bool:
        wire_msg = codec.for_wire(message)
        if wire_msg is None:
            log.warning("%s: not sending an oversized %s to %s", group_id, message.get("type"), dst)
            return False
        box = self._outbox[peer_of(dst)]
        if len(box) >= self.max_queue:  # a peer that does not take our frames: Raft copes with loss
            del box[: len(box) // 2]
            self.stats["queueDropped"] += 1
        box.append((group_id, src, dst, wire_msg))
        if _urgent(message) or self._commits(group_id, dst, message):
            self._urgent.add(peer_of(dst))
        return True

    def _commits(self, group_id: str, dst: str, message: dict) -> bool:
        """An append_entries that moves dst's commit index forward (it may then apply a lease
        renewal or grant): as urgent as new entries."""
        index = message.get("commit_index") if message.get("type") == "append_entries" else None
        if type(index) is not int:
            return False
        key = (group_id, dst)
        if index <= self._commit_sent.get(key, -1):
            return False
        self._commit_sent[key] = index
        return True

    def _take(self, peer: str) -> list | None:
        """One frame of queued messages for `peer` (about MAX_FRAME_BYTES at most; the rest waits)."""
        items = self._outbox.get(peer)
        if not items:
            return None
        n, size = 0, 0
        for item in items:
            size += _size(item[3])
            if n and size > MAX_FRAME_BYTES:
                break
            n += 1
        taken = [list(x) for x in items[:n]]
        del items[:n]
        if not items:
            del self._outbox[peer]
        self.stats["messagesSent"] += n
        self._seq_out[peer] = seq = self._seq_out.get(peer, 0) + 1
        return [self.incarnation, seq, taken]

    def _flush(self) -> None:
        """At most one exchange per peer pair and tick: the peer with the lower id asks — at once
        when it has an urgent message for the other (a vote, a proposal, new entries, a reply to
        one), else every `poll` seconds (a heartbeat period) while the two share a group, with
        whatever is queued, heartbeats included — and the other answers with its own; that one
        asks itself only when its messages have waited (the asking side may not know yet that
        they share a group). Each exchange costs two signed envelopes and a stream over libp2p
        whatever it carries, so their number, not the number of groups, is what idle groups cost:
        the heartbeats of all groups travel together."""
        now = self.clock()
        peers = set(self._outbox)
        for g in self.groups.values():
            if not g.closed:
                peers.update(peer_of(n) for n in g.member_ids())
        peers.discard(self.peer_id)
        for peer in sorted(peers):
            if peer in self._in_flight:
                continue
            quiet = now - self._exchanged.get(peer, -1e18)
            urgent = peer in self._urgent
            if self.peer_id < peer:
                if not urgent and quiet < self.poll:
                    continue
            elif not self._outbox.get(peer) or (quiet < 3 * self.tick if urgent else quiet < 3 * self.poll):
                continue
            self._urgent.discard(peer)
            frame = self._take(peer) or self._empty(peer)
            self._in_flight.add(peer)
            self._exchanged[peer] = now
            self._nursery.start_soon(self._send, peer, frame)

    def _empty(self, peer: str) -> list:
        self._seq_out[peer] = seq = self._seq_out.get(peer, 0) + 1
        return [self.incarnation, seq, []]

    async def _send(self, peer: str, frame: list) -> None:
        try:
            self.stats["framesSent"] += 1
            answer = await self.wire.exchange(peer, frame, self.exchange_timeout)
        except Exception as exc:  # unreachable, timed out, refused: Raft retries by itself
            self.stats["exchangesFailed"] += 1
            log.debug("raft frame to %s failed: %s", peer, exc)
            return
        finally:
            self._in_flight.discard(peer)
        self.last_heard[peer] = self.clock()
        if answer:
            if self.gate is not None:
                await self.gate()
            self.receive(peer, answer)

    # -- inbound ----------------------------------------------------------------------------------
    async def _serve(self, sender: str, frame) -> list | None:
        if self.gate is not None:
            await self.gate()
        self._exchanged[sender] = self.clock()
        self.receive(sender, frame)
        return self._take(sender)

    def receive(self, sender: str, frame) -> None:
        """Deliver one frame (decoded JSON) from the (authenticated) peer `sender`."""
        self.stats["framesReceived"] += 1
        self.last_heard[sender] = self.clock()
        try:
            if (type(frame) is not list or len(frame) != 3 or type(frame[0]) is not str or type(frame[1]) is not int
                    or type(frame[2]) is not list):
                raise Rejected("consensusMalformed", "a frame is [incarnation, sequence, messages]")
        except Rejected as exc:
            self._count(exc, sender, "-")
            return
        incarnation, seq, items = frame
        last = self._seq_in.get(sender)
        if last is not None and last[0] == incarnation and seq <= last[1]:
            # Overtaken by a later frame (our exchange and its answer cross theirs): pysyncobj
            # assumes FIFO links, as TCP gives it, so a late frame is dropped, never delivered.
            self.stats["framesOutOfOrder"] += 1
            return
        self._seq_in[sender] = (incarnation, seq)
        for item in items:
            self.stats["messagesReceived"] += 1
            try:
                self._deliver(sender, item)
            except Rejected as exc:
                self._count(exc, sender, item[0] if type(item) is list and item else "-")

    def _deliver(self, sender: str, item) -> None:
        if type(item) is not list or len(item) != 4 or not all(type(x) is str for x in item[:3]):
            raise Rejected("consensusMalformed", "a message is [group, from, to, body]")
        group_id, src, dst, body = item
        g = self.groups.get(group_id)
        if g is None:
            raise Rejected("consensusUnknownGroup", f"no group {group_id} here")
        if peer_of(src) != sender:
            raise Rejected("consensusNonMember", f"{sender} sent as {src}")
        if dst != g.node_id:
            raise Rejected("consensusNonMember", f"addressed to {dst}, this member is {g.node_id}")
        if src not in g.member_ids():
            raise Rejected("consensusNonMember", f"{src} is not a member")
        msg = codec.check_message(body, g.check_entry, lambda data: g.check_forward(data, sender))
        if "term" in msg and msg["term"] < g.raftCurrentTerm:
            raise Rejected("consensusStaleTerm", f"term {msg['term']} < {g.raftCurrentTerm}")
        if g.passive:  # a member reached this joiner: from now on it takes part fully
            g.passive = False
            g.reconnect = True
        g.due = True  # pysyncobj acts on what arrived (apply, commit, reply) at its next tick
        try:
            with raft_clock.using(g.clock, g.rng):
                g._transport.deliver(src, msg)
        except Exception:
            self.counters["consensusErrors"] += 1
            log.exception("%s: pysyncobj failed on a %s from %s", group_id, msg["type"], src)

    def _count(self, exc: Rejected, sender: str, group_id: str) -> None:
        self.counters[exc.counter] = self.counters.get(exc.counter, 0) + 1
        log.debug("dropped raft message from %s for %s: %s", sender, group_id, exc)

    # -- the loop ---------------------------------------------------------------------------------
    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            try:
                while True:
                    if self.gate is not None:
                        await self.gate()
                    self.tick_once()
                    await trio.sleep(self.tick)
            finally:
                self._nursery = None

    def tick_once(self) -> None:
        """Tick every group that has something to do: a message or proposal arrived, one of its
        timers (heartbeat, election) is due, or it has not ticked for SWEEP seconds. An idle
        follower between heartbeats is skipped: ticking 100 idle groups 20 times a second cost
        more than their messages. Elections are hurried first (`_hurry`)."""
        alive = self.reachable() if self.reachable is not None else None
        if alive != self._alive:
            self._alive = alive
            for g in self.groups.values():
                g.reconnect = True
        if self._suspect_peers(alive):  # groups that are not due may follow a leader just suspected
            for g in list(self.groups.values()):
                if not g.closed:
                    self._hurry(g, g.clock())
        for g in list(self.groups.values()):
            if g.closed:
                continue
            now = g.clock()
            if not (g.due or g.reconnect or now >= g.next_timer() or now - g.ticked >= SWEEP):
                continue
            g.due, g.ticked = False, now
            try:
                with raft_clock.using(g.clock, g.rng):
                    if g.reconnect:
                        g.reconnect = False
                        self._connect(g, alive)
                    before = g.before_tick()
                    g.doTick(0)
                    g.push_entries(before)
            except Exception:
                self.counters["consensusErrors"] += 1
                log.exception("%s: tick failed", g.group_id)
            self._hurry(g, now)
            leader = g.leader
            if leader != g.last_leader:
                g.last_leader = leader
                try:
                    g.machine.leader_changed(leader, g.term)
                except Exception:
                    log.exception("%s: leader listener failed", g.group_id)
        if self._nursery is not None:
            self._flush()

    # -- hurrying elections -----------------------------------------------------------------------
    def _suspect_peers(self, alive: set[str] | None) -> bool:
        """Update `suspects`: peers we share groups with whose last frame (or answer) is older
        than `suspect`, or that the mesh's failure detector no longer lists. A stall of our own
        (the tick came late) is not held against anyone: frames may be waiting to be read."""
        if self.suspect <= 0:
            return False
        now = self.clock()
        if self._ticked_at is not None and now - self._ticked_at > self.suspect / 2:
            self._grace_until = now + self.suspect
        self._ticked_at = now
        if now < self._grace_until:
            return False
        silent = {p for p, t in self.last_heard.items() if now - t > self.suspect}
        if alive is not None:
            silent.update(p for p in self.last_heard if p not in alive)
        suspects = frozenset(silent)
        changed = suspects != self.suspects
        self.suspects = suspects
        return changed

    def _gone(self, node_id: str) -> bool:
        """Whether a member looks dead: its peer is suspected. (A member whose daemon restarted
        quickly is not seen here: member ids do not name incarnations; the slow path finds it.)"""
        return peer_of(node_id) in self.suspects

    def _hurry(self, g, now: float) -> None:
        """A follower whose leader looks dead, or a group with no leader and no election under
        way, elects now instead of after an election timeout (≈ 1 s more at the defaults, and far
        more with the slow heartbeats that make idle groups cheap). One member at a time: the
        live members in an order that differs per group (so the new leaders of a dead peer's
        groups spread), each `hurry_step` after the one before, so that the first one's vote
        request arrives before the next one runs for the same term and splits the vote.
        Timing never touches Raft's safety: any member may start an election at any time."""
        if self.suspect <= 0 or g.passive:
            return
        leader = g.following()
        if leader is not None:
            if not self._gone(leader):
                return
        elif not g.leaderless():
            return
        key = (g.term, leader)
        if g.hurried == key:  # once per term and leader: later, pysyncobj's own timers rule
            return
        g.hurried = key
        live = sorted((m for m in g.members if m != leader and not self._gone(m)),
                      key=lambda m: zlib.crc32(f"{g.group_id}|{m}".encode()))
        if g.node_id in live:
            g.elect_by(now + live.index(g.node_id) * self.hurry_step)

    def _connect(self, g, alive: set[str] | None) -> None:
        for node in g.otherNodes:
            nid = node.id
            up = alive is None or peer_of(nid) in alive
            if g.passive:
                up = False
            if up != (nid in g.connected_ids):
                (g.connected_ids.add if up else g.connected_ids.discard)(nid)
                g._transport.connected(nid, up)

    def member_state(self) -> dict:
        return {"groups": len(self.groups), **self.counters, **self.stats}


def _urgent(msg: dict) -> bool:
    """Anything but an idle heartbeat (append_entries without entries) and its answer."""
    kind = msg.get("type")
    if kind == "append_entries":
        return bool(msg.get("entries")) or "serialized" in msg
    if kind == "next_node_idx":
        return not msg.get("success") or msg.get("reset")
    return True


def _size(msg: dict) -> int:
    """About how many bytes a message takes in a frame (to cut frames by size, without encoding)."""
    n = 120
    for e in msg.get("entries", ()):
        n += len(e[0]) + 24
    for k in ("command", "serialized"):
        v = msg.get(k)
        if v:
            n += len(v if isinstance(v, str) else v[0])
    return n
