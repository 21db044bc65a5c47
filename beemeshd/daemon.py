"""The daemon: owns the one trio nursery and wires the adapters (Varlink, systemd, runtime, mesh)
to the core. Everything long-running is a task in that nursery; SIGTERM/SIGINT end them all.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import signal
import socket
import time
from dataclasses import dataclass, field

import trio

from beemeshd import __version__, errors, hostinfo, identity, systemd
from beemeshd.agent import Agent
from beemeshd.api.handlers import MeshHandlers
from beemeshd.api.idl import INTERFACE_NAME, Interface
from beemeshd.api.server import VarlinkServer
from beemeshd.config import Config
from beemeshd.core.reconcile import Backoff
from beemeshd.core.trust import INVALID
from beemeshd.events import EventBus, make_event, now_usec
from beemeshd.runtime.base import Runtime, RuntimeStatus
from beemeshd.store import Store
from beemeshd.workloads import Workloads

log = logging.getLogger("beemeshd")


@dataclass
class Counters:
    forgedMessages: int = 0
    staleMessages: int = 0
    replayedMessages: int = 0
    malformedMessages: int = 0
    refusedPeers: int = 0
    nonMemberMessages: int = 0
    badConnections: int = 0
    forgedPolicies: int = 0
    stalePolicies: int = 0
    consensusRejected: int = 0


@dataclass
class Node:
    """What this peer knows and owns; handlers read it, tasks update it."""

    config: Config
    identity: identity.Identity
    address: str
    socket_activated: bool
    started: float = field(default_factory=time.monotonic)
    counters: Counters = field(default_factory=Counters)
    events: EventBus = field(default_factory=EventBus)
    runtime: Runtime | None = None
    workloads: Workloads | None = None
    runtime_status: RuntimeStatus | None = None
    mesh: object | None = None  # beemeshd.mesh.Mesh when the mesh is enabled
    membership: object | None = None  # beemeshd.mesh_membership.MeshMembership
    trust: object | None = None  # beemeshd.core.trust.TrustBook, placement's ledger
    policies: object | None = None  # beemeshd.policy_store.PolicyStore
    stateful: object | None = None  # beemeshd.stateful.Stateful (with the mesh)

    async def refresh_runtime(self) -> RuntimeStatus:
        self.runtime_status = await self.runtime.status()
        return self.runtime_status

    def runtime_info(self) -> dict:
        st = self.runtime_status
        if st is None:
            return {"name": "podman", "endpoint": "", "available": False, "startedByBeemesh": False,
                    "network": "", "networksAvailable": [], "lastError": "not connected yet"}
        info = {"name": st.name, "endpoint": st.endpoint, "available": st.available,
                "startedByBeemesh": st.started_by_beemesh, "network": st.network,
                "networksAvailable": list(st.networks_available)}
        if st.version:
            info["version"] = st.version
        if st.last_error:
            info["lastError"] = st.last_error
        return info

    def capacity(self) -> dict:
        total, available = hostinfo.memory_bytes()
        cpu = hostinfo.cpu_millis()
        return {
            "cpuMillis": cpu,
            "cpuFreeMillis": cpu,
            "memoryBytes": total,
            "memoryFreeBytes": available,
            "pods": self.config.max_pods,
            "podsFree": self.config.max_pods,
        }

    def policy_peer(self) -> dict:
        """This peer as policies see it (input.peer): its id and its mesh record."""
        return {"id": self.identity.peer_id, **self.mesh_record()}

    def admit(self, manifests: list[dict], user: str | None, operation: str) -> None:
        """Mesh-wide policies at Deploy and Scale (PolicyDenied)."""
        self.policies.admit(manifests, user=user, peer=self.policy_peer(), operation=operation)

    def mesh_record(self) -> dict:
        """What this peer offers, for its signed mesh record. Free memory is rounded down to 64 MiB
        so that the record (republished on change) does not change with every page cache wobble."""
        cap = self.capacity()
        cap["memoryFreeBytes"] -= cap["memoryFreeBytes"] % (64 << 20)
        return {"capacity": cap, "runtime": self._runtime_label(), "version": __version__, "labels": {},
                "network": self.runtime_status.network if self.runtime_status else ""}

    def _runtime_label(self) -> str:
        st = self.runtime_status
        return f"podman {st.version}" if st and st.version else "podman"

    def _mesh_counts(self) -> dict:
        counts = {"alive": 0, "suspect": 0, "dead": 0}
        if self.mesh is not None:
            for p in self.mesh.peers():
                if p.state in counts:
                    counts[p.state] += 1
        return counts

    def info(self) -> dict:
        counts = self._mesh_counts()
        counters = vars(self.counters).copy()
        for name, value in (self.mesh.counters.items() if self.mesh is not None else ()):
            counters[name] += value
        for name, value in (self.policies.counters.items() if self.policies is not None else ()):
            counters[name] += value
        for name, value in (self.stateful.counters().items() if self.stateful is not None else ()):
            counters[name] += value
        return {
            "version": __version__,
            "peerId": self.identity.peer_id,
            "uptimeSeconds": time.monotonic() - self.started,
            "user": pwd.getpwuid(os.getuid()).pw_name,
            "address": self.address,
            "socketActivated": self.socket_activated,
            "stateDirectory": str(self.config.state_dir),
            "runtime": self.runtime_info(),
            "meshAddresses": self.mesh.addresses() if self.mesh is not None else [],
            "peersAlive": counts["alive"],
            "peersSuspect": counts["suspect"],
            "peersDead": counts["dead"],
            "workloads": self.workloads.count() if self.workloads else 0,
            "localReplicas": len(self.workloads.agent.observed) if self.workloads else 0,
            "counters": counters,
        }

    def peers(self) -> list[dict]:
        """This peer (live figures), then the mesh's view of the others."""
        me = {
            "peerId": self.identity.peer_id,
            "state": "self",
            "addresses": self.mesh.addresses() if self.mesh is not None else [],
            "uptimeSeconds": time.monotonic() - self.started,
            "capacity": self.capacity(),
            "lastSeenUSec": now_usec(),
            "version": __version__,
            "runtime": self._runtime_label(),
            "network": self.runtime_status.network if self.runtime_status else "",
            "labels": {},
        }
        others = [peer_dict(p) for p in self.mesh.peers() if p.state != "self"] if self.mesh is not None else []
        if self.trust is not None:  # our ledger of each (placement runs with the mesh)
            now = trio.current_time()
            for p in others:
                p["trust"] = round(self.trust.score(p["peerId"], now), 4)
                p["receipts"] = self.trust.receipts(p["peerId"])
        return [me, *others]


