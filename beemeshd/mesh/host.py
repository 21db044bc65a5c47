"""The libp2p mesh: the only module that imports libp2p (≈ 56 MB of RSS, so it is imported only
when a mesh starts — see beemeshd.mesh.make_mesh).

Transport choices, each for a reason found the hard way with py-libp2p 0.8 (shared notes):
- Noise only, Yamux only: the library's defaults also offer TLS, SECIO and *plaintext*.
- `max_connections_per_peer=1`: with the default of 3 every dial waits ≈ 250 ms for more.
- The swarm's auto-connector is switched off (see __init__), and libp2p's loggers are routed
  through ours (importing libp2p detaches them) with expected failures kept quiet.
- No keepalive in libp2p (a dead link looks connected for 20 s or more): the failure detector
  pings over one long-lived /ipfs/ping stream per peer, with its own time-outs, and drops the
  connection of a peer it declares dead so that the next probe dials afresh. Our own ping
  handler (same wire protocol) counts an inbound ping as evidence, which halves the pings.
- GossipSub: heartbeat `heartbeat` s (default 0.5); "adaptive gossip" off, because it silently
  raises the heartbeat to 30–60 s when it judges the network unhealthy; the per-peer, per-topic
  rate limit raised from 10/s to RATE_LIMIT/s (a relay forwards everyone's bids). Protocol
  v1.1, not v1.2: v1.2 sends an IDONTWANT to every mesh peer for every message, which for our
  small messages costs more than it saves. Mesh degree D=4 (3–8), not 6: py-libp2p spends
  ≈ 1.5 ms of CPU per RPC; 20 peers on 2 cores publishing 10 messages/s used 1.7 cores with
  D=6 and 1.4 with D=4 (p99 94 -> 57 ms); 20 messages/s saturates either.
- Our gossip validator is the BeeMesh gate (signature, ±30 s, replay cache) and delivers to local
  subscribers itself: libp2p's subscription queues hold only 32 messages, and its validation
  cache would let a re-sent message skip the gate after its seen-cache forgot it.
- Kademlia (server mode): the routing table is filled explicitly with uptime-weighted contacts
  after peers join — a bootstrap node does not add inbound peers by itself.
- mDNS only for a mesh this peer belongs to (service name derived from the mesh id), or an open
  mesh named in the settings, so unrelated meshes (and loopback-only daemons) never merge.
- Membership (MeshBase): every new connection is vetted. A member says hello at once; if a peer
  has not become a member VET_DELAY s after connecting, we say hello ourselves, and refuse and
  disconnect it if that fails. A joiner redeeming a token is a member by then. Gossip forwarded by
  a non-member is dropped in the validator before its signature is checked.
"""

from __future__ import annotations

import hashlib
import logging
import os
from contextlib import asynccontextmanager

import multiaddr
import trio

from beemeshd.mesh.lean_import import import_libp2p

import_libp2p()  # first, so that QUIC, WebSocket, AutoTLS and UPnP stay out (≈ 7 MB)
from libp2p import new_host  # noqa: E402
from libp2p.crypto.ed25519 import Ed25519PrivateKey
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.x25519 import create_new_key_pair as new_x25519
from libp2p.discovery.events.peerDiscovery import peerDiscovery
from libp2p.host.ping import ID as PING
from libp2p.io.utils import read_exactly
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.network.config import ConnectionConfig
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.pubsub.gossipsub import PROTOCOL_ID, PROTOCOL_ID_V11, GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE, Transport as Noise
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX, Yamux
from libp2p.abc import INotifee
from libp2p.tools.anyio_service import background_trio_service

from beemeshd.core import protocol as proto
from beemeshd.mesh.base import MeshBase

log = logging.getLogger("beemeshd.mesh")
# Importing libp2p detaches its loggers (propagate=False, no handler: records reach stderr bare,
# via logging.lastResort). Send them through our handlers (journald) instead, and quiet those
# that report expected events at WARNING/ERROR (every failed redial of a dead peer, every stream
# a DHT peer closes after a lookup, GossipSub's GRAFT/PRUNE chatter) or force INFO on themselves.
# Our own log says when a peer is unreachable.
logging.getLogger("libp2p").propagate = True
if logging.getLogger("libp2p").getEffectiveLevel() >= logging.WARNING:
    logging.getLogger("libp2p.transport.tcp.tcp").setLevel(logging.CRITICAL)
    logging.getLogger("libp2p.kad_dht.kad_dht").setLevel(logging.ERROR)
    logging.getLogger("libp2p.network.auto_connector").setLevel(logging.WARNING)  # it forces INFO
    logging.getLogger("libp2p.pubsub.gossipsub").setLevel(logging.ERROR)  # GRAFT/PRUNE chatter

