"""User-side driver for test_podman_runtime.py: runs one scenario of PodmanRuntime against real
rootless Podman and prints its observations as one JSON object on stdout.

Run as the test user with the venv's python and PYTHONPATH pointing at a copy of the checkout's
`beemeshd`: `python podman_driver.py SCENARIO CONFIG.json`. CONFIG holds `podman_args` (a store
of the test's own), `socket` (an API socket path of its own) and `image`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import trio

from beemeshd.errors import RuntimeUnavailable
from beemeshd.runtime import ContainerSpec, PodSpec, PortMapping, RuntimeFailure
from beemeshd.runtime.podman import PodmanRuntime

HTTPD = ("httpd", "-f", "-v", "-p", "8080", "-h", "/var/www")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(port: int) -> tuple[int, str] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1) as r:
            return r.status, r.read().decode()
    except OSError:
        return None


async def wait_http(port: int, limit: float = 10.0) -> tuple[float, tuple[int, str] | None]:
    t0 = time.monotonic()
    with trio.move_on_after(limit):
        while (got := await trio.to_thread.run_sync(http_get, port)) is None:
            await trio.sleep(0.01)
        return time.monotonic() - t0, got
    return time.monotonic() - t0, None


def readers_blocked(rt: PodmanRuntime) -> int:
    """Threads still inside the blocking log reader, plus stream tokens not yet given back."""
    inside = sum(1 for f in sys._current_frames().values()
                 if any(fr.f_code.co_name == "_read_logs" for fr in _stack(f)))
    return inside + int(rt._stream_limiter.borrowed_tokens)


def _stack(frame):
    while frame is not None:
        yield frame
        frame = frame.f_back


def web_pod(name: str, port: int, image: str, *extra: ContainerSpec, volumes=()) -> PodSpec:
    return PodSpec(name=name, labels=(("app", name),),
                   containers=(ContainerSpec("web", image, args=HTTPD), *extra),
                   ports=(PortMapping("127.0.0.1", port, 8080, "tcp"),), volumes=volumes)


class Driver:
    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.image = cfg["image"]
        self.endpoint = f"unix://{cfg['socket']}"
        self.out: dict = {}

    def podman(self, *args: str) -> str:
        r = subprocess.run(["podman", *self.cfg["podman_args"], *args], capture_output=True,
                           text=True, timeout=30)
        return r.stdout.strip()

    def leftovers(self) -> dict:
        return {
            "containers": self.podman("ps", "-a", "-q", "--filter", "label=io.beemesh.managed=true"),
            "pods": self.podman("pod", "ps", "-q"),
            "volumes": self.podman("volume", "ls", "-q"),
        }

    async def wait_state(self, rt, pod: str, ctr: str, state: str, limit: float = 5.0):
        with trio.move_on_after(limit):
            while True:
                pods = await rt.list_pods({"app": pod})
                c = pods[0].container(ctr) if pods else None
                if c is not None and c.state == state:
                    return pods[0], c
                await trio.sleep(0.05)
        return None, None

    async def lifecycle(self) -> None:
        out = self.out
        rt = PodmanRuntime(self.endpoint, podman_args=self.cfg["podman_args"])
        t = time.monotonic()
        await rt.start()
        out["start_s"] = time.monotonic() - t
        st = await rt.status()
        out["status"] = {"available": st.available, "started_by_beemesh": st.started_by_beemesh,
                         "network": st.network, "networks_available": st.networks_available,
                         "version": st.version}
        out["image_exists"] = [await rt.image_exists(self.image),
                               await rt.image_exists("localhost/nope:latest")]

        port = free_port()
        side = ContainerSpec("side", self.image, command=("sh", "-c"), args=(
            "echo hello-stdout; echo hello-stderr >&2; echo kept > /data/f; sleep 1000",),
            env=(("GREETING", "hi"),), mounts=(("scratch", "/data", False),))
        spec = web_pod("bm-web", port, self.image, side, volumes=("scratch",))
        t = time.monotonic()
        created = await rt.create_pod(spec)
        out["create_s"] = time.monotonic() - t
        waited, got = await wait_http(port)
        out["create_to_http_s"] = out["create_s"] + waited
        out["http"] = got
        out["created"] = {"name": created.name, "state": created.state,
                          "containers": sorted((c.name, c.state) for c in created.containers)}

        pods = await rt.list_pods({"app": "bm-web"})
        out["listed"] = [{"name": p.name, "labels": p.labels, "state": p.state,
                          "containers": sorted((c.name, c.state, c.image) for c in p.containers)}
                         for p in pods]
        out["listed_other"] = len(await rt.list_pods({"app": "nope"}))
        out["volumes_while_running"] = self.podman("volume", "ls", "-q")

        out["exec"] = [await rt.exec("bm-web", "side", cmd, 5) for cmd in (
            ["true"], ["sh", "-c", "exit 3"], ["nosuchcommand"],
            ["sh", "-c", 'test "$GREETING" = hi && test "$(cat /data/f)" = kept'])]
        t = time.monotonic()
        out["exec_timeout"] = await rt.exec("bm-web", "web", ["sleep", "30"], 0.5)
        out["exec_timeout_s"] = time.monotonic() - t
        await trio.sleep(0.2)
        out["exec_timeout_killed"] = await rt.exec(
            "bm-web", "web", ["sh", "-c", "! ps | grep -q '[s]leep 30'"], 5)

        entries = [e async for e in rt.logs("bm-web", "side", tail=None, follow=False)]
        out["logs"] = [(e.stream, e.line) for e in entries]
        out["logs_timestamps"] = [e.timestamp_usec for e in entries]
        out["logs_tail1"] = [e.line async for e in rt.logs("bm-web", "side", tail=1, follow=False)]
        await self.follow(rt, port)

        self.podman("kill", "bm-web-side")
        pod, c = await self.wait_state(rt, "bm-web", "side", "exited")
        out["killed"] = pod and {"pod": pod.state, "state": c.state, "exit_code": c.exit_code}
        t = time.monotonic()
        await rt.restart_container("bm-web", "side")
        out["restart_s"] = time.monotonic() - t
        pod, c = await self.wait_state(rt, "bm-web", "side", "running")
        out["restarted"] = pod and {"pod": pod.state, "state": c.state,
                                    "started": c.started_at is not None}

        out["failures"] = {}
        bad = PodSpec("bm-bad", (("app", "bm-bad"),),
                      (ContainerSpec("a", self.image, args=HTTPD),
                       ContainerSpec("b", "localhost/nope:latest")), volumes=("v",))
        clash = web_pod("bm-clash", port, self.image)  # bm-web holds that port
        for spec in (bad, clash):
            try:
                await rt.create_pod(spec)
                out["failures"][spec.name] = None
            except RuntimeFailure as exc:
                out["failures"][spec.name] = exc.reason
        out["after_failures"] = self.leftovers()

        t = time.monotonic()
        await rt.remove_pod("bm-web")
        out["remove_s"] = time.monotonic() - t
        await rt.remove_pod("bm-web")  # idempotent
        out["after_remove"] = self.leftovers()
        out["http_after_remove"] = http_get(port)

        # A pod outlives the adapter and the service it started.
        keep = free_port()
        await rt.create_pod(web_pod("bm-keep", keep, self.image))
        await wait_http(keep)
        t = time.monotonic()
        await rt.close()
        out["close_s"] = time.monotonic() - t
        probe = PodmanRuntime(self.endpoint, start_service=False)
        try:
            await probe.start()
            out["service_after_close"] = "answering"
        except RuntimeUnavailable:
            out["service_after_close"] = "gone"
        out["keep_after_close"] = {"http": http_get(keep),
                                   "cli": self.podman("pod", "ps", "--format", "{{.Name}} {{.Status}}")}
        self.podman("pod", "rm", "-f", "-t", "0", "bm-keep")

    async def follow(self, rt, port: int) -> None:
        """Follow httpd's log, cause a line, then close the stream: the thread must end."""
        got: list = []
        t = time.monotonic()

        async def reader(task_status=trio.TASK_STATUS_IGNORED):
            stream = rt.logs("bm-web", "web", tail=0, follow=True)
            task_status.started()
            async for e in stream:
                got.append((e.stream, e.line))

        with trio.move_on_after(10):
            async with trio.open_nursery() as n:
                await n.start(reader)
                await trio.sleep(0.3)
                await trio.to_thread.run_sync(http_get, port)
                while not got:
                    await trio.sleep(0.02)
                self.out["follow_latency_s"] = time.monotonic() - t
                t = time.monotonic()
                n.cancel_scope.cancel()
        self.out["follow_cancel_s"] = time.monotonic() - t
        self.out["follow"] = got
        # trio keeps finished worker threads idle for a while, so counting threads says nothing:
        # look for a thread still inside the blocking log reader, and the stream token it holds.
        with trio.move_on_after(3):
            while readers_blocked(rt):
                await trio.sleep(0.02)
        self.out["follow_thread_released_s"] = time.monotonic() - t
        self.out["follow_threads_left"] = readers_blocked(rt)

    async def outage(self) -> None:
        out = self.out
        svc = self.spawn_service()
        rt = PodmanRuntime(self.endpoint, start_service=False)
        try:
            await rt.start()
            out["started_by_beemesh"] = (await rt.status()).started_by_beemesh
            port = free_port()
            await rt.create_pod(web_pod("bm-out", port, self.image))
            out["http_before"] = (await wait_http(port))[1]

            self.stop_service(svc)
            out["errors"] = {}
            for name, call in (("list_pods", rt.list_pods()),
                               ("exec", rt.exec("bm-out", "web", ["true"], 5)),
                               ("remove_pod", rt.remove_pod("bm-out")),
                               ("create_pod", rt.create_pod(web_pod("bm-x", free_port(), self.image)))):
                t = time.monotonic()
                try:
                    await call
                    out["errors"][name] = None
                except RuntimeUnavailable as exc:
                    out["errors"][name] = {"reason": exc.reason, "endpoint": exc.endpoint,
                                           "s": time.monotonic() - t}
            st = await rt.status()
            out["status_down"] = {"available": st.available, "last_error": st.last_error}
            out["during_outage"] = {"http": http_get(port),
                                    "cli": self.podman("pod", "ps", "--format", "{{.Name}} {{.Status}}")}

            svc = self.spawn_service()
            pods = await rt.list_pods({"app": "bm-out"})
            out["after_restart"] = [(p.name, p.state, [c.state for c in p.containers]) for p in pods]
            out["status_up"] = (await rt.status()).available
            await rt.remove_pod("bm-out")
            out["after_remove"] = self.leftovers()
        finally:
            await rt.close()
            self.stop_service(svc)

    def answers(self) -> bool:
        with socket.socket(socket.AF_UNIX) as s:
            try:
                s.connect(self.cfg["socket"])
                return True
            except OSError:
                return False

    def stop_service(self, svc: subprocess.Popen) -> None:
        """Like an external stop: the re-exec'd podman outlives the one we started, so wait for
        the socket to die (and kill the group if a streaming request holds it up)."""
        svc.terminate()
        svc.wait(10)
        deadline = time.monotonic() + 3
        while self.answers() and time.monotonic() < deadline:
            time.sleep(0.01)
        try:
            os.killpg(svc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def spawn_service(self) -> subprocess.Popen:
        argv = ["podman", *self.cfg["podman_args"], "system", "service", "--time=0",
                self.endpoint]
        svc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               start_new_session=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.answers():
                return svc
            time.sleep(0.02)
        svc.kill()
        raise SystemExit("the podman service did not come up")


def main() -> None:
    scenario, config = sys.argv[1], sys.argv[2]
    with open(config) as f:
        driver = Driver(json.load(f))
    try:
        trio.run(getattr(driver, scenario))
    finally:
        print(json.dumps(driver.out, default=str))


if __name__ == "__main__":
    main()
