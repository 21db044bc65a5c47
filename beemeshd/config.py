"""Daemon configuration: one frozen dataclass, from defaults < config file < environment < flags."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path


def _xdg(var: str, fallback: str) -> Path:
    value = os.environ.get(var)
    return Path(value) if value else Path.home() / fallback


def runtime_dir() -> Path:
    value = os.environ.get("XDG_RUNTIME_DIR")
    if not value:
        raise SystemExit("beemeshd: XDG_RUNTIME_DIR is not set (start it from a user session or systemd --user)")
    return Path(value)


@dataclass(frozen=True)
class Config:
    # Varlink socket (ignored when systemd passes one).
    socket_path: Path
    # Desired state, peer identity.
    state_dir: Path
    # Config file, node-local policies.
    config_dir: Path
    # Where the socket is linked so local tools can enumerate Varlink services.
    registry_dir: Path
    log_level: str = "info"
    # Varlink: largest message accepted, most open connections, seconds calls get at shutdown.
    max_message_bytes: int = 4 << 20
    max_connections: int = 512
    shutdown_grace_seconds: float = 5.0
    # Most pods this peer runs (as Kubernetes' default).
    max_pods: int = 110
    # Podman API endpoint ("" = unix://$XDG_RUNTIME_DIR/podman/podman.sock); started if silent.
    podman_endpoint: str = ""
    # A separate Podman store (root, runroot, tmpdir under this directory; "" = the user's own),
    # so several nodes can share one machine and user.
    podman_store: str = ""
    # Pod network: "auto" (fastest available), "slirp4netns", "pasta" or "bypass4netns".
    network: str = "auto"
    # Address hostPorts are published on (a loopback base spreads replicas over 127.x addresses).
    publish_host_ip: str = "127.0.0.1"
    # Reconcile: seconds between passes; restart back-off base and cap.
    reconcile_interval_seconds: float = 1.0
    backoff_base_seconds: float = 1.0
    backoff_cap_seconds: float = 60.0
    # The mesh (libp2p). Off: this daemon works alone (no libp2p import, ≈ 56 MB less RSS).
    mesh_enabled: bool = True
    # A daemon belongs to the mesh its files say (beemeshctl mesh init / join). Without one it
    # listens on 127.0.0.1 only and refuses every peer; with a credential it listens on every
    # IPv4 address and finds members by mDNS. mesh_name: the default name for `mesh init`, and,
    # with mesh_open only, the name of an open mesh (every IPv4 address, mDNS under that name).
    mesh_name: str = ""
    # Accept peers without credentials (no membership checks at all). Off by default: another
    # local user can reach 127.0.0.1 too. For test fixtures and single-user machines only.
    mesh_open: bool = False
    # Multiaddrs to listen on ([] = as above, ports picked by the kernel), e.g. "/ip4/10.0.0.5/tcp/4001".
    mesh_listen: tuple = field(default_factory=tuple)
    # Multiaddrs, with /p2p/<peer id>, of peers to join through (GetInfo's meshAddresses of one).
    mesh_bootstrap: tuple = field(default_factory=tuple)
    # mDNS discovery on the local network (only for a named mesh).
    mesh_mdns: bool = True
    # Failure detector: probe every peer this often (in views beyond 16 peers, 4 peers a round,
    # SWIM-style, with suspicions gossiped); silent this long -> suspect, then dead.
    ping_interval_seconds: float = 0.5
    suspect_after_seconds: float = 1.5
    dead_after_seconds: float = 3.0
    # Views beyond this many peers stop holding every peer: they become Kademlia routing tables
    # (the 16 nearest peers, 8 per bucket, the runners of held workloads), and peers and
    # workload holders outside them are looked up. 0: always hold every peer.
    mesh_view_max: int = 1024
    # GossipSub heartbeat (mesh maintenance and gossip of message ids).
    gossip_heartbeat_seconds: float = 0.5
    # Placement: how many peers keep each workload's manifest (the k closest by XOR distance),
    # and how long a Deploy waits for bids from peers that have not answered yet.
    replication_k: int = 3
    bid_window_seconds: float = 0.25
    # Peers asked to bid first: all of them up to this many, else a random sample this big.
    bid_fanout: int = 16
    # Re-place stateless replicas as soon as their peer is suspect (not only once it is dead).
    heal_on_suspect: bool = True
    # Beyond this many healthy peers, a Deployment's or Pod's decisions and status go to its
    # replication_k holders and its runners only (not to every peer); other peers ask the holders.
    catalog_broadcast_max: int = 64
    # StatefulSets (issue 9): a lease lasts this long unless renewed (renewals every third of it);
    # its holder begins stopping the pod this long before the lease could end (stop grace + kill).
    lease_seconds: float = 15.0
    lease_stop_margin_seconds: float = 5.0
    # Members of a StatefulSet's consensus group: its replicas' peers, topped up to this many.
    consensus_group_size: int = 3
    # Re-form a group whose member majority the failure detector has declared dead this long
    # (0, the default: only when those peers come back restarted — never two copies). Non-zero is
    # an assumption about partitions: README, "Re-forming a group".
    consensus_refound_after_seconds: float = 0.0
    # Raft: the driver's tick (votes, proposals go out at once); the pulse (peers sharing groups
    # exchange a frame this often) and the silence after which a leader's peer is suspected and
    # its groups elect at once (0: off); the leaders' heartbeat (what idle groups cost) and the
    # shortest election timeout (the longest is twice that; more than three heartbeats), which
    # catch what the pulse cannot see. See beemeshd/consensus/raft.py, RaftTiming.
    raft_tick_seconds: float = 0.05
    raft_pulse_seconds: float = 0.15
    raft_suspect_seconds: float = 0.4
    raft_heartbeat_seconds: float = 0.5
    raft_election_seconds: float = 2.0

    @classmethod
    def default(cls) -> "Config":
        run = runtime_dir()
        return cls(
            socket_path=run / "beemesh" / "io.beemesh.Mesh",
            state_dir=_xdg("XDG_STATE_HOME", ".local/state") / "beemesh",
            config_dir=_xdg("XDG_CONFIG_HOME", ".config") / "beemesh",
            registry_dir=run / "varlink" / "registry",
        )

    def with_file(self, path: Path) -> "Config":
        """Apply a TOML file whose keys are this class's field names (unknown keys are errors)."""
        with open(path, "rb") as f:
            data = tomllib.load(f)
        return self.with_values(data, source=str(path))

    def with_values(self, data: dict, source: str = "settings") -> "Config":
        known = {f.name: f for f in fields(self)}
        changes = {}
        for key, value in data.items():
            if value is None:
                continue
            if key not in known:
                raise SystemExit(f"beemeshd: {source}: unknown setting {key!r}")
            current = getattr(self, key)
            try:
                changes[key] = _convert(current, value)
            except (TypeError, ValueError):
                raise SystemExit(f"beemeshd: {source}: bad value for {key}: {value!r}") from None
        return replace(self, **changes)


def _convert(current, value):
    """`value` as the type of the field's default; lists and booleans are not coerced from
    other types (tuple("abc") and bool("false") would succeed and be wrong)."""
    if isinstance(current, tuple):
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise TypeError("expected a list of strings")
        return tuple(value)
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise TypeError("expected true or false")
        return value
    if isinstance(current, (int, float)) and isinstance(value, bool):
        raise TypeError("expected a number")
    return type(current)(value)
