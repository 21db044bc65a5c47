"""BeeMesh wire messages: signed envelopes, freshness, replay protection, peer records (pure).

Every BeeMesh message — gossip, direct request and reply — travels as one envelope:

    wire  = b"\\x01" + signature (64 bytes) + body
    body  = canonical JSON {"v": 1, "topic", "kind", "from", "ts", "id", "payload"}
    signature = Ed25519(sender key, b"beemesh/envelope/1\\0" + body)

`from` is the sender's libp2p peer id; its Ed25519 public key is inside the id (identity
multihash), so a receiver needs nothing but the message to verify it. The signature covers the
topic and kind, so a genuine message cannot be replayed on another topic or as a reply. The
domain prefix keeps these signatures apart from what the same key signs for libp2p itself.

A receiver drops, and counts, what is
  malformed  — not an envelope, bad JSON, missing/extra/wrongly typed fields, bad peer id;
  forged     — the signature does not verify (or a direct stream's peer differs from `from`);
  stale      — `ts` further than FRESHNESS (30 s) from the receiver's clock;
  replayed   — an id this receiver accepted from that sender in the last REPLAY_TTL (5 min), or a
               genuine envelope delivered on a topic/kind it was not signed for.
Checks run in that order, so only authentic messages can occupy the replay cache. Since anything
older than 30 s is stale anyway, the cache bound only matters for the last 30 s of traffic.

Time is an argument (seconds since the epoch); nothing here does I/O.
"""

from __future__ import annotations

import base64
import json
import math
import os
from collections import deque
from dataclasses import dataclass, field

import base58
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from beemeshd.identity import peer_id_from_ed25519

TOPIC_TASKS = "beemesh/tasks"
TOPIC_BIDS = "beemesh/bids"
TOPIC_EVENTS = "beemesh/events"
TOPIC_RECORDS = "beemesh/records"
TOPIC_MEMBERSHIP = "beemesh/membership"  # signed revocation lists (core/credentials.py)
TOPICS = (TOPIC_TASKS, TOPIC_BIDS, TOPIC_EVENTS, TOPIC_RECORDS, TOPIC_MEMBERSHIP)
# Direct stream protocols.
PROTO_SYNC = "/beemesh/sync/1"
PROTO_HELLO = "/beemesh/hello/1"  # credentials both ways on connect; open to non-members
PROTO_JOIN = "/beemesh/join/1"  # redeem a join token; open to non-members, rate-limited

KINDS = ("pub", "req", "rep")  # gossip publication, direct request, direct reply
FRESHNESS = 30.0
REPLAY_TTL = 300.0
MAX_ENVELOPE = 1 << 20
COUNTERS = ("forgedMessages", "staleMessages", "replayedMessages", "malformedMessages")

_VERSION = b"\x01"
_DOMAIN = b"beemesh/envelope/1\0"
_FIELDS = {"v", "topic", "kind", "from", "ts", "id", "payload"}
_SIG = 64


class Rejected(Exception):
    """A message that must be dropped; `counter` names the GetInfo counter it increments."""

    counter = ""


class Malformed(Rejected):
    counter = "malformedMessages"


class Forged(Rejected):
    counter = "forgedMessages"


class Stale(Rejected):
    counter = "staleMessages"


class Replayed(Rejected):
    counter = "replayedMessages"


@dataclass(frozen=True, slots=True)
class Envelope:
    topic: str
    kind: str
    sender: str  # peer id
    timestamp: float  # seconds since the epoch, as the sender's clock said
    msg_id: str  # 32 hex digits, random per message
    payload: dict
    raw: bytes = field(repr=False, compare=False, default=b"")


def canonical(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True, ensure_ascii=False,
                      allow_nan=False).encode()


def public_key_from_peer_id(peer_id: str) -> bytes:
    """The Ed25519 key inside a libp2p peer id (identity multihash); Malformed otherwise."""
    try:
        raw = base58.b58decode(peer_id)
    except ValueError:
        raise Malformed(f"peer id {peer_id[:60]!r} is not base58") from None
    if len(raw) != 38 or raw[:6] != b"\x00\x24\x08\x01\x12\x20":
        raise Malformed(f"peer id {peer_id[:60]!r} is not an Ed25519 identity peer id")
    return raw[6:]


