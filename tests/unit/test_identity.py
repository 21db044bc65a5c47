import stat

from libp2p.crypto.ed25519 import Ed25519PrivateKey
from libp2p.peer.id import ID

from beemeshd import identity


def test_peer_id_matches_libp2p_and_survives_reload(tmp_path):
    ident = identity.load_or_create(tmp_path / "state")
    key_file = tmp_path / "state" / identity.KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    libp2p_key = Ed25519PrivateKey.from_bytes(ident.seed)
    assert ident.peer_id == ID.from_pubkey(libp2p_key.get_public_key()).to_base58()
    assert ident.peer_id.startswith("12D3KooW")
    assert identity.load_or_create(tmp_path / "state").peer_id == ident.peer_id


def test_corrupt_key_file_is_an_error_not_a_new_identity(tmp_path):
    (tmp_path / identity.KEY_FILE).write_bytes(b"short")
    try:
        identity.load_or_create(tmp_path)
    except ValueError as exc:
        assert "expected 32 bytes" in str(exc)
    else:
        raise AssertionError("a corrupt identity must not be replaced silently")