def peer_dict(p) -> dict:
    """A mesh PeerView as the interface's Peer."""
    rec = p.record or {}
    return {
        "peerId": p.peer_id,
        "state": p.state,
        "addresses": list(p.addresses),
        "uptimeSeconds": float(p.uptime_seconds),
        "capacity": dict(rec.get("capacity") or dict.fromkeys(
            ("cpuMillis", "cpuFreeMillis", "memoryBytes", "memoryFreeBytes", "pods", "podsFree"), 0)),
        "lastSeenUSec": int(p.last_seen * 1e6) if p.last_seen else 0,
        "version": rec.get("version", ""),
        "runtime": rec.get("runtime", ""),
        "network": rec.get("network", ""),
        "labels": dict(rec.get("labels", {})),
    }


def make_placement(config: Config, node: Node, agent: Agent):
    """Placement over the mesh: catalog (persisted in part), auction, status; wired to the agent."""
    import ipaddress

    from beemeshd.catalog_store import CatalogStore
    from beemeshd.core.catalog import Catalog
    from beemeshd.mesh_workloads import Workloads as MeshWorkloads
    from beemeshd.placement import Placement, local_state

    catalog = Catalog(node.identity.peer_id, k=config.replication_k)
    alive = lambda: [p.peer_id for p in node.mesh.peers() if p.state != "dead"]  # noqa: E731
    stored = CatalogStore(config.state_dir, alive)
    stored.load(catalog)
    cpu_total, memory_total = hostinfo.cpu_millis(), hostinfo.memory_bytes()[0]
    loopback = ipaddress.ip_address(config.publish_host_ip).is_loopback
    placement = None

    def self_state():
        st = node.runtime_status
        return local_state(placement, cpu_total=cpu_total, memory_total=memory_total, max_pods=config.max_pods,
                           uptime=time.monotonic() - node.started,
                           runtime_available=bool(st is not None and st.available), loopback=loopback)

    placement = Placement(node.mesh, catalog, node.events, self_state=self_state, window=config.bid_window_seconds,
                          on_change=agent.poke, persist=stored.save, fanout=config.bid_fanout,
                          heal_on_suspect=config.heal_on_suspect, broadcast_max=config.catalog_broadcast_max,
                          bid_gate=node.policies.bid_gate(node.policy_peer) if node.policies is not None else None)
    agent.wanted = placement.wanted
    agent.remote_ready = placement.remote_ready
    publish = node.mesh.on_peer_event

    def on_peer_event(kind: str, peer: str) -> None:
        publish(kind, peer)
        placement.peer_event(kind, peer)

    node.mesh.on_peer_event = on_peer_event
    node.mesh.on_misbehaviour = lambda peer, what: placement.trust.record(peer, INVALID, trio.current_time())
    node.trust = placement.trust
    node.workloads = MeshWorkloads(placement, agent, node.runtime, node.events, node.identity.peer_id,
                                   runtime_status=node.refresh_runtime)
    return placement