RATE_LIMIT = 1000.0  # gossip messages per second, per forwarding peer and topic
KEPT_IDLE = 60.0  # a kept request stream (MeshBase.handle(keep_streams=True)) idle this long is closed
KEPT_PER_PEER = 2  # kept streams one peer may hold open here per protocol; more serve one request
DHT_CONTACTS = 20  # Kademlia's k


async def _nothing() -> None:
    pass


def split_addr(addr: str) -> tuple[str | None, str]:
    """'/ip4/…/tcp/…/p2p/ID' -> (ID, '/ip4/…/tcp/…')."""
    head, sep, pid = addr.partition("/p2p/")
    return (pid.strip("/") or None) if sep else None, head


class _Connections(INotifee):
    """Tells the mesh about new and closed connections (libp2p calls these inline: be quick)."""

    def __init__(self, mesh: "LibP2PMesh"):
        self.mesh = mesh

    async def connected(self, network, conn) -> None:
        self.mesh._connected(conn.muxed_conn.peer_id.to_base58())

    async def disconnected(self, network, conn) -> None:
        self.mesh._disconnected(conn.muxed_conn.peer_id)

    async def opened_stream(self, network, stream) -> None:
        pass

    async def closed_stream(self, network, stream) -> None:
        pass

    async def listen(self, network, multiaddr) -> None:
        pass

    async def listen_close(self, network, multiaddr) -> None:
        pass


