"""The Runtime interface on rootless Podman's REST API, through podman-py.

podman-py is synchronous, so every operation is one sync function run in a worker thread
(`trio.to_thread.run_sync` with a CapacityLimiter). An operation that needs several API requests
(create pod, volumes, containers, start) runs them in one thread call, which makes it atomic with
respect to trio cancellation and cheap (one thread hop).

Connection failures (socket missing, refused, reset, timed out) become RuntimeUnavailable and drop
the pooled clients, so the next call reconnects: nothing stale survives a restart of the service.
Requests whose shape matters (container and pod specs, exec, logs) are posted as plain JSON through
podman-py's APIClient instead of its docker-compatible keyword layer, which drops or mangles fields
(`cni_networks: [None]`, one mount per named volume) and hides the stream type of log frames.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import struct
import subprocess
import threading
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any

import outcome
import trio
import urllib3
from podman import PodmanClient
from podman.errors import APIError

from beemeshd.errors import RuntimeUnavailable
from beemeshd.runtime import network
from beemeshd.runtime.base import (
    CONTAINER_LABEL, EXEC_TIMEOUT_EXIT_CODE, MANAGED_LABEL, POD_LABEL, STOP_TIMEOUT, ContainerSpec,
    LogEntry, ObservedContainer, ObservedPod, PodSpec, RuntimeFailure, RuntimeStatus,
    container_labels, pod_labels, podman_name, validate,
)

log = logging.getLogger("beemeshd.runtime")

PODMAN = "podman"
REQUEST_TIMEOUT = 20.0  # seconds per API request; a hung service becomes RuntimeUnavailable
SERVICE_START_TIMEOUT = 10.0
SERVICE_STOP_TIMEOUT = 5.0
MAX_LOG_STREAMS = 32  # followed logs hold a thread each; they get their own limiter
LOG_BUFFER = 256
MANAGED = f"label={MANAGED_LABEL}=true"


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


# --- Specs as plain data (golden-tested) -------------------------------------------------------


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
        body["volumes"] = [
            {"Name": volume_name(pod.name, vol), "Dest": path, "Options": ["ro" if ro else "rw"]}
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
        usec = int(datetime.fromisoformat(stamp).timestamp() * 1_000_000)
    except ValueError:
        usec, line = 0, text
    return LogEntry(container, "stderr" if kind == 2 else "stdout", usec, line)


# --- Errors ------------------------------------------------------------------------------------


def _is_connection_error(exc: BaseException) -> bool:
    # podman-py wraps transport errors (all OSErrors, requests' included) in an APIError that has
    # no response; an APIError with a response is the service answering "no".
    if isinstance(exc, APIError):
        return exc.response is None
    return isinstance(exc, (OSError, urllib3.exceptions.HTTPError))


def _reason(exc: BaseException) -> str:
    if isinstance(exc, APIError) and exc.response is not None:
        return exc.explanation or str(exc)
    while exc.__cause__ is not None:  # the innermost error says what happened to the socket
        exc = exc.__cause__
    return f"{type(exc).__name__}: {exc}"


def _check(resp) -> Any:
    resp.raise_for_status()
    return resp


class _Response:
    """A streaming response shared with trio, which shuts it down to wake a blocked reader."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._resp = None
        self.closed = False
        self.exec_id: str | None = None

    def set(self, resp) -> None:
        with self._lock:
            self._resp = resp
            if self.closed:
                self._shutdown()

    def shutdown(self) -> None:
        with self._lock:
            self.closed = True
            self._shutdown()

    def _shutdown(self) -> None:
        if self._resp is not None:
            try:
                self._resp.raw.shutdown()  # urllib3 ≥ 2.3: unblocks a read in another thread
            except (OSError, ValueError, RuntimeError):
                pass


async def _answers(path: str | None) -> bool:
    if not path:
        return False
    with trio.socket.socket(trio.socket.AF_UNIX) as s:
        try:
            await s.connect(path)
            return True
        except OSError:
            return False


