"""What the daemon knows about a container runtime: plain data and the `Runtime` interface.

Nothing here imports podman, so the core, the fake and the whole-mesh simulator can use these
types without the Podman bindings.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

# Every pod, container and volume BeeMesh creates carries this label; listings filter on it so
# that the user's own pods are never seen (let alone removed) by the daemon.
MANAGED_LABEL = "io.beemesh.managed"
POD_LABEL = "io.beemesh.pod"  # on containers and volumes: the pod they belong to
CONTAINER_LABEL = "io.beemesh.container"  # on containers: the name inside the pod
# On a StatefulSet ordinal's claim volume (instead of POD_LABEL, so that removing the pod keeps
# it): the claim's name. It also carries the pod's workload, namespace, kind and ordinal labels.
CLAIM_LABEL = "io.beemesh.claim"
_CLAIM_COPIED = ("io.beemesh.workload", "io.beemesh.namespace", "io.beemesh.kind", "io.beemesh.ordinal",
                 "io.beemesh.peer")
# The file in each claim volume holding the highest fencing token the ordinal was started under.
FENCE_FILE = ".beemesh-fence"

# Seconds a container gets between SIGTERM and SIGKILL. busybox httpd as PID 1 ignores SIGTERM,
# so Podman's default of 10 s would make every stop or restart of such a container take 10 s.
STOP_TIMEOUT = 2

EXEC_TIMEOUT_EXIT_CODE = 124  # what `timeout(1)` returns; exec() reports it when time runs out


class RuntimeFailure(Exception):
    """The runtime answered but refused or failed the operation (bad spec, missing image, port in
    use, container not running, ...). `reason` is the runtime's own message."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


@dataclass(frozen=True)
class PortMapping:
    host_ip: str  # "" binds every address
    host_port: int
    container_port: int
    protocol: str = "tcp"  # "tcp" | "udp"


@dataclass(frozen=True)
class ContainerSpec:
    name: str
    image: str
    command: tuple[str, ...] = ()  # replaces the image's entrypoint (Kubernetes `command`)
    args: tuple[str, ...] = ()  # replaces the image's cmd (Kubernetes `args`)
    env: tuple[tuple[str, str], ...] = ()
    working_dir: str | None = None
    cpu_limit_millis: int | None = None
    memory_limit_bytes: int | None = None
    mounts: tuple[tuple[str, str, bool], ...] = ()  # (volume name, path, read_only)


@dataclass(frozen=True)
class PodSpec:
    name: str
    labels: tuple[tuple[str, str], ...] = ()
    containers: tuple[ContainerSpec, ...] = ()
    ports: tuple[PortMapping, ...] = ()
    volumes: tuple[str, ...] = ()  # emptyDir volume names; they live and die with the pod
    # StatefulSet claims: (name the mounts use, Podman volume name). Created when missing, never
    # removed by BeeMesh: they outlive the pod (restarts, re-creation, scale down, Delete).
    claims: tuple[tuple[str, str], ...] = ()

    def claim_labels(self, claim: str) -> dict[str, str]:
        pod = dict(self.labels)
        return {MANAGED_LABEL: "true", CLAIM_LABEL: claim, **{k: pod[k] for k in _CLAIM_COPIED if k in pod}}


@dataclass
class ObservedContainer:
    name: str  # the name inside the pod (ContainerSpec.name), not Podman's `{pod}-{name}`
    id: str
    image: str
    state: str  # Podman's: created, running, exited, paused, stopped, ...
    exit_code: int | None = None  # only once the container has exited
    started_at: float | None = None  # epoch seconds of the last start
    labels: dict[str, str] = field(default_factory=dict)


@dataclass
class ObservedPod:
    name: str
    id: str
    labels: dict[str, str]
    state: str  # Podman's pod status, lower case: created, running, degraded, exited, ...
    containers: list[ObservedContainer]  # without the infra container

    def container(self, name: str) -> ObservedContainer | None:
        return next((c for c in self.containers if c.name == name), None)


