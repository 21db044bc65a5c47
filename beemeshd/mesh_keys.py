"""The mesh's own key pair: whose word counts mesh-wide.

A mesh is named by its Ed25519 public key. The key signs membership credentials (who may join)
and mesh-wide policies (what may run). Files, under CONFIG_DIR/mesh/:
- mesh.json: {"name": ..., "public": hex} — every member has it (it verifies credentials);
- mesh.key: the 32-byte seed, mode 0600 — only on peers that created the mesh or were given it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from beemeshd.core.protocol import canonical
from beemeshd.files import write_private

MESH_DIR = "mesh"
PUBLIC_FILE = "mesh.json"
KEY_FILE = "mesh.key"


class MeshKeyError(Exception):
    """The mesh files are missing, unreadable or inconsistent."""


@dataclass(frozen=True)
class MeshKeys:
    name: str
    public: bytes  # 32-byte Ed25519 verify key
    seed: bytes | None = None  # only where the mesh key itself is held

    @property
    def mesh_id(self) -> str:
        return self.public.hex()

    @property
    def can_sign(self) -> bool:
        return self.seed is not None

    def sign(self, payload: dict) -> str:
        """Hex signature of the payload's canonical JSON by the mesh key."""
        if self.seed is None:
            raise MeshKeyError("this peer does not hold the mesh key")
        return SigningKey(self.seed).sign(canonical(payload)).signature.hex()

    def verify(self, payload: dict, signature: str) -> bool:
        try:
            VerifyKey(self.public).verify(canonical(payload), bytes.fromhex(signature))
            return True
        except (BadSignatureError, ValueError, TypeError):
            return False


def mesh_dir(config_dir: Path) -> Path:
    return Path(config_dir) / MESH_DIR


def create(config_dir: Path, name: str) -> MeshKeys:
    """A new mesh; refuses to overwrite an existing one."""
    d = mesh_dir(config_dir)
    if (d / PUBLIC_FILE).exists():
        raise MeshKeyError(f"{d / PUBLIC_FILE} exists: this peer already belongs to a mesh")
    seed = os.urandom(32)
    keys = MeshKeys(name, bytes(SigningKey(seed).verify_key), seed)
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_private(d / KEY_FILE, seed, 0o600)
    write_private(d / PUBLIC_FILE, json.dumps({"name": name, "public": keys.public.hex()}).encode(), 0o600)
    return keys


def save_public(config_dir: Path, name: str, public: bytes) -> MeshKeys:
    """Record the mesh a joining peer was invited to (no private key)."""
    d = mesh_dir(config_dir)
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_private(d / PUBLIC_FILE, json.dumps({"name": name, "public": public.hex()}).encode(), 0o600)
    return MeshKeys(name, public)


def load(config_dir: Path) -> MeshKeys | None:
    """This peer's mesh, or None when it belongs to none."""
    d = mesh_dir(config_dir)
    try:
        data = json.loads((d / PUBLIC_FILE).read_text())
        name, public = str(data["name"]), bytes.fromhex(data["public"])
        if len(public) != 32:
            raise ValueError("public key is not 32 bytes")
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise MeshKeyError(f"{d / PUBLIC_FILE}: {exc}") from None
    seed = None
    try:
        seed = (d / KEY_FILE).read_bytes()
    except FileNotFoundError:
        pass
    if seed is not None and (len(seed) != 32 or bytes(SigningKey(seed).verify_key) != public):
        raise MeshKeyError(f"{d / KEY_FILE} does not match {d / PUBLIC_FILE}")
    return MeshKeys(name, public, seed)

