"""Mesh credentials, join tokens, revocation lists (core/credentials.py) and who counts as a
member (core/admission.py): pure, with time as an argument."""

import os

import pytest
from nacl.signing import SigningKey

from beemeshd.core import credentials as cr
from beemeshd.core.admission import Admission, TokenBucket
from beemeshd.core.protocol import Signer
from beemeshd.mesh_keys import MeshKeys

NOW = 1_700_000_000.0


def mesh(name="home") -> MeshKeys:
    seed = os.urandom(32)
    return MeshKeys(name, bytes(SigningKey(seed).verify_key), seed)


def peer() -> str:
    return Signer(os.urandom(32)).peer_id


@pytest.fixture
def m():
    return mesh()


def test_a_credential_survives_its_text_form_and_verifies(m):
    p = peer()
    cred = cr.issue(m, p, NOW, ttl=3600)
    text = cred.encode(contacts=["/ip4/10.0.0.1/tcp/4001/p2p/" + peer()])
    back, contacts = cr.parse_invitation(text)
    assert back == cred and contacts[0].startswith("/ip4/10.0.0.1/")
    assert cr.verify(back, mesh=m.mesh_id, peer=p, now=NOW + 10) == cred
    assert (back.name, back.peer, back.expires - back.issued) == ("home", p, 3600)
    # wrapped when pasted: whitespace is ignored
    assert cr.parse_invitation(text[:20] + "\n  " + text[20:])[0] == cred


def test_integer_timestamps_still_verify_after_a_round_trip(m):
    p = peer()
    cred = cr.issue(m, p, 1_700_000_000, ttl=86400)  # an int clock must not change the signed bytes
    back = cr.Credential.from_wire(__import__("json").loads(__import__("json").dumps(cred.wire())))
    cr.verify(back, mesh=m.mesh_id, peer=p, now=NOW)


@pytest.mark.parametrize("case, reason", [
    ("expired", cr.EXPIRED),
    ("future", cr.NOT_YET_VALID),
    ("other mesh", cr.WRONG_MESH),
    ("other peer", cr.WRONG_PEER),
    ("forged", cr.BAD_SIGNATURE),
    ("tampered", cr.BAD_SIGNATURE),
    ("revoked peer", cr.REVOKED),
    ("revoked serial", cr.REVOKED),
])
def test_every_refusal_has_its_reason(m, case, reason):
    p = peer()
    cred = cr.issue(m, p, NOW, ttl=3600)
    revocations = None
    now, who, mesh_id = NOW + 1, p, m.mesh_id
    if case == "expired":
        now = NOW + 3600
    elif case == "future":
        cred = cr.issue(m, p, NOW + 3 * cr.SKEW, ttl=3600)
    elif case == "other mesh":
        cred = cr.issue(mesh(), p, NOW, ttl=3600)
    elif case == "other peer":
        who = peer()
    elif case == "forged":  # signed by another key, claiming this mesh
        other = mesh()
        cred = cr.issue(MeshKeys("home", m.public, other.seed), p, NOW, ttl=3600)
    elif case == "tampered":
        cred = cr.Credential(**{**{k: getattr(cred, k) for k in cr.Credential.__slots__}, "expires": NOW + 10**9})
    elif case == "revoked peer":
        revocations = cr.RevocationList.empty(m.mesh_id).adding(m, NOW, peers=[p])
    elif case == "revoked serial":
        revocations = cr.RevocationList.empty(m.mesh_id).adding(m, NOW, serials=[cred.serial])
    with pytest.raises(cr.Invalid) as exc:
        cr.verify(cred, mesh=mesh_id, peer=who, now=now, revocations=revocations)
    assert exc.value.reason == reason


@pytest.mark.parametrize("text", [
    "hello", "bmc1.!!!", "bmc1." + "A" * 40, "bmj1.e30", "bmc1.eyJwYXlsb2FkIjp7fSwic2lnIjoiIn0",
])
def test_garbage_invitations_are_malformed(text):
    with pytest.raises(cr.Invalid) as exc:
        cr.parse_invitation(text)
    assert exc.value.reason == cr.MALFORMED


