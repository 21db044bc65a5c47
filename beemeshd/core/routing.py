"""Kademlia geometry for partial views (pure): points, buckets, the table a large view keeps.

A view that holds every peer costs O(n) per peer and O(n²) for the mesh — fine for hundreds of
peers, not for tens of thousands. Beyond `Timings.view_max` members a peer keeps a Kademlia
routing table instead (core/membership.py):

- the `near` peers closest to itself by XOR distance (its neighbourhood: the holders of any
  workload whose key falls near this peer are among them, so a holder knows its co-holders);
- per bucket (peers sharing exactly i leading bits with this one) at most `bucket_size`,
  the longest observed alive first (Kademlia's preference for old contacts: they are the ones
  most likely to stay) — by age class (doubling: 1–2 s, 2–4 s, … alive), and within a class the
  nearest to this peer. Strictly oldest first, every peer of a large mesh would route through
  the same few oldest peers of each region (the simulator's busiest peer worked 9× the median);
  within a class the choice differs from peer to peer;
- pinned peers, whatever their distance (the runners of workloads this peer holds: it must
  notice when they die).

Anything else is found by an iterative lookup (mesh/base.py `lookup`): ask the closest peers
known for the ones they know closer to the target, until nobody knows closer — O(log n) rounds.
"""

from __future__ import annotations

import functools
import hashlib
import heapq
import math
from collections.abc import Iterable

BITS = 256


@functools.lru_cache(maxsize=1 << 16)
def point(name: str) -> int:
    """Where a peer id or a workload key sits in the 256-bit XOR space."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest(), "big")


def bucket(a: int, b: int) -> int:
    """The number of leading bits a and b share (BITS when equal): b's bucket as seen from a."""
    return BITS - (a ^ b).bit_length()


def closest(target: int, names: Iterable[str], k: int) -> list[str]:
    """The k names nearest to target, nearest first."""
    return heapq.nsmallest(k, set(names), key=lambda n: target ^ point(n))


def age_class(seconds: float) -> int:
    """0 below 1 s alive, then one more per doubling."""
    return int(math.log2(1.0 + max(0.0, seconds)))


def table(me: int, members: Iterable[tuple[str, bool, float]], near: int, bucket_size: int,
          now: float) -> set[str]:
    """Which members a partial view keeps: the `near` closest to `me`, and per bucket the
    `bucket_size` alive longest (by age class; the nearest first within one).
    members: (name, alive, alive_since)."""
    items = list(members)
    keep = set(closest(me, (n for n, _, _ in items), near))
    buckets: dict[int, list[tuple[bool, int, int, str]]] = {}
    for n, alive, since in items:
        p = point(n)
        buckets.setdefault(bucket(me, p), []).append((not alive, -age_class(now - since), me ^ p, n))
    for entries in buckets.values():
        entries.sort()
        keep.update(e[-1] for e in entries[:bucket_size])
    return keep


def size_estimate(me: int, names: Iterable[str], near: int) -> float:
    """The mesh size implied by how close the `near` nearest peers are (peers spread uniformly
    over the XOR space: the j-th nearest sits at about j/n of it). Counts this peer."""
    ds = sorted(me ^ point(n) for n in names)[:near]
    if not ds:
        return 1.0
    if len(ds) < near:  # fewer peers than a neighbourhood: we know them all
        return float(len(ds) + 1)
    return max(float(near + 1), near * (1 << BITS) / max(ds[-1], 1))