def make_policies(config: Config, node: Node):
    """Node-local and mesh-wide policies, loaded (regopy is imported here, when a daemon starts)."""
    from beemeshd.policy_store import PolicyStore

    store = PolicyStore(config.config_dir, config.state_dir, node.identity.peer_id)
    store.load()
    return store


def make_policy_sync(node: Node):
    """Mesh-wide policy documents over the mesh; peers that join are asked what they hold."""
    from beemeshd.policy_sync import PolicySync

    sync = PolicySync(node.mesh, node.policies)
    publish = node.mesh.on_peer_event

    def on_peer_event(kind: str, peer: str) -> None:
        publish(kind, peer)
        sync.peer_event(kind, peer)

    node.mesh.on_peer_event = on_peer_event
    return sync


def make_membership(config: Config, node: Node):
    """This peer's mesh key, credential and revocations (beemeshd.mesh_membership)."""
    from beemeshd.credential_store import StoreError
    from beemeshd.mesh_keys import MeshKeyError
    from beemeshd.mesh_membership import MeshMembership

    try:
        return MeshMembership(config, node.identity.peer_id)
    except (MeshKeyError, StoreError) as exc:
        raise SystemExit(f"beemeshd: mesh membership files: {exc}") from None


def make_node_mesh(config: Config, node: Node):
    """The libp2p mesh (imported only now: it costs ≈ 56 MB of RSS), wired to the node."""
    from beemeshd.mesh import make_mesh

    try:
        # mesh_open: no admission, every peer accepted (test fixtures); else credentials are checked
        mesh = make_mesh(config, node.identity.seed, None if config.mesh_open else node.membership.admission)
    except ValueError as exc:
        raise SystemExit(f"beemeshd: mesh settings: {exc}") from None
    mesh.on_peer_event = lambda kind, peer: node.events.publish(make_event(kind, peer=peer))
    return mesh