def _read_exact(raw, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = raw.read(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


# --- The adapter -------------------------------------------------------------------------------


class PodmanRuntime:
    """Runtime on Podman. Use from one trio run: `await start()`, then calls, `await close()`."""

    def __init__(
        self,
        endpoint: str | None = None,
        *,
        podman_args: list[str] | tuple[str, ...] = (),
        start_service: bool = True,
        max_threads: int = 4,
        network: str = "auto",
    ):
        self.endpoint = endpoint or default_endpoint()
        self._podman_args = [str(a) for a in podman_args]
        self._start_service = start_service
        self._limiter = trio.CapacityLimiter(max_threads)
        self._stream_limiter = trio.CapacityLimiter(MAX_LOG_STREAMS)
        self._network_config = network
        self._network: str | None = None
        self._networks: list[str] = []
        self._version: str | None = None
        self._service: trio.Process | None = None
        self._idle: list[PodmanClient] = []
        self._generation = 0  # bumped on connection errors: older clients are not reused
        self._last_error: str | None = None

    # --- plumbing ---

    async def _run(self, fn: Callable[..., Any], *args: Any, abandon: bool = False,
                   limiter: trio.CapacityLimiter | None = None) -> Any:
        """Run fn(client, *args) in a worker thread; translate errors into ours."""
        client = self._idle.pop() if self._idle else None
        generation = self._generation

        def work():
            c = client or PodmanClient(base_url=self.endpoint, timeout=REQUEST_TIMEOUT)
            return c, outcome.capture(fn, c, *args)

        # On cancellation with abandon=True the thread keeps its client: we just forget it.
        c, result = await trio.to_thread.run_sync(
            work, limiter=limiter or self._limiter, abandon_on_cancel=abandon)
        if isinstance(result, outcome.Error) and _is_connection_error(result.error):
            c.close()
            self._drop_clients()
            self._last_error = _reason(result.error)
            raise RuntimeUnavailable(self._last_error, self.endpoint) from result.error
        if generation == self._generation:
            self._idle.append(c)
        else:
            c.close()
        self._last_error = None
        try:
            return result.unwrap()
        except APIError as exc:
            raise RuntimeFailure(_reason(exc)) from exc

    def _drop_clients(self) -> None:
        self._generation += 1
        for c in self._idle:
            c.close()
        self._idle.clear()

    async def _ping(self) -> None:
        if not await self._run(lambda c: c.ping()):
            raise RuntimeUnavailable("the endpoint does not answer like a Podman service",
                                     self.endpoint)

    async def _learn_host(self) -> None:
        """Version, OCI runtime and the network mode; once, on first contact."""
        def fetch(c):
            oci = c.info().get("host", {}).get("ociRuntime", {})
            return c.version().get("Version"), oci.get("name"), oci.get("version")

        version, oci, oci_version = await self._run(fetch)
        facts = await trio.to_thread.run_sync(network.probe, version, oci, oci_version)
        self._networks = network.available_modes(facts)
        self._network = network.choose(self._network_config, self._networks)
        self._version = version
        log.info("podman %s at %s; network %s (available: %s)", version, self.endpoint,
                 self._network, ", ".join(self._networks))

    async def _spawn_service(self, path: str) -> None:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)  # Podman 4.3 does not
        # Our LISTEN_*/NOTIFY_SOCKET belong to beemeshd; Podman would take them for its own.
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("LISTEN_") and k != "NOTIFY_SOCKET"}
        argv = [PODMAN, *self._podman_args, "system", "service", "--time=0", f"unix://{path}"]
        log.info("starting %s", " ".join(argv))
        self._service = await trio.lowlevel.open_process(
            argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            start_new_session=True)  # a Ctrl-C meant for beemeshd must not reach it first
        with trio.move_on_after(SERVICE_START_TIMEOUT):
            while self._service.poll() is None:
                try:
                    return await self._ping()
                except RuntimeUnavailable:
                    await trio.sleep(0.02)
            raise RuntimeUnavailable(
                f"podman system service exited with status {self._service.returncode}",
                self.endpoint)
        await self._stop_service()
        raise RuntimeUnavailable(f"podman system service did not answer within "
                                 f"{SERVICE_START_TIMEOUT:g} s", self.endpoint)

    async def _stop_service(self) -> None:
        proc, self._service = self._service, None
        if proc is None or proc.poll() is not None:
            return
        with trio.CancelScope(shield=True):  # also when close() runs in a cancelled nursery
            proc.terminate()  # Podman's pods keep running: conmon and slirp4netns are detached
            with trio.move_on_after(SERVICE_STOP_TIMEOUT) as scope:
                await proc.wait()
                # The podman we started re-execs itself inside the user namespace and exits
                # before that child has stopped serving: wait until the socket is dead too.
                while await _answers(socket_path(self.endpoint)):
                    await trio.sleep(0.01)
            if scope.cancelled_caught:
                log.warning("podman service did not stop within %g s", SERVICE_STOP_TIMEOUT)
                proc.kill()
                await proc.wait()

    # --- Runtime ---

    async def start(self) -> None:
        try:
            await self._ping()
        except RuntimeUnavailable:
            path = socket_path(self.endpoint)
            if not (self._start_service and path):
                raise
            await self._spawn_service(path)
        try:
            await self._learn_host()
        except BaseException:
            await self._stop_service()
            raise

    async def close(self) -> None:
        self._drop_clients()
        await self._stop_service()

    async def status(self) -> RuntimeStatus:
        service_died = self._service is not None and self._service.poll() is not None
        try:
            if service_died:  # only a service we started is ours to bring back
                log.warning("podman service exited (%s); restarting it", self._service.returncode)
                await self._spawn_service(socket_path(self.endpoint) or "")
            await self._ping()
            if self._network is None:
                await self._learn_host()
            available = True
        except (RuntimeUnavailable, network.NetworkModeUnavailable) as exc:
            available = False
            self._last_error = getattr(exc, "reason", None) or str(exc)
        return RuntimeStatus(
            name="podman",
            version=self._version,
            endpoint=self.endpoint,
            available=available,
            started_by_beemesh=self._service is not None,
            network=self._network or "",
            networks_available=list(self._networks),
            last_error=self._last_error,
        )

    async def list_pods(self, labels: dict[str, str] | None = None) -> list[ObservedPod]:
        filters = [MANAGED, *(f"label={k}={v}" for k, v in (labels or {}).items())]
        return await self._run(_list_pods, filters)

    async def create_pod(self, spec: PodSpec) -> ObservedPod:
        if self._network is None:
            try:
                await self._learn_host()
            except network.NetworkModeUnavailable as exc:
                raise RuntimeFailure(str(exc)) from exc
        return await self._run(_create_pod, spec, self._network)

    async def remove_pod(self, name: str) -> None:
        await self._run(_remove_pod, name)

    async def restart_container(self, pod: str, container: str) -> None:
        name = podman_name(pod, container)
        await self._run(lambda c: _check(c.api.post(f"/containers/{name}/restart",
                                                    params={"t": STOP_TIMEOUT})))

    async def exec(self, pod: str, container: str, command: list[str], timeout: float) -> int:
        name = podman_name(pod, container)
        box = _Response()
        with trio.move_on_after(timeout):
            return await self._run(_exec, name, list(command), box, abandon=True)
        box.shutdown()  # wakes the abandoned thread; the process still runs in the container
        if box.exec_id is not None:
            with trio.move_on_after(REQUEST_TIMEOUT):
                await self._run(_kill_exec, name, box.exec_id)
        return EXEC_TIMEOUT_EXIT_CODE

    def logs(self, pod: str, container: str, *, tail: int | None = None,
             follow: bool = False) -> AsyncIterator[LogEntry]:
        return self._logs(pod, container, tail, follow)

    async def _logs(self, pod: str, container: str, tail: int | None,
                    follow: bool) -> AsyncIterator[LogEntry]:
        # The blocking reader runs in a thread fed to trio through a channel; it is driven by a
        # system task because an async generator must not yield inside a nursery of its own.
        send, recv = trio.open_memory_channel[Any](LOG_BUFFER)
        box = _Response()
        scope = trio.CancelScope()
        params = {"stdout": True, "stderr": True, "timestamps": True, "follow": follow,
                  "tail": "all" if tail is None else max(tail, 0)}

        async def pump() -> None:
            with scope:
                async with send:
                    try:
                        await self._run(_read_logs, podman_name(pod, container), container,
                                        params, send, box, abandon=True,
                                        limiter=self._stream_limiter)
                    except Exception as exc:  # hand it to the reader, who raises it
                        try:
                            await send.send(exc)
                        except (trio.BrokenResourceError, trio.ClosedResourceError):
                            pass

        trio.lowlevel.spawn_system_task(pump)
        try:
            async with recv:
                async for item in recv:
                    if isinstance(item, Exception):
                        raise item
                    yield item
        finally:
            scope.cancel()
            box.shutdown()

    async def image_exists(self, image: str) -> bool:
        return await self._run(lambda c: c.images.exists(image))


