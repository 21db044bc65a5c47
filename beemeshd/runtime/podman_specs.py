"""Podman's REST API as plain data: the JSON BeeMesh sends (pod and container specs) and how it
reads what comes back (listings, log frames). Pure functions, golden-tested without Podman.

Specs are posted as JSON instead of going through podman-py's docker-style keyword layer, which
adds fields Podman 4.3 does not want (`cni_networks: [None]`), allows one mount per named volume,
and drops the stream type of log frames.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any, BinaryIO

from beemeshd.runtime import network
from beemeshd.runtime.base import (
    CONTAINER_LABEL, STOP_TIMEOUT, ContainerSpec, LogEntry, ObservedContainer, ObservedPod,
    PodSpec, container_labels, pod_labels, podman_name,
)

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def default_endpoint() -> str:
    run = os.environ.get("XDG_RUNTIME_DIR") or f"/run/user/{os.getuid()}"
    return f"unix://{run}/podman/podman.sock"


def socket_path(endpoint: str) -> str | None:
    """The filesystem path of a unix:// endpoint (the only kind we can start a service for)."""
    for prefix in ("unix://", "http+unix://", "unix:"):
        if endpoint.startswith(prefix):
            return endpoint[len(prefix):]
    return None


def volume_name(pod: str, volume: str) -> str:
    return f"{pod}-{volume}"


def pod_body(spec: PodSpec, network_mode: str) -> dict:
    """Body of POST /libpod/pods/create."""
    return {
        "name": spec.name,
        "labels": pod_labels(spec),
        "netns": network.pod_netns(network_mode),
        "portmappings": [
            {"container_port": p.container_port, "host_port": p.host_port,
             "protocol": p.protocol, **({"host_ip": p.host_ip} if p.host_ip else {})}
            for p in spec.ports
        ],
    }


def container_body(pod: PodSpec, c: ContainerSpec, pod_id: str) -> dict:
    """Body of POST /libpod/containers/create (Podman's SpecGenerator)."""
    body: dict[str, Any] = {
        "name": podman_name(pod.name, c.name),
        "image": c.image,
        "pod": pod_id,
        "labels": container_labels(pod, c),
        "stop_timeout": STOP_TIMEOUT,
    }
    # Kubernetes semantics: `command` replaces the entrypoint and then the image's cmd is not
    # used (Podman drops it whenever an entrypoint is given); `args` replaces the cmd.
    if c.command:
        body["entrypoint"] = list(c.command)
    if c.args:
        body["command"] = list(c.args)
    if c.env:
        body["env"] = dict(c.env)
    if c.working_dir:
        body["work_dir"] = c.working_dir
    limits: dict[str, Any] = {}
    if c.cpu_limit_millis:
        limits["cpu"] = {"period": 100_000, "quota": c.cpu_limit_millis * 100}
    if c.memory_limit_bytes:
        limits["memory"] = {"limit": c.memory_limit_bytes}
    if limits:  # rootless Podman on cgroup v1 accepts and ignores them
        body["resource_limits"] = limits
    if c.mounts:
        claims = dict(pod.claims)
        body["volumes"] = [
            {"Name": claims.get(vol) or volume_name(pod.name, vol), "Dest": path,
             "Options": ["ro" if ro else "rw"]}
            for vol, path, ro in c.mounts
        ]
    return body


def observe(pod: dict, containers: list[dict]) -> ObservedPod:
    """An ObservedPod from `GET /pods/json` and `GET /containers/json` entries (infra skipped)."""
    mine = [c for c in containers if c.get("Pod") == pod["Id"] and not c.get("IsInfra")]
    return ObservedPod(
        name=pod["Name"],
        id=pod["Id"],
        labels=dict(pod.get("Labels") or {}),
        state=str(pod.get("Status", "")).lower(),
        containers=[_observe_container(pod["Name"], c) for c in mine],
    )


def _observe_container(pod: str, c: dict) -> ObservedContainer:
    labels = dict(c.get("Labels") or {})
    name = labels.get(CONTAINER_LABEL) or c["Names"][0].removeprefix(f"{pod}-")
    state = c.get("State", "")  # a plain string in list results (podman-py's .status breaks)
    started = c.get("StartedAt") or 0
    return ObservedContainer(
        name=name,
        id=c["Id"],
        image=c.get("Image", ""),
        state=state,
        exit_code=c.get("ExitCode") if state in ("exited", "stopped") else None,
        started_at=float(started) if started > 0 else None,
        labels=labels,
    )


def parse_log_frame(kind: int, payload: bytes, container: str) -> LogEntry:
    """One frame of Podman's multiplexed log stream: `<RFC 3339 time> <line>\\n`."""
    text = payload.decode("utf-8", "replace").removesuffix("\n")
    stamp, _, line = text.partition(" ")
    try:
        when = datetime.fromisoformat(stamp)
    except ValueError:
        return LogEntry(container, "stderr" if kind == 2 else "stdout", 0, text)
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    usec = (when - EPOCH) // timedelta(microseconds=1)  # exact, unlike float seconds
    return LogEntry(container, "stderr" if kind == 2 else "stdout", usec, line)


def read_frames(raw: BinaryIO) -> Iterator[tuple[int, bytes]]:
    """(stream type, payload) of each frame of a multiplexed stream: an 8-byte header holding the
    type (1 stdout, 2 stderr) and the big-endian payload length, then the payload."""
    while len(header := _read_exact(raw, 8)) == 8:
        kind, size = struct.unpack(">BxxxL", header)
        yield kind, _read_exact(raw, size)


def _read_exact(raw: BinaryIO, size: int) -> bytes:
    data = b""
    while len(data) < size and (chunk := raw.read(size - len(data))):
        data += chunk
    return data