def make_stateful(config: Config, node: Node, placement, agent: Agent):
    """StatefulSets: a consensus group each, leases gating the agent (beemeshd/stateful.py)."""
    from beemeshd.consensus import RaftTiming
    from beemeshd.core.lease import Timing
    from beemeshd.stateful import Settings, Stateful
    from beemeshd.stateful_files import StatefulFiles
    from beemeshd.stateful_pods import watchdog_argv

    e = config.raft_election_seconds
    try:
        lease = Timing(lease=config.lease_seconds, renew_every=config.lease_seconds / 3,
                       stop_margin=config.lease_stop_margin_seconds)
        raft = RaftTiming(tick=config.raft_tick_seconds, heartbeat=config.raft_heartbeat_seconds, election_min=e,
                          election_max=2 * e, leader_fallback=2 * e, pulse=config.raft_pulse_seconds,
                          suspect=config.raft_suspect_seconds)
        if raft.pulse <= 0 or raft.suspect < 0 or 0 < raft.suspect <= raft.pulse:
            raise ValueError("raft_pulse_seconds must be > 0 and raft_suspect_seconds 0 or above it")
        raft.conf(None).validate()
    except (ValueError, AssertionError) as exc:
        raise SystemExit(f"beemeshd: lease or raft settings: {exc or 'election must exceed 3 heartbeats'}") from None
    endpoint = getattr(node.runtime, "endpoint", "")
    st = Stateful(node.mesh, placement, agent, node.runtime, node.events, StatefulFiles(config.state_dir),
                  settings=Settings(lease, raft, config.consensus_group_size,
                                    refound_after=config.consensus_refound_after_seconds),
                  watchdog=watchdog_argv(config.state_dir, endpoint, podman_store_args(config)))
    inner = agent.wanted
    agent.wanted = lambda: st.wanted(inner)
    agent.before_create = st.before_create
    node.workloads.stateful = st
    node.stateful = st
    return st


def podman_store_args(config: Config) -> list[str]:
    if not config.podman_store:
        return []
    d = config.podman_store
    return ["--root", f"{d}/root", "--runroot", f"{d}/run", "--tmpdir", f"{d}/tmp"]


def make_runtime(config: Config) -> Runtime:
    from beemeshd.runtime.podman import PodmanRuntime  # podman-py only where Podman is used

    args = podman_store_args(config)
    endpoint = config.podman_endpoint or None
    if config.podman_store and not endpoint:
        endpoint = f"unix://{config.podman_store}/podman.sock"
    return PodmanRuntime(endpoint, podman_args=args, network=config.network)


