"""Re-forming a StatefulSet's group that lost its majority for good (README, "Re-forming a group").

A group whose member majority is gone for good can never elect a leader again. This peer's part:

- which member ids are gone (`gone`): proved — the id's peer joined afresh under another id
  (`retired`, noted by Stateful's join handler) or answered a probe that it has no member under it
  (`probe` / `answer_probe`) — or, unless `Settings.refound_after` is 0, assumed: its peer has
  been down (failure detector: dead, or out of the view) that long while this peer sees most of
  its view alive;
- `refound`: this member (the lowest live id: core/groups.py `refounder`) closes the old group
  and founds "BASE#USEC" alone; its table is sealed until the seed `Stateful._lead` proposes
  first, with `seed_floor` above every token the old group could mint; the grantor then waits W.

An id answered as gone is never used afterwards (`disowned`; a founder's "PEER/0" is marked used),
so a proof cannot be contradicted by a member that starts later.
"""

from __future__ import annotations

import logging
import time

import trio

from beemeshd.core import lease as L
from beemeshd.core.catalog import Decision
from beemeshd.core.groups import base_of, peer_of, refounded_at, refounded_id

log = logging.getLogger("beemeshd.stateful")

PROTO_RAFT_JOIN = "/beemesh/raft-join/1"  # probes travel with the join requests


class Refounding:
    def __init__(self, stateful):
        self.st = stateful  # beemeshd.stateful.Stateful
        self.down_since: dict[str, float] = {}  # peer -> when this peer first saw it dead or gone
        self.retired: dict[str, set[str]] = {}  # base group id -> member ids proved gone
        self.disowned: set[str] = set()  # this peer's member ids it answered as gone: never used

    def note_down(self, alive: list[str]) -> None:
        now, up = self.st.grantor_clock(), set(alive)
        for p in list(self.down_since):
            if p in up:
                del self.down_since[p]
        for m in self.st.members.values():
            for p in {peer_of(n) for n in m.group.members} - up:
                self.down_since.setdefault(p, now)

    def gone(self, m) -> set[str]:
        """The member ids of `m`'s group that are gone for good, as far as this peer can tell."""
        gone = set(self.retired.get(base_of(m.gid), ())) & set(m.group.members)
        after = self.st.settings.refound_after
        if after > 0:
            views = self.st.mesh.peers()
            seen_alive = sum(1 for v in views if v.state in ("self", "alive", "suspect"))
            if seen_alive * 2 > len(views):  # not cut off from most of the mesh
                now = self.st.grantor_clock()
                gone |= {n for n in m.group.members if peer_of(n) != self.st.peer_id
                         and now - self.down_since.get(peer_of(n), now) >= after}
        return gone

    def answer_probe(self, gid: str, node: str) -> dict:
        """Whether this peer's member id `node` in group `gid` is gone for good: it has no member
        under it now, and never will."""
        if peer_of(node) != self.st.peer_id:
            raise ValueError("a peer answers only for its own member ids")
        if any(m.node_id == node for m in self.st.members.values()):
            return {"gone": False}
        self.disowned.add(node)  # e.g. a join under it still waiting for its answer: dropped
        base = base_of(gid)
        if node.endswith("/0") and base not in self.st.used:  # a founder that has not founded yet
            self.st.used[base] = "-"
            self.st.files.set_group(base, "-")
        # where it is now, if in a later generation of the group: the prober joins that one
        now = next((m.gid for m in self.st.members.values() if base_of(m.gid) == base), None)
        return {"gone": True, **({"group": now} if now else {})}

    async def probe(self, m) -> None:
        """Ask the live peers of `m`'s membership whether their ids in it are gone (a peer that left
        the group and is not wanted in it any more never joins again, so never says so itself)."""
        alive = set(self.st.placement.alive())
        ids = [n for n in m.group.members if peer_of(n) in alive and peer_of(n) != self.st.peer_id
               and n not in self.retired.get(base_of(m.gid), ())]

        async def ask(n: str) -> None:
            try:
                reply = await self.st.mesh.request(peer_of(n), PROTO_RAFT_JOIN, {"group": m.gid, "probe": n}, 1.0)
            except Exception as exc:
                log.debug("probe of %s: %s", n, exc)
                return
            if reply.get("gone") is not True:
                return
            later = reply.get("group")
            if (isinstance(later, str) and base_of(later) == base_of(m.gid)
                    and (refounded_at(later) or 0) > (refounded_at(m.gid) or 0)):
                # it left for a re-founded generation: join that (re-founding here too would make
                # two groups, each with a lease table, for one workload)
                m.leader_hint = peer_of(n)
                return
            self.retired.setdefault(base_of(m.gid), set()).add(n)

        async with trio.open_nursery() as nursery:
            for n in ids:
                nursery.start_soon(ask, n)

    def refound(self, m, d: Decision) -> None:
        """Found `m`'s group again, alone: the others join it."""
        st = self.st
        old = m.machine.table()
        usec = max(time.time_ns() // 1000, (refounded_at(m.gid) or 0) + 1)
        gid = refounded_id(m.gid, usec)
        gone = sorted(set(m.group.members) - {m.node_id})
        log.warning("group %s lost its majority for good (%s): founding it again as %s", m.gid, ", ".join(gone), gid)
        st._close(m, forget=False)
        node = f"{st.peer_id}/{st.driver.incarnation}-{next(st._ids)}"
        new = st._new_member(d, node, [node], passive=False, gid=gid)
        # the old group mints tokens below its floor + 2^31 (floor: its first second << 31): beat both
        new.seed_floor = max(old.max_token() + 1, L.token_base((refounded_at(m.gid) or d.created_usec) + 1_000_000))
        new.seed_ordinals = frozenset(o for o, _ in old.items())
