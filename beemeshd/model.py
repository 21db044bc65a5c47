"""BeeMesh's typed view of the Kubernetes objects it runs.

Everything here is a frozen dataclass built from tuples (never lists or dicts) so that two
parses of the same manifest compare equal and can be hashed, e.g. to detect "nothing changed"
on re-apply. `core/manifest.py` is the only producer; it has already validated every value,
so these classes do no checking of their own. Key/value maps (labels, selectors, ...) are
tuples of (key, value) pairs sorted by key, so map order in the YAML does not matter.
"""

from __future__ import annotations

from dataclasses import dataclass, field

Pairs = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Port:
    container_port: int
    host_port: int | None = None
    protocol: str = "TCP"  # "TCP" | "UDP"
    name: str | None = None
    host_ip: str | None = None


@dataclass(frozen=True)
class Probe:
    """A readiness or liveness check. Defaults are the Kubernetes ones."""

    kind: str  # "exec" | "httpGet" | "tcpSocket"
    command: tuple[str, ...] = ()  # exec only
    path: str = "/"  # httpGet only
    port: int | None = None  # httpGet/tcpSocket; a named port is already resolved to its number
    scheme: str = "HTTP"
    initial_delay_seconds: int = 0
    period_seconds: int = 10
    timeout_seconds: int = 1
    success_threshold: int = 1
    failure_threshold: int = 3


@dataclass(frozen=True)
class Resources:
    """CPU in millicores, memory in bytes; None = not given.

    As in Kubernetes, a request left out while its limit is given defaults to the limit.
    """

    cpu_request_millis: int | None = None
    memory_request_bytes: int | None = None
    cpu_limit_millis: int | None = None
    memory_limit_bytes: int | None = None


@dataclass(frozen=True)
class VolumeMount:
    name: str
    mount_path: str
    read_only: bool = False


@dataclass(frozen=True)
class Volume:
    name: str
    kind: str = "emptyDir"  # the only volume source BeeMesh supports so far
    medium: str = ""  # "" (disk) | "Memory" (tmpfs)
    size_limit_bytes: int | None = None


@dataclass(frozen=True)
class VolumeClaim:
    """A StatefulSet `volumeClaimTemplates` entry: each ordinal gets its own named Podman volume
    `<name>-<statefulset>-<ordinal>.<namespace>` on the peer that holds it (beemeshd.core.render)."""

    name: str
    access_modes: tuple[str, ...] = ("ReadWriteOnce",)
    storage_bytes: int | None = None  # requested size; Podman's local volumes do not enforce it


@dataclass(frozen=True)
class Container:
    name: str
    image: str
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    env: Pairs = ()  # in manifest order (not sorted): later entries may refer to earlier ones
    ports: tuple[Port, ...] = ()
    resources: Resources = Resources()
    readiness_probe: Probe | None = None
    liveness_probe: Probe | None = None
    volume_mounts: tuple[VolumeMount, ...] = ()
    working_dir: str | None = None
    image_pull_policy: str = "IfNotPresent"  # "Always" | "IfNotPresent" | "Never"


@dataclass(frozen=True)
class PodTemplate:
    """What one replica looks like. For a bare Pod, labels/annotations are the Pod's own."""

    labels: Pairs = ()
    annotations: Pairs = ()
    containers: tuple[Container, ...] = ()
    restart_policy: str = "Always"  # "Always" | "OnFailure" | "Never"
    volumes: tuple[Volume, ...] = ()
    node_selector: Pairs = ()
    termination_grace_period_seconds: int = 30

    def requests(self) -> tuple[int, int]:
        """Total (cpu_millis, memory_bytes) requested by one replica; a missing request counts 0."""
        cpu = sum(c.resources.cpu_request_millis or 0 for c in self.containers)
        memory = sum(c.resources.memory_request_bytes or 0 for c in self.containers)
        return cpu, memory


@dataclass(frozen=True)
class ServicePort:
    name: str | None
    port: int
    target_port: int | str  # a number, or the name of a container port
    protocol: str = "TCP"
    node_port: int | None = None


@dataclass(frozen=True)
class Workload:
    kind: str  # "Pod" | "Deployment" | "StatefulSet" | "Service"
    api_version: str
    name: str
    namespace: str = "default"
    labels: Pairs = ()
    annotations: Pairs = ()
    replicas: int = 1  # 1 for a Pod, 0 for a Service
    template: PodTemplate | None = None  # None for a Service
    selector: Pairs = ()  # matchLabels (Deployment/StatefulSet) or spec.selector (Service)
    pod_management_policy: str = ""  # "OrderedReady" | "Parallel" for a StatefulSet, else ""
    service_ports: tuple[ServicePort, ...] = ()
    # The object as submitted, for storage and display. A dict cannot be hashed and two
    # spellings of the same object should still compare equal, hence excluded (and kept out
    # of repr, which would otherwise flood logs).
    manifest: dict = field(default_factory=dict, compare=False, hash=False, repr=False)
    service_type: str = ""  # "ClusterIP" | "NodePort" for a Service, else ""
    volume_claims: tuple[VolumeClaim, ...] = ()  # StatefulSet volumeClaimTemplates

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.namespace, self.kind, self.name)

    @property
    def is_stateful(self) -> bool:
        return self.kind == "StatefulSet"

    def replica_names(self) -> tuple[str, ...]:
        """Names of the pods this workload wants.

        Deployments get the same stable `name-N` slots as StatefulSets (Kubernetes would use
        random suffixes): a restarted daemon can then find and adopt its pods by name alone.
        """
        if self.kind == "Pod":
            return (self.name,)
        if self.kind in ("Deployment", "StatefulSet"):
            return tuple(f"{self.name}-{i}" for i in range(self.replicas))
        return ()