def bind_socket(path) -> socket.socket:
    """Bind the Varlink socket ourselves: directory 0700, socket 0600, stale file replaced."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path.parent, 0o700)
    # Refuse to steal the socket of a daemon that is still running.
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except (FileNotFoundError, ConnectionRefusedError):
        pass
    else:
        raise SystemExit(f"beemeshd: another beemeshd is serving {path}")
    finally:
        probe.close()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)  # the socket file is created 0600, never briefly wider
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    sock.listen(128)
    return sock


def link_registry(config: Config, target: str) -> str | None:
    """$XDG_RUNTIME_DIR/varlink/registry/io.beemesh.Mesh -> our socket (newer systemd lists it)."""
    link = config.registry_dir / INTERFACE_NAME
    try:
        config.registry_dir.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(link)
        os.symlink(target, link)
        return str(link)
    except OSError as exc:
        log.warning("could not link %s: %s", link, exc)
        return None


class Daemon:
    def __init__(self, config: Config):
        self.config = config

    async def run(self) -> None:
        # Catch SIGTERM/SIGINT from the very start: a stop that arrives while we are still
        # starting up must still end in a clean exit 0, not a default-action death.
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            await self._run(signals)

    async def _run(self, signals) -> None:
        config = self.config
        activated = systemd.listen_fds("varlink")
        if activated:
            sock = activated[0]
            path = sock.getsockname()
            for extra in activated[1:]:
                extra.close()
        else:
            sock = bind_socket(config.socket_path)
            path = str(config.socket_path)
        node = Node(
            config=config,
            identity=identity.load_or_create(config.state_dir),
            address=f"unix:{path}",
            socket_activated=bool(activated),
        )
        link = link_registry(config, path) if isinstance(path, str) and path else None
        node.runtime = make_runtime(config)
        agent = Agent(node.runtime, None, node.events, host_ip=config.publish_host_ip,
                      backoff=Backoff(config.backoff_base_seconds, config.backoff_cap_seconds),
                      interval=config.reconcile_interval_seconds, peer_id=node.identity.peer_id)
        node.policies = make_policies(config, node)
        node.membership = make_membership(config, node)
        placement = policy_sync = stateful = None
        if config.mesh_enabled:
            node.mesh = make_node_mesh(config, node)
            node.membership.attach(node.mesh)
            node.mesh.set_record(node.mesh_record())
            placement = make_placement(config, node, agent)
            stateful = make_stateful(config, node, placement, agent)
            policy_sync = make_policy_sync(node)
        else:  # alone: desired state is this peer's own store, every replica runs here
            store = Store(config.state_dir)
            store.load()
            agent.store = store
            node.workloads = Workloads(store, agent, node.runtime, node.events, node.identity.peer_id,
                                       runtime_status=node.refresh_runtime)
        node.workloads.admit = node.admit
        server = VarlinkServer(
            Interface.load(),
            MeshHandlers(node),
            version=__version__,
            max_message=config.max_message_bytes,
            max_connections=config.max_connections,
            grace=config.shutdown_grace_seconds,
            on_bad_connection=lambda: setattr(node.counters, "badConnections", node.counters.badConnections + 1),
        )
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._stop_on_signal, signals, server)
                nursery.start_soon(self._connect_runtime, node)
                nursery.start_soon(node.membership.run)
                if node.mesh is not None:
                    try:
                        await nursery.start(node.mesh.run)
                    except OSError as exc:  # e.g. a configured mesh port is taken
                        # Placement needs the mesh; a clear exit beats a daemon that accepts work
                        # it cannot place (systemd restarts it; the operator sees why).
                        log.error("mesh: %s", exc)
                        raise SystemExit(f"beemeshd: the mesh cannot start: {exc} (check mesh_listen, "
                                         "or set mesh_enabled = false to run alone)") from None
                    nursery.start_soon(self._refresh_mesh_record, node)
                    await nursery.start(placement.run)
                    await nursery.start(stateful.run)
                    await nursery.start(policy_sync.run)
                    nursery.start_soon(node.workloads.status_loop)
                await nursery.start(agent.run)
                # Ready once every part runs; the socket is already bound (or systemd's), so
                # clients that connected meanwhile wait in its backlog and are served next.
                systemd.notify(f"READY=1\nSTATUS=serving {INTERFACE_NAME}")
                await nursery.start(server.run, sock)
                log.info("beemeshd %s serving %s as peer %s", __version__, node.address, node.identity.peer_id)
                await self._wait_for(server)
                if stateful is not None:  # stop stateful pods, release their leases: they move at once
                    await stateful.shutdown()
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await node.runtime.close()  # stops a Podman service we started; pods keep running
            if link:
                with contextlib.suppress(OSError):
                    if os.readlink(link) == path:
                        os.unlink(link)
            if not activated:
                with contextlib.suppress(OSError):
                    os.unlink(config.socket_path)
        log.info("beemeshd stopped")

    @staticmethod
    async def _connect_runtime(node: Node) -> None:
        """Connect to Podman (starting its API service if none listens), retrying until it works."""
        delay = 0.5
        while True:
            try:
                await node.runtime.start()
                st = await node.refresh_runtime()
                log.info("runtime %s %s at %s (network %s%s)", st.name, st.version, st.endpoint, st.network,
                         ", service started by beemeshd" if st.started_by_beemesh else "")
                node.workloads.agent.poke()
                break
            except errors.RuntimeUnavailable as exc:
                await node.refresh_runtime()
                log.warning("container runtime unavailable: %s; retrying in %.0f s", exc.reason, delay)
            await trio.sleep(delay)
            delay = min(delay * 2, 30)
        # Keep GetInfo's view fresh without a round trip per call.
        while True:
            await trio.sleep(2)
            await node.refresh_runtime()

    @staticmethod
    async def _refresh_mesh_record(node: Node) -> None:
        # The mesh republishes (signed) only when the record changed.
        while True:
            await trio.sleep(2)
            node.mesh.set_record(node.mesh_record())

    @staticmethod
    async def _wait_for(server: VarlinkServer) -> None:
        await server.stopped.wait()

    @staticmethod
    async def _stop_on_signal(signals, server: VarlinkServer) -> None:
        async for signum in signals:
            log.info("received %s: stopping", signal.Signals(signum).name)
            systemd.notify("STOPPING=1\nSTATUS=stopping")
            server.shutdown()
            break
