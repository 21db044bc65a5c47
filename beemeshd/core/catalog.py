"""The mesh-wide catalog of workloads and where their replicas run (pure).

Every change to a workload — apply, scale, delete, re-placement after a peer died — is a
`Decision`: the manifest at a generation plus the peer chosen for each replica, with the bids and
rules that chose them. Decisions travel by gossip; each peer merges them into its catalog with
one deterministic order (generation, then decision time, then a hash), so peers that saw the same
decisions agree, whatever order they arrived in — this also settles the duplicates two sides of a
healed partition may have created: the losing side's replicas are no longer assigned and stop.

Durability: the manifest of a workload is *kept* (persisted) by the k peers closest to it in the
Kademlia sense — smallest XOR distance between sha256(workload key) and sha256(peer id) among the
live peers — and by the peers that run its replicas. Any of them can answer for it after the
peer that took the Deploy is gone.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from beemeshd.core import routing
from beemeshd.core.protocol import verify_detached

Key = tuple[str, str, str]  # (namespace, kind, name)
DECISION_DOMAIN = b"beemesh-decision/1\0"  # what a decision's signature is over: not a message, not a record
HISTORY = 20


@dataclass(frozen=True)
class Decision:
    key: Key
    generation: int  # of the workload's spec (apply, scale, delete)
    manifest: dict | None  # None: the workload was deleted (a tombstone)
    assignments: tuple[tuple[str, str | None], ...]  # (replica, peer id or None = unplaced)
    rules: tuple[tuple[str, str], ...] = ()  # (replica, why)
    bids: tuple[dict, ...] = ()  # interface Bid objects, for Explain
    declined: tuple[tuple[str, str], ...] = ()  # (peer, reason)
    origin: str = ""
    decided_usec: int = 0
    created_usec: int = 0
    reason: str = "apply"  # apply | scale | delete | heal
    revision: int = 0  # re-placements within one generation (healing after a peer died)
    # The origin's signature over the rest (core/protocol.py sign_detached, DECISION_DOMAIN), so a
    # decision passed on by anyone (anti-entropy, hand-over, a holder's answer) proves who made it.
    signature: str = ""
    # Who asked, on the origin peer. Node-local policies see it when a bid is asked, and again
    # when a runner is handed a replica (Placement.wanted). Signed when set (older decisions: None).
    user: str | None = None

    def order(self) -> tuple:
        cached = self.__dict__.get("_order")  # asked on every merge and anti-entropy round
        if cached is None:
            digest = hashlib.sha256(f"{self.origin}\0{self.decided_usec}\0{self.assignments}".encode()).hexdigest()
            cached = (self.generation, self.revision, self.decided_usec, digest)
            object.__setattr__(self, "_order", cached)  # not a field: eq, repr and replace() ignore it
        return cached

    @property
    def deleted(self) -> bool:
        return self.manifest is None

    def peer_of(self, replica: str) -> str | None:
        return dict(self.assignments).get(replica)

    def to_wire(self) -> dict:
        return {**self.signed_part(), "signature": self.signature}

    def signed_part(self) -> dict:
        return {
            "key": list(self.key), "generation": self.generation, "manifest": self.manifest,
            "assignments": [list(a) for a in self.assignments], "rules": [list(r) for r in self.rules],
            "bids": list(self.bids), "declined": [list(d) for d in self.declined], "origin": self.origin,
            "decidedUSec": self.decided_usec, "createdUSec": self.created_usec, "reason": self.reason,
            "revision": self.revision, **({"user": self.user} if self.user is not None else {}),
        }

    def verify(self) -> None:
        """That its origin signed it (protocol.Forged otherwise)."""
        verify_detached(self.origin, DECISION_DOMAIN, self.signed_part(), self.signature)

    @classmethod
    def from_wire(cls, d: dict) -> "Decision":
        """Strict: any shape error raises ValueError (the message is then dropped as malformed)."""
        try:
            key = tuple(d["key"])
            if len(key) != 3 or not all(isinstance(x, str) for x in key):
                raise ValueError("bad key")
            assignments = tuple((str(r), None if p is None else str(p)) for r, p in d["assignments"])
            out = cls(key, int(d["generation"]), d["manifest"], assignments,
                      tuple((str(r), str(w)) for r, w in d.get("rules", ())),
                      tuple(dict(b) for b in d.get("bids", ())),
                      tuple((str(p), str(w)) for p, w in d.get("declined", ())),
                      str(d.get("origin", "")), int(d.get("decidedUSec", 0)), int(d.get("createdUSec", 0)),
                      str(d.get("reason", "apply")), int(d.get("revision", 0)), str(d.get("signature", "")),
                      d.get("user"))
            if out.user is not None and not isinstance(out.user, str):
                raise ValueError("user is not a string")
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed decision: {exc}") from None
        if out.manifest is not None and not isinstance(out.manifest, dict):
            raise ValueError("malformed decision: manifest is not an object")
        return out


def point_of(key: Key) -> int:
    """Where a workload sits in the XOR space (its holders are the peers nearest to it)."""
    return routing.point("/".join(key))


def distance(key: Key, peer_id: str) -> int:
    return point_of(key) ^ routing.point(peer_id)


def holders(key: Key, peers: list[str], k: int) -> list[str]:
    """The k peers that keep a workload's manifest: closest by XOR distance."""
    return routing.closest(point_of(key), peers, k)


@dataclass
class Catalog:
    self_id: str
    k: int = 3
    entries: dict[Key, Decision] = field(default_factory=dict)
    history: dict[Key, list[Decision]] = field(default_factory=dict)
    # keys of live workloads with replicas here: mine() runs on every agent pass, and a large
    # mesh's catalog is mostly other peers' work
    _mine: dict[Key, None] = field(default_factory=dict, repr=False, compare=False)

    def merge(self, d: Decision) -> bool:
        """Take a decision if it is newer than what we have; True when the catalog changed."""
        cur = self.entries.get(d.key)
        if cur is not None and cur.order() >= d.order():
            return False
        self.entries[d.key] = d
        if not d.deleted and any(p == self.self_id for _, p in d.assignments):
            self._mine[d.key] = None
        else:
            self._mine.pop(d.key, None)
        hist = self.history.setdefault(d.key, [])
        hist.append(d)
        del hist[:-HISTORY]
        return True

    def live(self) -> list[Decision]:
        return [d for d in self.entries.values() if not d.deleted]

    def mine(self) -> list[tuple[Decision, list[str]]]:
        """Workloads with replicas assigned to this peer, and those replicas."""
        out = []
        for key in self._mine:
            d = self.entries[key]
            out.append((d, [r for r, p in d.assignments if p == self.self_id]))
        return out

    def keeps(self, key: Key, alive: list[str]) -> bool:
        """Whether this peer must persist the workload (a holder, or it runs a replica)."""
        d = self.entries.get(key)
        if d is None:
            return False
        return self.self_id in holders(key, alive + [self.self_id], self.k) or any(
            p == self.self_id for _, p in d.assignments)

    def orphaned(self, alive: set[str]) -> dict[Key, list[str]]:
        """Replicas assigned to peers that are not alive (or to nobody), per workload."""
        out = {}
        for d in self.live():
            lost = [r for r, p in d.assignments if p is None or p not in alive]
            if lost:
                out[d.key] = lost
        return out

    def healer(self, key: Key, alive: list[str]) -> str | None:
        """The one live peer that re-places a workload's orphans: its closest live holder, so
        every peer that sees the same live set agrees without talking. Two sides of a partition
        may each heal; `merge` settles that once they see each other's decisions."""
        hs = holders(key, alive, self.k)
        return hs[0] if hs else None
