"""Trust: what each peer has earned in this peer's eyes, from receipts it saw itself.

Every peer sees every decision and every status report (both are gossiped), so every peer can
keep the same ledger without asking anyone: when a decision assigns a replica to a peer, that
peer owes a report of it running within `deliver_within` seconds.

Receipts (weights say how much one counts):
- delivered      +1  the replica was reported running/ready in time
- undelivered    −2  won a bid, never reported it running in time
- contradicted   −2  won a bid, then reported the replica failed while it ran elsewhere (its
                     claim to be able to run it did not hold)
- invalid        −0.5 a signed message that was stale, replayed or malformed

Score = (1 + good) / (2 + good + bad), a Beta-reputation mean: 0.5 with no evidence, and every
count decays with half-life `half_life`, so a peer drifts back toward neutral once it behaves (or
stops being seen). Peers below `threshold` get no work: their bids are declined by the asker.
Pure: all times are arguments.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

DELIVERED, UNDELIVERED, CONTRADICTED, INVALID = "delivered", "undelivered", "contradicted", "invalid"
KINDS = (DELIVERED, UNDELIVERED, CONTRADICTED, INVALID)
GOOD = {DELIVERED: 1.0}
BAD = {UNDELIVERED: 2.0, CONTRADICTED: 2.0, INVALID: 0.5}


@dataclass
class Ledger:
    good: float = 0.0
    bad: float = 0.0
    at: float = 0.0  # time the counts were last decayed to
    counts: dict = field(default_factory=lambda: dict.fromkeys(KINDS, 0))  # raw, for display


@dataclass(frozen=True)
class Promise:
    key: tuple
    replica: str
    peer: str
    generation: int
    due: float
    excused: bool = False  # its last report was a failure the workload has everywhere


class TrustBook:
    def __init__(self, *, half_life: float = 3600.0, threshold: float = 0.25, deliver_within: float = 60.0):
        self.half_life = half_life
        self.threshold = threshold
        self.deliver_within = deliver_within
        self.ledgers: dict[str, Ledger] = {}
        # (key, replica) -> the open promise; a newer assignment replaces it
        self.promises: dict[tuple, Promise] = {}
        # (key, replica) -> the peer that delivered it (a later generation owes nothing new)
        self.settled: dict[tuple, str] = {}

    # -- evidence ------------------------------------------------------------------------------
    def record(self, peer: str, kind: str, now: float, n: float = 1.0) -> None:
        led = self._decayed(peer, now)
        if kind in GOOD:
            led.good += GOOD[kind] * n
        else:
            led.bad += BAD[kind] * n
        led.counts[kind] += int(n)

    def assigned(self, key: tuple, replica: str, peer: str, generation: int, now: float) -> None:
        """A decision placed `replica` on `peer`: it now owes a running report."""
        old = self.promises.get((key, replica))
        if (old is not None and old.peer == peer) or self.settled.get((key, replica)) == peer:
            return  # same peer keeps it (a new generation of the same workload): nothing new owed
        if old is not None and old.due <= now:  # moved by someone whose clock ran out first
            self.record(old.peer, UNDELIVERED, now)
        self.settled.pop((key, replica), None)
        self.promises[(key, replica)] = Promise(key, replica, peer, generation, now + self.deliver_within)

    def released(self, key: tuple, replica: str | None = None) -> None:
        """The workload (or one replica) was deleted or scaled away: nothing owed any more."""
        for table in (self.promises, self.settled):
            for k in [k for k in table if k[0] == key and (replica is None or k[1] == replica)]:
                del table[k]

    def reported(self, key: tuple, replica: str, peer: str, state: str, now: float, *,
                 excused: bool = False) -> None:
        """A status row from `peer`: running/ready settles its promise well; failed settles it
        badly unless `excused` (the workload fails everywhere: the manifest's fault, not the peer's)."""
        p = self.promises.get((key, replica))
        if p is None or p.peer != peer:
            return
        if state in ("running", "ready"):
            del self.promises[(key, replica)]
            self.settled[(key, replica)] = peer
            self.record(peer, DELIVERED, now)
        elif state == "failed" and excused:
            # not its fault so far; stays owed (a later report, once others run it, may count)
            self.promises[(key, replica)] = replace(p, excused=True)
        elif state == "failed":
            del self.promises[(key, replica)]
            self.record(peer, CONTRADICTED, now)

    def tick(self, now: float) -> list[Promise]:
        """Promises that fell due unmet: recorded as undelivered, and returned (those whose last
        word was an excused failure are dropped without blame: the workload fails everywhere)."""
        due = [p for p in self.promises.values() if p.due <= now]
        for p in due:
            del self.promises[(p.key, p.replica)]
            if not p.excused:
                self.record(p.peer, UNDELIVERED, now)
        return [p for p in due if not p.excused]

    # -- judgement -----------------------------------------------------------------------------
    def score(self, peer: str, now: float) -> float:
        led = self.ledgers.get(peer)
        if led is None:
            return 0.5
        good, bad = self._counts_at(led, now)
        return (1.0 + good) / (2.0 + good + bad)

    def trusted(self, peer: str, now: float) -> bool:
        return self.score(peer, now) >= self.threshold

    def receipts(self, peer: str) -> dict[str, int]:
        led = self.ledgers.get(peer)
        return dict(led.counts) if led is not None else dict.fromkeys(KINDS, 0)

    # -- internals -----------------------------------------------------------------------------
    def _counts_at(self, led: Ledger, now: float) -> tuple[float, float]:
        f = math.pow(0.5, max(0.0, now - led.at) / self.half_life)
        return led.good * f, led.bad * f

    def _decayed(self, peer: str, now: float) -> Ledger:
        led = self.ledgers.get(peer)
        if led is None:
            led = self.ledgers[peer] = Ledger(at=now)
            return led
        led.good, led.bad = self._counts_at(led, now)
        led.at = max(led.at, now)
        return led