class Signer:
    """Seals envelopes with this peer's key (the 32-byte seed of beemeshd.identity)."""

    def __init__(self, seed: bytes):
        self._key = SigningKey(seed)
        self.peer_id = peer_id_from_ed25519(bytes(self._key.verify_key))

    def sign_detached(self, domain: bytes, obj) -> str:
        """A signature of canonical(obj) under `domain`, hex: a statement others can pass on and
        anyone can check against this peer id (verify_detached) — e.g. a placement decision."""
        return self._key.sign(domain + canonical(obj)).signature.hex()

    def seal(self, topic: str, kind: str, payload: dict, now: float, msg_id: str | None = None) -> bytes:
        body = canonical({"v": 1, "topic": topic, "kind": kind, "from": self.peer_id,
                          "ts": round(now, 3), "id": msg_id or os.urandom(16).hex(), "payload": payload})
        if len(body) + 1 + _SIG > MAX_ENVELOPE:
            raise ValueError(f"message of {len(body)} bytes exceeds {MAX_ENVELOPE}")
        return _VERSION + self._key.sign(_DOMAIN + body).signature + body


def verify_detached(peer_id: str, domain: bytes, obj, signature: str) -> None:
    """Check a Signer.sign_detached signature; Forged (or Malformed) otherwise."""
    if not isinstance(signature, str) or len(signature) != 2 * _SIG:
        raise Forged(f"no signature by {peer_id[:60]}")
    try:
        VerifyKey(public_key_from_peer_id(peer_id)).verify(domain + canonical(obj), bytes.fromhex(signature))
    except (BadSignatureError, ValueError):
        raise Forged(f"bad signature claiming to be from {peer_id[:60]}") from None


def _reject_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def decode(raw: bytes) -> Envelope:
    """Parse and check the signature; no freshness or replay checks (see Gate)."""
    if not isinstance(raw, (bytes, bytearray)) or len(raw) < 1 + _SIG + 2:
        raise Malformed("too short to be an envelope")
    if len(raw) > MAX_ENVELOPE:
        raise Malformed(f"envelope of {len(raw)} bytes exceeds {MAX_ENVELOPE}")
    if raw[:1] != _VERSION:
        raise Malformed(f"unknown envelope version {raw[0]}")
    sig, body = bytes(raw[1:1 + _SIG]), bytes(raw[1 + _SIG:])
    try:
        doc = json.loads(body.decode(), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise Malformed(f"body is not JSON: {exc}") from None
    if not isinstance(doc, dict) or set(doc) != _FIELDS:
        raise Malformed("body must be an object with exactly the fields " + ", ".join(sorted(_FIELDS)))
    if doc["v"] != 1 or isinstance(doc["v"], bool):
        raise Malformed(f"unknown body version {doc['v']!r}")
    for name in ("topic", "kind", "from", "id"):
        if not isinstance(doc[name], str):
            raise Malformed(f"{name} must be a string")
    ts = doc["ts"]
    if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts):
        raise Malformed("ts must be a number")
    if doc["kind"] not in KINDS:
        raise Malformed(f"unknown kind {doc['kind'][:20]!r}")
    if len(doc["id"]) != 32 or any(c not in "0123456789abcdef" for c in doc["id"]):
        raise Malformed("id must be 32 lowercase hex digits")
    if not 0 < len(doc["topic"]) <= 128:
        raise Malformed("topic must be 1–128 characters")
    if not isinstance(doc["payload"], dict):
        raise Malformed("payload must be an object")
    key = public_key_from_peer_id(doc["from"])
    try:
        VerifyKey(key).verify(_DOMAIN + body, sig)
    except (BadSignatureError, ValueError):
        raise Forged(f"bad signature claiming to be from {doc['from']}") from None
    return Envelope(doc["topic"], doc["kind"], doc["from"], float(ts), doc["id"], doc["payload"], bytes(raw))