# --- Operations, each run in one worker thread ----------------------------------------------


def _list_pods(c: PodmanClient, filters: list[str]) -> list[ObservedPod]:
    # Filters as lists of "key=value" strings: podman-py str()s dict values, so a dict of lists
    # silently matches nothing. Containers are joined to pods by id, not filtered twice.
    pods = c.pods.list(filters=filters)
    containers = [x.attrs for x in c.containers.list(all=True, filters=[MANAGED])]
    return [observe(p.attrs, containers) for p in pods]


def _create_pod(c: PodmanClient, spec: PodSpec, network_mode: str) -> ObservedPod:
    validate(spec)
    pod_id = _check(c.api.post("/pods/create", data=json.dumps(pod_body(spec, network_mode))))
    pod_id = pod_id.json()["Id"]  # from here on, a failure removes what we created
    try:
        _remove_volumes(c, spec.name)  # orphans of an earlier pod of that name: emptyDir is empty
        for vol in spec.volumes:
            labels = {MANAGED_LABEL: "true", POD_LABEL: spec.name}
            _check(c.api.post("/volumes/create", data=json.dumps(
                {"Name": volume_name(spec.name, vol), "Label": labels})))
        for ctr in spec.containers:
            _check(c.api.post("/containers/create",
                              data=json.dumps(container_body(spec, ctr, pod_id))))
        started = c.api.post(f"/pods/{pod_id}/start")  # errors come as {"Errs": [...]}
        if not started.ok:
            try:
                errs = started.json().get("Errs") or [started.text]
            except ValueError:
                errs = [started.text]
            raise RuntimeFailure("; ".join(map(str, errs)))
        return _list_pods(c, [MANAGED, f"label={POD_LABEL}={spec.name}"])[0]
    except BaseException as exc:
        try:
            _remove_pod(c, pod_id, spec.name)
        except Exception as cleanup:  # the original error is the one worth reporting
            log.warning("could not clean up half-created pod %s: %s", spec.name, cleanup)
        if isinstance(exc, APIError) and exc.response is not None:
            raise RuntimeFailure(_reason(exc)) from exc
        raise


