"""The peer view and failure detector (pure: time is an argument, local monotonic seconds).

States of a peer as seen from here:

    pending ──heard──▶ alive ──silent > suspect_after──▶ suspect ──silent > dead_after──▶ dead
       │                 ▲                                  │                               │
       └─silent > dead_after: forgotten (never listed)      └──────────heard───────────────┘
         — or dead, if pinned (a partial view)                (PeerJoined again)

"Heard" is direct evidence: a probe answered over an authenticated connection, or a fresh,
verified message signed by that peer. A record relayed by a third peer (view sync) is not
evidence — it only makes the peer `pending`, i.e. worth probing — because an old signed record
can be replayed long after its owner died. Dead peers are re-probed with back-off
(redial_min … redial_max) so a peer that returns, or the far side of a healed partition, is
noticed; dead entries are forgotten after `forget_after`.

If this peer runs late (a tick arrives later than one ping interval after the previous one: an
overloaded CPU, a stopped process), that much silence is ours, not theirs: the lateness is
credited to every peer (Lifeguard's "local health" idea, simplified) instead of declaring the
mesh dead. Under a CPU that is merely busy this stretches the timeouts by the measured lag.

Events are ("PeerJoined" | "PeerRecovered" | "PeerSuspect" | "PeerLeft", peer id): PeerJoined
when a peer becomes alive from pending or dead (first contact, return), PeerRecovered when a
suspect answers again. Clients see both as PeerJoined; only a real join calls for a view sync.

Bounded probing (SWIM) once the view holds more than `probe_all` peers: probing everyone
every interval costs O(n) per peer, O(n²) for the mesh. Instead each interval probes
`probe_fanout` alive peers taken round-robin from a shuffled order (so each is probed by some
peer about probe_fanout times per interval, and by this one at least once per n/probe_fanout
intervals), plus the few pending, suspect or unanswered ones, plus at most probe_fanout dead
ones due for a redial. Silence only counts for peers this one probed (from the probe, not from
the last message): a peer nobody here asked about stays alive until told otherwise. What this
peer detects itself it disseminates (`take_rumours`: (peer, "suspect" | "dead", the record seq
it knew), gossiped on beemesh/membership); `rumour()` applies what others detected: a suspect
rumour starts the dead_after − suspect_after countdown here too, a dead rumour declares it
dead. A rumour about an older record than ours is void: the accused refutes a suspicion by
publishing a new record (a higher seq), which is also direct evidence that it lives. Small
meshes (≤ probe_all peers, or probe_fanout = 0) keep probing everyone, as before.

Long-lived peers are preferred (the seed's Kademlia property: old contacts are the ones most
likely to stay). `contacts(k)` draws k alive peers without replacement with probability
proportional to 1 + the seconds this peer has *observed* them continuously alive (capped at a
day). Observed, not claimed: a peer cannot buy preference by reporting a long uptime. The mesh
uses it to pick DHT routing-table contacts (and later relay candidates).

Partial views (core/routing.py): once the view reaches `view_max` members it stops holding
everyone. It keeps a Kademlia table — the `near` closest peers, `bucket_size` per bucket
(longest alive first), and the pinned peers (`pins`: whatever the caller must watch, e.g. the
runners of workloads it holds) — and admits a newcomer only where it fits. Everything else is
found by lookups. Pinned peers are probed every interval. The view returns to holding everyone
when the mesh looks smaller than view_max / 2 (`size_estimate`, from the neighbourhood's density).
"""

from __future__ import annotations

import heapq
import math
import random
from dataclasses import dataclass

from beemeshd.core import routing

SELF, PENDING, ALIVE, SUSPECT, DEAD = "self", "pending", "alive", "suspect", "dead"
JOINED, SUSPECTED, LEFT = "PeerJoined", "PeerSuspect", "PeerLeft"
RECOVERED = "PeerRecovered"  # suspect -> alive; reported to clients as PeerJoined
UPTIME_CAP = 86400.0


