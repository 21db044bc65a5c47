"""What both meshes (libp2p and in-memory) share: the Mesh API on top of the pure core.

A subclass supplies the transport — open it, gossip bytes, probe a peer, exchange one request
and reply, drop a connection — and feeds what arrives into `_admit` (gossip) and `_request_in`
(direct streams). Everything that decides anything lives in beemeshd.core (protocol: envelopes,
freshness, replays; membership: the view and the failure detector); this module only runs it
on trio: the probe loop, the record loop, bootstrap, view sync and the subscriber fan-out.

View sync (PROTO_SYNC): whenever a peer becomes alive, we send it our signed record (so it
learns us even before gossip reaches it; beyond HELLO_LIMIT peers only our record, gossiped
once we have a first contact, does that); at most every SYNC_INTERVAL we also send a digest
{peer: record seq} and get back the records we lack (as many as fit SYNC_BUDGET; the rest the
next time), and every 2·SYNC_INTERVAL we do so with a random alive peer (anti-entropy: peers
that joined alongside us are otherwise missed until their next record refresh). A newcomer that
knows one bootstrap peer therefore learns the whole mesh in one round trip (a few in a mesh of
thousands), probes everyone it learned of, and is seen by all within about one ping interval.
Failure detection in a large view is bounded (SWIM, core/membership.py): what a peer detects
itself it gossips on `beemesh/membership` as rumours; a suspected peer refutes with a new record.
Relayed records are signed by their owners but may be old,
so they make a peer worth probing, not alive. GossipSub on `beemesh/records` carries record
changes, and a refresh every RECORD_REFRESH seconds (uptime is carried forward locally between),
stretched in views larger than HELLO_LIMIT so that the whole mesh's refreshes reach a peer at a
bounded rate (about HELLO_LIMIT per RECORD_REFRESH) instead of O(n) a second.

Membership (with an `admission`, core/admission.py; without one the mesh is open, as unit tests
and simulators of other features use it): only peers holding a valid credential of this mesh
count. Before probing a peer it does not know as a member, this peer sends PROTO_HELLO with its
own credential and gets the other's back; both verify. Records carry the credential too, so a
member learned by gossip or view sync is known without a hello. Gossip whose signer (or, over
libp2p, whose forwarder) is not a member, and direct requests from non-members, are dropped and
counted (nonMemberMessages) before their signature is even checked; only PROTO_HELLO and
PROTO_JOIN are open to non-members, through a token bucket. A peer whose hello fails is refused
(refusedPeers) and disconnected; revoked or expired members are forgotten and disconnected.
Revocation lists travel on `beemesh/membership` and in every hello.

Partial views (a mesh larger than `Timings.view_max`, core/routing.py): the view is a Kademlia
table, and what a full view did by flooding it does peer to peer. View sync asks for the
neighbourhood of the asker (`near`) instead of sending a digest; a record change goes to the
`near` closest peers instead of GossipSub; failure-detector rumours are not flooded (each peer
probes its own table, and pinned peers every interval). `lookup(target, k)` finds the k peers
nearest to any point of the XOR space in O(log n) rounds of view sync; `pin(peers)` keeps
peers in the view whatever their distance (unknown ones are looked up; one nobody knows is
dead here).
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

import trio

from beemeshd.core import credentials as cr
from beemeshd.core import protocol as proto
from beemeshd.core import routing
from beemeshd.core.admission import Admission, NonMember, TokenBucket
from beemeshd.core.membership import JOINED, LEFT, RECOVERED, Membership, Timings
from beemeshd.errors import PeerUnreachable

log = logging.getLogger("beemeshd.mesh")

Handler = Callable[[proto.Envelope], Awaitable[dict]]


class RemoteError(Exception):
    """The peer answered, but its handler failed; `reason` is its message."""

    def __init__(self, peer: str, protocol: str, reason: str):
        self.peer, self.protocol, self.reason = peer, protocol, reason
        super().__init__(f"{peer} failed {protocol}: {reason}")


@dataclass(frozen=True, slots=True)
class PeerView:
    peer_id: str
    state: str  # self | alive | suspect | dead
    addresses: list[str]
    uptime_seconds: float
    last_seen: float | None  # seconds since the epoch; None if never heard
    record: dict | None  # its signed record: capacity, runtime, network, version, labels


DEFAULT_RECORD = {
    "capacity": dict.fromkeys(proto.CAPACITY_FIELDS, 0),
    "runtime": "", "network": "", "version": "", "labels": {},
}


class MeshBase:
    RECORD_REFRESH = 60.0  # records change rarely; each refresh costs every peer a message
    PARTIAL_REFRESH = 10  # times RECORD_REFRESH in a partial view (16 syncs each, not one gossip)
    SYNC_INTERVAL = 5.0
    SYNC_BUDGET = proto.MAX_ENVELOPE // 2  # bytes of records in one view-sync reply
    HELLO_LIMIT = 64  # views larger than this learn newcomers from their gossiped record only
    ANNOUNCE_DELAY = 1.0  # after the first contact: time for GossipSub to learn our subscriptions
    SUB_BUFFER = 1024
    OPEN_RATE, OPEN_BURST = 20.0, 40.0  # hellos and join requests from non-members, per second
    ADMISSION_INTERVAL = 1.0  # how often expired credentials are swept
    OPEN_PROTOCOLS = frozenset({proto.PROTO_HELLO, proto.PROTO_JOIN})
    LOOKUP_ALPHA, LOOKUP_TIMEOUT, LOOKUP_ROUNDS = 3, 2.0, 12  # Kademlia's α; per request (a first dial: handshakes); bound
    FOUND_MAX = 4096  # addresses of peers met in lookups, outside the view

    def __init__(self, seed: bytes, *, timings: Timings = Timings(),
                 bootstrap: list[tuple[str, list[str]]] = (), record: dict | None = None,
                 freshness: float = proto.FRESHNESS, replay_ttl: float = proto.REPLAY_TTL,
                 rng: random.Random | None = None, admission: Admission | None = None):
        self.signer = proto.Signer(seed)
        self.peer_id = self.signer.peer_id
        self.timings = timings
        self.membership = Membership(self.peer_id, timings, rng=rng)
        self.gate = proto.Gate(proto.ReplayCache(replay_ttl), freshness)
        self.counters = self.gate.counters
        self.counters.update(nonMemberMessages=0, refusedPeers=0)
        self.admission = admission  # None: an open mesh (no credentials checked)
        self.on_revocations: Callable[[cr.RevocationList], None] = lambda rl: None  # persist them
        self._open_bucket = TokenBucket(self.OPEN_RATE, self.OPEN_BURST)
        self._greeted: set[str] = set()  # peers that hold our credential since our last contact
        self.on_peer_event: Callable[[str, str], None] = lambda kind, peer: None
        # (peer, what): a message provably from that peer was stale or replayed (trust evidence)
        self.on_misbehaviour: Callable[[str, str], None] = lambda peer, what: None
        self.bootstrap = list(bootstrap)  # (peer id, addresses)
        self.rng = rng or random.Random()
        self._record = dict(DEFAULT_RECORD)
        self._record_raw = b""
        self._record_seq = 0
        self._record_changed: trio.Event | None = None
        self._subs: dict[str, set[trio.MemorySendChannel]] = {}
        self._handlers: dict[str, Handler] = {proto.PROTO_SYNC: self._handle_sync}
        self._keep_streams: set[str] = set()  # see handle()
        if admission is not None:
            self._handlers[proto.PROTO_HELLO] = self._handle_hello
        self._probing: set[str] = set()
        self._last_full_sync = -math.inf
        self._announced = False
        self._nursery: trio.Nursery | None = None
        self._born = 0.0
        self._found: dict[str, list[str]] = {}  # peer -> addresses, from records met in lookups
        self._finding: set[str] = set()  # pinned peers being looked up
        if record:
            self.set_record(record)

    # --- clocks (the fake mesh moves the wall clock with trio's, plus a per-peer skew) ----------

    def _now(self) -> float:
        return trio.current_time()

    def _wall(self) -> float:
        return time.time()

    # --- transport hooks ----------------------------------------------------------------------

    def _open_transport(self) -> AbstractAsyncContextManager:
        raise NotImplementedError

    def addresses(self) -> list[str]:
        raise NotImplementedError

    async def _send_gossip(self, topic: str, raw: bytes) -> None:
        raise NotImplementedError

    async def _probe(self, peer_id: str, addresses: list[str]) -> bool:
        raise NotImplementedError

    async def _exchange(self, peer_id: str, addresses: list[str], protocol: str, raw: bytes) -> bytes:
        raise NotImplementedError

    async def _drop(self, peer_id: str) -> None:
        """Close the connection to a dead peer whose redial probe failed too, so that the next
        probe dials afresh (a dead link can look connected for 20 s). Not at the moment it is
        declared dead: if that was a mistake (an overloaded CPU), tearing connections down
        makes both sides redo handshakes, adding load exactly where load caused the mistake."""

    def _register(self, protocol: str) -> None:
        """Serve `protocol` on the transport (called for handlers added while running)."""

    def _decode(self, raw: bytes) -> proto.Envelope:
        return proto.decode(raw)

    # --- the Mesh API -------------------------------------------------------------------------

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled (inside the daemon's nursery). OSError if it cannot start
        listening (raised plainly, not inside the exception group of the transport's nurseries)."""
        self._born = self._now()
        self._record_changed = trio.Event()
        started = False
        try:
            async with self._open_transport():
                try:
                    async with trio.open_nursery() as nursery:
                        self._nursery = nursery
                        self._seal_record()
                        nursery.start_soon(self._probe_loop)
                        nursery.start_soon(self._record_loop)
                        nursery.start_soon(self._bootstrap_loop)
                        if self.admission is not None:
                            nursery.start_soon(self._admission_loop)
                        log.info("mesh up as %s on %s", self.peer_id, ", ".join(self.addresses()) or "-")
                        started = True
                        task_status.started()
                        await trio.sleep_forever()
                finally:
                    self._nursery = None
                    self._probing.clear()
        except BaseExceptionGroup as group:
            oserrors, rest = group.split(OSError)
            if started or oserrors is None or rest is not None:
                raise
            first = oserrors
            while isinstance(first, BaseExceptionGroup):
                first = first.exceptions[0]
            raise first from None

    @property
    def running(self) -> bool:
        return self._nursery is not None

    def peers(self) -> list[PeerView]:
        now, wall = self._now(), self._wall()
        out = [PeerView(self.peer_id, "self", self.addresses(), self._uptime(), wall, self._record_payload())]
        for m in self.membership.listed():
            seen = None if math.isinf(m.last_heard) else wall - (now - m.last_heard)
            out.append(PeerView(m.peer_id, m.state, m.addresses(), m.uptime(now), seen, m.record))
        return out

    def peer_ids(self, states: tuple[str, ...] = ("alive",)) -> list[str]:
        """Ids of the other peers in these states: what peers() says, without building a view of
        every peer (placement asks often; a large mesh has thousands)."""
        return [pid for pid, m in self.membership.members.items() if m.state in states]

    def peer_state(self, peer_id: str) -> str | None:
        """"self", or alive | suspect | dead | pending; None for a peer not in the view."""
        if peer_id == self.peer_id:
            return "self"
        m = self.membership.get(peer_id)
        return m.state if m is not None else None

    def contacts(self, k: int) -> list[str]:
        """k alive peers, long-lived ones preferred (see beemeshd.core.membership)."""
        return self.membership.contacts(k, self._now(), self.rng)

    def set_record(self, record: dict) -> None:
        """This peer's capacity, runtime, network, version and labels (addresses, uptime and seq
        are the mesh's). Republished, signed, when anything but uptime changes."""
        new = {**self._record, **{k: record[k] for k in DEFAULT_RECORD if k in record}}
        # what peers would refuse as malformed is refused here, where the caller can see why
        proto.validate_record({**new, "addresses": [], "uptimeSeconds": 0.0, "seq": 0})
        if new != self._record:
            self._record = new
            if self._record_changed is not None:
                self._record_changed.set()

    async def publish(self, topic: str, payload: dict) -> None:
        if topic not in proto.TOPICS:
            raise ValueError(f"unknown topic {topic!r}")
        await self._send_gossip(topic, self.signer.seal(topic, "pub", payload, self._wall()))

    def subscribe(self, topic: str) -> AsyncIterator[proto.Envelope]:
        """Verified, fresh, first-seen messages of `topic` (this peer's own included), from now on."""
        if topic not in proto.TOPICS:
            raise ValueError(f"unknown topic {topic!r}")
        send, receive = trio.open_memory_channel(self.SUB_BUFFER)
        self._subs.setdefault(topic, set()).add(send)
        return self._stream(topic, send, receive)

    async def _stream(self, topic, send, receive):
        try:
            async with receive:
                async for env in receive:
                    yield env
        finally:
            self._subs.get(topic, set()).discard(send)
            send.close()

    def handle(self, protocol: str, handler: Handler, *, keep_streams: bool = False) -> None:
        """Serve `protocol`. keep_streams: requests to and from peers reuse one stream per peer
        (the transport's choice; libp2p opens and negotiates a stream per request otherwise), for
        protocols that run many small exchanges and whose handler tolerates a request delivered
        twice (a stream that broke is retried once on a new one)."""
        new = protocol not in self._handlers
        self._handlers[protocol] = handler
        if keep_streams:
            self._keep_streams.add(protocol)
        if new and self.running:
            self._register(protocol)

    async def request(self, peer_id: str, protocol: str, payload: dict, timeout: float,
                      addresses: list[str] | None = None) -> dict:
        """One signed request, one signed reply. PeerUnreachable (no answer, bad answer) or
        RemoteError (its handler failed). `addresses`: where to dial a peer not in the view."""
        raw = self.signer.seal(protocol, "req", payload, self._wall())
        try:
            with trio.fail_after(timeout):
                reply = await self._exchange(peer_id, addresses or self._addresses_of(peer_id), protocol, raw)
        except trio.TooSlowError:
            raise PeerUnreachable(peer_id, f"no reply to {protocol} within {timeout:g} s") from None
        except PeerUnreachable:
            raise
        except Exception as exc:  # transport errors come in many types; all mean the same here
            raise PeerUnreachable(peer_id, f"{protocol}: {exc or type(exc).__name__}") from None
        try:
            env = self.gate.accept(reply, self._wall(), topic=protocol, kind="rep", sender=peer_id)
        except proto.Rejected as exc:
            raise PeerUnreachable(peer_id, f"rejected reply: {exc}") from None
        if self._member(peer_id):
            self._emit(self.membership.heard(peer_id, self._now()))
        body = env.payload
        if set(body) == {"error"}:
            raise RemoteError(peer_id, protocol, str(body["error"]))
        if set(body) != {"ok"} or not isinstance(body["ok"], dict):
            self.gate.count(proto.Malformed("reply"))
            raise PeerUnreachable(peer_id, "malformed reply")
        return body["ok"]

    # --- inbound (called by the transport) ----------------------------------------------------

    def _admit(self, topic: str, raw: bytes, decoded: proto.Envelope | None = None,
               forwarder: str | None = None) -> proto.Envelope | None:
        """Gate a gossip message; the envelope if it may be delivered and forwarded. `forwarder`:
        the peer that handed it to us (libp2p), checked for membership before anything else."""
        if forwarder is not None and not self._member(forwarder):
            self.gate.count(NonMember(f"forwarded by non-member {forwarder}"))
            return None
        try:
            env = self.gate.accept(raw, self._wall(), topic=topic, kind="pub", decoded=decoded)
        except proto.Rejected as exc:
            log.debug("dropped %s message: %s", topic, exc)
            return None
        rec = None
        if topic == proto.TOPIC_RECORDS:
            try:
                rec = proto.validate_record(env.payload)
            except proto.Malformed as exc:
                self.gate.count(exc)
                return None
            if self.admission is not None and not self._admit_credential(env.sender, rec.get("credential")):
                return None
        elif not self._member(env.sender):
            self.gate.count(NonMember(f"{topic} message from non-member {env.sender}"))
            return None
        now = self._now()
        self._emit(self.membership.heard(env.sender, now))
        if rec is not None:
            self.membership.learned(env.sender, rec, raw, rec["seq"], now)
        elif topic == proto.TOPIC_MEMBERSHIP and isinstance(env.payload, dict):
            self._offer_revocations(env.payload.get("revocations"), env.sender)
            if not self._hear_rumours(env.payload, now):
                return None
        return env

    def _dispatch(self, env: proto.Envelope) -> None:
        for send in list(self._subs.get(env.topic, ())):
            try:
                send.send_nowait(env)
            except trio.WouldBlock:
                log.warning("a %s subscriber is %d messages behind; dropping one", env.topic, self.SUB_BUFFER)
            except trio.ClosedResourceError:
                self._subs[env.topic].discard(send)

    async def _request_in(self, remote: str, protocol: str, raw: bytes) -> bytes | None:
        """Serve one inbound request; None (no reply) when the request is rejected."""
        member = self._member(remote)
        if not member:  # before the signature check: a non-member's flood costs a dict lookup
            if protocol not in self.OPEN_PROTOCOLS:
                self.gate.count(NonMember(f"{protocol} request from non-member {remote}"))
                return None
            if not self._open_bucket.take(self._now()):
                self.gate.count(NonMember(f"{protocol} request from non-member {remote}: over the rate limit"))
                return None
        try:
            env = self.gate.accept(raw, self._wall(), topic=protocol, kind="req", sender=remote)
        except proto.Rejected as exc:
            log.debug("dropped %s request from %s: %s", protocol, remote, exc)
            if isinstance(exc, (proto.Stale, proto.Replayed)):
                # signed by `remote` and sent on its own stream: its doing, not a relay's
                self.on_misbehaviour(remote, exc.counter)
            return None
        if member and protocol not in self.OPEN_PROTOCOLS:
            self._emit(self.membership.heard(remote, self._now()))
        handler = self._handlers.get(protocol)
        if handler is None:
            reply = {"error": f"no handler for {protocol}"}
        else:
            try:
                reply = {"ok": await handler(env)}
            except cr.Invalid as exc:  # a credential or token refused: the answer, not a failure
                reply = {"error": str(exc)}
            except Exception as exc:
                log.warning("%s handler failed for %s: %s", protocol, remote, exc, exc_info=True)
                reply = {"error": str(exc) or type(exc).__name__}
        try:
            return self.signer.seal(protocol, "rep", reply, self._wall())
        except ValueError as exc:  # a reply too large to send is the handler's failure, not ours
            log.warning("%s reply to %s not sent: %s", protocol, remote, exc)
            return self.signer.seal(protocol, "rep", {"error": str(exc)}, self._wall())

    # --- internals ----------------------------------------------------------------------------

    def _uptime(self) -> float:
        return max(0.0, self._now() - self._born)

    def _record_payload(self) -> dict:
        rec = {**self._record, "addresses": self.addresses()[:16], "uptimeSeconds": round(self._uptime(), 3),
               "seq": self._record_seq}
        if self.admission is not None and self.admission.own is not None:
            rec["credential"] = self.admission.own_wire()
        return rec

    def _seal_record(self) -> bytes:
        # seq: µs of the wall clock, strictly increasing, so a restarted peer's record wins.
        self._record_seq = max(self._record_seq + 1, int(self._wall() * 1e6))
        self._record_raw = self.signer.seal(proto.TOPIC_RECORDS, "pub", self._record_payload(), self._wall())
        return self._record_raw

    def _addresses_of(self, peer_id: str) -> list[str]:
        m = self.membership.get(peer_id)
        if m is not None and m.record:
            return m.addresses()
        for pid, addrs in self.bootstrap:
            if pid == peer_id:
                return list(addrs)
        return list(self._found.get(peer_id, ()))

    def _emit(self, events: list[tuple[str, str]]) -> None:
        for kind, peer in events:
            log.info("%s %s", kind, peer)
            if kind == RECOVERED:  # nothing to sync after a brief silence; clients see a join
                kind = JOINED
                self._callback(kind, peer)
                continue
            if self._nursery is not None:
                if kind == JOINED:
                    self._nursery.start_soon(self._sync, peer, False)
                    if not self._announced:  # first contact: now gossip can carry our record
                        self._announced = True
                        self._nursery.start_soon(self._announce)
                elif kind == LEFT:
                    self._greeted.discard(peer)  # it may come back restarted, without our credential
                    if not self.membership.any_alive():
                        self._announced = False  # cut off from everyone: announce again on return
            self._callback(kind, peer)

    def _callback(self, kind: str, peer: str) -> None:
        try:
            self.on_peer_event(kind, peer)
        except Exception:
            log.exception("peer event callback failed")

    def _tick(self, now: float) -> None:
        """The failure detector's tick; what it detected by itself in a large view (bounded
        probing, core/membership.py) is told to everyone on beemesh/membership."""
        self._emit(self.membership.tick(now))
        news = self.membership.take_rumours()
        if news and self._nursery is not None and not self.membership.partial:
            self._nursery.start_soon(self.publish, proto.TOPIC_MEMBERSHIP, {"rumours": [list(r) for r in news]})
        if now - self._last_full_sync >= 2 * self.SYNC_INTERVAL and self._nursery is not None:
            # anti-entropy: peers that joined alongside us (not yet in our bootstrap peer's view
            # when we synced, their records gossiped before we listened) would otherwise wait
            # for their next record refresh
            peer = self.membership.random_alive(self.rng)
            if peer is not None:
                self._nursery.start_soon(self._sync, peer)

    def _hear_rumours(self, payload: dict, now: float) -> bool:
        """Apply another peer's failure-detector news; a suspicion of this peer is refuted by
        republishing our record (a newer seq: evidence that we live). False if malformed."""
        try:
            news = proto.rumours(payload)
        except proto.Malformed as exc:
            self.gate.count(exc)
            return False
        for peer, state, seq in news:
            if peer == self.peer_id:
                if self._record_changed is not None and seq >= self._record_seq:
                    self._record_changed.set()
            else:
                self._emit(self.membership.rumour(peer, state, seq, now))
        return True

    async def _probe_loop(self) -> None:
        t = self.timings
        while True:
            now = self._now()
            self._tick(now)
            for pid in self.membership.probe_targets(now):
                if pid not in self._probing:
                    self._probing.add(pid)
                    self._nursery.start_soon(self._probe_one, pid)
            await trio.sleep(t.ping_interval)

    async def _probe_one(self, peer_id: str) -> None:
        ok = False
        try:
            with trio.move_on_after(self.timings.dead_after):
                if self._needs_hello(peer_id) and not await self._hello(peer_id):
                    return
                ok = await self._probe(peer_id, self._addresses_of(peer_id))
        except Exception as exc:  # a failed probe is information, not an error
            log.debug("probe of %s failed: %r", peer_id, exc)
        finally:
            self._probing.discard(peer_id)
        if ok:
            self._emit(self.membership.heard(peer_id, self._now()))
        elif (m := self.membership.get(peer_id)) is not None and m.state == "dead":
            await self._drop(peer_id)

    async def _bootstrap_loop(self) -> None:
        """Keep trying bootstrap peers that are not in the view (first start, or after a restart)."""
        delay = self.timings.redial_min
        while True:
            for pid, _ in self.bootstrap:
                m = self.membership.get(pid)
                if pid != self.peer_id and (m is None or m.state == "pending") and pid not in self._probing:
                    self._probing.add(pid)
                    self._nursery.start_soon(self._probe_one, pid)
            await trio.sleep(delay)
            delay = min(delay * 2, self.timings.redial_max)

    async def _record_loop(self) -> None:
        while True:
            raw = self._seal_record()
            if self.membership.partial:  # the neighbourhood, not the whole mesh
                for pid in self.neighbours():
                    self._nursery.start_soon(self._sync, pid)
            else:
                await self._send_gossip(proto.TOPIC_RECORDS, raw)
            views = len(self.membership.members) / self.HELLO_LIMIT
            period = self.RECORD_REFRESH * max(1.0, views)
            if self.membership.partial:  # neighbours hear us in our lookups and their view syncs:
                period *= self.PARTIAL_REFRESH  # a refresh is only a safety net there
            with trio.move_on_after(period):
                await self._record_changed.wait()
            self._record_changed = trio.Event()

    async def _sync(self, peer_id: str, near: bool = True) -> None:
        """Tell a newly alive peer our record; at most every SYNC_INTERVAL also send a digest of
        our view and take the records we lack (a full exchange per join would cost O(n²)).
        A partial view asks for the peer's records nearest to us instead, unless `near` is False
        (a peer just became alive: records are swapped, no more; a newcomer alone would otherwise
        pull a neighbourhood from every peer of its table)."""
        now, last = self._now(), self._last_full_sync
        full = now - last >= self.SYNC_INTERVAL
        if self.membership.partial:  # our record, and their peers nearest to us: O(near)
            if full:
                self._last_full_sync = now  # (the anti-entropy round in _tick waits on it)
            full = False
            payload = proto.sync_payload([self._record_raw], near=routing.point(self.peer_id) if near else None,
                                         partial=True)
        else:
            if full:
                self._last_full_sync = now
            elif len(self.membership.members) > self.HELLO_LIMIT:
                return
            payload = proto.sync_payload([self._record_raw], self.membership.digest() if full else None)
        try:
            reply = await self.request(peer_id, proto.PROTO_SYNC, payload, self.timings.dead_after)
        except (PeerUnreachable, RemoteError) as exc:
            log.debug("view sync with %s failed: %s", peer_id, exc)
            if full:
                self._last_full_sync = last
            return
        self._merge(reply)

    async def _announce(self) -> None:
        await trio.sleep(self.ANNOUNCE_DELAY)
        if self._record_changed is not None:
            self._record_changed.set()

    async def _handle_sync(self, env: proto.Envelope) -> dict:
        known = self._merge(env.payload)
        try:
            near = proto.sync_near(env.payload)
        except proto.Malformed as exc:
            self.gate.count(exc)
            raise
        if near is not None:  # a lookup step: the records we hold nearest to that point
            extra = self.membership.closest_records(near, self.timings.near + self.LOOKUP_ALPHA)
        else:
            extra = self.membership.newer_than(known) if known is not None else []
        # A view of ~1,500 records no longer fits one envelope (MAX_ENVELOPE): send what fits;
        # the asker's next full sync (its digest then holds these) brings the rest.
        out, size = [self._record_raw], 0
        for raw in extra:
            size += (len(raw) + 2) * 4 // 3 + 4  # base64 and JSON quoting
            if size > self.SYNC_BUDGET:
                break
            out.append(raw)
        return proto.sync_payload(out, partial=self.membership.partial)

    def _merge(self, payload: dict, found: list[str] | None = None) -> dict | None:
        """Learn the records of a sync message; its digest (or None). `found`: gets the peers
        whose records were valid (a lookup's candidates; their addresses are kept in _found)."""
        try:
            raws, known = proto.sync_records(payload)
        except proto.Malformed as exc:
            self.gate.count(exc)
            return None
        members, now = self.membership.members, self._now()
        if payload.get("partial") is True and self.membership.become_partial(now) and self._nursery is not None:
            # a large mesh: find our neighbourhood at once (the table keeps it)
            self._nursery.start_soon(self.lookup, routing.point(self.peer_id), self.timings.near)
        for raw in raws:
            claimed = proto.claimed_sender(raw)
            held = members.get(claimed)
            if (held is not None and held.record_raw == raw) or raw == self._record_raw:
                if found is not None:  # these exact bytes were verified when we took them
                    found.append(held.peer_id if held is not None else self.peer_id)
                continue
            if held is None and found is None and claimed and not self.membership.admits(claimed):
                continue  # a table with no room for it: not worth a signature check
            try:
                env = self._decode(raw)
                if env.topic != proto.TOPIC_RECORDS or env.kind != "pub":
                    raise proto.Replayed(f"a {env.topic} message relayed as a record")
                rec = proto.validate_record(env.payload)
            except proto.Rejected as exc:
                self.gate.count(exc)
                continue
            if self.admission is not None and not self._admit_credential(env.sender, rec.get("credential")):
                continue
            self.membership.learned(env.sender, rec, raw, rec["seq"], now)
            if found is not None:
                found.append(env.sender)
                if env.sender not in self.membership.members:
                    self._found.pop(env.sender, None)
                    self._found[env.sender] = list(rec["addresses"])
                    while len(self._found) > self.FOUND_MAX:
                        del self._found[next(iter(self._found))]
        return known

    # --- partial views: lookups and pins (see the module docstring) ----------------------------

    def size_estimate(self) -> float:
        """How many peers the mesh has, as this view suggests (exact in a full view). A table
        means at least view_max / 2 (below that it would hold everyone again): a newcomer's
        table, still nearly empty, must not make it treat a large mesh as a small one (and
        broadcast what a large mesh sends to holders only)."""
        m = self.membership
        return max(m.size_estimate(), m.timings.view_max / 2) if m.partial else m.size_estimate()

    def neighbours(self) -> list[str]:
        """The `near` live peers nearest to this one that the view holds, nearest first."""
        return self.membership.closest(routing.point(self.peer_id), self.timings.near)

    async def lookup(self, target: int, k: int) -> list[str]:
        """The k peers nearest to `target` (a point of the XOR space, core/routing.py) in the
        whole mesh, this one included, nearest first. A full view answers from itself; a partial
        one asks the nearest peers it knows for nearer ones (LOOKUP_ALPHA at a time) until the
        k nearest it has heard of have all answered. Peers that do not answer are left out."""
        if not self.membership.partial:
            return routing.closest(target, [self.peer_id, *self.peer_ids(("alive", "suspect"))], k)
        cand = set(self.membership.closest(target, max(k, self.timings.near))) | {self.peer_id}
        asked, failed = {self.peer_id}, set()
        payload = proto.sync_payload([self._record_raw], near=target, partial=True)

        async def ask(peer: str) -> None:
            try:
                reply = await self.request(peer, proto.PROTO_SYNC, payload, self.LOOKUP_TIMEOUT)
            except (PeerUnreachable, RemoteError) as exc:
                log.debug("lookup step at %s failed: %s", peer, exc)
                failed.add(peer)
                return
            found: list[str] = []
            self._merge(reply, found)
            cand.update(found)

        for _ in range(self.LOOKUP_ROUNDS):
            todo = [p for p in routing.closest(target, cand - failed, k) if p not in asked][:self.LOOKUP_ALPHA]
            if not todo:
                break
            asked.update(todo)
            async with trio.open_nursery() as n:
                for p in todo:
                    n.start_soon(ask, p)
        return routing.closest(target, cand - failed, k)

    def pin(self, peers) -> None:
        """Keep these peers in the view whatever their distance, probed every interval (a
        partial view only; a full view holds them anyway). Unknown ones are looked up; one that
        nobody knows is taken as dead (so what it was given moves elsewhere)."""
        m = self.membership
        m.pins = set(peers) - {self.peer_id}
        if not m.partial or self._nursery is None:
            return
        for p in m.pins:
            if p not in m.members and p not in self._finding:
                self._finding.add(p)
                self._nursery.start_soon(self._find, p)

    async def _find(self, peer: str) -> None:
        try:
            await self.lookup(routing.point(peer), 1)  # its record comes back from whoever knows it
            if peer not in self.membership.members and peer in self.membership.pins:
                log.info("pinned peer %s: no peer knows it; taken as dead", peer)
                self.membership.absent(peer, self._now())
        finally:
            self._finding.discard(peer)

    # --- membership (see the module docstring) ------------------------------------------------

    def _member(self, peer_id: str) -> bool:
        return (self.admission is None or peer_id == self.peer_id  # our own messages come back too
                or self.admission.member(peer_id, self._wall()))

    def _needs_hello(self, peer_id: str) -> bool:
        """Before a probe: unless both sides hold each other's credential already. (A member
        known from its record may not know us yet, and would drop what we send.)"""
        return self.admission is not None and (peer_id not in self._greeted or not self._member(peer_id))

    def _admit_credential(self, peer_id: str, wire) -> bool:
        """Verify a credential found in a record; False (counted) when it does not admit."""
        try:
            self.admission.admit(peer_id, wire, self._wall())
            return True
        except cr.Invalid as exc:
            self.gate.count(NonMember(f"record of {peer_id}: {exc}"))
            return False

    def _hello_payload(self) -> dict:
        return {"credential": self.admission.own_wire(), "revocations": self.admission.revocations.wire()}

    async def _hello(self, peer_id: str) -> bool:
        """Exchange credentials with a peer not yet known as a member; True when it is one now."""
        if self.admission is None:
            return True
        if self.admission.own is None:
            return False  # we belong to no mesh: nobody to talk to (a lapsed credential still
            # says hello, so that the other side's refusal tells this peer's log why)
        try:
            reply = await self.request(peer_id, proto.PROTO_HELLO, self._hello_payload(), self.timings.dead_after)
        except RemoteError as exc:
            log.info("%s refused our credential: %s", peer_id, exc.reason)
            return False
        except PeerUnreachable as exc:
            log.debug("hello to %s failed: %s", peer_id, exc)
            return False
        self._offer_revocations(reply.get("revocations"), peer_id)
        try:
            self.admission.admit(peer_id, reply.get("credential"), self._wall())
        except cr.Invalid as exc:
            self._refuse(peer_id, exc)
            return False
        self._greeted.add(peer_id)
        return True

    async def _handle_hello(self, env: proto.Envelope) -> dict:
        payload = env.payload
        self._offer_revocations(payload.get("revocations"), env.sender)
        try:
            self.admission.admit(env.sender, payload.get("credential"), self._wall())
        except cr.Invalid as exc:
            self._refuse(env.sender, exc)
            raise
        self._greeted.add(env.sender)
        return self._hello_payload()

    def _refuse(self, peer_id: str, why) -> None:
        """A peer without a valid credential: count it, and close its connection (after a moment,
        so that the reply saying why still leaves)."""
        self.counters["refusedPeers"] += 1
        log.info("refused peer %s: %s", peer_id, why)
        if self._nursery is not None:
            self._nursery.start_soon(self._disconnect_later, peer_id, 0.5)

    async def _disconnect_later(self, peer_id: str, delay: float) -> None:
        await trio.sleep(delay)
        if not self._member(peer_id):
            await self._disconnect(peer_id)

    async def _disconnect(self, peer_id: str) -> None:
        """Close every connection to a peer that is not (or no longer) a member."""
        self._greeted.discard(peer_id)
        await self._drop(peer_id)

    def _expel(self, peers: list[str], why: str) -> None:
        """Members that stopped being members (revoked, expired): out of the view, disconnected."""
        for pid in peers:
            log.info("expelled %s: %s", pid, why)
            self._emit(self.membership.forget(pid))
            if self._nursery is not None:
                self._nursery.start_soon(self._disconnect, pid)

    def _offer_revocations(self, wire, source: str) -> None:
        if self.admission is None or wire is None:
            return
        try:
            gone = self.admission.offer_revocations(wire)
        except cr.Invalid as exc:
            self.gate.count(NonMember(f"revocation list from {source}: {exc}"))
            return
        if gone is None:
            return
        log.info("revocation list version %d from %s", self.admission.revocations.version, source)
        self.on_revocations(self.admission.revocations)
        self._expel(gone, "revoked")

    async def publish_revocations(self, rl: cr.RevocationList) -> None:
        """Adopt a list this peer just signed (Revoke) and spread it."""
        self._expel(self.admission.apply_revocations(rl), "revoked")
        if self.running:
            await self.publish(proto.TOPIC_MEMBERSHIP, {"revocations": rl.wire()})

    def membership_changed(self) -> None:
        """This peer joined a mesh or got a new credential: republish the record (it carries the
        credential) and say hello to the bootstrap peers at once."""
        if self._record_changed is not None:
            self._record_changed.set()
        if self._nursery is not None:
            for pid, _ in self.bootstrap:
                if pid != self.peer_id and not self._member(pid) and pid not in self._probing:
                    self._probing.add(pid)
                    self._nursery.start_soon(self._probe_one, pid)

    def add_contacts(self, addresses: list[str]) -> None:
        """Multiaddrs ending in /p2p/<id> (from an invitation) become bootstrap peers."""
        by_peer: dict[str, list[str]] = {}
        for a in addresses:
            _, sep, pid = a.partition("/p2p/")
            pid = pid.strip("/")
            if sep and pid and pid != self.peer_id:
                by_peer.setdefault(pid, []).append(a)
        known = {pid for pid, _ in self.bootstrap}
        self.bootstrap += [(pid, addrs) for pid, addrs in by_peer.items() if pid not in known]

    async def open_up(self, listen: list[str], mdns_name: str | None) -> None:
        """Now a member of a mesh: listen on `listen` too, and look for peers by mDNS (libp2p)."""

    async def _admission_loop(self) -> None:
        """Members whose credential expired are expelled; a lapse of our own is logged."""
        was_ready = None
        while True:
            wall = self._wall()
            self._expel(self.admission.sweep(wall), "credential expired")
            state = self.admission.own_state(wall)
            if (state is None) != was_ready:
                was_ready = state is None
                if state is not None and self.admission.mesh is not None:
                    log.warning("this peer's mesh credential is not valid (%s): no peer will accept it", state)
            await trio.sleep(self.ADMISSION_INTERVAL)
