"""Signed envelopes: what is accepted, and what is dropped under which counter."""

import base64
import json

import pytest

from beemeshd import identity
from beemeshd.core import protocol as proto

NOW = 1_700_000_000.0
SEED_A, SEED_B = bytes(range(32)), bytes(range(1, 33))


@pytest.fixture
def a():
    return proto.Signer(SEED_A)


def resign(signer_seed: bytes, body: dict) -> bytes:
    """An envelope around an arbitrary body, correctly signed (to test body checks alone)."""
    from nacl.signing import SigningKey

    raw = proto.canonical(body)
    return b"\x01" + SigningKey(signer_seed).sign(b"beemesh/envelope/1\0" + raw).signature + raw


def body(signer, **over):
    b = {"v": 1, "topic": proto.TOPIC_TASKS, "kind": "pub", "from": signer.peer_id, "ts": NOW,
         "id": "0" * 32, "payload": {}}
    b.update(over)
    return b


def test_seal_and_decode_round_trip(a):
    raw = a.seal(proto.TOPIC_TASKS, "pub", {"work": [1, "x"]}, NOW)
    env = proto.decode(raw)
    assert (env.topic, env.kind, env.sender, env.timestamp, env.payload) == \
        (proto.TOPIC_TASKS, "pub", a.peer_id, NOW, {"work": [1, "x"]})
    assert len(env.msg_id) == 32 and env.raw == raw
    assert a.peer_id == identity.Identity(SEED_A).peer_id  # the daemon's libp2p identity signs
    assert proto.public_key_from_peer_id(a.peer_id) == identity.Identity(SEED_A).public_key


def test_gate_accepts_fresh_then_counts_the_replay(a):
    gate = proto.Gate()
    raw = a.seal(proto.TOPIC_BIDS, "pub", {}, NOW)
    assert gate.accept(raw, NOW + 1, topic=proto.TOPIC_BIDS).sender == a.peer_id
    with pytest.raises(proto.Replayed):
        gate.accept(raw, NOW + 2, topic=proto.TOPIC_BIDS)
    assert gate.counters == {"forgedMessages": 0, "staleMessages": 0, "replayedMessages": 1, "malformedMessages": 0}


@pytest.mark.parametrize("skew, ok", [(29.9, True), (-29.9, True), (30.1, False), (-30.1, False), (3600, False)])
def test_freshness_window_is_30_s_both_ways(a, skew, ok):
    gate = proto.Gate()
    raw = a.seal(proto.TOPIC_TASKS, "pub", {}, NOW + skew)
    if ok:
        gate.accept(raw, NOW)
    else:
        with pytest.raises(proto.Stale):
            gate.accept(raw, NOW)
        assert gate.counters["staleMessages"] == 1


def test_forgeries_are_counted_as_forged(a):
    gate = proto.Gate()
    raw = bytearray(a.seal(proto.TOPIC_TASKS, "pub", {"x": 1}, NOW))
    raw[5] ^= 1  # signature bit
    with pytest.raises(proto.Forged):
        gate.accept(bytes(raw), NOW)
    # B signs a body that claims to come from A
    with pytest.raises(proto.Forged):
        gate.accept(resign(SEED_B, body(a)), NOW)
    # a genuine request of A's relayed on a stream from B
    req = a.seal("/beemesh/deploy/1", "req", {}, NOW)
    with pytest.raises(proto.Forged):
        gate.accept(req, NOW, sender=proto.Signer(SEED_B).peer_id)
    assert gate.counters["forgedMessages"] == 3


def test_genuine_message_out_of_context_is_a_replay(a):
    gate = proto.Gate()
    bid = a.seal(proto.TOPIC_BIDS, "pub", {}, NOW)
    with pytest.raises(proto.Replayed):
        gate.accept(bid, NOW, topic=proto.TOPIC_TASKS)  # a bid replayed as a task
    reply = a.seal("/beemesh/deploy/1", "rep", {"ok": {}}, NOW)
    with pytest.raises(proto.Replayed):
        gate.accept(reply, NOW, topic="/beemesh/deploy/1", kind="req")  # a reply reflected as a request
    assert gate.counters["replayedMessages"] == 2


