"""This peer's persistent Ed25519 identity and its libp2p peer id.

The 32-byte seed lives in STATE_DIR/identity.key (mode 0600), so the peer id survives restarts.
The peer id is computed here without importing libp2p (≈85 MB RSS), the way libp2p does it:
base58btc(multihash-identity(protobuf PublicKey{Type=Ed25519, Data=key})). A test checks it
against py-libp2p.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import base58
from nacl.signing import SigningKey

from beemeshd.files import write_private

KEY_FILE = "identity.key"


@dataclass(frozen=True)
class Identity:
    seed: bytes  # 32 bytes; libp2p's Ed25519PrivateKey.from_bytes takes the same

    @property
    def signing_key(self) -> SigningKey:
        return SigningKey(self.seed)

    @property
    def public_key(self) -> bytes:
        return bytes(self.signing_key.verify_key)

    @property
    def peer_id(self) -> str:
        return peer_id_from_ed25519(self.public_key)


def peer_id_from_ed25519(public_key: bytes) -> str:
    # protobuf: field 1 (KeyType) varint 1 = Ed25519; field 2 (Data) bytes of length 32.
    proto = b"\x08\x01\x12\x20" + public_key
    # Keys of ≤ 42 bytes use the identity multihash (code 0x00) instead of sha256.
    return base58.b58encode(b"\x00" + bytes([len(proto)]) + proto).decode()


def load_or_create(state_dir: Path) -> Identity:
    path = state_dir / KEY_FILE
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        seed = path.read_bytes()
        if len(seed) != 32:
            raise ValueError(f"{path}: expected 32 bytes, found {len(seed)}")
        if path.stat().st_mode & 0o077:
            os.chmod(path, 0o600)
        return Identity(seed)
    except FileNotFoundError:
        pass
    seed = os.urandom(32)
    write_private(path, seed)
    return Identity(seed)
