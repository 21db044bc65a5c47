"""Placement by bids (pure): who can run a task, how good each offer is, and who wins.

A Deploy is announced as a `Task`. Every peer evaluates it against its own state: either a `Bid`
(with the score parts and how many replicas it can take) or a `Decline` with the reason. The
peer that collects the bids calls `choose()`; every peer given the same bids computes the same
winners, because ties are broken by a hash of (task id, peer id), never by arrival order.

Score = 0.4·fit + 0.1·locality + 0.3·reliability + 0.2·trust, each part in [0, 1]:
- fit: the smallest share of CPU, memory and pod slots left free after placing one replica
  (spreads load: an emptier peer scores higher);
- locality: 1 on the peer that took the Deploy (its image cache is warm, its user is there);
- reliability: half uptime (log-scaled, full marks at one day: long-lived peers are preferred,
  as the seed's Kademlia idea), half delivery record (Laplace-smoothed delivered/promised);
- trust: the evaluating mesh's trust in the bidder (0.5 = neutral until trust lands).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

WEIGHTS = {"fit": 0.4, "locality": 0.1, "reliability": 0.3, "trust": 0.2}
DAY = 86400.0


@dataclass(frozen=True)
class Task:
    task_id: str  # unique per (workload, generation, round)
    workload: str  # "namespace/kind/name"
    generation: int
    replicas: tuple[str, ...]  # replica names to place
    cpu_millis: int  # requests of one replica
    memory_bytes: int
    host_ports: tuple[tuple[int, str], ...] = ()  # (port, protocol) one replica publishes
    node_selector: tuple[tuple[str, str], ...] = ()
    images: tuple[str, ...] = ()
    origin: str = ""  # peer that took the Deploy


@dataclass(frozen=True)
class PeerState:
    """What a peer knows about itself when it evaluates a task."""

    peer_id: str
    cpu_free_millis: int
    cpu_total_millis: int
    memory_free_bytes: int
    memory_total_bytes: int
    pods_free: int
    pods_total: int
    uptime_seconds: float = 0.0
    labels: tuple[tuple[str, str], ...] = ()
    delivered: int = 0  # receipts: replicas promised and reported running in time
    failed: int = 0  # replicas promised and not delivered
    trust: float = 0.5
    images: frozenset[str] | None = None  # None: unknown (assume pullable)
    # (port, protocol, workload) published here; another workload's replica cannot share a hostPort
    # (its own replicas can: each binds its own loopback address)
    host_ports_in_use: frozenset[tuple] = frozenset()
    loopback_publishing: bool = True  # replicas of one workload get their own 127.x address
    runtime_available: bool = True


@dataclass(frozen=True)
class Bid:
    peer_id: str
    task_id: str
    capacity: int  # replicas of this task it can take
    fit: float
    locality: float
    reliability: float
    trust: float

    @property
    def score(self) -> float:
        return (WEIGHTS["fit"] * self.fit + WEIGHTS["locality"] * self.locality
                + WEIGHTS["reliability"] * self.reliability + WEIGHTS["trust"] * self.trust)


@dataclass(frozen=True)
class Decline:
    peer_id: str
    task_id: str
    reason: str


@dataclass(frozen=True)
class Placement:
    replica: str
    peer_id: str | None
    rule: str


@dataclass
class Decision:
    placements: list[Placement] = field(default_factory=list)

    def peers(self) -> dict[str, str | None]:
        return {p.replica: p.peer_id for p in self.placements}


def reliability(uptime_seconds: float, delivered: int, failed: int) -> float:
    up = min(1.0, math.log1p(max(0.0, uptime_seconds)) / math.log1p(DAY))
    record = (delivered + 1) / (delivered + failed + 2)
    return 0.5 * up + 0.5 * record


def evaluate(task: Task, me: PeerState, *, policy_denial: str | None = None) -> Bid | Decline:
    """This peer's answer to a task: how many replicas it could take, or why none."""
    def decline(reason: str) -> Decline:
        return Decline(me.peer_id, task.task_id, reason)

    if policy_denial:
        return decline(f"policy: {policy_denial}")
    if not me.runtime_available:
        return decline("container runtime unavailable")
    labels = dict(me.labels)
    for key, value in task.node_selector:
        if labels.get(key) != value:
            return decline(f"nodeSelector {key}={value} does not match (has {labels.get(key, '<unset>')!r})")
    if me.images is not None:
        missing = [i for i in task.images if i not in me.images]
        if missing:
            return decline(f"image {missing[0]} is not available here")
    taken = {(p, proto) for p, proto, *owner in me.host_ports_in_use if not owner or owner[0] != task.workload}
    busy = [f"{p}/{proto}" for p, proto in task.host_ports if (p, proto) in taken]
    if busy:
        return decline(f"hostPort {busy[0]} already in use")
    limits = [me.pods_free]
    if task.cpu_millis:
        limits.append(me.cpu_free_millis // task.cpu_millis)
    if task.memory_bytes:
        limits.append(me.memory_free_bytes // task.memory_bytes)
    if task.host_ports and not me.loopback_publishing:
        limits.append(1)  # one address: a hostPort can be bound once
    capacity = min(limits + [len(task.replicas)])
    if capacity <= 0:
        if me.pods_free <= 0:
            return decline("no pod slots left")
        if task.cpu_millis and me.cpu_free_millis < task.cpu_millis:
            return decline(f"needs {task.cpu_millis}m CPU, {me.cpu_free_millis}m free")
        return decline(f"needs {_mib(task.memory_bytes)} memory, {_mib(me.memory_free_bytes)} free")
    fit = min(
        _left(me.cpu_free_millis - task.cpu_millis, me.cpu_total_millis),
        _left(me.memory_free_bytes - task.memory_bytes, me.memory_total_bytes),
        _left(me.pods_free - 1, me.pods_total),
    )
    return Bid(me.peer_id, task.task_id, capacity, round(fit, 6),
               1.0 if me.peer_id == task.origin else 0.0,
               round(reliability(me.uptime_seconds, me.delivered, me.failed), 6),
               round(min(1.0, max(0.0, me.trust)), 6))


def tiebreak(task_id: str, peer_id: str) -> str:
    return hashlib.sha256(f"{task_id}\0{peer_id}".encode()).hexdigest()


def rank(task_id: str, bids: list[Bid]) -> list[Bid]:
    """Best first; equal scores ordered by hash, so every peer agrees. Scores are computed once
    and hashes only inside runs of equal scores (with 1,000 bidders both costs showed)."""
    scored = sorted(((-round(b.score, 9), b) for b in bids), key=lambda x: x[0])
    out: list[Bid] = []
    i = 0
    while i < len(scored):
        j = i + 1
        while j < len(scored) and scored[j][0] == scored[i][0]:
            j += 1
        if j - i == 1:
            out.append(scored[i][1])
        else:
            out += sorted((x[1] for x in scored[i:j]), key=lambda b: tiebreak(task_id, b.peer_id))
        i = j
    return out


def choose(task: Task, bids: list[Bid], *, keep: dict[str, str] | None = None,
           elsewhere: dict[str, int] | None = None) -> Decision:
    """Winners for the task's replicas: spread over distinct peers first, then doubled up on the
    best peers with room. `keep` maps replicas to peers they already run on (kept if that peer
    still bid and has room: placements are stable); `elsewhere` counts the workload's replicas
    outside this task per peer (e.g. the survivors' when re-placing), so spreading counts them."""
    ranked = rank(task.task_id, [b for b in bids if b.task_id == task.task_id and b.capacity > 0])
    room = {b.peer_id: b.capacity for b in ranked}
    held: dict[str, int] = dict(elsewhere or {})
    decision = Decision()
    todo = []
    for replica in task.replicas:
        peer = (keep or {}).get(replica)
        if peer is not None and room.get(peer, 0) > 0:
            room[peer] -= 1
            held[peer] = held.get(peer, 0) + 1
            decision.placements.append(Placement(replica, peer, "kept: already runs there"))
        else:
            todo.append(replica)
    for replica in todo:
        # Fewest replicas of this task first (spread), then the best rank: the first ranked peer
        # with room at the lowest held count wins.
        choice, fewest = None, None
        for b in ranked:
            if room[b.peer_id] > 0:
                n = held.get(b.peer_id, 0)
                if fewest is None or n < fewest:
                    choice, fewest = b, n
                    if n == 0:
                        break
        if choice is None:
            decision.placements.append(Placement(replica, None, "no capacity: no bidder has room left"))
            continue
        n = held.get(choice.peer_id, 0)
        rule = (f"highest score {choice.score:.3f} among peers without a replica" if n == 0
                else f"spread: replica {n + 1} on the best peer with the fewest (score {choice.score:.3f})")
        room[choice.peer_id] -= 1
        held[choice.peer_id] = n + 1
        decision.placements.append(Placement(replica, choice.peer_id, rule))
    order = {r: i for i, r in enumerate(task.replicas)}
    decision.placements.sort(key=lambda p: order[p.replica])
    return decision


def duplicate_winner(replica: str, generation: int, peers: list[str]) -> str:
    """When a healed partition leaves one replica running on several peers, the one they all
    keep: lowest hash of (replica, generation, peer). The others stop theirs."""
    return min(peers, key=lambda p: tiebreak(f"{replica}@{generation}", p))


def _left(free: float, total: float) -> float:
    if total <= 0:
        return 0.0
    return max(0.0, min(1.0, free / total))


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.0f}Mi"