class LibP2PMesh(MeshBase):
    VET_DELAY = 1.0  # a member's own hello normally arrives within milliseconds of connecting

    def __init__(self, seed: bytes, *, listen: list[str], bootstrap: list[str] = (),
                 mdns_name: str | None = None, heartbeat: float = 0.5, **kw):
        boot = []
        for a in bootstrap:
            pid, addr = split_addr(a)
            if not pid:
                raise ValueError(f"bootstrap address {a!r} lacks /p2p/<peer id>")
            boot.append((pid, [addr]))
        super().__init__(seed, bootstrap=boot, **kw)
        self.listen = [multiaddr.Multiaddr(a) for a in listen]
        self.mdns_name = mdns_name
        priv = Ed25519PrivateKey.from_bytes(seed)
        key_pair = KeyPair(priv, priv.get_public_key())
        self.host = new_host(
            key_pair=key_pair,
            sec_opt={NOISE: Noise(key_pair, noise_privkey=new_x25519().private_key)},
            muxer_opt={YAMUX: Yamux},
            connection_config=ConnectionConfig(max_connections_per_peer=1, dial_timeout=self.timings.dead_after),
            listen_addrs=self.listen,
        )
        if self.host.get_id().to_base58() != self.peer_id:
            raise RuntimeError("libp2p derived another peer id from the identity seed")
        # The swarm's auto-connector dials every peer in the peerstore, dead ones included, every
        # 10 s until it has 150 connections; redialling is the failure detector's job here.
        self.host.get_network().auto_connector.maybe_connect = _nothing
        # Our own /ipfs/ping handler (same wire protocol): an inbound ping from a member is
        # evidence that it is alive, which spares our probe of it.
        self.host.set_stream_handler(PING, self._serve_ping)
        self.gossipsub = GossipSub(
            [PROTOCOL_ID_V11, PROTOCOL_ID], degree=4, degree_low=3, degree_high=8,
            heartbeat_interval=heartbeat, heartbeat_initial_delay=0.1, prune_back_off=10,
            adaptive_gossip_enabled=False, max_messages_per_topic_per_second=RATE_LIMIT,
            eclipse_protection_enabled=False,  # peers of a test or a LAN share few IPs
        )
        # Its GRAFT-flood check punishes a peer that re-grafts us after *it* pruned us, which at
        # a sub-second heartbeat makes meshes flap (prune, "flood", prune ...): off; backoff stays.
        self.gossipsub.graft_flood_threshold = 0.0
        self.pubsub = Pubsub(self.host, self.gossipsub, seen_ttl=int(proto.REPLAY_TTL))
        self.dht = KadDHT(self.host, DHTMode.SERVER)
        self._pings: dict[str, object] = {}
        self._kept: dict[tuple[str, str], object] = {}  # (peer, protocol) -> an idle kept stream
        self._kept_in: dict[tuple[str, str], int] = {}  # (peer, protocol) -> kept streams served here
        self._in_table: set[str] = set()
        self._token: trio.lowlevel.TrioToken | None = None
        self._mdns = None
        self._hide_loopback = False  # listening on real addresses too: do not advertise 127.x
        if self.admission is not None:
            self.host.get_network().register_notifee(_Connections(self))

    def addresses(self) -> list[str]:
        try:
            addrs = [str(a) for a in self.host.get_addrs()]
        except Exception:  # not listening yet
            return []
        if self._hide_loopback:
            addrs = [a for a in addrs if not a.startswith("/ip4/127.")] or addrs
        return addrs

    # --- transport ----------------------------------------------------------------------------

    @asynccontextmanager
    async def _open_transport(self):
        self._token = trio.lowlevel.current_trio_token()
        async with self.host.run(self.listen):
            if not self.host.get_transport_addrs():  # libp2p only logs a failed listen
                raise OSError(f"cannot listen on {', '.join(map(str, self.listen))}")
            for protocol in self._handlers:
                self._register(protocol)
            async with background_trio_service(self.pubsub), background_trio_service(self.gossipsub):
                await self.pubsub.wait_until_ready()
                async with trio.open_nursery() as nursery:
                    for topic in proto.TOPICS:
                        self.pubsub.set_topic_validator(topic, self._validator, False)
                        nursery.start_soon(self._drain, await self.pubsub.subscribe(topic))
                    async with background_trio_service(self.dht):
                        self._start_mdns()
                        nursery.start_soon(self._dht_loop)
                        try:
                            yield
                        finally:
                            nursery.cancel_scope.cancel()
                            self._stop_mdns()

    def _start_mdns(self) -> None:
        if not self.mdns_name or self._mdns is not None:
            return
        from libp2p.discovery.mdns.mdns import create_mdns_discovery

        # DNS-SD service names are at most 15 bytes: "p2p-" + 10 hex digits of the mesh name.
        fingerprint = hashlib.sha256(b"beemesh/" + self.mdns_name.encode()).hexdigest()[:10]
        port = int(self.host.get_transport_addrs()[0].value_for_protocol("tcp"))
        mdns = create_mdns_discovery(self.host.get_network(), port=port, host=self.host,
                                     private_network_fingerprint=fingerprint)
        peerDiscovery.register_peer_discovered_handler(self._discovered)
        mdns.start()
        self._mdns = mdns

    def _stop_mdns(self) -> None:
        if self._mdns is not None:
            peerDiscovery.unregister_peer_discovered_handler(self._discovered)
            self._mdns.stop()
            self._mdns = None

    async def open_up(self, listen: list[str], mdns_name: str | None) -> None:
        """Joined a mesh while running (listening on loopback only): listen on `listen` as well,
        without dropping a connection, and start mDNS under the mesh's name."""
        new = [multiaddr.Multiaddr(a) for a in listen if a not in {str(x) for x in self.listen}]
        if new and self.running:
            if await self.host.get_network().listen(*new):
                self.listen += new
                self._hide_loopback = any(not str(a).startswith("/ip4/127.") for a in new)
                log.info("mesh now also listens on %s", ", ".join(self.addresses()))
        if mdns_name and mdns_name != self.mdns_name and self.running:
            self._stop_mdns()
            self.mdns_name = mdns_name
            self._start_mdns()

    def _discovered(self, info: PeerInfo) -> None:
        """mDNS found a peer (called from zeroconf's thread): probe it like a bootstrap peer."""
        pid = info.peer_id.to_base58()
        addrs = [str(a) for a in info.addrs]

        def add():
            if pid != self.peer_id and all(p != pid for p, _ in self.bootstrap):
                log.info("mDNS found %s at %s", pid, ", ".join(addrs))
                self.bootstrap.append((pid, addrs))
                if self._nursery is not None and pid not in self._probing:
                    self._probing.add(pid)
                    self._nursery.start_soon(self._probe_one, pid)

        if self._token is not None:
            self._token.run_sync_soon(add)

    def _validator(self, forwarder: ID, msg) -> bool:
        if len(msg.topicIDs) != 1:
            self.gate.count(proto.Malformed("gossip message for several topics"))
            return False
        env = self._admit(msg.topicIDs[0], msg.data,
                          forwarder=forwarder.to_base58() if self.admission is not None else None)
        if env is None:
            return False
        self._dispatch(env)
        return True

    @staticmethod
    async def _drain(subscription) -> None:
        # Delivery happened in the validator; libp2p's copy only has to leave its queue.
        while True:
            await subscription.get()

    async def _send_gossip(self, topic: str, raw: bytes) -> None:
        await self.pubsub.publish(topic, raw)

    async def _connect(self, peer_id: str, addresses: list[str]) -> ID:
        pid = ID.from_base58(peer_id)
        if not self.host.get_network().connections.get(pid):
            addrs = [multiaddr.Multiaddr(split_addr(a)[1]) for a in addresses]
            await self.host.connect(PeerInfo(pid, addrs))
        return pid

    async def _probe(self, peer_id: str, addresses: list[str]) -> bool:
        pid = await self._connect(peer_id, addresses)
        stream = self._pings.get(peer_id)
        try:
            if stream is None:
                stream = self._pings[peer_id] = await self.host.new_stream(pid, [PING])
            data = os.urandom(32)
            await stream.write(data)
            return await read_exactly(stream, 32) == data
        except BaseException:
            self._pings.pop(peer_id, None)
            if stream is not None:
                with trio.CancelScope(shield=True), trio.move_on_after(0.5):
                    await stream.reset()
            raise

    async def _serve_ping(self, stream) -> None:
        pid = stream.muxed_conn.peer_id.to_base58()
        if not self._member(pid):  # liveness is for members only
            with trio.move_on_after(0.5):
                await stream.reset()
            return
        try:
            while True:
                with trio.fail_after(max(10.0, 3 * self.timings.dead_after)):  # idle pingers go away
                    data = await read_exactly(stream, 32)
                await stream.write(data)
                if self.membership.get(pid) is not None:
                    self._emit(self.membership.heard(pid, self._now()))
        except Exception:
            with trio.move_on_after(0.5):
                await stream.reset()

    async def _exchange(self, peer_id: str, addresses: list[str], protocol: str, raw: bytes) -> bytes:
        pid = await self._connect(peer_id, addresses)
        keep = protocol in self._keep_streams
        stream = self._kept.pop((peer_id, protocol), None) if keep else None
        if stream is not None:  # a kept stream may have broken since: then once more, on a new one
            try:
                return await self._round_trip(stream, raw, peer_id, protocol)
            except trio.Cancelled:
                raise
            except Exception as exc:
                log.debug("kept %s stream to %s broke: %r", protocol, peer_id, exc)
        return await self._round_trip(await self.host.new_stream(pid, [protocol]), raw,
                                      peer_id, protocol if keep else None)

    async def _round_trip(self, stream, raw: bytes, peer_id: str, keep: str | None) -> bytes:
        """One request and its reply; then the stream is kept for the next (keep: its protocol)
        or closed. Any failure or cancellation resets it."""
        try:
            await stream.write(len(raw).to_bytes(4, "big") + raw)
            size = int.from_bytes(await read_exactly(stream, 4), "big")
            if size > proto.MAX_ENVELOPE:
                raise ValueError(f"reply of {size} bytes")
            reply = await read_exactly(stream, size)
            if keep is None:
                await stream.close()
            else:
                old = self._kept.get((peer_id, keep))
                self._kept[(peer_id, keep)] = stream
                if old is not None:  # two exchanges ran at once: keep one stream, not both
                    with trio.move_on_after(0.5):
                        await old.reset()
            return reply
        except BaseException:
            with trio.CancelScope(shield=True), trio.move_on_after(0.5):
                await stream.reset()
            raise

    def _register(self, protocol: str) -> None:
        self.host.set_stream_handler(protocol, self._serve)

    async def _serve(self, stream) -> None:
        remote = stream.muxed_conn.peer_id.to_base58()
        protocol = str(stream.get_protocol())
        key = (remote, protocol)
        # a member keeps at most KEPT_PER_PEER streams of a protocol open here (the tasks they hold)
        keep = protocol in self._keep_streams and self._kept_in.get(key, 0) < KEPT_PER_PEER
        if keep:
            self._kept_in[key] = self._kept_in.get(key, 0) + 1
        served = 0
        try:
            while True:
                # A silent client cannot hold a task: the first request is due at once, the next
                # one on a kept stream within KEPT_IDLE (the client side closes at its end).
                with trio.fail_after(self.timings.dead_after * 2 if not served else KEPT_IDLE):
                    size = int.from_bytes(await read_exactly(stream, 4), "big")
                    if size > proto.MAX_ENVELOPE:
                        self.gate.count(proto.Malformed(f"request of {size} bytes"))
                        raise ValueError("oversized request")
                    raw = await read_exactly(stream, size)
                reply = await self._request_in(remote, protocol, raw)
                if reply is None:
                    raise ValueError("request rejected")
                await stream.write(len(reply).to_bytes(4, "big") + reply)
                served += 1
                if not keep:
                    await stream.close()
                    return
        except Exception as exc:
            log.debug("%s stream from %s: %r", protocol, remote, exc)
            with trio.move_on_after(0.5):
                await stream.reset()
        finally:
            if keep:
                left = self._kept_in.pop(key) - 1
                if left:
                    self._kept_in[key] = left

    # --- membership -------------------------------------------------------------------------------

    def _connected(self, peer_id: str) -> None:
        if self._nursery is not None and not (self._member(peer_id) and peer_id in self._greeted):
            self._nursery.start_soon(self._vet, peer_id)

    def _disconnected(self, pid: ID) -> None:
        if not self.host.get_network().connections.get(pid):
            self._greeted.discard(pid.to_base58())  # a new connection may reach a restarted peer

    async def _vet(self, peer_id: str) -> None:
        """A new connection: keep it only if the peer proves it is a member (module docstring)."""
        await trio.sleep(self.VET_DELAY)
        pid = ID.from_base58(peer_id)
        if not self.host.get_network().connections.get(pid):
            return
        if self._member(peer_id) and peer_id in self._greeted:
            return
        refused = self.counters["refusedPeers"]
        if await self._hello(peer_id) or self.counters["refusedPeers"] != refused:
            return  # a member after all, or refused for the credential it showed
        if not self._member(peer_id) and self.host.get_network().connections.get(pid):
            self._refuse(peer_id, "no valid credential for this mesh")

    async def _drop(self, peer_id: str) -> None:
        self._pings.pop(peer_id, None)
        for key in [k for k in self._kept if k[0] == peer_id]:
            del self._kept[key]
        pid = ID.from_base58(peer_id)
        if peer_id in self._in_table:
            self._in_table.discard(peer_id)
            self.dht.routing_table.remove_peer(pid)
        with trio.move_on_after(1):
            await self.host.disconnect(pid)

    # --- Kademlia contacts ----------------------------------------------------------------------

    async def _dht_loop(self) -> None:
        """Keep the routing table filled with long-lived contacts (membership.contacts). This is
        the refresh a bootstrap node needs; the DHT's own network lookups would find nothing the
        view lacks and, with 20 peers starting at once, cost a storm of streams."""
        while True:
            for pid in self.contacts(DHT_CONTACTS):
                if pid in self._in_table:
                    continue
                addrs = [multiaddr.Multiaddr(split_addr(a)[1]) for a in self._addresses_of(pid)]
                try:
                    with trio.move_on_after(self.timings.dead_after):
                        if await self.dht.routing_table.add_peer(PeerInfo(ID.from_base58(pid), addrs),
                                                                 skip_server_mode_check=True):
                            self._in_table.add(pid)
                except Exception as exc:
                    log.debug("DHT: could not add %s: %r", pid, exc)
            await trio.sleep(2)