@pytest.mark.parametrize("raw", [
    b"", b"\x01", b"\xde\xad\xbe\xef garbage", b"\x02" + bytes(64) + b"{}", b"\x01" + bytes(64) + b"\xff\xfe",
    b"\x01" + bytes(64) + b"[1, 2]", b"\x01" + bytes(64) + b"{" * 100_000, b"\x01" * (proto.MAX_ENVELOPE + 1),
])
def test_garbage_is_malformed(raw):
    gate = proto.Gate()
    with pytest.raises(proto.Malformed):
        gate.accept(raw, NOW)
    assert gate.counters["malformedMessages"] == 1


@pytest.mark.parametrize("over", [
    {"v": 2}, {"v": True}, {"topic": 7}, {"topic": ""}, {"kind": "push"}, {"ts": "now"}, {"ts": True},
    {"id": "xyz"}, {"id": "A" * 32}, {"payload": [1]}, {"from": "QmNotAnEd25519Id"}, {"extra": 1},
])
def test_bad_bodies_are_malformed_even_when_signed(a, over):
    b = body(a, **over)
    with pytest.raises(proto.Malformed):
        proto.decode(resign(SEED_A, b))


def test_missing_field_and_nan_are_malformed(a):
    b = body(a)
    del b["id"]
    with pytest.raises(proto.Malformed):
        proto.decode(resign(SEED_A, b))
    text = proto.canonical(body(a)).replace(b'"ts":1700000000.0', b'"ts":NaN')
    from nacl.signing import SigningKey

    raw = b"\x01" + SigningKey(SEED_A).sign(b"beemesh/envelope/1\0" + text).signature + text
    with pytest.raises(proto.Malformed):
        proto.decode(raw)


def test_replay_cache_remembers_at_least_five_minutes_and_stays_bounded():
    cache = proto.ReplayCache()
    assert cache.ttl >= 300
    assert cache.check_and_add("p", "1", 0.0)
    assert not cache.check_and_add("p", "1", 299.0)
    assert cache.check_and_add("q", "1", 1.0)  # ids are per sender
    assert cache.check_and_add("p", "1", 301.0)  # forgotten after the ttl (by then it is stale anyway)
    small = proto.ReplayCache(ttl=300, limit=100)
    for i in range(1000):
        small.check_and_add("p", str(i), float(i) / 1000)
    assert len(small) <= 100 + 64


def record(**over):
    r = {"seq": 1, "addresses": ["/ip4/127.0.0.1/tcp/4001/p2p/x"], "uptimeSeconds": 1.5,
         "capacity": dict.fromkeys(proto.CAPACITY_FIELDS, 1), "runtime": "podman 4.3.1",
         "network": "slirp4netns", "version": "0.1.0", "labels": {"zone": "a"}}
    r.update(over)
    return r


def test_records_are_checked_strictly():
    assert proto.validate_record(record()) == record()
    for bad in (record(seq=-1), record(seq=True), record(addresses="x"), record(addresses=["tcp"]),
                record(uptimeSeconds=float("inf")), record(capacity={"cpuMillis": 1}),
                record(capacity={**record()["capacity"], "pods": -1}), record(labels={"k": 1}),
                record(labels={"k": "v" * 64}), record(version=None), {**record(), "more": 1}):
        with pytest.raises(proto.Malformed):
            proto.validate_record(bad)


def test_sync_payload_round_trip_and_garbage():
    raws = [b"\x01abc", b"\x02def"]
    assert proto.sync_records(proto.sync_payload(raws)) == (raws, None)
    assert proto.sync_records(proto.sync_payload(raws, {"p": 3})) == (raws, {"p": 3})
    for bad in ({}, {"records": "x"}, {"records": ["***"]}, {"records": [], "x": 1},
                {"records": [], "known": {"p": "3"}}, {"records": [], "known": {"p": True}},
                {"records": [base64.b64encode(b"x").decode()] * 10_001}):
        with pytest.raises(proto.Malformed):
            proto.sync_records(bad)


def test_signature_covers_the_exact_bytes(a):
    raw = a.seal(proto.TOPIC_TASKS, "pub", {"n": 1}, NOW)
    sig, text = raw[1:65], raw[65:]
    reformatted = json.dumps(json.loads(text), indent=1).encode()  # same JSON, other bytes
    with pytest.raises(proto.Forged):
        proto.decode(b"\x01" + sig + reformatted)
