"""Checks a history of stateful pod starts and stops: never two copies of one ordinal (pure).

The property is mutual exclusion of intervals plus monotonic fencing tokens, not
linearizability, so one sort and one sweep per ordinal decide it. An event is
`(t, ordinal, peer, token, kind)`, kind "start" (as the pod may begin to run: record it when
the create is *issued*) or "stop" (record it when the pod is *gone*). Reported:

- overlap: two peers' intervals of one ordinal intersect; each interval is widened by `eps`
  on both sides when timestamps come from different clocks (0 in the simulator: one clock);
  an interval without a stop stays open to the end of the history;
- token-backwards: a start under a token lower than an earlier start's;
- token-reused: a start under the same token as an earlier start by a *different* peer (the
  same holder restarting its pod under its own token is fine);
- stop-without-start, double-start: the history itself is inconsistent (a recording bug, or
  two copies on one peer).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

START, STOP = "start", "stop"


@dataclass(frozen=True)
class Event:
    t: float
    ordinal: str
    peer: str
    token: int
    kind: str  # START | STOP


@dataclass(frozen=True)
class Violation:
    kind: str
    ordinal: str
    t: float
    detail: str

    def __str__(self) -> str:
        return f"{self.kind} of {self.ordinal} at {self.t:.3f}: {self.detail}"


def check(events: Iterable, eps: float = 0.0) -> list[Violation]:
    """Every violation in the history, by ordinal then time. Events may be Event or tuples."""
    by_ordinal: dict[str, list[Event]] = defaultdict(list)
    for e in events:
        e = e if isinstance(e, Event) else Event(*e)
        if e.kind not in (START, STOP):
            raise ValueError(f"unknown event kind {e.kind!r}")
        by_ordinal[str(e.ordinal)].append(e)
    out: list[Violation] = []
    for ordinal in sorted(by_ordinal):
        out += _check_ordinal(ordinal, by_ordinal[ordinal], eps)
    return out


def _check_ordinal(ordinal: str, events: list[Event], eps: float) -> list[Violation]:
    out = []
    # At one instant a stop comes before a start: touching intervals do not overlap.
    events = sorted(events, key=lambda e: (e.t, e.kind == START))
    running: dict[str, Event] = {}
    intervals: list[tuple[float, float, str, int]] = []
    top: Event | None = None  # the start with the highest token so far
    for e in events:
        if e.kind == START:
            if e.peer in running:
                out.append(Violation("double-start", ordinal, e.t, f"{e.peer} started it again under token "
                                     f"{e.token} while running under {running[e.peer].token}"))
                continue
            if top is not None and e.token < top.token:
                out.append(Violation("token-backwards", ordinal, e.t, f"{e.peer} started under token {e.token} "
                                     f"after {top.peer} started under {top.token}"))
            elif top is not None and e.token == top.token and e.peer != top.peer:
                out.append(Violation("token-reused", ordinal, e.t, f"{e.peer} started under token {e.token}, "
                                     f"already used by {top.peer}"))
            if top is None or e.token >= top.token:
                top = e
            running[e.peer] = e
        else:
            start = running.pop(e.peer, None)
            if start is None:
                out.append(Violation("stop-without-start", ordinal, e.t, f"{e.peer} stopped it, never started"))
                continue
            intervals.append((start.t, e.t, e.peer, start.token))
    intervals += [(s.t, math.inf, s.peer, s.token) for s in running.values()]
    intervals.sort()
    active: list[tuple[float, float, str, int]] = []
    for iv in intervals:
        start, end, peer, token = iv
        active = [a for a in active if a[1] + eps > start - eps]
        for a in active:
            if a[2] != peer:
                until = "still running" if a[1] == math.inf else f"until {a[1]:.3f}"
                out.append(Violation("overlap", ordinal, start, f"{peer} (token {token}) started at {start:.3f} "
                                     f"while {a[2]} (token {a[3]}) ran from {a[0]:.3f} {until}"))
        active.append(iv)
    return out


def summary(violations: list[Violation]) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for v in violations:
        counts[v.kind] += 1
    return dict(counts)
