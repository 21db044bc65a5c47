"""Leases with fencing tokens for StatefulSet ordinals (pure: time and log indexes are arguments).

A StatefulSet ordinal may run on one peer at a time. Its consensus group (beemeshd/consensus)
replicates a lease table; three roles act on it, each a small class here:

- `LeaseTable`, the replicated state machine. Its state is one plain dict (the Raft layer
  snapshots it without pickling any class) and its commands are plain tuples:
      ("grant",   ordinal, peer, prev_token, prev_renews, floor)  compare-and-swap
      ("renew",   ordinal, peer, token)
      ("release", ordinal, peer, token)                           the holder stopped its pod
      ("report",  peer, floor)            a member's highest fenced token (see below)
      ("seed",    floor, ordinals)                                a re-founded group
  A re-founded group's table starts `sealed`: nothing is granted before its seed marks every
  ordinal it knows of as held by UNKNOWN under a higher floor, so the grantor waits W for each
  of them — and for any ordinal the seed did not name, W from the seed (the old group's holders
  run at most D past its last commit, which came before the re-founding).
  A grant mints `token = max(token, table floor + log index, floor) + 1`: unique in the group
  (log indexes are) and above every token persisted with the workload. The table floor starts
  at `token_base(creation time)` and is raised by each member's `report` of what its fence
  files hold; the leader grants to a peer only once that peer has reported. So tokens stay
  monotonic when a group is dissolved and created again, even within one second.
- `Holder`, the rules of the peer that runs an ordinal (self-fencing). It starts the pod only
  after a *committed* renewal under its token; before sending a renewal it notes `t_send` on its
  own clock and, once that renewal committed, holds the lease until `t_send + D`; it begins
  stopping at `valid_until − S` (S = stop grace + kill time) so the pod is gone by then; and it
  stops at once when the applied log shows another holder or token.
- `Grantor`, the rules of the leader. Every member notes its local time `seen[o]` when it
  applies a command about ordinal o; a new leader resets every `seen` to now (it cannot know
  when the last renewal under the old leader committed). It re-grants an ordinal whose holder
  is still on record only after `now − seen[o] > W`, `W = D·(1+ρ)/(1−ρ) + margin`.

Why no two copies run: t_send (holder) ≤ commit ≤ seen (grantor) in real time, and each side
measures only a duration on its own clock, so the single clock assumption is a bound ρ on drift
*rate*. The holder uses CLOCK_BOOTTIME (it counts suspend: a woken laptop sees its lease gone),
the grantor CLOCK_MONOTONIC (it does not: a suspended grantor waits longer, never shorter). A
deposed or partitioned leader cannot commit, so it can neither mint tokens nor renew anyone.
What no lease can bound is a holder that stops being scheduled for longer than S while its pod
keeps running (SIGSTOP of the daemon, a frozen VM): the fencing token is what storage and
routing must check against that.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

GRANT, RENEW, RELEASE, SEED, REPORT = "grant", "renew", "release", "seed", "report"
UNKNOWN = "?"  # holder of a seeded ordinal: someone in the group before may still run it
MAX_ORDINAL = 100_000
MAX_TOKEN = 1 << 63  # Varlink's int is 64-bit signed
MAX_PEER = 128


@dataclass(frozen=True)
class Timing:
    """Lease durations in seconds. Defaults suit real peers: the lease (15 s) outlasts any Raft
    failover (≈ 0.4 s measured, ≤ 4 s on the slow path) many times over, so a leader change
    never stops a pod."""

    lease: float = 15.0  # D
    renew_every: float = 5.0  # D/3: two renewals may fail before the holder has to stop
    retry: float = 0.5  # after a failed renewal
    stop_margin: float = 5.0  # S: stop grace + kill time, and a process pause we tolerate
    drift: float = 1e-3  # ρ: NTP slews CLOCK_MONOTONIC by at most 500 ppm
    margin: float = 0.5

    @property
    def regrant_after(self) -> float:
        """W: how long a grantor waits after the last renewal it saw before re-granting."""
        return self.lease * (1 + self.drift) / (1 - self.drift) + self.margin

    def __post_init__(self):
        if not 0 < self.renew_every < self.lease - self.stop_margin:
            raise ValueError("renewals must come more often than the lease minus the stop margin")
        if not 0 <= self.drift < 0.1:
            raise ValueError("drift is a rate bound, e.g. 1e-3")


@dataclass(frozen=True)
class Lease:
    holder: str | None  # peer id; None once released; UNKNOWN after a seed
    token: int
    renews: int  # commands applied under this entry; part of the grant's compare-and-swap


# -- commands -------------------------------------------------------------------------------------

def _int(v, lo: int, hi: int, what: str) -> int:
    if type(v) is not int or not lo <= v < hi:
        raise ValueError(f"{what} must be an integer in [{lo}, {hi})")
    return v


def _peer(v) -> str:
    if type(v) is not str or not 0 < len(v) <= MAX_PEER or v == UNKNOWN:
        raise ValueError("peer must be a peer id")
    return v


def check_command(cmd) -> tuple:
    """The command as a tuple of plain values, or ValueError. Run on everything that arrives
    from another peer before it can enter the log, and again when it is applied."""
    if type(cmd) not in (tuple, list) or not cmd or type(cmd[0]) is not str:
        raise ValueError("a command is a tuple naming its operation")
    op, args = cmd[0], tuple(cmd[1:])
    if op == GRANT and len(args) == 5:
        o, peer, prev, renews, floor = args
        return (GRANT, _int(o, 0, MAX_ORDINAL, "ordinal"), _peer(peer), _int(prev, 0, MAX_TOKEN, "token"),
                _int(renews, 0, MAX_TOKEN, "renews"), _int(floor, 0, MAX_TOKEN, "floor"))
    if op in (RENEW, RELEASE) and len(args) == 3:
        o, peer, token = args
        return (op, _int(o, 0, MAX_ORDINAL, "ordinal"), _peer(peer), _int(token, 0, MAX_TOKEN, "token"))
    if op == REPORT and len(args) == 2:
        return (REPORT, _peer(args[0]), _int(args[1], 0, MAX_TOKEN, "floor"))
    if op == SEED and len(args) == 2:
        floor, ordinals = args
        if type(ordinals) not in (tuple, list) or len(ordinals) > 1000:
            raise ValueError("seed lists at most 1000 ordinals")
        return (SEED, _int(floor, 0, MAX_TOKEN, "floor"),
                tuple(_int(o, 0, MAX_ORDINAL, "ordinal") for o in ordinals))
    raise ValueError(f"unknown command {op!r} with {len(args)} arguments")


def grant(ordinal: int, peer: str, current: Lease | None, floor: int = 0) -> tuple:
    return (GRANT, ordinal, peer, current.token if current else 0, current.renews if current else 0, floor)


def renew(ordinal: int, peer: str, token: int) -> tuple:
    return (RENEW, ordinal, peer, token)


def release(ordinal: int, peer: str, token: int) -> tuple:
    return (RELEASE, ordinal, peer, token)


def report(peer: str, floor: int) -> tuple:
    return (REPORT, peer, floor)


def seed(floor: int, ordinals: Iterable[int]) -> tuple:
    return (SEED, floor, tuple(sorted(set(ordinals))))


# -- the replicated state machine -----------------------------------------------------------------

def new_state(floor: int = 0, sealed: bool = False) -> dict:
    """The table's whole state: {"floor": int, "leases": {ordinal: [holder, token, renews]},
    "reported": [peers that reported their fence floor]}, and "sealed": True until the seed of a
    re-founded group."""
    state = {"floor": floor, "leases": {}, "reported": []}
    if sealed:
        state["sealed"] = True
    return state


def token_base(created_usec: int) -> int:
    """The floor of a group created at `created_usec` (the workload's creation, the same on every
    peer): its creation second above 31 bits of log index. A group created later starts above
    every token of an earlier one (a log would need 2^31 entries to catch up), without asking
    anyone; fence files (`seed`) cover clocks that disagree."""
    return (max(0, created_usec) // 1_000_000) << 31


class LeaseTable:
    """A view over the plain state dict (the Raft layer may replace that dict when it installs a
    snapshot, so a table is cheap to make and never cached across applies)."""

    def __init__(self, state: dict):
        self.state = state

    def get(self, ordinal: int) -> Lease | None:
        row = self.state["leases"].get(ordinal)
        return Lease(*row) if row is not None else None

    def items(self) -> list[tuple[int, Lease]]:
        return sorted((o, Lease(*row)) for o, row in self.state["leases"].items())

    def reported(self, peer: str) -> bool:
        return peer in self.state.get("reported", ())

    @property
    def sealed(self) -> bool:
        return bool(self.state.get("sealed"))

    def max_token(self) -> int:
        return max([self.state["floor"], *(row[1] for row in self.state["leases"].values())])

    def apply(self, cmd, index: int) -> tuple:
        """Apply one committed command at log `index`; ("ok", token) or ("refused", reason).
        Never raises: a state machine that throws would stop the whole group."""
        try:
            cmd = check_command(cmd)
        except ValueError as exc:
            return ("refused", f"invalid: {exc}")
        leases = self.state["leases"]
        op = cmd[0]
        if op == REPORT:
            peer, floor = cmd[1], cmd[2]
            self.state["floor"] = max(self.state["floor"], floor)
            if peer not in self.state.setdefault("reported", []):
                self.state["reported"] = sorted([*self.state["reported"], peer])
            return ("ok", self.state["floor"])
        if op == SEED:
            floor, ordinals = cmd[1], cmd[2]
            self.state["floor"] = max(self.state["floor"], floor)
            self.state.pop("sealed", None)
            self.state["refounded"] = True
            for o in ordinals:
                row = leases.get(o)
                if row is None or row[0] is None:  # free ordinals may be held by the old group
                    leases[o] = [UNKNOWN, max(floor, row[1] if row else 0), (row[2] + 1) if row else 0]
            return ("ok", self.state["floor"])
        o, peer = cmd[1], cmd[2]
        row = leases.get(o)
        if op == GRANT:
            prev, renews, floor = cmd[3], cmd[4], cmd[5]
            cur_token, cur_renews = (row[1], row[2]) if row else (0, 0)
            if (cur_token, cur_renews) != (prev, renews):
                return ("refused", f"lease changed (token {cur_token}, renewal {cur_renews})")
            token = max(cur_token, self.state["floor"] + index, floor) + 1
            leases[o] = [peer, token, 0]
            return ("ok", token)
        token = cmd[3]
        if row is None or row[0] != peer or row[1] != token:
            return ("refused", "not the holder" if row is None or row[0] != peer else "stale token")
        row[2] += 1
        if op == RELEASE:
            row[0] = None
        return ("ok", token)


def ordinal_of(cmd) -> list[int]:
    """The ordinals a command is about."""
    if cmd[0] == SEED:
        return list(cmd[2])
    if cmd[0] == REPORT:
        return []
    return [cmd[1]]


# -- the leader -----------------------------------------------------------------------------------

class Grantor:
    """The grantor's memory: when this member last saw each ordinal's lease change (local
    clock). Kept by every member, used by the leader."""

    def __init__(self, timing: Timing):
        self.timing = timing
        self.seen: dict[int, float] = {}
        self.seeded: float | None = None  # a re-founded group: when this member applied its seed

    def applied(self, cmd, now: float) -> None:
        for o in ordinal_of(cmd):
            self.seen[o] = now
        if cmd[0] == SEED:
            self.seeded = now

    def became_leader(self, table: LeaseTable, now: float) -> None:
        """A new leader cannot know when the last renewal committed: count from now."""
        for o, _ in table.items():
            self.seen[o] = now
        if table.state.get("refounded"):
            self.seeded = now

    def wait_left(self, table: LeaseTable, ordinal: int, now: float) -> float:
        """Seconds before `ordinal` may be granted to someone else (0: now)."""
        lease = table.get(ordinal)
        if lease is None and table.state.get("refounded"):  # the old group may have granted it
            if self.seeded is None:
                self.seeded = now
            return max(0.0, self.timing.regrant_after - (now - self.seeded))
        if lease is None or lease.holder is None:
            return 0.0
        seen = self.seen.setdefault(ordinal, now)  # e.g. learnt from a snapshot: count from now
        return max(0.0, self.timing.regrant_after - (now - seen))

    def grants(self, table: LeaseTable, wanted: Mapping[int, str], now: float,
               floors: Mapping[int, int] | None = None) -> list[tuple]:
        """Grant commands for ordinals whose wanted peer does not hold them and may now: free
        ones at once, held ones after the wait; only to peers that reported their fence floor.
        Proposing is safe on a stale leader too: it cannot commit, and the compare-and-swap
        refuses a grant that raced a renewal."""
        out = []
        if table.sealed:  # a re-founded group before its seed: nothing yet
            return out
        for o, peer in sorted(wanted.items()):
            lease = table.get(o)
            if (lease is not None and lease.holder == peer) or not table.reported(peer):
                continue
            if self.wait_left(table, o, now) > 0:
                continue
            out.append(grant(o, peer, lease, (floors or {}).get(o, 0)))
        return out


# -- the holder -----------------------------------------------------------------------------------

@dataclass
class Held:
    token: int
    valid_until: float | None = None  # holder clock; None until a renewal committed
    sending: float | None = None  # t_send of the renewal in flight
    next_renew: float = -math.inf
    releasing: bool = False  # a release is in flight: the lease is being given back


class Holder:
    """The leases this peer holds, on its own clock (CLOCK_BOOTTIME in the daemon)."""

    def __init__(self, peer: str, timing: Timing, self_stop: bool = True):
        self.peer = peer
        self.timing = timing
        self.held: dict[int, Held] = {}
        self.self_stop = self_stop  # False only for the simulator's negative control

    def sync(self, table: LeaseTable) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """Follow the applied table: (granted, lost) as (ordinal, token) lists. A lost lease
        (another holder or token, or released) means: stop its pod at once."""
        lost = []
        for o, h in list(self.held.items()):
            lease = table.get(o)
            if lease is None or lease.holder != self.peer or lease.token != h.token:
                lost.append((o, h.token))
                del self.held[o]
        granted = []
        for o, lease in table.items():
            if lease.holder == self.peer and o not in self.held:
                self.held[o] = Held(lease.token)
                granted.append((o, lease.token))
        return granted, lost

    def due(self, now: float, ordinals: Iterable[int] | None = None) -> list[tuple]:
        """Renewals to propose now (their t_send is `now`); only for `ordinals` if given."""
        out = []
        for o in sorted(self.held if ordinals is None else set(ordinals) & set(self.held)):
            h = self.held[o]
            if h.sending is None and now >= h.next_renew and not h.releasing:
                h.sending = now
                out.append(renew(o, self.peer, h.token))
        return out

    def renewed(self, ordinal: int, token: int, sent_at: float, ok: bool, now: float) -> None:
        """The outcome of a renewal sent at `sent_at`: ok = committed and applied as ok."""
        h = self.held.get(ordinal)
        if h is None or h.token != token or h.sending != sent_at:
            return
        h.sending = None
        if ok:
            h.valid_until = max(h.valid_until or -math.inf, sent_at + self.timing.lease)
            h.next_renew = sent_at + self.timing.renew_every
        else:
            h.next_renew = now + self.timing.retry

    def releasing(self, ordinal: int, token: int, on: bool = True) -> None:
        """A release of `ordinal` was proposed (on) or failed (off). While one is in flight the
        lease may not start a pod: it is about to be lost, and a pod started under it (the
        ordinal wanted here again meanwhile, e.g. scale 0 then 1) would be stopped when the
        release commits and started again under the next grant — a needless second start."""
        h = self.held.get(ordinal)
        if h is not None and h.token == token:
            h.releasing = on

    def token(self, ordinal: int) -> int | None:
        h = self.held.get(ordinal)
        return h.token if h else None

    def valid_until(self, ordinal: int) -> float | None:
        h = self.held.get(ordinal)
        return h.valid_until if h else None

    def may_run(self, ordinal: int, now: float, headroom: float = 0.0) -> int | None:
        """The token under which the ordinal's pod may run now, or None: it must be stopped
        (or not started: pass `headroom` = how long a start may take)."""
        h = self.held.get(ordinal)
        if h is None or h.valid_until is None or h.releasing:
            return None
        if not self.self_stop:
            return h.token
        return h.token if now + headroom < h.valid_until - self.timing.stop_margin else None

    def forget(self, ordinal: int, token: int | None = None) -> None:
        """After a release committed (or was refused: then the lease is not ours anyway); with
        `token`, only that lease (a newer grant may have been applied since)."""
        h = self.held.get(ordinal)
        if h is not None and token in (None, h.token):
            del self.held[ordinal]
