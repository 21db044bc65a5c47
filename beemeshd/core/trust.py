"""Trust: what each peer has earned in this peer's eyes, from receipts it saw itself.

Every peer sees every decision and every status report (both are gossiped), so every peer keeps
its own ledger without asking anyone. A decision that assigns a replica to a peer opens a
*promise*: that peer owes a report of the replica running. The promise closes as:
- delivered      +1   reported running/ready (before `deliver_within` seconds)
- undelivered    −2   not running when `deliver_within` ran out
- contradicted   −2   reported failed for `fail_grace` seconds on end — or failing when the
                      replica was moved away — while the same workload ran on another peer: it
                      claimed it could run it, and could not
- (no blame)          moved away before it was due and not failing (its peer died or was
                      distrusted), deleted, failing where the workload fails everywhere (the
                      manifest's fault, not the peer's), or refused by the peer's node-local
                      policy (it was placed there without a bid: kept across an update, say)
and, outside promises:
- invalid        −0.5 a signed message from it that was stale, replayed or malformed

A failure must last `fail_grace` seconds because a healthy peer reports "failed" for a moment
while a pod starts. Score = (1 + good) / (2 + good + bad), a Beta-reputation mean: 0.5 with no
evidence; every count decays with half-life `half_life`, so a peer drifts back toward neutral.
Peers below `threshold` get no work: their bids are declined by the asker.
Pure: times are arguments; `runs_elsewhere(key, peer)` (the shell's status table) says whether
the workload runs on a peer other than `peer`.
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
    failing_since: float | None = None  # first "failed" report with no running one since


class TrustBook:
    def __init__(self, *, half_life: float = 3600.0, threshold: float = 0.25, deliver_within: float = 60.0,
                 fail_grace: float = 3.0, runs_elsewhere=lambda key, peer: True):
        self.half_life = half_life
        self.threshold = threshold
        self.deliver_within = deliver_within
        self.fail_grace = fail_grace
        self.runs_elsewhere = runs_elsewhere
        # key -> whether status reports for it still reach this peer (in a large mesh only its
        # holders and deciding peer hear them; a peer's role moves with the mesh)
        self.judges = lambda key: True
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
        k = (key, replica)
        old = self.promises.get(k)
        if (old is not None and old.peer == peer) or self.settled.get(k) == peer:
            return  # same peer keeps it (a new generation of the same workload): nothing new owed
        if old is not None:  # moved away from a peer that had not delivered it
            self._close_unmet(old, now, moved=True)
        self.settled.pop(k, None)
        self.promises[k] = Promise(key, replica, peer, generation, now + self.deliver_within)

    def released(self, key: tuple, replica: str | None = None) -> None:
        """The workload (or one replica) was deleted or scaled away: nothing owed any more."""
        for table in (self.promises, self.settled):
            for k in [k for k in table if k[0] == key and (replica is None or k[1] == replica)]:
                del table[k]

    def reported(self, key: tuple, replica: str, peer: str, state: str, now: float) -> None:
        """A status row from `peer` about a replica it owes: running/ready settles it well;
        failed starts (or continues) the failure clock."""
        p = self.promises.get((key, replica))
        if p is None or p.peer != peer:
            return
        if state in ("running", "ready"):
            del self.promises[(key, replica)]
            self.settled[(key, replica)] = peer
            self.record(peer, DELIVERED, now)
        elif state == "refused":  # its node-local policy says no: it never offered to run it
            del self.promises[(key, replica)]
        elif state == "failed" and p.failing_since is None:
            self.promises[(key, replica)] = replace(p, failing_since=now)

    def tick(self, now: float) -> list[Promise]:
        """Close the promises judged unmet now (due, or failing past the grace while the workload
        runs elsewhere); returns those held against their peer: their replicas should move."""
        out = []
        for p in list(self.promises.values()):
            if not self.judges(p.key):  # reports no longer reach this peer: not its to judge
                del self.promises[(p.key, p.replica)]
                continue
            failing = (p.failing_since is not None and now - p.failing_since >= self.fail_grace
                       and self.runs_elsewhere(p.key, p.peer))
            if p.due <= now or failing:
                del self.promises[(p.key, p.replica)]
                if self._close_unmet(p, now, moved=False):
                    out.append(p)
        return out

    def _close_unmet(self, p: Promise, now: float, *, moved: bool) -> bool:
        """Record what an unmet promise says of its peer; True when it was held against it."""
        if p.failing_since is not None:
            if not self.runs_elsewhere(p.key, p.peer):
                return False  # fails everywhere: the manifest's fault
            self.record(p.peer, CONTRADICTED, now)
            return True
        if p.due <= now:
            self.record(p.peer, UNDELIVERED, now)
            return True
        return False  # moved early, not failing: its peer died or was distrusted
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
