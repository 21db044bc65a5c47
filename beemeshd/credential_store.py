"""This peer's membership files, under STATE_DIR/mesh/ (directory 0700, every file 0600):

- credential.json   {"credential": {payload, sig}, "contacts": [multiaddr, ...]} — this peer's own
                    credential, and the members it was told to contact (from its invitation);
- revocations.json  the newest signed revocation list this peer has seen;
- tokens.json       join tokens this peer issued: {"pending": {id: {"expires", "ttl"}},
                    "consumed": {id: expires}} — hashes only, never a redeemable secret.

The mesh key pair itself lives in CONFIG_DIR/mesh/ (beemeshd.mesh_keys). Writes are atomic
(temporary file, fsync, rename), so a crash never leaves half a credential.
"""

from __future__ import annotations

import json
from pathlib import Path

from beemeshd.core import credentials as cr
from beemeshd.files import write_private

DIR = "mesh"
CREDENTIAL_FILE = "credential.json"
REVOCATIONS_FILE = "revocations.json"
TOKENS_FILE = "tokens.json"


class StoreError(Exception):
    """A membership file exists but cannot be read or makes no sense."""


class MembershipFiles:
    def __init__(self, state_dir: Path):
        self.dir = Path(state_dir) / DIR

    def _read(self, name: str):
        path = self.dir / name
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise StoreError(f"{path}: {exc}") from None

    def _write(self, name: str, doc) -> None:
        write_private(self.dir / name, json.dumps(doc, indent=1, sort_keys=True).encode())

    # --- this peer's credential -----------------------------------------------------------------

    def load_credential(self) -> tuple[cr.Credential | None, list[str]]:
        doc = self._read(CREDENTIAL_FILE)
        if doc is None:
            return None, []
        try:
            contacts = [a for a in doc.get("contacts", []) if isinstance(a, str)]
            return cr.Credential.from_wire(doc["credential"]), contacts
        except (cr.Invalid, KeyError, TypeError, AttributeError) as exc:
            raise StoreError(f"{self.dir / CREDENTIAL_FILE}: {exc}") from None

    def save_credential(self, cred: cr.Credential, contacts: list[str]) -> None:
        self._write(CREDENTIAL_FILE, {"credential": cred.wire(), "contacts": list(contacts)[:16]})

    # --- revocations --------------------------------------------------------------------------

    def load_revocations(self, mesh: str) -> cr.RevocationList | None:
        doc = self._read(REVOCATIONS_FILE)
        if doc is None:
            return None
        try:
            return cr.RevocationList.from_wire(doc, mesh)
        except cr.Invalid as exc:
            raise StoreError(f"{self.dir / REVOCATIONS_FILE}: {exc}") from None

    def save_revocations(self, rl: cr.RevocationList) -> None:
        if rl.version:
            self._write(REVOCATIONS_FILE, rl.wire())

    # --- join tokens this peer issued ---------------------------------------------------------

    def _tokens(self, now: float) -> dict:
        doc = self._read(TOKENS_FILE) or {}
        pending = {k: v for k, v in (doc.get("pending") or {}).items() if v.get("expires", 0) > now}
        consumed = {k: v for k, v in (doc.get("consumed") or {}).items() if v > now}
        return {"pending": pending, "consumed": consumed}

    def add_token(self, token: cr.JoinToken, ttl: float, now: float) -> None:
        doc = self._tokens(now)
        doc["pending"][token.token_id] = {"expires": token.expires, "ttl": ttl}
        self._write(TOKENS_FILE, doc)

    def redeem(self, token_id: str, now: float) -> float:
        """Consume a pending token: the ttl of the credential it yields. Invalid(tokenUsed,
        tokenUnknown) otherwise; an expired token is unknown (forgotten)."""
        doc = self._tokens(now)
        if token_id in doc["consumed"]:
            raise cr.Invalid(cr.TOKEN_USED, "this join token was redeemed already")
        entry = doc["pending"].pop(token_id, None)
        if entry is None:
            raise cr.Invalid(cr.TOKEN_UNKNOWN, "this peer issued no such join token, or it expired")
        doc["consumed"][token_id] = entry["expires"]  # remembered until it would have expired anyway
        self._write(TOKENS_FILE, doc)
        return float(entry["ttl"])

    def pending_tokens(self, now: float) -> int:
        try:
            return len(self._tokens(now)["pending"])
        except StoreError:
            return 0