@dataclass
class RuntimeStatus:
    name: str
    version: str | None
    endpoint: str
    available: bool
    started_by_beemesh: bool
    network: str
    networks_available: list[str]
    last_error: str | None


@dataclass
class LogEntry:
    container: str
    stream: str  # "stdout" | "stderr"
    timestamp_usec: int  # 0 when the runtime gave no timestamp
    line: str


def podman_name(pod: str, container: str) -> str:
    """The runtime-wide name of a container: names are unique per store, not per pod."""
    return f"{pod}-{container}"


def pod_labels(spec: PodSpec) -> dict[str, str]:
    return {**dict(spec.labels), MANAGED_LABEL: "true", POD_LABEL: spec.name}


def container_labels(spec: PodSpec, container: ContainerSpec) -> dict[str, str]:
    return {**pod_labels(spec), CONTAINER_LABEL: container.name}


def validate(spec: PodSpec) -> None:
    """Refuse specs Podman would half-accept: it silently creates an unlabelled (and so leaked)
    volume for a mount of an undeclared one, and fails only at the second of two same-named
    containers."""
    names = [c.name for c in spec.containers]
    if len(set(names)) != len(names):
        raise RuntimeFailure(f"{spec.name}: duplicate container names")
    for c in spec.containers:
        claims = {name for name, _ in spec.claims}
        for vol, _, _ in c.mounts:
            if vol not in spec.volumes and vol not in claims:
                raise RuntimeFailure(
                    f"{spec.name}: container {c.name} mounts undeclared volume {vol}")


def pod_state(container_states: list[str]) -> str:
    """Podman's pod status from its containers' states (the infra container runs while the pod
    does, so a pod with any container not running is `degraded` rather than `exited`)."""
    if not container_states or all(s == "running" for s in container_states):
        return "running"
    return "degraded"


class Runtime(Protocol):
    """A container runtime as the daemon uses it. Every method is async and trio-friendly, and
    raises beemeshd.errors.RuntimeUnavailable when the runtime does not answer (status() reports
    it instead) and RuntimeFailure when it answers no (no such pod or container, ...)."""

    async def start(self) -> None:
        """Connect (starting a runtime service if needed and allowed)."""

    async def close(self) -> None:
        """Release the connection and stop a service we started. Never touches pods."""

    async def status(self) -> RuntimeStatus:
        """Health check. Reports an unreachable runtime as available=False instead of raising."""

    async def list_pods(self, labels: dict[str, str] | None = None) -> list[ObservedPod]:
        """BeeMesh's pods (label io.beemesh.managed=true) that also carry all `labels`."""

    async def create_pod(self, spec: PodSpec) -> ObservedPod:
        """Create and start a pod; on failure remove what was created and raise RuntimeFailure."""

    async def remove_pod(self, name: str) -> None:
        """Kill and remove a pod, its containers and volumes. Absent pods are fine."""

    async def restart_container(self, pod: str, container: str) -> None:
        """Stop (SIGTERM, SIGKILL after STOP_TIMEOUT s) if running, then start again."""

    async def exec(self, pod: str, container: str, command: list[str], timeout: float) -> int:
        """Run a command in a running container; its exit code, or 124 after `timeout` seconds."""

    def logs(
        self, pod: str, container: str, *, tail: int | None = None, follow: bool = False
    ) -> AsyncIterator[LogEntry]:
        """Log lines, oldest first (`tail`: only the last n); with `follow`, then new lines until
        the container stops or is removed, or the iterator is closed (`aclose()`)."""

    async def image_exists(self, image: str) -> bool: ...

    async def ensure_volume(self, name: str, labels: dict[str, str]) -> None:
        """Create the named volume with `labels` unless it exists (then it is left as it is)."""

    async def read_volume_file(self, volume: str, filename: str) -> bytes | None:
        """A file at the top of an existing volume (None: no such file)."""

    async def write_volume_file(self, volume: str, filename: str, data: bytes) -> None:
        """Write (atomically, fsync'd) a file at the top of an existing volume."""