class ReplayCache:
    """(sender, id) pairs accepted in the last `ttl` seconds, oldest first, at most `limit`."""

    def __init__(self, ttl: float = REPLAY_TTL, limit: int = 200_000):
        self.ttl = ttl
        self.limit = limit
        self._expiry: dict[tuple[str, str], float] = {}
        # Insertion order == expiry order. Kept apart because a dict whose oldest entries were
        # deleted is slow to iterate from the front (it skips every deleted slot: ~70 µs a
        # message at 60,000 entries).
        self._order: deque[tuple[str, str]] = deque()

    def __len__(self) -> int:
        return len(self._expiry)

    def check_and_add(self, sender: str, msg_id: str, now: float) -> bool:
        """True when new (and now remembered); False for a replay."""
        order, expiry = self._order, self._expiry
        while order and (expiry[order[0]] <= now or len(expiry) > self.limit):  # oldest first
            del expiry[order.popleft()]
        key = (sender, msg_id)
        if key in self._expiry:
            return False
        self._expiry[key] = now + self.ttl
        order.append(key)
        return True


class Gate:
    """The one door every received message passes: decode, verify, freshness, replay; counts drops."""

    def __init__(self, replay: ReplayCache | None = None, freshness: float = FRESHNESS):
        self.replay = replay or ReplayCache()
        self.freshness = freshness
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)

    def accept(self, raw: bytes, now: float, *, topic: str | None = None, kind: str | None = None,
               sender: str | None = None, decoded: Envelope | None = None) -> Envelope:
        """The envelope, or Rejected (already counted). `decoded`: a shared, already-verified
        decode of the same bytes (the fake network verifies each message once)."""
        try:
            env = decoded if decoded is not None else decode(raw)
            if sender is not None and env.sender != sender:
                raise Forged(f"envelope from {env.sender} arrived on a stream from {sender}")
            if abs(now - env.timestamp) > self.freshness:
                raise Stale(f"timestamp {now - env.timestamp:+.1f} s from now")
            if (topic is not None and env.topic != topic) or (kind is not None and env.kind != kind):
                raise Replayed(f"signed for {env.topic}/{env.kind}, delivered as {topic}/{kind}")
            if not self.replay.check_and_add(env.sender, env.msg_id, now):
                raise Replayed(f"id {env.msg_id} from {env.sender} seen before")
            return env
        except Rejected as exc:
            self.counters[exc.counter] += 1
            raise

    def count(self, exc: Rejected) -> None:
        self.counters[exc.counter] += 1


# --- peer records ---------------------------------------------------------------------------

CAPACITY_FIELDS = ("cpuMillis", "cpuFreeMillis", "memoryBytes", "memoryFreeBytes", "pods", "podsFree")
_RECORD_STR = ("runtime", "network", "version")
RECORD_FIELDS = {"seq", "addresses", "uptimeSeconds", "capacity", "labels", *_RECORD_STR}


def _str(value, what: str, limit: int = 256) -> str:
    if not isinstance(value, str) or len(value) > limit:
        raise Malformed(f"{what} must be a string of at most {limit} characters")
    return value


