"""The Runtime interface on rootless Podman's REST API, through podman-py.

podman-py is synchronous, so every operation is one sync function run in a worker thread
(`trio.to_thread.run_sync` with a CapacityLimiter). An operation that needs several requests
(create pod, volumes, containers, start) runs them in one thread call: one thread hop, and atomic
with respect to trio cancellation.

Connection failures (socket missing, refused, reset, timed out) become RuntimeUnavailable and drop
the pooled clients, so the next call reconnects: nothing stale survives a restart of the service.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import outcome
import trio
import urllib3
from podman import PodmanClient
from podman.errors import APIError

from beemeshd.errors import RuntimeUnavailable
from beemeshd.runtime import network
from beemeshd.runtime.base import (
    EXEC_TIMEOUT_EXIT_CODE, MANAGED_LABEL, POD_LABEL, STOP_TIMEOUT, LogEntry, ObservedPod, PodSpec,
    RuntimeFailure, RuntimeStatus, podman_name, validate,
)
from beemeshd.runtime.podman_specs import (
    container_body, default_endpoint, observe, parse_log_frame, pod_body, read_frames, socket_path,
    volume_name,
)

log = logging.getLogger("beemeshd.runtime")

PODMAN = "podman"
REQUEST_TIMEOUT = 20.0  # seconds per API request; a hung service becomes RuntimeUnavailable
SERVICE_START_TIMEOUT = 10.0
SERVICE_STOP_GRACE = 1.0  # a healthy service is gone within some 10 ms
MAX_LOG_STREAMS = 32  # followed logs hold a thread each; they get their own limiter
LOG_BUFFER = 256
MANAGED = f"label={MANAGED_LABEL}=true"


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
    # The innermost error says what happened to the socket (e.g. ConnectionRefusedError).
    while (inner := exc.__cause__ or exc.__context__) is not None:
        exc = inner
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
            with contextlib.suppress(OSError, ValueError, RuntimeError):
                self._resp.raw.shutdown()  # urllib3 ≥ 2.3: unblocks a read in another thread


def _group_alive(pgid: int) -> bool:
    """Whether a process group still has a live (non-zombie) member."""
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/stat") as f:
                state, _ppid, pgrp = f.read().rpartition(")")[2].split()[:3]
        except (OSError, ValueError):
            continue
        if int(pgrp) == pgid and state != "Z":
            return True
    return False


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
        self._owns_service = False  # we started the service, so we may bring it back
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
        self._owns_service = True
        try:
            self._service = await trio.lowlevel.open_process(
                argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                # "/" as cwd: the daemon may have been started from a directory this user
                # cannot enter (podman then fails with "cannot chdir").
                cwd="/", start_new_session=True)  # own group: Ctrl-C is for beemeshd; close() kills it all
        except OSError as exc:
            raise RuntimeUnavailable(f"cannot run {PODMAN}: {exc}", self.endpoint) from exc
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
        if proc is None:
            return
        with trio.CancelScope(shield=True):  # also when close() runs in a cancelled nursery
            # Pods keep running: conmon, slirp4netns and rootlessport have process groups of
            # their own. The podman we started re-execs itself inside the user namespace, and
            # that child outlives it: wait for the whole group.
            if proc.poll() is None:
                proc.terminate()
            with trio.move_on_after(SERVICE_STOP_GRACE):
                await proc.wait()
                while _group_alive(proc.pid):
                    await trio.sleep(0.02)
                return
            # Podman 4.3 never finishes a graceful shutdown while a followed log is open on its
            # side, even when the client has hung up (it notices only at the next log line).
            log.warning("podman service did not stop within %g s: killing it", SERVICE_STOP_GRACE)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()

    # --- Runtime ---

    async def start(self) -> None:
        try:
            try:
                await self._ping()
            except RuntimeUnavailable:
                path = socket_path(self.endpoint)
                if not (self._start_service and path):
                    raise
                await self._spawn_service(path)
            await self._learn_host()
        except BaseException:
            self._owns_service = False
            await self._stop_service()
            raise

    async def close(self) -> None:
        self._owns_service = False
        self._drop_clients()
        await self._stop_service()

    async def status(self) -> RuntimeStatus:
        """Never raises: an unreachable service is `available=False` with `last_error`. A service
        we started that has died is started again here (one attempt per call); one we did not
        start is left to whoever owns it."""
        try:
            if self._owns_service and (self._service is None or self._service.poll() is not None):
                log.warning("the podman service we started is gone; starting it again")
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
            started_by_beemesh=self._owns_service,
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

    async def ensure_volume(self, name: str, labels: dict[str, str]) -> None:
        await self._run(_ensure_volume, name, dict(labels))

    async def read_volume_file(self, volume: str, filename: str) -> bytes | None:
        return await self._run(_read_volume_file, volume, _top_level(filename))

    async def write_volume_file(self, volume: str, filename: str, data: bytes) -> None:
        await self._run(_write_volume_file, volume, _top_level(filename), bytes(data))


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
        for claim, vol in spec.claims:  # kept across pods: created only when missing
            _ensure_volume(c, vol, spec.claim_labels(claim))
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
        found = _list_pods(c, [MANAGED, f"label={POD_LABEL}={spec.name}"])
        if not found:  # removed meanwhile (a concurrent remove of the same replica)
            raise RuntimeFailure(f"pod {spec.name} vanished right after it was created")
        return found[0]
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
    _unless(c.api.post, f"/pods/{name}/kill", (404, 409))  # 409: nothing running
    _unless(c.api.delete, f"/pods/{name}", (404,), params={"force": True})
    _remove_volumes(c, volumes_of or name)


def _remove_volumes(c: PodmanClient, pod: str) -> None:
    # One label per filter: Podman 4.3 ORs several label filters on volumes.
    filters = {"label": [f"{POD_LABEL}={pod}"]}
    vols = _check(c.api.get("/volumes/json", params={"filters": json.dumps(filters)})).json()
    for v in vols or []:
        if (v.get("Labels") or {}).get(MANAGED_LABEL) == "true":
            _unless(c.api.delete, f"/volumes/{v['Name']}", (404,), params={"force": True})


def _ensure_volume(c: PodmanClient, name: str, labels: dict[str, str]) -> None:
    if c.api.get(f"/volumes/{name}/exists").status_code == 204:
        return
    # 409: created meanwhile (another create of the same ordinal's pod)
    _unless(c.api.post, "/volumes/create", (409,), data=json.dumps({"Name": name, "Label": labels}))


def _mountpoint(c: PodmanClient, volume: str) -> str:
    mountpoint = _check(c.api.get(f"/volumes/{volume}/json")).json().get("Mountpoint")
    if not mountpoint:
        raise RuntimeFailure(f"volume {volume} has no mount point on this host")
    return mountpoint


def _top_level(filename: str) -> str:
    if not filename or "/" in filename or filename in (".", ".."):
        raise ValueError(f"not a file name: {filename!r}")
    return filename


def _read_volume_file(c: PodmanClient, volume: str, filename: str) -> bytes | None:
    path = os.path.join(_mountpoint(c, volume), filename)
    try:  # O_NOFOLLOW: the container owns the volume and could plant a symlink there
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise RuntimeFailure(f"cannot read {filename} in volume {volume}: {exc.strerror}") from exc
    with os.fdopen(fd, "rb") as f:
        return f.read(4096)


def _write_volume_file(c: PodmanClient, volume: str, filename: str, data: bytes) -> None:
    root = _mountpoint(c, volume)
    tmp = os.path.join(root, f".{filename}.tmp")
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, os.path.join(root, filename))  # replaces a symlink itself, not its target
        dfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError as exc:
        raise RuntimeFailure(f"cannot write {filename} in volume {volume}: {exc.strerror}") from exc


def _unless(method: Callable[..., Any], path: str, statuses: tuple[int, ...], **kw: Any) -> None:
    """A request whose failure with one of `statuses` means there is nothing left to do."""
    try:
        _check(method(path, **kw))
    except APIError as exc:
        if exc.response is None or exc.status_code not in statuses:
            raise


def _exec(c: PodmanClient, name: str, command: list[str], box: _Response) -> int:
    # Attached (not detached) exec: Podman 4.3 updates a detached session's exit code late.
    created = _check(c.api.post(f"/containers/{name}/exec", data=json.dumps(
        {"Cmd": command, "AttachStdout": True, "AttachStderr": True})))
    box.exec_id = created.json()["Id"]
    if box.closed:  # timed out already: do not start a process nobody waits for
        return EXEC_TIMEOUT_EXIT_CODE
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
        return os.kill(pid, signal.SIGKILL)  # the process runs as us if the container user is root
    except ProcessLookupError:
        return
    except PermissionError:  # another container user maps to a subordinate uid: kill it from
        pass  # inside the container, by its pid in there (the last NSpid entry)
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
        for kind, payload in read_frames(resp.raw):
            if box.closed:
                return
            try:
                trio.from_thread.run(send.send, parse_log_frame(kind, payload, container))
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio.Cancelled,
                    trio.RunFinishedError):
                return  # the reader is gone
    except (OSError, urllib3.exceptions.HTTPError):
        if not box.closed:
            raise
    finally:
        resp.close()
