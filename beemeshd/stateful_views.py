"""Leases seen from a peer outside a StatefulSet's consensus group (Get's Replica.lease).

Only members replicate the lease table, and most peers of a large mesh are not members. Status
rows do not carry leases: the expiry moves with every renewal (every D/3), and a row that changes
is published again to the whole mesh. So a non-member asks when someone asks it: before Get
replies, `refresh()` asks the peers the ordinals are placed on (members that hold them: they know
their own expiry exactly) and one more member, concurrently, within ASK_TIMEOUT, over the
signed request /beemesh/leases/1; each answers from its own table (`Stateful.lease_of`). The
answers are shown for SHOW_FOR seconds (List on this peer shows them too while fresh). For each
ordinal the holder's own answer wins, then the one with the highest token.

What is shown is for people: no peer decides anything from a lease it did not apply itself.
"""

from __future__ import annotations

import logging

import trio

from beemeshd import errors
from beemeshd.core import lease as L
from beemeshd.core.catalog import Key
from beemeshd.core.groups import desired_peers, group_id

log = logging.getLogger("beemeshd.stateful")

PROTO_LEASES = "/beemesh/leases/1"
ASK_TIMEOUT = 0.5
SHOW_FOR = 3.0
MAX_ASKED = 4


def _row(x) -> tuple[int, dict] | None:
    """A well-formed answer row as (ordinal, Lease dict), else None."""
    if not isinstance(x, dict):
        return None
    o, holder, token, expires = x.get("ordinal"), x.get("holder"), x.get("token"), x.get("expiresUSec")
    if (type(o) is not int or not 0 <= o < L.MAX_ORDINAL or type(holder) is not str or not 0 < len(holder) <= L.MAX_PEER
            or type(token) is not int or not 0 <= token < L.MAX_TOKEN or type(expires) is not int or expires < 0):
        return None
    return o, {"holder": holder, "token": token, "expiresUSec": expires}


class RemoteLeases:
    def __init__(self, stateful):
        self.st = stateful  # beemeshd.stateful.Stateful
        self.shown: dict[Key, tuple[float, str, dict[int, dict]]] = {}  # key -> (when, group id, rows)

    async def handle(self, env) -> dict:
        """A peer asks for a group's leases: this member's view of each ordinal."""
        gid = env.payload.get("group")
        if not isinstance(gid, str):
            raise ValueError("expected {group}")
        m = next((x for x in self.st.members.values() if x.gid == gid), None)
        if m is None:
            return {"leases": []}
        rows = []
        for o, _ in m.machine.table().items():
            view = self.st.lease_of(m.key, o)
            if view is not None:
                rows.append({"ordinal": o, **view})
        return {"leases": rows}

    def get(self, key: Key, ordinal: int) -> dict | None:
        """A fresh answer about this ordinal, if one was fetched (only for the current group)."""
        entry = self.shown.get(key)
        if entry is None or trio.current_time() - entry[0] > SHOW_FOR:
            return None
        d = self.st.placement.catalog.entries.get(key)
        if d is None or d.deleted or group_id(d) != entry[1]:
            return None
        return entry[2].get(ordinal)

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

        async def ask(peer: str) -> None:
            try:
                reply = await self.st.mesh.request(peer, PROTO_LEASES, {"group": gid}, ASK_TIMEOUT)
            except Exception as exc:  # unreachable, or not a member: the others may answer
                log.debug("leases of %s from %s: %s", gid, peer, exc)
                return
            rows = reply.get("leases")
            answers[peer] = rows if isinstance(rows, list) else []

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
        self.shown[d.key] = (now, gid, {o: {k: v for k, v in x.items() if k != "_from"}
                                                         for o, x in merged.items()})