@dataclass(frozen=True)
class Timings:
    ping_interval: float = 0.5
    suspect_after: float = 1.5
    dead_after: float = 3.0
    redial_min: float = 1.0
    redial_max: float = 5.0
    forget_after: float = 600.0
    # Views of up to probe_all peers probe everyone every interval; larger ones probe_fanout
    # peers an interval (SWIM): each peer is still probed by ~probe_fanout others an interval.
    probe_fanout: int = 4
    probe_all: int = 16
    # Beyond view_max members the view becomes a Kademlia table (0: always hold everyone).
    view_max: int = 1024
    near: int = 16
    bucket_size: int = 8

    def __post_init__(self):
        if not 0 < self.ping_interval <= self.suspect_after < self.dead_after:
            raise ValueError("need 0 < ping_interval ≤ suspect_after < dead_after "
                             f"(got {self.ping_interval}, {self.suspect_after}, {self.dead_after})")
        if not 0 < self.redial_min <= self.redial_max:
            raise ValueError("need 0 < redial_min ≤ redial_max")
        if self.probe_fanout < 0 or self.probe_all < 0:
            raise ValueError("need probe_fanout ≥ 0 and probe_all ≥ 0")
        if self.view_max < 0 or self.near < 1 or self.bucket_size < 1:
            raise ValueError("need view_max ≥ 0, near ≥ 1 and bucket_size ≥ 1")
        if self.view_max and self.view_max <= self.near + self.bucket_size:
            raise ValueError(f"need view_max > near + bucket_size (got {self.view_max})")


class Member:
    """One peer in the view. Slotted: a simulator holds one per (observer, peer) pair."""

    __slots__ = ("peer_id", "state", "first_seen", "last_heard", "alive_since", "record", "record_raw",
                 "record_seq", "record_at", "next_probe", "redial", "since", "by_rumour")

    def __init__(self, peer_id: str, now: float):
        self.peer_id = peer_id
        self.state = PENDING
        self.first_seen = now
        self.last_heard = -math.inf
        self.alive_since = now
        self.record: dict | None = None  # validated record payload
        self.record_raw = b""  # its signed envelope, relayed as is in view sync
        self.record_seq = -1
        self.record_at = now  # when the record arrived (extrapolates the reported uptime)
        self.next_probe = now
        self.redial = 0.0
        self.since: float | None = None  # bounded probing: silence counts from here (None: not asked)
        self.by_rumour = False  # suspected on another peer's word (not ours to spread)

    def uptime(self, now: float) -> float:
        """Uptime as the peer reports it, carried forward to now."""
        if self.record is None:
            return 0.0
        return float(self.record["uptimeSeconds"]) + max(0.0, now - self.record_at)

    def addresses(self) -> list[str]:
        return list(self.record["addresses"]) if self.record else []