def test_wire_shape_is_checked_strictly(m):
    good = cr.issue(m, peer(), NOW).wire()
    for bad in ({**good, "extra": 1}, {"payload": {**good["payload"], "type": "beemesh/policy/1"}, "sig": good["sig"]},
                {"payload": {**good["payload"], "serial": "XYZ"}, "sig": good["sig"]},
                {"payload": {**good["payload"], "peer": "not-a-peer"}, "sig": good["sig"]},
                {"payload": {**good["payload"], "expires": "soon"}, "sig": good["sig"]}, None, []):
        with pytest.raises(cr.Invalid) as exc:
            cr.Credential.from_wire(bad)
        assert exc.value.reason == cr.MALFORMED


def test_join_tokens_carry_where_to_redeem_and_hash_their_secret(m):
    issuer = peer()
    token = cr.new_token(m, [f"/ip4/127.0.0.1/tcp/4001/p2p/{issuer}"], NOW, ttl=600)
    back, redeem = cr.parse_invitation(token.encode())
    assert back == token and back.issuer == issuer and redeem == list(token.redeem)
    assert back.expires == NOW + 600 and len(token.secret) == 64
    assert token.token_id == cr.token_id(token.secret) and token.secret not in token.token_id
    with pytest.raises(cr.Invalid):
        cr.new_token(m, ["/ip4/127.0.0.1/tcp/4001"], NOW)  # no /p2p/: nowhere to redeem


def test_revocation_lists_verify_and_the_newest_wins(m):
    a, b = peer(), peer()
    v1 = cr.RevocationList.empty(m.mesh_id).adding(m, NOW, peers=[a])
    v2 = v1.adding(m, NOW + 1, peers=[b])
    assert (v1.version, v2.version, v2.peers) == (1, 2, frozenset({a, b}))
    assert cr.RevocationList.from_wire(v2.wire(), m.mesh_id) == v2
    assert v2.newer_than(v1) and not v1.newer_than(v2)
    # two key holders revoking at once: one version, two lists; everyone settles on the same one
    other = v1.adding(m, NOW + 1, serials=["0" * 16])
    assert v2.newer_than(other) != other.newer_than(v2)
    with pytest.raises(cr.Invalid) as exc:  # signed by another key
        cr.RevocationList.from_wire(cr.RevocationList.empty(m.mesh_id).adding(mesh(), NOW, peers=[a]).wire(),
                                    m.mesh_id)
    assert exc.value.reason == cr.BAD_SIGNATURE
    with pytest.raises(cr.Invalid) as exc:
        cr.RevocationList.from_wire(v1.wire(), mesh().mesh_id)
    assert exc.value.reason == cr.WRONG_MESH


# --- admission ------------------------------------------------------------------------------------


def test_admission_verifies_once_and_then_only_looks_up(m, monkeypatch):
    me, other = peer(), peer()
    adm = Admission(me, m.mesh_id, cr.issue(m, me, NOW))
    assert adm.ready(NOW) and not adm.member(other, NOW)
    checks = []
    real = cr.signature_ok
    monkeypatch.setattr(cr, "signature_ok", lambda *a: checks.append(1) or real(*a))
    wire = cr.issue(m, other, NOW, ttl=100).wire()
    for _ in range(5):  # the same credential in every record refresh
        adm.admit(other, wire, NOW + 1)
    assert len(checks) == 1 and adm.member(other, NOW + 2)
    assert not adm.member(other, NOW + 100)  # expired: no longer, even before a sweep
    assert adm.sweep(NOW + 100) == [other] and adm.members() == []


