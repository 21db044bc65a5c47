"""Mesh membership documents (pure): credentials, one-time join tokens, revocation lists.

A mesh is named by its Ed25519 public key (the mesh id, hex; beemeshd.mesh_keys holds the pair).
- A **credential** says "peer P belongs to mesh M from `issued` until `expires`", signed by M's
  key; `serial` names this one credential (so a leaked one can be revoked alone). Peers present
  it on connect and inside their signed peer record; it is public, like a certificate.
- A **join token** is a bearer secret plus where to redeem it: the joining peer sends the secret
  over an authenticated mesh stream to the issuing peer (which holds the mesh key and remembers
  the token's hash), and gets back a credential bound to its own peer id. Tokens are one-time:
  the issuer records consumed ones. A token is not signed; the credential it yields is checked
  against the mesh id written in the token.
- A **revocation list** (peer ids and serials, versioned, signed) spreads over gossip; the
  highest version wins.

Every signed payload names its type, so a signature over one kind of document can never pass
for another (the same key also signs mesh-wide policies). Time is an argument (seconds since the
epoch); nothing here does I/O. Text forms, for `beemeshctl mesh invite/join`, are a prefix and
base64url JSON: "bmc1." credential, "bmj1." join token.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from beemeshd.core.protocol import Malformed, canonical, public_key_from_peer_id

CREDENTIAL_TYPE = "beemesh/credential/1"
REVOCATIONS_TYPE = "beemesh/revocations/1"
TOKEN_TYPE = "beemesh/join-token/1"
CREDENTIAL_PREFIX = "bmc1."
TOKEN_PREFIX = "bmj1."

DAY = 86400.0
DEFAULT_TTL = 365 * DAY  # long-lived: renewal is a re-invite (see README, Mesh membership)
DEFAULT_TOKEN_TTL = DAY
SKEW = 300.0  # a credential issued this far in "the future" is still accepted (clocks differ)
MAX_TEXT = 8192
MAX_REVOKED = 10_000

# Why a credential or token is refused (InvalidCredential.reason in the interface).
MALFORMED, BAD_SIGNATURE, WRONG_MESH, WRONG_PEER = "malformed", "badSignature", "wrongMesh", "wrongPeer"
NOT_YET_VALID, EXPIRED, REVOKED, MISSING = "notYetValid", "expired", "revoked", "missing"
TOKEN_UNKNOWN, TOKEN_USED = "tokenUnknown", "tokenUsed"


class Invalid(Exception):
    """A credential, token or revocation list that must be refused; `reason` is one of the codes above."""

    def __init__(self, reason: str, detail: str):
        self.reason, self.detail = reason, detail
        super().__init__(f"{reason}: {detail}")


def _b64(doc: dict) -> str:
    return base64.urlsafe_b64encode(canonical(doc)).decode().rstrip("=")


def _unb64(text: str) -> dict:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        doc = json.loads(raw)
    except (ValueError, TypeError) as exc:
        raise Invalid(MALFORMED, f"not base64url JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise Invalid(MALFORMED, "not a JSON object")
    return doc


def _num(doc: dict, key: str) -> float:
    v = doc.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise Invalid(MALFORMED, f"{key} must be a number")
    return v  # as sent (int or float): payload() must reproduce the signed bytes exactly


def _string(doc: dict, key: str, limit: int = 256) -> str:
    v = doc.get(key)
    if not isinstance(v, str) or not 0 < len(v) <= limit:
        raise Invalid(MALFORMED, f"{key} must be a non-empty string of at most {limit} characters")
    return v


def _mesh_id(doc: dict) -> str:
    v = _string(doc, "mesh", 64)
    if len(v) != 64 or any(c not in "0123456789abcdef" for c in v):
        raise Invalid(MALFORMED, "mesh must be 64 lowercase hex digits (an Ed25519 public key)")
    return v


def signature_ok(mesh_id: str, payload: dict, signature: str) -> bool:
    try:
        VerifyKey(bytes.fromhex(mesh_id)).verify(canonical(payload), bytes.fromhex(signature))
        return True
    except (BadSignatureError, ValueError, TypeError):
        return False


def _check_peer_id(peer: str) -> str:
    try:
        public_key_from_peer_id(peer)
    except Malformed as exc:
        raise Invalid(MALFORMED, str(exc)) from None
    return peer


# --- credentials --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Credential:
    mesh: str  # mesh id: the mesh key's public key, hex
    name: str  # the mesh's name (a label; the id is what counts)
    peer: str  # libp2p peer id it is bound to
    issued: float
    expires: float
    serial: str  # 16 hex digits, random
    signature: str  # hex, by the mesh key over payload()

    def payload(self) -> dict:
        return {"type": CREDENTIAL_TYPE, "mesh": self.mesh, "name": self.name, "peer": self.peer,
                "issued": self.issued, "expires": self.expires, "serial": self.serial}

    def wire(self) -> dict:
        """As carried in peer records and hello messages."""
        return {"payload": self.payload(), "sig": self.signature}

    def encode(self, contacts: Iterable[str] = ()) -> str:
        """Text for `beemeshctl mesh join`; `contacts` (unsigned hints): multiaddrs of members."""
        doc = self.wire()
        if contacts:
            doc["contacts"] = list(contacts)
        return CREDENTIAL_PREFIX + _b64(doc)

    @classmethod
    def from_wire(cls, doc) -> "Credential":
        """Parse (not verify) a credential; Invalid(malformed) unless exactly that shape."""
        if not isinstance(doc, dict) or not {"payload", "sig"} <= set(doc) <= {"payload", "sig", "contacts"}:
            raise Invalid(MALFORMED, "a credential is {payload, sig}")
        p, sig = doc["payload"], doc["sig"]
        if not isinstance(p, dict) or set(p) != {"type", "mesh", "name", "peer", "issued", "expires", "serial"}:
            raise Invalid(MALFORMED, "credential payload has the wrong fields")
        if p["type"] != CREDENTIAL_TYPE:
            raise Invalid(MALFORMED, f"not a credential: {str(p['type'])[:40]!r}")
        if not isinstance(sig, str) or len(sig) != 128:
            raise Invalid(MALFORMED, "sig must be 128 hex digits")
        serial = _string(p, "serial", 16)
        if len(serial) != 16 or any(c not in "0123456789abcdef" for c in serial):
            raise Invalid(MALFORMED, "serial must be 16 lowercase hex digits")
        return cls(_mesh_id(p), _string(p, "name", 64), _check_peer_id(_string(p, "peer", 128)),
                   _num(p, "issued"), _num(p, "expires"), serial, sig)


def issue(signer, peer: str, now: float, ttl: float = DEFAULT_TTL, serial: str | None = None) -> Credential:
    """A credential for `peer`, signed by `signer` (beemeshd.mesh_keys.MeshKeys or alike:
    .mesh_id, .name, .sign(payload) -> hex)."""
    if not (ttl > 0 and math.isfinite(ttl)):
        raise ValueError("ttl must be a positive number of seconds")
    _check_peer_id(peer)
    cred = Credential(signer.mesh_id, signer.name, peer, float(round(now, 3)), float(round(now + ttl, 3)),
                      serial or os.urandom(8).hex(), "")
    return Credential(**{**_fields(cred), "signature": signer.sign(cred.payload())})


def _fields(c: Credential) -> dict:
    return {k: getattr(c, k) for k in Credential.__slots__}


def verify(cred: Credential, *, mesh: str, peer: str, now: float, revocations: "RevocationList | None" = None,
           signature_checked: bool = False) -> Credential:
    """`cred` if it admits `peer` to mesh `mesh` (id, hex) at `now`; Invalid otherwise.
    `signature_checked`: the caller already verified this exact credential (a cache)."""
    if cred.mesh != mesh:
        raise Invalid(WRONG_MESH, f"credential of mesh {cred.name} ({cred.mesh[:12]}…), not {mesh[:12]}…")
    if not signature_checked and not signature_ok(mesh, cred.payload(), cred.signature):
        raise Invalid(BAD_SIGNATURE, f"credential {cred.serial} is not signed by the mesh key")
    if cred.peer != peer:
        raise Invalid(WRONG_PEER, f"credential {cred.serial} belongs to {cred.peer}, presented by {peer}")
    if cred.issued > now + SKEW:
        raise Invalid(NOT_YET_VALID, f"credential {cred.serial} is issued {cred.issued - now:.0f} s in the future")
    if cred.expires <= now:
        raise Invalid(EXPIRED, f"credential {cred.serial} of {peer} expired {now - cred.expires:.0f} s ago")
    if revocations is not None and revocations.revokes(cred):
        raise Invalid(REVOKED, f"credential {cred.serial} of {peer} is revoked")
    return cred


# --- revocation lists ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RevocationList:
    mesh: str
    version: int  # 0: the empty list nobody signed
    issued: float
    peers: frozenset[str]
    serials: frozenset[str]
    signature: str = ""

    @classmethod
    def empty(cls, mesh: str) -> "RevocationList":
        return cls(mesh, 0, 0.0, frozenset(), frozenset())

    def payload(self) -> dict:
        return {"type": REVOCATIONS_TYPE, "mesh": self.mesh, "version": self.version, "issued": self.issued,
                "peers": sorted(self.peers), "serials": sorted(self.serials)}

    def wire(self) -> dict | None:
        return {"payload": self.payload(), "sig": self.signature} if self.version else None

    def revokes(self, cred: Credential) -> bool:
        return cred.peer in self.peers or cred.serial in self.serials

    def digest(self) -> str:
        return hashlib.sha256(canonical(self.payload())).hexdigest()

    def newer_than(self, other: "RevocationList") -> bool:
        """Highest version wins; two different lists of one version (two key holders revoking at
        once) are ordered by digest, so every peer settles on the same one."""
        return (self.version, self.digest()) > (other.version, other.digest())

    def adding(self, signer, now: float, peers: Iterable[str] = (), serials: Iterable[str] = ()) -> "RevocationList":
        """The next version, with more revoked peers/serials, signed by `signer` (the mesh key)."""
        for p in peers:
            _check_peer_id(p)
        new = RevocationList(self.mesh, self.version + 1, float(round(now, 3)), self.peers | frozenset(peers),
                             self.serials | frozenset(serials))
        if len(new.peers) + len(new.serials) > MAX_REVOKED:
            raise ValueError(f"a revocation list holds at most {MAX_REVOKED} entries")
        return RevocationList(**{k: getattr(new, k) for k in RevocationList.__slots__ if k != "signature"},
                              signature=signer.sign(new.payload()))

    @classmethod
    def from_wire(cls, doc, mesh: str) -> "RevocationList":
        """Parse and verify a signed list of mesh `mesh`; Invalid otherwise."""
        if not isinstance(doc, dict) or set(doc) != {"payload", "sig"}:
            raise Invalid(MALFORMED, "a revocation list is {payload, sig}")
        p, sig = doc["payload"], doc["sig"]
        if not isinstance(p, dict) or set(p) != {"type", "mesh", "version", "issued", "peers", "serials"}:
            raise Invalid(MALFORMED, "revocation list payload has the wrong fields")
        if p["type"] != REVOCATIONS_TYPE:
            raise Invalid(MALFORMED, "not a revocation list")
        version = p["version"]
        if isinstance(version, bool) or not isinstance(version, int) or not 0 < version < 2**63:
            raise Invalid(MALFORMED, "version must be a positive integer")
        lists = []
        for key in ("peers", "serials"):
            v = p[key]
            if not isinstance(v, list) or len(v) > MAX_REVOKED or not all(isinstance(x, str) and len(x) <= 128
                                                                          for x in v):
                raise Invalid(MALFORMED, f"{key} must be a list of strings")
            lists.append(frozenset(v))
        if _mesh_id(p) != mesh:
            raise Invalid(WRONG_MESH, "revocation list of another mesh")
        if not isinstance(sig, str) or not signature_ok(mesh, p, sig):
            raise Invalid(BAD_SIGNATURE, "revocation list is not signed by the mesh key")
        return cls(mesh, version, _num(p, "issued"), lists[0], lists[1], sig)


# --- join tokens ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JoinToken:
    mesh: str
    name: str
    secret: str  # 64 hex digits: whoever holds it may redeem it, once
    redeem: tuple[str, ...]  # multiaddrs with /p2p/<issuer> where it can be redeemed
    expires: float

    @property
    def token_id(self) -> str:
        return token_id(self.secret)

    @property
    def issuer(self) -> str:
        return self.redeem[0].rpartition("/p2p/")[2]

    def encode(self) -> str:
        return TOKEN_PREFIX + _b64({"type": TOKEN_TYPE, "mesh": self.mesh, "name": self.name, "secret": self.secret,
                                    "redeem": list(self.redeem), "expires": self.expires})

    @classmethod
    def from_doc(cls, doc: dict) -> "JoinToken":
        if set(doc) != {"type", "mesh", "name", "secret", "redeem", "expires"} or doc["type"] != TOKEN_TYPE:
            raise Invalid(MALFORMED, "not a join token")
        secret = _string(doc, "secret", 64)
        if len(secret) != 64 or any(c not in "0123456789abcdef" for c in secret):
            raise Invalid(MALFORMED, "secret must be 64 lowercase hex digits")
        redeem = doc["redeem"]
        if not isinstance(redeem, list) or not 0 < len(redeem) <= 16 or not all(
                isinstance(a, str) and a.startswith("/") and "/p2p/" in a for a in redeem):
            raise Invalid(MALFORMED, "redeem must list multiaddrs ending in /p2p/<peer id>")
        if len({a.rpartition("/p2p/")[2] for a in redeem}) != 1:
            raise Invalid(MALFORMED, "redeem addresses must all name the issuing peer")
        _check_peer_id(redeem[0].rpartition("/p2p/")[2])
        return cls(_mesh_id(doc), _string(doc, "name", 64), secret, tuple(redeem), _num(doc, "expires"))


def new_token(signer, redeem: Iterable[str], now: float, ttl: float = DEFAULT_TOKEN_TTL) -> JoinToken:
    """A fresh one-time token of `signer`'s mesh, redeemable at `redeem` (this peer's addresses)."""
    if not (ttl > 0 and math.isfinite(ttl)):
        raise ValueError("token ttl must be a positive number of seconds")
    return JoinToken.from_doc({"type": TOKEN_TYPE, "mesh": signer.mesh_id, "name": signer.name,
                               "secret": os.urandom(32).hex(), "redeem": list(redeem),
                               "expires": float(round(now + ttl, 3))})


def token_id(secret: str) -> str:
    """What the issuer stores: a hash, so its files never hold a redeemable secret."""
    return hashlib.sha256(b"beemesh/join-token/" + secret.encode()).hexdigest()[:32]


def parse_invitation(text: str) -> tuple[Credential | JoinToken, list[str]]:
    """A `mesh join` argument: (credential, contact multiaddrs) or (token, its redeem addresses)."""
    text = "".join(str(text).split())  # pasted text may wrap
    if len(text) > MAX_TEXT:
        raise Invalid(MALFORMED, f"invitation longer than {MAX_TEXT} characters")
    if text.startswith(CREDENTIAL_PREFIX):
        doc = _unb64(text[len(CREDENTIAL_PREFIX):])
        contacts = doc.get("contacts", [])
        if not isinstance(contacts, list) or len(contacts) > 16 or not all(
                isinstance(a, str) and a.startswith("/") and len(a) < 256 for a in contacts):
            raise Invalid(MALFORMED, "contacts must be a list of multiaddrs")
        return Credential.from_wire(doc), contacts
    if text.startswith(TOKEN_PREFIX):
        token = JoinToken.from_doc(_unb64(text[len(TOKEN_PREFIX):]))
        return token, list(token.redeem)
    raise Invalid(MALFORMED, f"an invitation starts with {CREDENTIAL_PREFIX!r} (credential) "
                             f"or {TOKEN_PREFIX!r} (join token)")