def _remove_pod(c: PodmanClient, name: str, volumes_of: str | None = None) -> None:
    # Kill first: on Podman 4.3 stop/remove of a running pod waits 10 s whatever timeout is given.
    for method, path, params, ok in (("post", f"/pods/{name}/kill", None, (404, 409)),
                                     ("delete", f"/pods/{name}", {"force": True}, (404,))):
        try:
            _check(getattr(c.api, method)(path, params=params))
        except APIError as exc:
            if exc.response is None or exc.status_code not in ok:
                raise
    _remove_volumes(c, volumes_of or name)


def _remove_volumes(c: PodmanClient, pod: str) -> None:
    # One label per filter: Podman 4.3 ORs several label filters on volumes.
    filters = {"label": [f"{POD_LABEL}={pod}"]}
    vols = _check(c.api.get("/volumes/json", params={"filters": json.dumps(filters)})).json()
    for v in vols or []:
        if (v.get("Labels") or {}).get(MANAGED_LABEL) != "true":
            continue
        try:
            _check(c.api.delete(f"/volumes/{v['Name']}", params={"force": True}))
        except APIError as exc:
            if exc.response is None or exc.status_code != 404:
                raise


def _exec(c: PodmanClient, name: str, command: list[str], box: _Response) -> int:
    # Attached (not detached) exec: Podman 4.3 updates a detached session's exit code late.
    created = _check(c.api.post(f"/containers/{name}/exec", data=json.dumps(
        {"Cmd": command, "AttachStdout": True, "AttachStderr": True})))
    box.exec_id = created.json()["Id"]
    resp = c.api.post(f"/exec/{box.exec_id}/start", data=json.dumps({"Detach": False}),
                      stream=True, timeout=(REQUEST_TIMEOUT, None))  # the caller bounds it
    box.set(resp)
    try:
        _check(resp)
        while resp.raw.read(65536):  # output is not wanted, only the end of the stream
            pass
    finally:
        resp.close()
    if box.closed:
        return EXEC_TIMEOUT_EXIT_CODE
    inspect = _check(c.api.get(f"/exec/{box.exec_id}/json")).json()
    return int(inspect.get("ExitCode") or 0)


def _kill_exec(c: PodmanClient, name: str, exec_id: str) -> None:
    """Kill a timed-out exec session's process (Podman keeps it running when we hang up)."""
    info = _check(c.api.get(f"/exec/{exec_id}/json")).json()
    pid = info.get("Pid") or 0
    if not info.get("Running") or pid <= 0:
        return
    try:
        os.kill(pid, signal.SIGKILL)  # runs as us when the container user is root
        return
    except ProcessLookupError:
        return
    except PermissionError:
        pass
    # Another container user maps to a subordinate uid: kill it from inside the container,
    # by its pid in the container's pid namespace (the last NSpid entry).
    try:
        with open(f"/proc/{pid}/status") as f:
            nspid = next(line.split()[-1] for line in f if line.startswith("NSpid:"))
    except (OSError, StopIteration):
        return
    _exec(c, name, ["kill", "-KILL", nspid], _Response())


def _read_logs(c: PodmanClient, name: str, container: str, params: dict,
               send: trio.MemorySendChannel, box: _Response) -> None:
    resp = c.api.get(f"/containers/{name}/logs", params=params, stream=True,
                     timeout=(REQUEST_TIMEOUT, None))  # a followed log may stay quiet for hours
    box.set(resp)
    try:
        _check(resp)
        while not box.closed:
            header = _read_exact(resp.raw, 8)
            if len(header) < 8:
                return
            kind, size = struct.unpack(">BxxxL", header)
            entry = parse_log_frame(kind, _read_exact(resp.raw, size), container)
            try:
                trio.from_thread.run(send.send, entry)
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio.Cancelled,
                    trio.RunFinishedError):
                return  # the reader is gone
    except (OSError, urllib3.exceptions.HTTPError):
        if not box.closed:
            raise
    finally:
        resp.close()
