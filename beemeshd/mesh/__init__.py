"""The mesh adapter: how this peer finds, watches and talks to the others.

Two implementations of one interface (`Mesh`): LibP2PMesh (beemeshd.mesh.host, the only module
that imports libp2p, imported lazily by `make_mesh`) and FakeMesh (beemeshd.mesh.fake, many
peers in one process for unit tests and simulators). Both sit on MeshBase (beemeshd.mesh.base),
which runs the pure core (beemeshd.core.protocol, beemeshd.core.membership) on trio.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

import trio

from beemeshd.core.membership import Timings
from beemeshd.core.protocol import TOPIC_BIDS, TOPIC_EVENTS, TOPIC_RECORDS, TOPIC_TASKS, Envelope
from beemeshd.errors import PeerUnreachable
from beemeshd.mesh.base import PeerView, RemoteError

__all__ = ["Mesh", "PeerView", "Envelope", "PeerUnreachable", "RemoteError", "make_mesh", "LOOPBACK_LISTEN",
           "TOPIC_TASKS", "TOPIC_BIDS", "TOPIC_EVENTS", "TOPIC_RECORDS"]

LOOPBACK_LISTEN = "/ip4/127.0.0.1/tcp/0"


class Mesh(Protocol):
    peer_id: str
    counters: dict[str, int]  # forgedMessages, staleMessages, replayedMessages, malformedMessages
    on_peer_event: Callable[[str, str], None]  # (PeerJoined | PeerSuspect | PeerLeft, peer id)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None: ...
    def addresses(self) -> list[str]: ...
    def peers(self) -> list[PeerView]: ...
    def contacts(self, k: int) -> list[str]: ...
    def set_record(self, record: dict) -> None: ...
    async def publish(self, topic: str, payload: dict) -> None: ...
    def subscribe(self, topic: str) -> AsyncIterator[Envelope]: ...
    async def request(self, peer_id: str, protocol: str, payload: dict, timeout: float) -> dict: ...
    def handle(self, protocol: str, handler: Callable[[Envelope], Awaitable[dict]]) -> None: ...


def listen_addresses(config) -> list[str]:
    """Configured listen addresses; by default loopback only unless the mesh is named (issue 10:
    until membership credentials exist, an unnamed daemon must not be reachable from the LAN)."""
    if config.mesh_listen:
        return list(config.mesh_listen)
    if not config.mesh_name:
        return [LOOPBACK_LISTEN]
    import ifaddr  # a zeroconf (libp2p) dependency

    # Every non-loopback IPv4 address (ports picked by the kernel): advertising 127.0.0.1 to
    # other machines would only make them dial themselves.
    out = [f"/ip4/{ip.ip}/tcp/0" for adapter in ifaddr.get_adapters() for ip in adapter.ips
           if isinstance(ip.ip, str) and not ip.ip.startswith("127.")]
    return out or [LOOPBACK_LISTEN]


def make_mesh(config, seed: bytes) -> Mesh:
    from beemeshd.mesh.host import LibP2PMesh  # ≈ 56 MB of RSS: only when a mesh runs

    timings = Timings(ping_interval=config.ping_interval_seconds, suspect_after=config.suspect_after_seconds,
                      dead_after=config.dead_after_seconds)
    return LibP2PMesh(seed, listen=listen_addresses(config), bootstrap=list(config.mesh_bootstrap),
                      mdns_name=config.mesh_name if config.mesh_mdns and config.mesh_name else None,
                      heartbeat=config.gossip_heartbeat_seconds, timings=timings)
