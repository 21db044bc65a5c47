"""Mesh-wide policy documents: signed by the mesh key, versioned, removed by tombstone (pure).

Wire and file form (JSON):
    {"name", "version", "text" (null: removed), "setBy" (peer id of the signer), "setUSec",
     "signature"}
    signature = the mesh key's Ed25519 signature (hex) of the canonical JSON of
    {"type": "beemesh/policy/1", "mesh": mesh id, "name", "version", "text", "setBy", "setUSec"}.
"type" keeps these signatures apart from anything else the mesh key signs (membership
credentials); "mesh" ties a document to one mesh.

A peer keeps, per name, the document with the highest (version, signature): a higher version
replaces a lower one, and two holders of the mesh key that set one policy at the same moment
(equal versions) still end with the same document everywhere. Removal is a document too (a
tombstone), so it spreads, and outranks the versions before it, like any change.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DOC_TYPE = "beemesh/policy/1"
MAX_TEXT = 64 << 10
NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$")  # also node policy file names
_FIELDS = {"name", "version", "text", "setBy", "setUSec", "signature"}

NEW, SAME, STALE, FORGED = "new", "same", "stale", "forged"


@dataclass(frozen=True)
class PolicyDoc:
    name: str
    version: int
    text: str | None  # None: a tombstone
    set_by: str
    set_usec: int
    signature: str = ""

    @property
    def removed(self) -> bool:
        return self.text is None

    def order(self) -> tuple[int, str]:
        return self.version, self.signature

    def payload(self, mesh_id: str) -> dict:
        """What the mesh key signs."""
        return {"type": DOC_TYPE, "mesh": mesh_id, "name": self.name, "version": self.version, "text": self.text,
                "setBy": self.set_by, "setUSec": self.set_usec}

    def to_wire(self) -> dict:
        return {"name": self.name, "version": self.version, "text": self.text, "setBy": self.set_by,
                "setUSec": self.set_usec, "signature": self.signature}

    @classmethod
    def from_wire(cls, d) -> "PolicyDoc":
        """Strictly checked; ValueError when malformed."""
        if not isinstance(d, dict) or set(d) != _FIELDS:
            raise ValueError("not a policy document")
        name, version, text, set_by, set_usec, sig = (d[k] for k in ("name", "version", "text", "setBy", "setUSec",
                                                                      "signature"))
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise ValueError("bad policy name")
        if type(version) is not int or version < 1 or type(set_usec) is not int or set_usec < 0:
            raise ValueError("bad version or time")
        if text is not None and (not isinstance(text, str) or len(text.encode()) > MAX_TEXT):
            raise ValueError("bad policy text")
        if not isinstance(set_by, str) or not 0 < len(set_by) <= 128:
            raise ValueError("bad signer")
        if not isinstance(sig, str) or not re.fullmatch(r"[0-9a-f]{128}", sig):
            raise ValueError("bad signature")
        return cls(name, version, text, set_by, set_usec, sig)


def sign(keys, name: str, version: int, text: str | None, set_by: str, set_usec: int) -> PolicyDoc:
    """A document signed with `keys` (beemeshd.mesh_keys.MeshKeys holding the private key)."""
    doc = PolicyDoc(name, version, text, set_by, set_usec)
    return PolicyDoc(name, version, text, set_by, set_usec, keys.sign(doc.payload(keys.mesh_id)))


def judge(current: PolicyDoc | None, incoming: PolicyDoc, keys) -> str:
    """What to do with a document that arrived: NEW (keep it), SAME (already held), STALE (older
    than the one held) or FORGED (not signed by this mesh's key, or no mesh key to check with)."""
    if current is not None and incoming.order() == current.order():
        return SAME  # a duplicate (gossip and catch-up overlap): nothing to verify again
    if keys is None or not keys.verify(incoming.payload(keys.mesh_id), incoming.signature):
        return FORGED
    if current is not None and incoming.order() < current.order():
        return STALE
    return NEW
