"""Workload replica -> the plain PodSpec a runtime creates (pure).

Naming: the replica `web-0` of namespace `default` becomes the Podman pod `web-0.default`, so
two namespaces never collide in one Podman store; its containers are `web-0.default-<name>`.
Labels carry everything needed to re-adopt a pod after a daemon restart without any other state.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import json
from dataclasses import asdict

from beemeshd.model import PodTemplate, Workload
from beemeshd.runtime.base import MANAGED_LABEL, ContainerSpec, PodSpec, PortMapping

WORKLOAD = "io.beemesh.workload"
NAMESPACE = "io.beemesh.namespace"
KIND = "io.beemesh.kind"
REPLICA = "io.beemesh.replica"
ORDINAL = "io.beemesh.ordinal"
GENERATION = "io.beemesh.generation"
TEMPLATE_HASH = "io.beemesh.template-hash"
# The peer that owns the pod: a daemon only ever adopts or removes its own pods, even if another
# daemon (another peer id) shares the Podman store by mistake.
PEER = "io.beemesh.peer"


def pod_name(namespace: str, replica: str) -> str:
    return f"{replica}.{namespace}"


def claim_volume_name(w: Workload, claim: str, ordinal: int) -> str:
    """The Podman volume of one ordinal's claim: Kubernetes' PVC name `<claim>-<set>-<ordinal>`,
    plus the namespace, as for pods, since one Podman store holds every namespace."""
    return f"{claim}-{w.name}-{ordinal}.{w.namespace}"


def template_hash(w: Workload) -> str:
    """Changes exactly when the pod template changes (not on scale), so only then are pods replaced."""
    return _template_digest(w.template)


@functools.lru_cache(maxsize=4096)
def _template_digest(template: PodTemplate) -> str:
    # cached: every reconcile pass renders every pod it wants, and asdict() of a template costs
    # ~100 µs (templates are frozen, so equal ones hash alike)
    blob = json.dumps(asdict(template), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def publish_ip(base: str, index: int) -> str:
    """Address for replica `index` (its ordinal) of a workload publishing a hostPort.

    Two replicas of one workload on one peer cannot bind the same hostIP:hostPort. On a loopback
    base (the default, 127.0.0.1) replica k binds base + k — the whole 127/8 answers on `lo` —
    so every replica is reachable; on any other address all bind the same one, and a second
    replica on the same peer fails to bind and stays failed with the runtime's reason, as
    Kubernetes would leave it pending.
    """
    ip = ipaddress.ip_address(base)
    if index and ip.is_loopback and ip.version == 4:
        return str(ip + index)
    return base


def render(w: Workload, ordinal: int, generation: int, *, host_ip: str, local_index: int = 0,
           peer_id: str = "") -> PodSpec:
    assert w.template is not None, "only pod-running kinds are rendered"
    replica = w.replica_names()[ordinal] if w.kind != "Pod" else w.name
    name = pod_name(w.namespace, replica)
    labels = {
        MANAGED_LABEL: "true",
        WORKLOAD: w.name,
        NAMESPACE: w.namespace,
        KIND: w.kind,
        REPLICA: replica,
        ORDINAL: str(ordinal),
        GENERATION: str(generation),
        TEMPLATE_HASH: template_hash(w),
    }
    if peer_id:
        labels[PEER] = peer_id
    t = w.template
    containers = []
    ports = []
    for c in t.containers:
        containers.append(
            ContainerSpec(
                name=c.name,
                image=c.image,
                command=c.command,
                args=c.args,
                env=c.env,
                working_dir=c.working_dir,
                cpu_limit_millis=c.resources.cpu_limit_millis,
                memory_limit_bytes=c.resources.memory_limit_bytes,
                mounts=tuple((m.name, m.mount_path, m.read_only) for m in c.volume_mounts),
            )
        )
        for p in c.ports:
            if p.host_port:
                ip = p.host_ip or publish_ip(host_ip, local_index)
                ports.append(PortMapping(ip, p.host_port, p.container_port, p.protocol.lower()))
    return PodSpec(
        name=name,
        labels=tuple(sorted(labels.items())),
        containers=tuple(containers),
        ports=tuple(ports),
        volumes=tuple(v.name for v in t.volumes),
        claims=tuple((c.name, claim_volume_name(w, c.name, ordinal)) for c in w.volume_claims),
    )
