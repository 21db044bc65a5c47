"""Leases and the group seen from a peer outside a StatefulSet's consensus group (Get's
Replica.lease, Explain's group).

Only members replicate the lease table, and most peers of a large mesh are not members. Status
rows do not carry leases: the expiry moves with every renewal (every D/3), and a row that changes
is published again to the whole mesh. So a non-member asks when someone asks it: before Get
replies, `refresh()` asks the peers the ordinals are placed on (members that hold them: they know
their own expiry exactly) and one more member, concurrently, within ASK_TIMEOUT, over the
signed request /beemesh/leases/1; each answers from its own table (`Stateful.lease_of`). The
answers are shown for SHOW_FOR seconds (List on this peer shows them too while fresh). For each
ordinal the holder's own answer wins, then the one with the highest token. Each member also
answers with its view of the group (members, leader, term: `Stateful.group_of`), which Explain
asks for the same way; the view with the highest term wins, one naming a leader over one that
does not (a member that just joined knows neither).

What is shown is for people: no peer decides anything from a lease it did not apply itself.
"""

from __future__ import annotations

import logging

import trio

from beemeshd import errors
from beemeshd.core import lease as L
from beemeshd.core.catalog import Key
from beemeshd.core.groups import base_of, desired_peers, group_id

log = logging.getLogger("beemeshd.stateful")

PROTO_LEASES = "/beemesh/leases/1"
ASK_TIMEOUT = 0.5
SHOW_FOR = 3.0
MAX_ASKED = 4
MAX_MEMBERS = 16  # more than any group has (consensus_group_size is 3 or 5)


def _row(x) -> tuple[int, dict] | None:
    """A well-formed answer row as (ordinal, Lease dict), else None."""
    if not isinstance(x, dict):
        return None
    o, holder, token, expires = x.get("ordinal"), x.get("holder"), x.get("token"), x.get("expiresUSec")
    if (type(o) is not int or not 0 <= o < L.MAX_ORDINAL or type(holder) is not str or not 0 < len(holder) <= L.MAX_PEER
            or type(token) is not int or not 0 <= token < L.MAX_TOKEN or type(expires) is not int or expires < 0):
        return None
    return o, {"holder": holder, "token": token, "expiresUSec": expires}


def _group(x) -> dict | None:
    """A well-formed group view as a ConsensusGroup dict, else None."""
    if not isinstance(x, dict):
        return None
    members, leader, term = x.get("members"), x.get("leader"), x.get("term")
    if (type(members) is not list or not 0 < len(members) <= MAX_MEMBERS
            or any(type(p) is not str or not 0 < len(p) <= L.MAX_PEER for p in members)
            or not (leader is None or (type(leader) is str and leader in members))
            or type(term) is not int or not 0 <= term < L.MAX_TOKEN):
        return None
    return {"members": list(members), "leader": leader, "term": term}


class RemoteLeases:
    def __init__(self, stateful):
        self.st = stateful  # beemeshd.stateful.Stateful
        # key -> (when, group id, rows, group view)
        self.shown: dict[Key, tuple[float, str, dict[int, dict], dict | None]] = {}

    async def handle(self, env) -> dict:
        """A peer asks for a group's leases: this member's view of each ordinal."""
        gid = env.payload.get("group")
        if not isinstance(gid, str):
            raise ValueError("expected {group}")
        # any generation of the group (a re-founded one is BASE#USEC; askers know only BASE)
        m = next((x for x in self.st.members.values() if base_of(x.gid) == base_of(gid)), None)
        if m is None:
            return {"leases": []}
        rows = []
        for o, _ in m.machine.table().items():
            view = self.st.lease_of(m.key, o)
            if view is not None:
                rows.append({"ordinal": o, **view})
        return {"leases": rows, "group": self.st.group_of(m.key)}

    def _fresh(self, key: Key):
        """What members answered about the workload's current group, if recent enough."""
        entry = self.shown.get(key)
        if entry is None or trio.current_time() - entry[0] > SHOW_FOR:
            return None
        d = self.st.placement.catalog.entries.get(key)
        if d is None or d.deleted or group_id(d) != entry[1]:
            return None
        return entry

    def get(self, key: Key, ordinal: int) -> dict | None:
        """A fresh answer about this ordinal, if one was fetched (only for the current group)."""
        entry = self._fresh(key)
        return entry[2].get(ordinal) if entry else None

    def group(self, key: Key) -> dict | None:
        """A fresh view of the group from its members, if one was fetched."""
        entry = self._fresh(key)
        return entry[3] if entry else None

    async def refresh(self, name: str, namespace: str | None, kind: str | None) -> None:
        """Before Get: if this peer is outside the StatefulSet's group, ask members."""
        try:
            d = self.st.placement.find(name, namespace or "default", kind)
        except errors.WorkloadNotFound:
            return  # Get itself says so
        if d.key[1] != "StatefulSet" or d.key in self.st.members:
            return
        gid = group_id(d)
        alive = self.st.placement.alive()
        targets: list[str] = []
        holders = [p for _, p in d.assignments if p is not None]
        for p in holders + desired_peers(d, alive, self.st.settings.group_size):
            if p not in targets and p != self.st.peer_id and p in alive and len(targets) < MAX_ASKED:
                targets.append(p)
        answers: dict[str, list] = {}
        groups: list[dict] = []

        async def ask(peer: str) -> None:
            try:
                reply = await self.st.mesh.request(peer, PROTO_LEASES, {"group": gid}, ASK_TIMEOUT)
            except Exception as exc:  # unreachable, or not a member: the others may answer
                log.debug("leases of %s from %s: %s", gid, peer, exc)
                return
            rows = reply.get("leases")
            answers[peer] = rows if isinstance(rows, list) else []
            view = _group(reply.get("group"))
            if view is not None:
                groups.append(view)

        async with trio.open_nursery() as n:
            for p in targets:
                n.start_soon(ask, p)
        merged: dict[int, dict] = {}
        for peer, rows in answers.items():
            for x in rows[:L.MAX_ORDINAL]:
                row = _row(x)
                if row is None:
                    continue
                o, lease = row
                have = merged.get(o)
                own = lease["holder"] == peer  # the holder's answer: its own expiry
                if have is None or (own, lease["token"]) > (have["holder"] == have.get("_from"), have["token"]):
                    merged[o] = {**lease, "_from": peer}
        now = trio.current_time()
        for k in [k for k, v in self.shown.items() if now - v[0] > SHOW_FOR]:
            del self.shown[k]
        # the view with the highest term, one naming a leader first; max keeps the first of equals
        view = max(groups, key=lambda g: (g["term"], g["leader"] is not None), default=None)
        self.shown[d.key] = (now, gid, {o: {k: v for k, v in x.items() if k != "_from"}
                                        for o, x in merged.items()}, view)
