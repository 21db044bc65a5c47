"""The peer view and failure detector (pure: time is an argument, local monotonic seconds).

States of a peer as seen from here:

    pending ──heard──▶ alive ──silent > suspect_after──▶ suspect ──silent > dead_after──▶ dead
       │                 ▲                                  │                               │
       └─silent > dead_after: forgotten (never listed)      └──────────heard───────────────┘
                                                              (PeerJoined again)

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

Long-lived peers are preferred (the seed's Kademlia property: old contacts are the ones most
likely to stay). `contacts(k)` draws k alive peers without replacement with probability
proportional to 1 + the seconds this peer has *observed* them continuously alive (capped at a
day). Observed, not claimed: a peer cannot buy preference by reporting a long uptime. The mesh
uses it to pick DHT routing-table contacts (and later relay candidates).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

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

    def __post_init__(self):
        if not 0 < self.ping_interval <= self.suspect_after < self.dead_after:
            raise ValueError("need 0 < ping_interval ≤ suspect_after < dead_after "
                             f"(got {self.ping_interval}, {self.suspect_after}, {self.dead_after})")
        if not 0 < self.redial_min <= self.redial_max:
            raise ValueError("need 0 < redial_min ≤ redial_max")


class Member:
    """One peer in the view. Slotted: a simulator holds one per (observer, peer) pair."""

    __slots__ = ("peer_id", "state", "first_seen", "last_heard", "alive_since", "record", "record_raw",
                 "record_seq", "record_at", "next_probe", "redial")

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

    def uptime(self, now: float) -> float:
        """Uptime as the peer reports it, carried forward to now."""
        if self.record is None:
            return 0.0
        return float(self.record["uptimeSeconds"]) + max(0.0, now - self.record_at)

    def addresses(self) -> list[str]:
        return list(self.record["addresses"]) if self.record else []


class Membership:
    def __init__(self, self_id: str, timings: Timings = Timings()):
        self.self_id = self_id
        self.timings = timings
        self.members: dict[str, Member] = {}
        self._last_tick: float | None = None

    # --- evidence -----------------------------------------------------------------------------

    def heard(self, peer_id: str, now: float) -> list[tuple[str, str]]:
        if peer_id == self.self_id:
            return []
        m = self.members.get(peer_id)
        if m is None:
            m = self.members[peer_id] = Member(peer_id, now)
        m.last_heard = max(m.last_heard, now)
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
            m = self.members[peer_id] = Member(peer_id, now)
        if seq <= m.record_seq:
            return False
        m.record, m.record_raw, m.record_seq, m.record_at = record, raw, seq, now
        if m.state == DEAD:
            m.next_probe = now  # news of a dead peer (it restarted, or a partition healed): look now
            m.redial = 0.0
        return True

    # --- time ---------------------------------------------------------------------------------

    def tick(self, now: float) -> list[tuple[str, str]]:
        t = self.timings
        late = 0.0 if self._last_tick is None else now - self._last_tick - t.ping_interval
        if late > 0:  # we ran late: that much of their silence is ours
            for m in self.members.values():
                m.last_heard += late
        self._last_tick = now
        events: list[tuple[str, str]] = []
        for pid, m in list(self.members.items()):
            silent = now - m.last_heard
            if m.state == PENDING:
                if now - m.first_seen > t.dead_after:
                    del self.members[pid]
                continue
            if m.state == ALIVE and silent > t.suspect_after:
                m.state = SUSPECT
                events.append((SUSPECTED, pid))
            if m.state == SUSPECT and silent > t.dead_after:
                m.state = DEAD
                m.next_probe = now + t.redial_min
                m.redial = t.redial_min
                events.append((LEFT, pid))
            if m.state == DEAD and silent > t.forget_after:
                del self.members[pid]
        return events

    def probe_targets(self, now: float) -> list[str]:
        """Peers to probe now: live or pending ones not heard from in the last half ping interval
        (a peer that just pinged us, or gossiped, needs no probe — this halves the pings of a
        pair); dead ones when their back-off is due."""
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

    # --- reading ------------------------------------------------------------------------------

    def get(self, peer_id: str) -> Member | None:
        return self.members.get(peer_id)

    def listed(self) -> list[Member]:
        """Members a client should see (pending ones are only rumours)."""
        return [m for m in self.members.values() if m.state != PENDING]

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