class Membership:
    def __init__(self, self_id: str, timings: Timings = Timings(), rng: random.Random | None = None):
        self.self_id = self_id
        self.timings = timings
        self.rng = rng or random.Random()
        self.members: dict[str, Member] = {}
        self._last_tick: float | None = None
        # Bounded probing: members a tick must look at (pending, suspect, probed and unanswered;
        # a dict for a deterministic order), dead ones by next redial (a heap), the probe order.
        self._watch: dict[str, None] = {}
        self._redials: list[tuple[float, str]] = []
        self._was_bounded = False
        self._order: list[str] = []
        self._pos = 0
        self._outbox: list[tuple[str, str, int]] = []
        self.partial = False  # a Kademlia table, not everyone (see the module docstring)
        self.pins: set[str] = set()
        self._me = routing.point(self_id)
        self._trimmed_at = -math.inf
        # Peers admits() turned away since the view last lost a live member: the same records
        # come back in every lookup and sync reply, and the answer cannot change until then.
        self._refused: set[str] = set()

    @property
    def bounded(self) -> bool:
        return self.timings.probe_fanout > 0 and len(self.members) > self.timings.probe_all

    # --- evidence -----------------------------------------------------------------------------

    def heard(self, peer_id: str, now: float) -> list[tuple[str, str]]:
        if peer_id == self.self_id:
            return []
        m = self.members.get(peer_id)
        if m is None:
            if not self.admits(peer_id):
                return []
            m = self.members[peer_id] = Member(peer_id, now)
            self._grown(now)
            if peer_id not in self.members:  # the view just became a table without it
                return []
        m.last_heard = max(m.last_heard, now)
        if m.since is not None or m.state == PENDING:
            m.since, m.by_rumour = None, False
            self._watch.pop(peer_id, None)
        if m.state == ALIVE:
            return []
        recovered = m.state == SUSPECT
        if not recovered:
            m.alive_since = now  # the streak restarts after dead/pending, not after a brief suspicion
        m.state = ALIVE
        m.redial = 0.0
        return [(RECOVERED if recovered else JOINED, peer_id)]

    def learned(self, peer_id: str, record: dict, raw: bytes, seq: int, now: float) -> bool:
        """A validated record; True when it is newer than what we had. Not evidence of life."""
        if peer_id == self.self_id:
            return False
        m = self.members.get(peer_id)
        if m is None:
            if not self.admits(peer_id):
                return False
            m = self.members[peer_id] = Member(peer_id, now)
            self._watch[peer_id] = None  # pending: probed every interval until heard or forgotten
            self._grown(now)
            if peer_id not in self.members:
                return False
        if seq <= m.record_seq:
            return False
        m.record, m.record_raw, m.record_seq, m.record_at = record, raw, seq, now
        if m.state == DEAD:
            m.next_probe = now  # news of a dead peer (it restarted, or a partition healed): look now
            m.redial = 0.0
            self._schedule(m)
        return True

    def forget(self, peer_id: str) -> list[tuple[str, str]]:
        """Drop a peer from the view at once (its credential was revoked or expired): PeerLeft
        if it was alive or suspect, so placement re-places its work."""
        m = self.members.pop(peer_id, None)
        self._watch.pop(peer_id, None)
        self._lost()
        return [(LEFT, peer_id)] if m is not None and m.state in (ALIVE, SUSPECT) else []

    def absent(self, peer_id: str, now: float) -> None:
        """A pinned peer that a lookup did not find: dead as far as this peer knows (so work
        assigned to it is re-placed), redialled like any dead peer."""
        if peer_id == self.self_id or peer_id in self.members:
            return
        m = self.members[peer_id] = Member(peer_id, now)
        m.last_heard = now
        self._die(m, now)

    # --- partial views (see the module docstring) -----------------------------------------------

    TRIM_EVERY = 5.0

    def admits(self, peer_id: str) -> bool:
        """Whether a peer not in the view may enter it: always in a full view; in a partial one
        if pinned, among the `near` closest, or its bucket has room."""
        if not self.partial or peer_id in self.pins:
            return True
        if peer_id in self._refused:
            return False
        p = routing.point(peer_id)
        d, b = self._me ^ p, routing.bucket(self._me, p)
        closer = same = 0
        for other, m in self.members.items():
            if m.state == DEAD:
                continue
            q = routing.point(other)
            closer += (self._me ^ q) < d
            same += routing.bucket(self._me, q) == b
        if closer < self.timings.near or same < self.timings.bucket_size:
            return True
        if len(self._refused) >= self.REFUSED_MAX:
            self._refused.clear()
        self._refused.add(peer_id)
        return False

    REFUSED_MAX = 4096

    def _lost(self) -> None:
        """A live or pending member died or left the view: room may have opened for those refused."""
        self._refused.clear()

    def _grown(self, now: float) -> None:
        """After a member was added: become partial once view_max peers are alive or pending
        (the dead are not counted; counting them costs O(n), so at most every TRIM_EVERY)."""
        t = self.timings
        if (self.partial or not t.view_max or len(self.members) < t.view_max
                or now - self._trimmed_at < self.TRIM_EVERY):
            return
        self._trimmed_at = now
        if sum(m.state != DEAD for m in self.members.values()) >= t.view_max:
            self.become_partial(now)

    def become_partial(self, now: float) -> bool:
        """A peer whose view is a table says so (the mesh is large): make ours one now rather
        than gather view_max peers first. True if it changed; never when view_max is 0."""
        if self.partial or not self.timings.view_max:
            return False
        self.partial = True
        self.trim(now)
        return True

    def trim(self, now: float) -> int:
        """Drop what a partial view does not keep (the dead too, unless pinned); how many.
        Not PeerLeft: a peer no longer tracked here has not left the mesh."""
        t = self.timings
        live = [(pid, m.state == ALIVE, m.alive_since) for pid, m in self.members.items() if m.state != DEAD]
        keep = routing.table(self._me, live, t.near, t.bucket_size, now) | self.pins
        gone = [pid for pid in self.members if pid not in keep]
        for pid in gone:
            del self.members[pid]
            self._watch.pop(pid, None)
        self._trimmed_at = now
        self._lost()
        return len(gone)

    def size_estimate(self) -> float:
        """The mesh's size as this view suggests it, this peer included: exact in a full view."""
        live = [pid for pid, m in self.members.items() if m.state not in (DEAD, PENDING)]
        if not self.partial:
            return float(len(live) + 1)
        return routing.size_estimate(self._me, live, self.timings.near)

    def closest_records(self, target: int, k: int) -> list[bytes]:
        """The signed records of the k live peers nearest to target (a lookup's answer)."""
        held = (pid for pid, m in self.members.items() if m.record_raw and m.state in (ALIVE, SUSPECT))
        return [self.members[pid].record_raw for pid in routing.closest(target, held, k)]

    def closest(self, target: int, k: int) -> list[str]:
        """The k live peers nearest to target that this view holds."""
        return routing.closest(target, (pid for pid, m in self.members.items() if m.state in (ALIVE, SUSPECT)), k)

    # --- time ---------------------------------------------------------------------------------

    def tick(self, now: float) -> list[tuple[str, str]]:
        t = self.timings
        late = 0.0 if self._last_tick is None else now - self._last_tick - t.ping_interval
        self._last_tick = now
        if self.partial and now - self._trimmed_at >= self.TRIM_EVERY:
            if self.size_estimate() < t.view_max / 2:
                self.partial = False  # the mesh shrank: hold everyone again
            else:
                self.trim(now)
        if self.bounded:
            if not self._was_bounded:  # the view just grew past probe_all: queue the dead
                self._redials = [(m.next_probe, pid) for pid, m in self.members.items() if m.state == DEAD]
                heapq.heapify(self._redials)
            self._was_bounded = True
            return self._tick_bounded(now, late)
        self._was_bounded = False
        if late > 0:  # we ran late: that much of their silence is ours
            for m in self.members.values():
                m.last_heard += late
        events: list[tuple[str, str]] = []
        for pid, m in list(self.members.items()):
            silent = now - m.last_heard
            if m.state == PENDING:
                if now - m.first_seen > t.dead_after:
                    self._unheard(m, now)
                continue
            if m.state == ALIVE and silent > t.suspect_after:
                m.state = SUSPECT
                m.since = m.last_heard  # should the view grow past probe_all meanwhile
                self._watch[pid] = None
                events.append((SUSPECTED, pid))
            if m.state == SUSPECT and silent > t.dead_after:
                self._die(m, now)
                events.append((LEFT, pid))
            if m.state == DEAD and silent > t.forget_after:
                del self.members[pid]
        return events

    def _tick_bounded(self, now: float, late: float) -> list[tuple[str, str]]:
        """Only the watched members: silence counts from our probe (or a rumour), not from the
        last message, since nobody here asks the others."""
        t = self.timings
        events: list[tuple[str, str]] = []
        for pid in list(self._watch):
            m = self.members.get(pid)
            if m is None:
                del self._watch[pid]
                continue
            if late > 0:
                m.last_heard += late
                if m.since is not None:
                    m.since += late
            if m.state == PENDING:
                if now - m.first_seen > t.dead_after:
                    self._unheard(m, now)
                continue
            if m.state not in (ALIVE, SUSPECT) or m.since is None:
                del self._watch[pid]
                continue
            silent = now - m.since
            if m.state == ALIVE and silent > t.suspect_after:
                m.state = SUSPECT
                events.append((SUSPECTED, pid))
                if not m.by_rumour:
                    self._outbox.append((pid, SUSPECT, m.record_seq))
            if m.state == SUSPECT and silent > t.dead_after:
                if not m.by_rumour:
                    self._outbox.append((pid, DEAD, m.record_seq))
                self._die(m, now)
                events.append((LEFT, pid))
        return events

    def _unheard(self, m: Member, now: float) -> None:
        """A pending member never answered: forgotten, unless pinned — then dead, like one that
        no lookup finds (a runner that died before we first reached it still orphans its work)."""
        if m.peer_id in self.pins:
            m.last_heard = now  # (forget_after counts from here, as for `absent`)
            self._die(m, now)
        else:
            del self.members[m.peer_id]
            self._watch.pop(m.peer_id, None)
            self._lost()

    def _die(self, m: Member, now: float) -> None:
        m.state = DEAD
        self._lost()
        m.since, m.by_rumour = None, False
        m.next_probe = now + self.timings.redial_min
        m.redial = self.timings.redial_min
        self._watch.pop(m.peer_id, None)
        self._schedule(m)

    def _schedule(self, m: Member) -> None:
        """Queue a dead member's next redial (the heap is only kept while bounded)."""
        if self._was_bounded:
            heapq.heappush(self._redials, (m.next_probe, m.peer_id))

    def rumour(self, peer_id: str, state: str, seq: int, now: float) -> list[tuple[str, str]]:
        """Another peer says `peer_id` is suspect or dead, as of its record `seq`."""
        m = self.members.get(peer_id)
        if m is None or m.state in (PENDING, DEAD) or seq < m.record_seq:
            return []  # unknown, already dead, or it has spoken since (a newer record)
        if state == DEAD:
            self._die(m, now)
            return [(LEFT, peer_id)]
        if state != SUSPECT or m.state != ALIVE:
            return []
        m.state, m.by_rumour = SUSPECT, True
        since = now - self.timings.suspect_after  # dead after dead_after − suspect_after more
        m.since = since if m.since is None else min(m.since, since)
        self._watch[peer_id] = None
        return [(SUSPECTED, peer_id)]

    def take_rumours(self) -> list[tuple[str, str, int]]:
        """(peer, "suspect" | "dead", record seq) this peer detected itself since the last call."""
        out, self._outbox = self._outbox, []
        return out

    def probe_targets(self, now: float) -> list[str]:
        """Peers to probe now: live or pending ones not heard from in the last half ping interval
        (a peer that just pinged us, or gossiped, needs no probe — this halves the pings of a
        pair); dead ones when their back-off is due. In a large view, a bounded share of them
        (see the module docstring)."""
        if self.bounded:
            return self._targets_bounded(now)
        out = []
        fresh = self.timings.ping_interval / 2
        for pid, m in self.members.items():
            if m.state != DEAD:
                if now - m.last_heard >= fresh:
                    out.append(pid)
            elif m.next_probe <= now:
                out.append(pid)
                m.redial = min(max(m.redial * 2, self.timings.redial_min), self.timings.redial_max)
                m.next_probe = now + m.redial
        return out

    def _targets_bounded(self, now: float) -> list[str]:
        t = self.timings
        fresh = t.ping_interval / 2
        out = [pid for pid in self._watch if (m := self.members.get(pid)) is not None
               and m.state != DEAD and now - m.last_heard >= fresh]
        if self.partial:  # pinned peers: every interval (their death must be noticed here, soon)
            for pid in self.pins:
                m = self.members.get(pid)
                if m is not None and m.state == ALIVE and pid not in self._watch and now - m.last_heard >= fresh:
                    m.since = now
                    self._watch[pid] = None
                    out.append(pid)
        picked, budget = 0, len(self.members) + 1
        while picked < t.probe_fanout and budget > 0:
            if self._pos >= len(self._order):  # a new round: every alive peer once, shuffled
                self._order = [pid for pid, m in self.members.items() if m.state == ALIVE]
                self.rng.shuffle(self._order)
                self._pos = 0
                if not self._order:
                    break
            pid = self._order[self._pos]
            self._pos += 1
            budget -= 1
            m = self.members.get(pid)
            if m is None or m.state != ALIVE or pid in self._watch or now - m.last_heard < fresh:
                continue
            m.since = now  # silence counts from this probe
            self._watch[pid] = None
            out.append(pid)
            picked += 1
        redialled = 0
        while self._redials and self._redials[0][0] <= now and redialled < t.probe_fanout:
            due, pid = heapq.heappop(self._redials)
            m = self.members.get(pid)
            if m is None or m.state != DEAD or m.next_probe != due:
                continue  # back, forgotten, or rescheduled (a newer entry exists)
            if now - m.last_heard > t.forget_after:
                del self.members[pid]
                continue
            out.append(pid)
            redialled += 1
            m.redial = min(max(m.redial * 2, t.redial_min), t.redial_max)
            m.next_probe = now + m.redial
            self._schedule(m)
        return out

    # --- reading ------------------------------------------------------------------------------

    def get(self, peer_id: str) -> Member | None:
        return self.members.get(peer_id)

    def listed(self) -> list[Member]:
        """Members a client should see (pending ones are only rumours)."""
        return [m for m in self.members.values() if m.state != PENDING]

    def random_alive(self, rng: random.Random) -> str | None:
        alive = [pid for pid, m in self.members.items() if m.state == ALIVE]
        return rng.choice(alive) if alive else None

    def any_alive(self) -> bool:
        return any(m.state == ALIVE for m in self.members.values())

    def counts(self) -> dict[str, int]:
        c = {ALIVE: 0, SUSPECT: 0, DEAD: 0}
        for m in self.members.values():
            if m.state in c:
                c[m.state] += 1
        return c

    def digest(self) -> dict[str, int]:
        """{peer: record seq} of every record held, for view sync."""
        return {pid: m.record_seq for pid, m in self.members.items() if m.record_raw}

    def newer_than(self, known: dict[str, int]) -> list[bytes]:
        """Signed records of peers believed up that `known` (a digest) lacks or has older."""
        return [m.record_raw for pid, m in self.members.items()
                if m.state in (ALIVE, SUSPECT) and m.record_raw and m.record_seq > known.get(pid, -1)]

    def contacts(self, k: int, now: float, rng: random.Random | None = None) -> list[str]:
        """k alive peers drawn by observed uptime (weighted sampling without replacement,
        Efraimidis–Spirakis: the k largest u^(1/w))."""
        rng = rng or random.Random()
        keyed = []
        for pid, m in self.members.items():
            if m.state == ALIVE:
                w = 1.0 + min(max(now - m.alive_since, 0.0), UPTIME_CAP)
                keyed.append((rng.random() ** (1.0 / w), pid))
        keyed.sort(reverse=True)
        return [pid for _, pid in keyed[:k]]
