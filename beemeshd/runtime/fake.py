"""An in-memory Runtime with Podman's observable behaviour, for unit tests and the whole-mesh
simulator. Pods run the moment they are created; tests steer it through the hooks below.

It only awaits trio checkpoints and `trio.sleep` (for exec durations), so it runs under
`trio.testing.MockClock`. Pass `now` to make the epoch timestamps it reports deterministic.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field, replace

import trio

from beemeshd.errors import RuntimeUnavailable
from beemeshd.runtime.base import (
    EXEC_TIMEOUT_EXIT_CODE,
    MANAGED_LABEL,
    LogEntry,
    ObservedContainer,
    ObservedPod,
    PodSpec,
    RuntimeFailure,
    RuntimeStatus,
    container_labels,
    pod_labels,
    pod_state,
    validate,
)

ENDPOINT = "memory://fake"


@dataclass
class _Container:
    observed: ObservedContainer
    logs: list[LogEntry] = field(default_factory=list)
    exec_result: tuple[int, float] = (0, 0.0)  # (exit code, seconds it takes)


@dataclass
class _Pod:
    spec: PodSpec
    id: str
    labels: dict[str, str]
    containers: dict[str, _Container]


class FakeRuntime:
    """Runtime in memory. `calls` records every interface call as (method, *arguments)."""

    def __init__(self, *, images: Iterable[str] | None = None, network: str = "slirp4netns",
                 now: Callable[[], float] = time.time):
        self.images = set(images) if images is not None else None  # None: every image exists
        self.network = network
        self.calls: list[tuple] = []
        self.started = False
        self.closed = False
        self._now = now
        self._pods: dict[str, _Pod] = {}
        # named (claim) volumes: name -> (labels, files). They outlive pods, as in Podman.
        self.volumes: dict[str, tuple[dict[str, str], dict[str, bytes]]] = {}
        self._available = True
        self._failures: list[str] = []
        self._ids = itertools.count(1)
        self._changed = trio.Event()  # set and replaced whenever logs or container states change

    # --- test hooks ---

    def fail_next_create(self, reason: str) -> None:
        """The next create_pod raises RuntimeFailure(reason) and leaves nothing behind."""
        self._failures.append(reason)

    def set_available(self, available: bool) -> None:
        """While unavailable, every call raises RuntimeUnavailable; pods keep their state."""
        self._available = available
        self._notify()

    def kill_container(self, pod: str, container: str, exit_code: int = 137) -> None:
        obs = self._container(pod, container).observed
        obs.state, obs.exit_code = "exited", exit_code
        self._notify()

    def set_exec_result(self, pod: str, container: str, exit_code: int,
                        duration: float = 0.0) -> None:
        """What exec() in that container returns, after `duration` seconds (trio time)."""
        self._container(pod, container).exec_result = (exit_code, duration)

    def append_log(self, pod: str, container: str, line: str, stream: str = "stdout") -> None:
        entry = LogEntry(container, stream, int(self._now() * 1_000_000), line)
        self._container(pod, container).logs.append(entry)
        self._notify()

    def pod_names(self) -> list[str]:
        return sorted(self._pods)

    # --- Runtime ---

    async def start(self) -> None:
        await self._enter("start")
        self.started = True

    async def close(self) -> None:
        self.calls.append(("close",))
        self.closed = True

    async def status(self) -> RuntimeStatus:
        self.calls.append(("status",))
        await trio.lowlevel.checkpoint()
        return RuntimeStatus(
            name="fake", version="0", endpoint=ENDPOINT, available=self._available,
            started_by_beemesh=False, network=self.network, networks_available=[self.network],
            last_error=None if self._available else "made unavailable by the test")

    async def list_pods(self, labels: dict[str, str] | None = None) -> list[ObservedPod]:
        await self._enter("list_pods", dict(labels or {}))
        want = {MANAGED_LABEL: "true", **(labels or {})}
        return [self._observe(p) for p in self._pods.values()
                if all(p.labels.get(k) == v for k, v in want.items())]

    async def create_pod(self, spec: PodSpec) -> ObservedPod:
        await self._enter("create_pod", spec)
        if self._failures:
            raise RuntimeFailure(self._failures.pop(0))
        self._validate(spec)
        for claim, vol in spec.claims:
            self.volumes.setdefault(vol, (spec.claim_labels(claim), {}))
        now = self._now()
        containers = {
            c.name: _Container(ObservedContainer(
                name=c.name, id=self._id(), image=c.image, state="running", started_at=now,
                labels=container_labels(spec, c)))
            for c in spec.containers
        }
        self._pods[spec.name] = _Pod(spec, self._id(), pod_labels(spec), containers)
        self._notify()
        return self._observe(self._pods[spec.name])

    async def remove_pod(self, name: str) -> None:
        await self._enter("remove_pod", name)
        if self._pods.pop(name, None) is not None:
            self._notify()

    async def restart_container(self, pod: str, container: str) -> None:
        await self._enter("restart_container", pod, container)
        obs = self._container(pod, container).observed
        obs.state, obs.exit_code, obs.started_at = "running", None, self._now()
        self._notify()

    async def exec(self, pod: str, container: str, command: list[str], timeout: float) -> int:
        await self._enter("exec", pod, container, list(command), timeout)
        c = self._container(pod, container)
        if c.observed.state != "running":
            raise RuntimeFailure("can only create exec sessions on running containers")
        exit_code, duration = c.exec_result
        if duration > timeout:
            await trio.sleep(timeout)
            return EXEC_TIMEOUT_EXIT_CODE
        await trio.sleep(duration)
        return exit_code

    def logs(self, pod: str, container: str, *, tail: int | None = None,
             follow: bool = False) -> AsyncIterator[LogEntry]:
        return self._logs(pod, container, tail, follow)

    async def _logs(self, pod: str, container: str, tail: int | None,
                    follow: bool) -> AsyncIterator[LogEntry]:
        await self._enter("logs", pod, container, tail, follow)
        c = self._container(pod, container)
        sent = 0 if tail is None else max(len(c.logs) - max(tail, 0), 0)
        for entry in c.logs[sent:]:
            yield entry
        sent = len(c.logs)
        # Like Podman, a followed log ends when the container stops running or is removed.
        while follow and c.observed.state == "running" and self._pods.get(pod) is not None:
            await self._changed.wait()
            if not self._available:
                raise RuntimeUnavailable("made unavailable by the test", ENDPOINT)
            for entry in c.logs[sent:]:
                yield entry
            sent = len(c.logs)

    async def image_exists(self, image: str) -> bool:
        await self._enter("image_exists", image)
        return self.images is None or image in self.images

    async def ensure_volume(self, name: str, labels: dict[str, str]) -> None:
        await self._enter("ensure_volume", name, dict(labels))
        self.volumes.setdefault(name, (dict(labels), {}))

    async def read_volume_file(self, volume: str, filename: str) -> bytes | None:
        await self._enter("read_volume_file", volume, filename)
        return self._volume(volume).get(filename)

    async def write_volume_file(self, volume: str, filename: str, data: bytes) -> None:
        await self._enter("write_volume_file", volume, filename, bytes(data))
        self._volume(volume)[filename] = bytes(data)

    # --- helpers ---

    def _volume(self, name: str) -> dict[str, bytes]:
        if name not in self.volumes:
            raise RuntimeFailure(f"no such volume: {name}")
        return self.volumes[name][1]

    async def _enter(self, method: str, *args) -> None:
        self.calls.append((method, *args))
        await trio.lowlevel.checkpoint()
        if not self._available:
            raise RuntimeUnavailable("made unavailable by the test", ENDPOINT)

    def _validate(self, spec: PodSpec) -> None:
        """The refusals Podman would give, so the simulator sees the same failures."""
        if spec.name in self._pods:
            raise RuntimeFailure(f"{spec.name}: pod already exists")
        validate(spec)
        for c in spec.containers:
            if self.images is not None and c.image not in self.images:
                raise RuntimeFailure(f"{c.image}: image not known")
        used = {(p.host_ip, p.host_port, p.protocol) for q in self._pods.values()
                for p in q.spec.ports}
        for p in spec.ports:
            if (p.host_ip, p.host_port, p.protocol) in used:
                raise RuntimeFailure(f"cannot listen on {p.host_ip}:{p.host_port}/{p.protocol}: "
                                     "address already in use")

    def _container(self, pod: str, container: str) -> _Container:
        p = self._pods.get(pod)
        if p is None or container not in p.containers:
            raise RuntimeFailure(f"no container {container} in pod {pod}")
        return p.containers[container]

    def _observe(self, p: _Pod) -> ObservedPod:
        containers = [replace(c.observed, labels=dict(c.observed.labels))
                      for c in p.containers.values()]
        return ObservedPod(p.spec.name, p.id, dict(p.labels),
                           pod_state([c.state for c in containers]), containers)

    def _id(self) -> str:
        return f"{next(self._ids):064x}"

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()
