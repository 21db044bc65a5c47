"""Mesh membership on this peer: create a mesh, invite, join, revoke, report; redeem other
peers' join tokens; keep the mesh-key holder's own credential fresh.

The Varlink methods CreateMesh, Invite, Join, Revoke and GetMembership call this (beemeshctl
mesh init/invite/join/revoke/status). Everything takes effect in the running daemon: a join or
init makes the mesh listen on its real addresses and accept members, without a restart and
without touching running work. `admission` (core/admission.py) is what the mesh enforces
(beemeshd/mesh/base.py); with `mesh_open = true` the mesh gets none and accepts anyone.

Files: the mesh key pair in CONFIG_DIR/mesh/ (beemeshd.mesh_keys), this peer's credential,
revocations and issued tokens in STATE_DIR/mesh/ (beemeshd.credential_store); all 0600.

Renewal: credentials expire (DEFAULT_TTL, a year, unless Invite says otherwise). A peer holding
the mesh key re-issues its own before RENEW_BEFORE; any other member gets a new one by
`beemeshctl mesh invite --peer ID` on a key holder and `beemeshctl mesh join CREDENTIAL` on
itself, which replaces the old one in place.
"""

from __future__ import annotations

import logging
import math
import time

import trio

from beemeshd import errors, mesh_keys
from beemeshd.core import credentials as cr
from beemeshd.core.admission import Admission
from beemeshd.core.protocol import PROTO_JOIN
from beemeshd.credential_store import MembershipFiles

log = logging.getLogger("beemeshd.membership")

SELF_TTL = cr.DEFAULT_TTL
RENEW_BEFORE = 30 * cr.DAY  # or half the lifetime, for short-lived credentials
JOIN_TIMEOUT = 10.0
MAX_TTL = 10 * 365 * cr.DAY

# own_state() reason -> the interface's CredentialState
STATES = {None: "valid", cr.MISSING: "missing", cr.EXPIRED: "expired", cr.REVOKED: "revoked",
          cr.NOT_YET_VALID: "notYetValid"}  # anything else (a bad signature): "invalid"


def _usec(t: float | None) -> int | None:
    return None if t is None else int(t * 1e6)


def _invalid(exc: cr.Invalid) -> errors.InvalidCredential:
    return errors.InvalidCredential(exc.reason, exc.detail)