def test_a_cached_credential_cannot_be_stretched(m):
    me, other = peer(), peer()
    adm = Admission(me, m.mesh_id, cr.issue(m, me, NOW))
    wire = cr.issue(m, other, NOW, ttl=100).wire()
    adm.admit(other, wire, NOW)
    stretched = {"payload": {**wire["payload"], "expires": NOW + 10**6}, "sig": wire["sig"]}
    with pytest.raises(cr.Invalid) as exc:  # same signature, another payload: checked again, fails
        adm.admit(other, stretched, NOW + 1)
    assert exc.value.reason == cr.BAD_SIGNATURE
    assert not adm.member(other, NOW + 200)


def test_admission_refuses_what_verify_refuses(m):
    me, other = peer(), peer()
    adm = Admission(me, m.mesh_id, cr.issue(m, me, NOW))
    with pytest.raises(cr.Invalid) as exc:
        adm.admit(other, None, NOW)
    assert exc.value.reason == cr.MISSING
    with pytest.raises(cr.Invalid) as exc:
        adm.admit(other, cr.issue(mesh(), other, NOW).wire(), NOW)
    assert exc.value.reason == cr.WRONG_MESH
    with pytest.raises(cr.Invalid) as exc:  # someone else's genuine credential
        adm.admit(other, cr.issue(m, peer(), NOW).wire(), NOW)
    assert exc.value.reason == cr.WRONG_PEER
    assert adm.members() == []
    nobody = Admission(me)  # no mesh: every peer is a stranger
    with pytest.raises(cr.Invalid):
        nobody.admit(other, cr.issue(m, other, NOW).wire(), NOW)
    assert not nobody.ready(NOW) and nobody.own_state(NOW) == cr.MISSING


def test_a_newer_revocation_list_expels_members_and_an_older_one_changes_nothing(m):
    me, a, b = peer(), peer(), peer()
    adm = Admission(me, m.mesh_id, cr.issue(m, me, NOW))
    cred_b = cr.issue(m, b, NOW)
    for p, w in ((a, cr.issue(m, a, NOW).wire()), (b, cred_b.wire())):
        adm.admit(p, w, NOW)
    v1 = cr.RevocationList.empty(m.mesh_id).adding(m, NOW, peers=[a])
    assert adm.offer_revocations(v1.wire()) == [a]
    assert adm.offer_revocations(v1.wire()) is None  # not newer
    v2 = v1.adding(m, NOW, serials=[cred_b.serial])
    assert adm.offer_revocations(v2.wire()) == [b] and adm.members() == []
    with pytest.raises(cr.Invalid):  # a revoked credential cannot come back
        adm.admit(a, cr.issue(m, a, NOW).wire(), NOW)
    adm.admit(b, cr.issue(m, b, NOW).wire(), NOW)  # a new credential for b (its old serial was revoked)
    assert adm.member(b, NOW)
    with pytest.raises(cr.Invalid):  # forged list
        adm.offer_revocations(v2.adding(mesh(), NOW, peers=[b]).wire())
    assert adm.member(b, NOW)


def test_own_credential_states(m):
    me = peer()
    adm = Admission(me, m.mesh_id, cr.issue(m, me, NOW, ttl=10))
    assert adm.own_state(NOW) is None and adm.own_state(NOW + 10) == cr.EXPIRED
    adm.apply_revocations(cr.RevocationList.empty(m.mesh_id).adding(m, NOW, peers=[me]))
    assert adm.own_state(NOW) == cr.REVOKED
    forged = Admission(me, m.mesh_id, cr.issue(MeshKeys("home", m.public, os.urandom(32)), me, NOW))
    assert forged.own_state(NOW) == cr.BAD_SIGNATURE
    with pytest.raises(cr.Invalid):  # someone else's credential is not ours
        adm.set_mesh(m.mesh_id, cr.issue(m, peer(), NOW))


def test_token_bucket_allows_bursts_then_the_rate():
    b = TokenBucket(rate=2, burst=3)
    assert [b.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert b.take(0.5) and not b.take(0.5)
    assert sum(b.take(10 + i * 0.1) for i in range(100)) == pytest.approx(3 + 20, abs=2)
