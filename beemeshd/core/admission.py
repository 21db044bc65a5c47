"""Who is a member of this peer's mesh right now (pure: time is an argument, wall-clock seconds).

The mesh (beemeshd.mesh.base) asks `member(peer, now)` for every message and request it
receives — a dict lookup and a float comparison, so that dropping a non-member's flood costs less
than checking a signature. A peer becomes a member here when it presents a credential that
verifies (core/credentials.py): in a hello on connect, or inside its signed peer record. Each
credential's Ed25519 signature is checked once; the cache remembers it by signature.

Revocation lists are merged here (the newest wins); a newer list, and expiry (`sweep`), return
the peers that just stopped being members, so that the mesh forgets and disconnects them.

`ready(now)` says whether this peer itself holds a valid credential: without one it belongs to
no mesh, refuses everyone, and does not dial anyone.
"""

from __future__ import annotations

from beemeshd.core import credentials as cr
from beemeshd.core.protocol import Rejected


class NonMember(Rejected):
    """A message from (or forwarded by) a peer without a valid credential for this mesh."""

    counter = "nonMemberMessages"


class Admission:
    def __init__(self, self_id: str, mesh: str | None = None, own: cr.Credential | None = None,
                 revocations: cr.RevocationList | None = None):
        self.self_id = self_id
        self.mesh: str | None = None
        self.own: cr.Credential | None = None
        self._own_signed = False  # its signature verified (checked once, when it is set)
        self.revocations = cr.RevocationList.empty(mesh or "")
        self._members: dict[str, cr.Credential] = {}  # peer -> a verified, unrevoked credential
        self._wires: dict[str, dict] = {}  # peer -> that credential as it arrived (a cheap re-check)
        self._checked: dict[str, cr.Credential] = {}  # peer -> the credential whose signature we checked last
        if mesh is not None:
            self.set_mesh(mesh, own, revocations)

    # --- this peer --------------------------------------------------------------------------

    def set_mesh(self, mesh: str, own: cr.Credential | None, revocations: cr.RevocationList | None = None) -> None:
        """Belong to `mesh` with credential `own` (init, join, renewal). Refuses a credential of
        another mesh or peer; keeps the members verified so far when the mesh stays the same."""
        if own is not None and (own.mesh != mesh or own.peer != self.self_id):
            raise cr.Invalid(cr.WRONG_PEER if own.mesh == mesh else cr.WRONG_MESH,
                             "this credential is not for this peer in this mesh")
        if mesh != self.mesh:
            self._members.clear()
            self._wires.clear()
            self._checked.clear()
            self.revocations = cr.RevocationList.empty(mesh)
        self.mesh, self.own = mesh, own
        self._own_signed = own is not None and cr.signature_ok(mesh, own.payload(), own.signature)
        if revocations is not None and revocations.mesh == mesh and revocations.newer_than(self.revocations):
            self.revocations = revocations

    def own_state(self, now: float) -> str | None:
        """None when this peer's own credential is valid, else why not (a credentials reason)."""
        if self.mesh is None or self.own is None:
            return cr.MISSING
        try:
            cr.verify(self.own, mesh=self.mesh, peer=self.self_id, now=now, revocations=self.revocations,
                      signature_checked=self._own_signed)
        except cr.Invalid as exc:
            return exc.reason
        return None

    def ready(self, now: float) -> bool:
        return self.own_state(now) is None

    def own_wire(self) -> dict | None:
        return self.own.wire() if self.own is not None else None

    # --- other peers --------------------------------------------------------------------------

    def member(self, peer: str, now: float) -> bool:
        c = self._members.get(peer)
        return c is not None and c.expires > now

    def members(self) -> list[str]:
        return list(self._members)

    def credential_of(self, peer: str) -> cr.Credential | None:
        return self._members.get(peer)

    def admit(self, peer: str, wire, now: float) -> cr.Credential:
        """Verify the credential `peer` presents (a wire dict, or None); remember it. Invalid otherwise."""
        if self.mesh is None:
            raise cr.Invalid(cr.MISSING, "this peer belongs to no mesh")
        if wire is None:
            raise cr.Invalid(cr.MISSING, f"{peer} presented no credential")
        known = self._members.get(peer)
        if known is not None and self._wires.get(peer) == wire:  # the one we verified (a record refresh)
            if known.expires <= now:
                raise cr.Invalid(cr.EXPIRED, f"credential {known.serial} of {peer} expired")
            return known
        cred = cr.Credential.from_wire(wire)
        if peer == self.self_id:  # our own record, echoed back by gossip or view sync: not a peer
            return cr.verify(cred, mesh=self.mesh, peer=peer, now=now, revocations=self.revocations,
                             signature_checked=self._own_signed and cred == self.own)
        # whole-credential equality, not just the signature: a copy with another expiry must fail
        cr.verify(cred, mesh=self.mesh, peer=peer, now=now, revocations=self.revocations,
                  signature_checked=self._checked.get(peer) == cred)
        self._checked[peer] = cred
        if known is None or cred.expires >= known.expires:  # a renewal replaces; an older one does not
            self._members[peer] = cred
            self._wires[peer] = wire
        return self._members[peer]

    def sweep(self, now: float) -> list[str]:
        """Members whose credential expired: forgotten here, returned for the mesh to drop."""
        gone = [p for p, c in self._members.items() if c.expires <= now]
        for p in gone:
            del self._members[p]
            self._wires.pop(p, None)
        return gone

    # --- revocation ---------------------------------------------------------------------------

    def offer_revocations(self, wire) -> list[str] | None:
        """A revocation list heard from a peer: None if invalid or not newer than ours (nothing
        changes), else the peers it expelled. cr.Invalid for a forged one."""
        if wire is None or self.mesh is None:
            return None
        rl = cr.RevocationList.from_wire(wire, self.mesh)
        if not rl.newer_than(self.revocations):
            return None
        return self.apply_revocations(rl)

    def apply_revocations(self, rl: cr.RevocationList) -> list[str]:
        """Adopt a verified list (also our own, after Revoke); the members it expels."""
        self.revocations = rl
        gone = [p for p, c in self._members.items() if rl.revokes(c)]
        for p in gone:
            del self._members[p]
            self._wires.pop(p, None)
        return gone


class TokenBucket:
    """At most `rate` events per second on average, `burst` at once (for non-members' hellos and
    join requests: each costs us a signature check)."""

    def __init__(self, rate: float, burst: float):
        self.rate, self.burst = rate, burst
        self.tokens = burst
        self.last: float | None = None

    def take(self, now: float) -> bool:
        if self.last is not None:
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False