class MeshMembership:
    def __init__(self, config, peer_id: str, *, wall=time.time):
        self.config = config
        self.peer_id = peer_id
        self.wall = wall
        self.files = MembershipFiles(config.state_dir)
        self.keys = mesh_keys.load(config.config_dir)  # MeshKeyError: the daemon says so and exits
        own, self.contacts = self.files.load_credential()
        mesh = self.keys.mesh_id if self.keys else None
        if own is not None and (own.mesh != mesh or own.peer != peer_id):
            log.warning("ignoring %s: its credential is for mesh %s and peer %s, this is mesh %s and peer %s",
                        self.files.dir, own.mesh[:12], own.peer, (mesh or "-")[:12], peer_id)
            own = None
        self.admission = Admission(peer_id, mesh, own, self.files.load_revocations(mesh) if mesh else None)
        self.mesh = None
        self._renew_if_due()

    @property
    def open(self) -> bool:
        return bool(getattr(self.config, "mesh_open", False))

    def attach(self, mesh) -> None:
        """The daemon's mesh: redeem join tokens on it, persist the revocations it hears."""
        self.mesh = mesh
        mesh.on_revocations = self.files.save_revocations
        mesh.handle(PROTO_JOIN, self._handle_join)
        mesh.add_contacts(self.contacts)

    async def run(self) -> None:
        """Keep a key holder's own credential fresh (checked hourly, sooner near expiry)."""
        while True:
            self._renew_if_due()
            own = self.admission.own
            left = own.expires - self.wall() if own is not None else 3600.0
            await trio.sleep(min(3600.0, max(1.0, left / 4)))

    def _renew_if_due(self) -> None:
        if self.keys is None or not self.keys.can_sign:
            return
        now, own = self.wall(), self.admission.own
        if own is not None and own.serial not in self.admission.revocations.serials:
            lifetime = own.expires - own.issued
            if own.expires - now > min(RENEW_BEFORE, lifetime / 2):
                return
            ttl = lifetime
        else:
            ttl = SELF_TTL
        if self.peer_id in self.admission.revocations.peers:
            return  # a key holder that revoked itself stays out
        cred = cr.issue(self.keys, self.peer_id, now, ttl)
        self._install(cred, self.contacts)
        log.info("issued this peer a new credential of mesh %s (serial %s, until %s)", self.keys.name,
                 cred.serial, time.strftime("%Y-%m-%d", time.gmtime(cred.expires)))
        if self.mesh is not None:
            self.mesh.membership_changed()

    def _install(self, cred: cr.Credential, contacts: list[str], revocations=None) -> None:
        self.files.save_credential(cred, contacts)
        self.contacts = list(contacts)
        self.admission.set_mesh(cred.mesh, cred, revocations)
        if revocations is not None:
            self.files.save_revocations(self.admission.revocations)

    # --- reading ------------------------------------------------------------------------------

    def status(self) -> dict:
        now, own, rl = self.wall(), self.admission.own, self.admission.revocations
        return {
            "meshName": self.keys.name if self.keys else None,
            "meshId": self.keys.mesh_id if self.keys else None,
            "holdsMeshKey": bool(self.keys and self.keys.can_sign),
            "open": self.open,
            "credential": STATES.get(self.admission.own_state(now), "invalid"),
            "serial": own.serial if own else None,
            "issuedUSec": _usec(own.issued) if own else None,
            "expiresUSec": _usec(own.expires) if own else None,
            "revocationVersion": rl.version,
            "revokedPeers": sorted(rl.peers),
            "revokedSerials": sorted(rl.serials),
            "verifiedPeers": sum(self.admission.member(p, now) for p in self.admission.members()),
            "pendingTokens": self.files.pending_tokens(now),
            "keyDirectory": str(mesh_keys.mesh_dir(self.config.config_dir)),
            "stateDirectory": str(self.files.dir),
        }

    # --- changes ------------------------------------------------------------------------------

    async def create(self, name: str | None) -> dict:
        if self.keys is not None:
            raise errors.MeshExists(self.keys.name, self.keys.mesh_id)
        name = (name or self.config.mesh_name or "beemesh").strip()
        if not 0 < len(name) <= 64 or not name.isprintable():
            raise errors.InvalidParameter("name", "1–64 printable characters")
        try:
            self.keys = mesh_keys.create(self.config.config_dir, name)
        except mesh_keys.MeshKeyError:  # created meanwhile by hand
            self.keys = mesh_keys.load(self.config.config_dir)
            raise errors.MeshExists(self.keys.name, self.keys.mesh_id) from None
        self.admission.set_mesh(self.keys.mesh_id, None)
        self._renew_if_due()
        log.info("created mesh %s (%s)", name, self.keys.mesh_id)
        await self._activate()
        return self.status()

    def _signer(self, operation: str):
        if self.keys is None:
            raise errors.MeshKeyRequired(operation, "this peer belongs to no mesh (beemeshctl mesh init creates one)")
        if not self.keys.can_sign:
            raise errors.MeshKeyRequired(operation, f"this peer does not hold the key of mesh {self.keys.name}; "
                                                    "ask the peer that created it")
        return self.keys

    def _invite_contacts(self) -> list[str]:
        if self.mesh is None or not getattr(self.mesh, "running", False):
            return []
        return [a for a in self.mesh.addresses() if "/p2p/" in a][:16]

    def invite(self, peer: str | None, ttl: float | None, token_ttl: float | None) -> dict:
        keys = self._signer("Invite")
        now = self.wall()
        ttl = cr.DEFAULT_TTL if ttl is None else float(ttl)
        if not (0 < ttl <= MAX_TTL):
            raise errors.InvalidParameter("ttlSeconds", f"between 0 and {MAX_TTL:.0f} seconds")
        if peer is not None:
            try:
                cred = cr.issue(keys, peer, now, ttl)
            except cr.Invalid:
                raise errors.InvalidParameter("peer", "not an Ed25519 libp2p peer id") from None
            if peer in self.admission.revocations.peers:
                raise errors.InvalidCredential(cr.REVOKED, f"peer {peer} is revoked in mesh {keys.name}")
            return {"invitation": cred.encode(self._invite_contacts()), "kind": "credential",
                    "serial": cred.serial, "expiresUSec": _usec(cred.expires)}
        token_ttl = cr.DEFAULT_TOKEN_TTL if token_ttl is None else float(token_ttl)
        if not (0 < token_ttl <= MAX_TTL):
            raise errors.InvalidParameter("tokenTtlSeconds", f"between 0 and {MAX_TTL:.0f} seconds")
        redeem = self._invite_contacts()
        if not redeem:
            raise errors.NotImplementedYet("Invite", "a join token is redeemed over the mesh at this peer, and its "
                                           "mesh is not running (mesh_enabled = false?); use --peer PEER_ID")
        token = cr.new_token(keys, redeem, now, token_ttl)
        self.files.add_token(token, ttl, now)
        log.info("issued a join token of mesh %s (id %s, until %s)", keys.name, token.token_id,
                 time.strftime("%Y-%m-%d %H:%M", time.gmtime(token.expires)))
        return {"invitation": token.encode(), "kind": "token", "serial": None, "expiresUSec": _usec(token.expires)}

    async def join(self, text: str) -> dict:
        now = self.wall()
        try:
            doc, contacts = cr.parse_invitation(text)
        except cr.Invalid as exc:
            raise _invalid(exc) from None
        if self.keys is not None and self.keys.mesh_id != doc.mesh:
            raise errors.MeshExists(self.keys.name, self.keys.mesh_id)
        revocations = None
        if isinstance(doc, cr.JoinToken):
            cred, revocations = await self._redeem(doc, now)
        else:
            cred = doc
        same = self.admission.mesh == cred.mesh
        try:
            cr.verify(cred, mesh=cred.mesh, peer=self.peer_id, now=now,
                      revocations=self.admission.revocations if same else revocations)
        except cr.Invalid as exc:
            raise _invalid(exc) from None
        if self.keys is None:
            self.keys = mesh_keys.save_public(self.config.config_dir, cred.name, bytes.fromhex(cred.mesh))
        self._install(cred, contacts, revocations)
        log.info("joined mesh %s (%s) with credential %s until %s", cred.name, cred.mesh, cred.serial,
                 time.strftime("%Y-%m-%d", time.gmtime(cred.expires)))
        await self._activate()
        return self.status()

    async def _redeem(self, token: cr.JoinToken, now: float) -> tuple[cr.Credential, cr.RevocationList | None]:
        if token.expires <= now:
            raise errors.InvalidCredential(cr.EXPIRED, "this join token expired; ask for a new one")
        if token.issuer == self.peer_id:
            raise errors.InvalidCredential(cr.WRONG_PEER, "this peer issued the token: run the join on the peer "
                                                          "that should join")
        if self.mesh is None or not getattr(self.mesh, "running", False):
            raise errors.NotImplementedYet("Join", "a join token is redeemed over the mesh, which is not running "
                                           "here (mesh_enabled = false?); ask for a credential (invite --peer)")
        from beemeshd.mesh import RemoteError

        try:
            reply = await self.mesh.request(token.issuer, PROTO_JOIN, {"secret": token.secret}, JOIN_TIMEOUT,
                                            addresses=list(token.redeem))
        except RemoteError as exc:
            reason, _, detail = exc.reason.partition(": ")
            known = reason in (cr.TOKEN_USED, cr.TOKEN_UNKNOWN, cr.REVOKED, cr.MALFORMED, "refused")
            raise errors.InvalidCredential(reason if known else "refused", detail if known else exc.reason) from None
        try:
            cred = cr.Credential.from_wire(reply.get("credential"))
            rl = cr.RevocationList.from_wire(reply["revocations"], token.mesh) if reply.get("revocations") else None
        except cr.Invalid as exc:
            raise _invalid(exc) from None
        if cred.mesh != token.mesh:
            raise errors.InvalidCredential(cr.WRONG_MESH, "the issuer answered with a credential of another mesh")
        return cred, rl

    async def _activate(self) -> None:
        """This peer just got a (new) credential: open up the running mesh."""
        if self.mesh is None:
            return
        from beemeshd.mesh import listen_addresses, mdns_name

        self.mesh.add_contacts(self.contacts)
        if self.mesh.admission is not None and getattr(self.mesh, "running", False):
            await self.mesh.open_up(listen_addresses(self.config, member=True),
                                    mdns_name(self.config, self.admission.mesh))
        self.mesh.membership_changed()

    async def revoke(self, peer: str | None, serial: str | None) -> dict:
        keys = self._signer("Revoke")
        if not peer and not serial:
            raise errors.InvalidParameter("peer", "give a peer id or a credential serial")
        if peer == self.peer_id:
            raise errors.InvalidParameter("peer", "this peer cannot revoke itself")
        if serial is not None and (len(serial) != 16 or any(c not in "0123456789abcdef" for c in serial)):
            raise errors.InvalidParameter("serial", "16 lowercase hex digits")
        try:
            rl = self.admission.revocations.adding(keys, self.wall(), peers=[peer] if peer else [],
                                                   serials=[serial] if serial else [])
        except cr.Invalid:
            raise errors.InvalidParameter("peer", "not an Ed25519 libp2p peer id") from None
        self.files.save_revocations(rl)
        if self.mesh is not None and self.mesh.admission is not None:
            await self.mesh.publish_revocations(rl)  # expels the peer here and tells every member
        else:
            self.admission.apply_revocations(rl)
        log.info("revoked %s in mesh %s (revocation list version %d)", peer or f"credential {serial}",
                 keys.name, rl.version)
        return self.status()

    # --- the issuer's side of a join ------------------------------------------------------------

    async def _handle_join(self, env) -> dict:
        """A peer redeems a join token we issued: one credential bound to the peer that asks."""
        if self.keys is None or not self.keys.can_sign:
            raise cr.Invalid("refused", "this peer cannot issue credentials (it does not hold the mesh key)")
        secret = env.payload.get("secret")
        if not isinstance(secret, str) or len(secret) != 64:
            raise cr.Invalid(cr.MALFORMED, "a join request is {secret: 64 hex digits}")
        now = self.wall()
        if env.sender in self.admission.revocations.peers:
            raise cr.Invalid(cr.REVOKED, f"peer {env.sender} is revoked in this mesh")
        ttl = self.files.redeem(cr.token_id(secret), now)
        cred = cr.issue(self.keys, env.sender, now, ttl if math.isfinite(ttl) and ttl > 0 else cr.DEFAULT_TTL)
        self.admission.admit(env.sender, cred.wire(), now)  # a member now: its connection survives vetting
        log.info("join token redeemed by %s: credential %s", env.sender, cred.serial)
        return {"credential": cred.wire(), "revocations": self.admission.revocations.wire()}