def _nonneg_int(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        raise Malformed(f"{what} must be an integer ≥ 0")
    return value


def validate_record(payload: dict) -> dict:
    """A peer record (what a peer offers), strictly checked; Malformed otherwise. In a mesh with
    credentials it also carries the peer's `credential` (checked by core/admission.py)."""
    if not isinstance(payload, dict) or set(payload) - {"credential"} != RECORD_FIELDS:
        raise Malformed("record must have exactly the fields " + ", ".join(sorted(RECORD_FIELDS))
                        + " (and optionally credential)")
    if "credential" in payload and not isinstance(payload["credential"], dict):
        raise Malformed("record.credential must be an object")
    _nonneg_int(payload["seq"], "record.seq")
    addrs = payload["addresses"]
    if not isinstance(addrs, list) or len(addrs) > 16:
        raise Malformed("record.addresses must be a list of at most 16 multiaddrs")
    for a in addrs:
        if not _str(a, "record.addresses[]").startswith("/"):
            raise Malformed("record.addresses[] must be multiaddrs")
    up = payload["uptimeSeconds"]
    if isinstance(up, bool) or not isinstance(up, (int, float)) or not (math.isfinite(up) and up >= 0):
        raise Malformed("record.uptimeSeconds must be a number ≥ 0")
    cap = payload["capacity"]
    if not isinstance(cap, dict) or set(cap) != set(CAPACITY_FIELDS):
        raise Malformed("record.capacity must have exactly the fields " + ", ".join(CAPACITY_FIELDS))
    for name in CAPACITY_FIELDS:
        _nonneg_int(cap[name], f"record.capacity.{name}")
    for name in _RECORD_STR:
        _str(payload[name], f"record.{name}")
    labels = payload["labels"]
    if not isinstance(labels, dict) or len(labels) > 64:
        raise Malformed("record.labels must be an object of at most 64 labels")
    for k, v in labels.items():
        _str(k, "record.labels key", 317)  # a Kubernetes label key: prefix/name
        _str(v, f"record.labels[{k[:40]}]", 63)
    return payload


def sync_payload(records: list[bytes], known: dict[str, int] | None = None, near: int | None = None,
                 partial: bool = False) -> dict:
    """A view-sync message: signed record envelopes exactly as their owners signed them, and
    optionally a digest {peer id: record seq} of what the sender knows (asking for the rest), or
    `near`: a point of the XOR space (core/routing.py), asking for the records of the peers
    nearest to it that the other side holds (a lookup step in a partial view). `partial`: the
    sender's view is a table (the mesh is large: a newcomer need not gather everyone first)."""
    payload: dict = {"records": [base64.b64encode(r).decode() for r in records]}
    if partial:
        payload["partial"] = True
    if known is not None:
        payload["known"] = known
    if near is not None:
        payload["near"] = f"{near:064x}"
    return payload


def sync_near(payload: dict) -> int | None:
    """The point a sync message asks about (None: it asks for no neighbourhood); Malformed
    unless 64 hex digits."""
    near = payload.get("near") if isinstance(payload, dict) else None
    if near is None:
        return None
    if not isinstance(near, str) or len(near) != 64:
        raise Malformed("sync 'near' must be 64 hex digits")
    try:
        return int(near, 16)
    except ValueError:
        raise Malformed("sync 'near' must be 64 hex digits") from None


def sync_records(payload: dict, limit: int = 10_000) -> tuple[list[bytes], dict[str, int] | None]:
    """(record envelopes, digest or None); Malformed unless exactly that shape."""
    if not isinstance(payload, dict) or not {"records"} <= set(payload) <= {"records", "known", "near", "partial"}:
        raise Malformed("sync payload must be {'records': [...], 'known'?: {...}, 'near'?: hex, 'partial'?: true}")
    if payload.get("partial", True) is not True:
        raise Malformed("sync 'partial' must be true when present")
    recs, known = payload["records"], payload.get("known")
    if not isinstance(recs, list) or len(recs) > limit:
        raise Malformed(f"sync records must be a list of at most {limit}")
    if known is not None and (not isinstance(known, dict) or len(known) > limit or not all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) for k, v in known.items())):
        raise Malformed(f"sync digest must map at most {limit} peer ids to integers")
    out = []
    for r in recs:
        try:
            out.append(base64.b64decode(r, validate=True))
        except (TypeError, ValueError):
            raise Malformed("sync records must be base64") from None
    return out, known


RUMOUR_STATES = ("suspect", "dead")


def rumours(payload: dict, limit: int = 256) -> list[tuple[str, str, int]]:
    """Failure-detector news on beemesh/membership: {"rumours": [[peer id, "suspect" | "dead",
    the record seq it is about], ...]} (core/membership.py); [] when the payload has none."""
    items = payload.get("rumours") if isinstance(payload, dict) else None
    if items is None:
        return []
    if not isinstance(items, list) or len(items) > limit:
        raise Malformed(f"rumours must be a list of at most {limit}")
    out = []
    for item in items:
        if (not isinstance(item, list) or len(item) != 3 or not isinstance(item[0], str)
                or item[1] not in RUMOUR_STATES or isinstance(item[2], bool) or not isinstance(item[2], int)):
            raise Malformed("a rumour must be [peer id, 'suspect' | 'dead', record seq]")
        out.append((item[0], item[1], item[2]))
    return out


def claimed_sender(raw: bytes) -> str:
    """The `from` of an envelope, read without any check (canonical JSON puts it first): only
    to find what we already hold of that peer, e.g. to skip bytes verified before; "" if absent."""
    head = raw[1 + _SIG:1 + _SIG + 80]
    if not head.startswith(b'{"from":"'):
        return ""
    end = head.find(b'"', 9)
    return head[9:end].decode("ascii", "replace") if end > 0 else ""
