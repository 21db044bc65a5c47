"""Who belongs to a StatefulSet's consensus group, and the next membership change (pure).

A group is named after the workload's incarnation (NAMESPACE/NAME@CREATED: a Delete and a new
Deploy make a new group). Members are ids "PEER/STAMP": founders use "PEER/0"; a peer that joins
later uses "PEER/<hex seconds of its daemon's start>.<random>-<n>", so that of two ids of one peer
the later daemon's is recognisably the newer.

- `founders`: the decision that created the workload (`creating`) names them, identically for
  every peer holding it: its replicas' peers, then its other bidders best first, then peers that
  declined (they were alive), up to the group size.
- `desired_peers`: who should be a member now: the replicas' peers, topped up with the live peers
  closest to the workload (XOR distance, as for manifest holders).
- `next_change`: what the leader does next, one change at a time (pysyncobj allows no more):
  add a wanted peer that asked to join; drop the older id of a peer that came back under a new
  one; while the group is larger than its size, drop a peer that is neither wanted nor holding a
  lease (dead ones first) — or, if that is the leader itself, hand leadership over first.
- `refounder`: whether this member should found the group again (see below).

Re-founding. A group whose members are mostly gone for good can never elect a leader again. Its
live members then found a new group for the same workload, "BASE#USEC" (BASE: the group id above,
USEC: when it was re-founded, which also sets its token floor). A member id counts as gone when
its peer asked to join under another id (a daemon does that only after it lost or closed the old
one: proof), or, if enabled, when the failure detector has declared its peer dead for longer than
a bound (an assumption: see README, "Re-forming a group"). Of the live members only the lowest id
founds; the others, and everyone else, find the new group through a join request, which any
member answers for the base id.
"""

from __future__ import annotations

from beemeshd.core.catalog import Decision, distance


REFOUNDED = "#"


def group_id(d: Decision) -> str:
    """The id of the workload's first group (a re-founded one adds "#USEC", see base_of)."""
    return f"{d.key[0]}/{d.key[2]}@{d.created_usec}"


def base_of(gid: str) -> str:
    return gid.split(REFOUNDED, 1)[0]


def refounded_id(gid: str, usec: int) -> str:
    return f"{base_of(gid)}{REFOUNDED}{usec}"


def refounded_at(gid: str) -> int | None:
    """When a re-founded group was founded (µs since the epoch), None for a first group."""
    _, sep, usec = gid.partition(REFOUNDED)
    return int(usec) if sep and usec.isdigit() else None


def refounder(config: list[str], me: str, gone: set[str]) -> bool:
    """Whether member `me` should found its group again: a majority of `config` (member ids) is
    `gone` for good, `me` is not, and it is the lowest live id (the others join it)."""
    live = sorted(set(config) - gone)
    return me in live and len(live) * 2 <= len(config) and live[0] == me


def peer_of(node_id: str) -> str:
    return node_id.rsplit("/", 1)[0]


def stamp(node_id: str) -> int:
    """When the daemon that uses this member id started (0 for founders and odd ids)."""
    part = node_id.rsplit("/", 1)[-1].split(".", 1)[0]
    try:
        return int(part, 16)
    except ValueError:
        return 0


def creating(d: Decision) -> bool:
    """Whether `d` is the decision that created this incarnation of the workload (placement stamps
    its creation and decision times together; any later decision — scale, heal — needs an auction
    in between)."""
    return d.revision == 0 and 0 <= d.decided_usec - d.created_usec < 1000


def founders(d: Decision, size: int) -> list[str]:
    out: list[str] = []
    for _, p in d.assignments:
        if p is not None and p not in out:
            out.append(p)
    for p in [b.get("peer") for b in d.bids] + [p for p, _ in d.declined]:
        if len(out) >= size:
            break
        if isinstance(p, str) and p not in out:
            out.append(p)
    return out


def desired_peers(d: Decision, alive: list[str], size: int) -> list[str]:
    out = []
    for _, p in d.assignments:
        if p is not None and p not in out:
            out.append(p)
    for p in sorted(set(alive) - set(out), key=lambda p: distance(d.key, p)):
        if len(out) >= size:
            break
        out.append(p)
    return out


def next_change(config: list[str], leader: str, keep: set[str], joins: dict[str, str], alive: set[str],
                size: int) -> tuple[str, str] | None:
    """("add" | "remove" | "hand over", member id) or None. `config`: member ids; `leader`: this
    leader's id; `keep`: peers that must stay (wanted, or holding a lease); `joins`: peer -> the
    id it asked to join under."""
    for peer, node in sorted(joins.items()):
        if peer in keep and node not in config:
            return ("add", node)
    by_peer: dict[str, list[str]] = {}
    for n in config:
        by_peer.setdefault(peer_of(n), []).append(n)
    for peer, nodes in sorted(by_peer.items()):
        if len(nodes) > 1:  # it came back under a new id: the old one is gone for good
            newest = max(nodes, key=lambda n: (n == leader, stamp(n), n))
            old = sorted(n for n in nodes if n != newest)[0]
            return ("remove", old)
    if len(config) > size:
        extra = sorted((peer_of(n) in alive, n) for n in config if peer_of(n) not in keep)
        if extra:
            node = extra[0][1]
            return ("hand over", node) if node == leader else ("remove", node)
    return None
