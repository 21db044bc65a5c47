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
    counters: dict[str, int]  # forged/stale/replayed/malformed/nonMemberMessages, refusedPeers
    admission: object  # beemeshd.core.admission.Admission, or None for an open mesh
    on_peer_event: Callable[[str, str], None]  # (PeerJoined | PeerSuspect | PeerLeft, peer id)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None: ...
    def addresses(self) -> list[str]: ...
    def peers(self) -> list[PeerView]: ...
    def peer_ids(self, states: tuple[str, ...] = ("alive",)) -> list[str]: ...  # others, cheaply
    def peer_state(self, peer_id: str) -> str | None: ...  # "self", a view state, or None
    def contacts(self, k: int) -> list[str]: ...
    def set_record(self, record: dict) -> None: ...
    async def publish(self, topic: str, payload: dict) -> None: ...
    def subscribe(self, topic: str) -> AsyncIterator[Envelope]: ...
    async def request(self, peer_id: str, protocol: str, payload: dict, timeout: float,
                      addresses: list[str] | None = None) -> dict: ...
    def handle(self, protocol: str, handler: Callable[[Envelope], Awaitable[dict]]) -> None: ...
    # membership (beemeshd.mesh_membership): a join, a new credential, a revocation
    def membership_changed(self) -> None: ...
    def add_contacts(self, addresses: list[str]) -> None: ...
    async def open_up(self, listen: list[str], mdns_name: str | None) -> None: ...
    async def publish_revocations(self, rl) -> None: ...


def listen_addresses(config, member: bool = False) -> list[str]:
    """Configured listen addresses; by default loopback only, unless this peer belongs to a mesh
    (`member`: it holds a credential) or the settings name an open mesh. Another local user can
    reach 127.0.0.1 too, which is why a peer without a mesh also refuses uncredentialed peers."""
    if config.mesh_listen:
        return list(config.mesh_listen)
    if not member and not (getattr(config, "mesh_open", False) and config.mesh_name):
        return [LOOPBACK_LISTEN]
    import ifaddr  # a zeroconf (libp2p) dependency

    # Every non-loopback IPv4 address (ports picked by the kernel): advertising 127.0.0.1 to
    # other machines would only make them dial themselves.
    out = [f"/ip4/{ip.ip}/tcp/0" for adapter in ifaddr.get_adapters() for ip in adapter.ips
           if isinstance(ip.ip, str) and not ip.ip.startswith("127.")]
    return out or [LOOPBACK_LISTEN]


def mdns_name(config, mesh_id: str | None) -> str | None:
    """The mDNS service is derived from this: the mesh id of a member, or an open mesh's name."""
    if not config.mesh_mdns:
        return None
    if mesh_id:
        return f"mesh-id:{mesh_id}"
    return config.mesh_name if getattr(config, "mesh_open", False) and config.mesh_name else None


def make_mesh(config, seed: bytes, admission=None) -> Mesh:
    """The libp2p mesh. `admission` (beemeshd.core.admission): who counts as a member; None
    makes an open mesh (`mesh_open = true`)."""
    try:
        timings = Timings(ping_interval=config.ping_interval_seconds, suspect_after=config.suspect_after_seconds,
                          dead_after=config.dead_after_seconds, view_max=config.mesh_view_max)
    except ValueError as exc:
        raise SystemExit(f"beemeshd: failure detector or view settings: {exc}") from None
    from beemeshd.mesh.host import LibP2PMesh  # ≈ 56 MB of RSS: only when a mesh runs

    member = admission is not None and admission.own is not None
    mesh_id = admission.mesh if member else None
    return LibP2PMesh(seed, listen=listen_addresses(config, member), bootstrap=list(config.mesh_bootstrap),
                      mdns_name=mdns_name(config, mesh_id), heartbeat=config.gossip_heartbeat_seconds,
                      timings=timings, admission=admission)
