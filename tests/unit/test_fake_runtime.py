"""FakeRuntime behaviour, network mode rules, and the Podman adapter's pure translations."""

from __future__ import annotations

import io
import struct

import pytest
import trio

from beemeshd.errors import RuntimeUnavailable
from beemeshd.runtime import network
from beemeshd.runtime import podman_specs as podman
from beemeshd.runtime.base import (
    ContainerSpec,
    PodSpec,
    PortMapping,
    RuntimeFailure,
)
from beemeshd.runtime.fake import FakeRuntime
from beemeshd.runtime.network import HostFacts, NetworkModeUnavailable

IMAGE = "localhost/beemesh-busybox:latest"


def web(name: str = "web", port: int = 18080, **labels: str) -> PodSpec:
    return PodSpec(
        name=name,
        labels=tuple(sorted({"app": name, **labels}.items())),
        containers=(ContainerSpec("httpd", IMAGE, args=("httpd", "-f")),
                    ContainerSpec("side", IMAGE, mounts=(("scratch", "/data", False),))),
        ports=(PortMapping("127.0.0.1", port, 8080, "tcp"),),
        volumes=("scratch",),
    )


# --- FakeRuntime -------------------------------------------------------------------------------


async def test_create_list_remove():
    rt = FakeRuntime(now=lambda: 1000.0)
    await rt.start()
    pod = await rt.create_pod(web("a", 1, tier="front"))
    await rt.create_pod(web("b", 2))
    assert pod.state == "running"
    assert [(c.name, c.state, c.started_at) for c in pod.containers] == [
        ("httpd", "running", 1000.0), ("side", "running", 1000.0)]
    assert pod.labels["io.beemesh.managed"] == "true" and pod.labels["tier"] == "front"
    assert pod.container("side").labels["io.beemesh.container"] == "side"

    assert sorted(p.name for p in await rt.list_pods()) == ["a", "b"]
    assert [p.name for p in await rt.list_pods({"tier": "front"})] == ["a"]
    assert await rt.list_pods({"tier": "front", "app": "b"}) == []

    await rt.remove_pod("a")
    await rt.remove_pod("a")  # absent is fine
    assert [p.name for p in await rt.list_pods()] == ["b"]
    assert ("remove_pod", "a") in rt.calls


async def test_observations_are_copies():
    rt = FakeRuntime()
    pod = await rt.create_pod(web())
    pod.containers[0].state = "exited"
    pod.labels["x"] = "y"
    [again] = await rt.list_pods()
    assert again.containers[0].state == "running" and "x" not in again.labels


@pytest.mark.parametrize("spec, reason", [
    (PodSpec("p", containers=(ContainerSpec("a", "nope:1"),)), "image not known"),
    (PodSpec("p", containers=(ContainerSpec("a", IMAGE), ContainerSpec("a", IMAGE))), "duplicate"),
    (PodSpec("p", containers=(ContainerSpec("a", IMAGE, mounts=(("v", "/v", True),)),)),
     "undeclared volume"),
    (web("p", port=18080), "address already in use"),
    (web("taken", port=9), "already exists"),
])
async def test_create_refusals_leave_nothing(spec, reason):
    rt = FakeRuntime(images=[IMAGE])
    await rt.create_pod(web("taken", 18080))
    with pytest.raises(RuntimeFailure, match=reason):
        await rt.create_pod(spec)
    assert rt.pod_names() == ["taken"]


async def test_fail_next_create():
    rt = FakeRuntime()
    rt.fail_next_create("boom")
    with pytest.raises(RuntimeFailure, match="boom"):
        await rt.create_pod(web())
    assert await rt.list_pods() == []
    await rt.create_pod(web())  # only the next one fails
    assert rt.pod_names() == ["web"]


async def test_kill_and_restart_container():
    times = iter([1.0, 5.0])
    rt = FakeRuntime(now=lambda: next(times))
    await rt.create_pod(web())
    rt.kill_container("web", "side", 137)
    [pod] = await rt.list_pods()
    assert pod.state == "degraded"
    assert (pod.container("side").state, pod.container("side").exit_code) == ("exited", 137)
    await rt.restart_container("web", "side")
    [pod] = await rt.list_pods()
    side = pod.container("side")
    assert (pod.state, side.state, side.exit_code, side.started_at) == ("running", "running", None, 5.0)
    with pytest.raises(RuntimeFailure):
        await rt.restart_container("web", "nope")


async def test_exec_results_and_timeout(autojump_clock):
    rt = FakeRuntime()
    await rt.create_pod(web())
    assert await rt.exec("web", "httpd", ["true"], 1) == 0
    rt.set_exec_result("web", "httpd", 3, duration=0.5)
    t0 = trio.current_time()
    assert await rt.exec("web", "httpd", ["check"], 1) == 3
    assert trio.current_time() - t0 == pytest.approx(0.5)
    rt.set_exec_result("web", "httpd", 0, duration=30)
    t0 = trio.current_time()
    assert await rt.exec("web", "httpd", ["hang"], 2) == 124
    assert trio.current_time() - t0 == pytest.approx(2)
    rt.kill_container("web", "httpd")
    with pytest.raises(RuntimeFailure, match="running"):
        await rt.exec("web", "httpd", ["true"], 1)
    assert ("exec", "web", "httpd", ["hang"], 2) in rt.calls


async def test_unavailable_then_back():
    rt = FakeRuntime()
    await rt.create_pod(web())
    rt.set_available(False)
    for call in (rt.list_pods(), rt.create_pod(web("b", 2)), rt.remove_pod("web"),
                 rt.exec("web", "httpd", ["true"], 1), rt.image_exists(IMAGE)):
        with pytest.raises(RuntimeUnavailable):
            await call
    st = await rt.status()
    assert not st.available and st.last_error
    rt.set_available(True)
    assert [p.name for p in await rt.list_pods()] == ["web"]  # pods survived the outage
    assert (await rt.status()).available


async def test_close_keeps_pods():
    rt = FakeRuntime()
    await rt.start()
    await rt.create_pod(web())
    await rt.close()
    assert rt.closed and rt.pod_names() == ["web"]


async def test_logs_tail_and_follow(autojump_clock):
    rt = FakeRuntime(now=lambda: 2.0)
    await rt.create_pod(web())
    for line in ("one", "two", "three"):
        rt.append_log("web", "httpd", line)
    rt.append_log("web", "httpd", "oops", stream="stderr")
    assert [e.line async for e in rt.logs("web", "httpd")] == ["one", "two", "three", "oops"]
    tail = [e async for e in rt.logs("web", "httpd", tail=2)]
    assert [(e.stream, e.line, e.timestamp_usec) for e in tail] == [
        ("stdout", "three", 2_000_000), ("stderr", "oops", 2_000_000)]
    assert [e async for e in rt.logs("web", "httpd", tail=0)] == []

    got = []

    async def follow():
        async for e in rt.logs("web", "httpd", tail=1, follow=True):
            got.append(e.line)

    async with trio.open_nursery() as n:
        n.start_soon(follow)
        await trio.sleep(1)
        rt.append_log("web", "httpd", "four")
        await trio.sleep(1)
        rt.kill_container("web", "httpd")  # a followed log ends with its container
    assert got == ["oops", "four"]


async def test_logs_of_unknown_container():
    rt = FakeRuntime()
    with pytest.raises(RuntimeFailure):
        [e async for e in rt.logs("nope", "c")]


async def test_image_exists():
    assert await FakeRuntime().image_exists("anything")
    rt = FakeRuntime(images=[IMAGE])
    assert await rt.image_exists(IMAGE) and not await rt.image_exists("other")


# --- network mode rules ------------------------------------------------------------------------

THIS_HOST = HostFacts("4.3.1", frozenset(), "runc", "runc version 1.1.5+ds1\ncommit: x")


def test_parse_version():
    assert network.parse_version("4.3.1") == (4, 3, 1)
    assert network.parse_version("v4.4-rc1") == (4, 4)
    assert network.parse_version("runc version 1.1.5+ds1") == (1, 1, 5)
    assert network.parse_version(None) == ()


@pytest.mark.parametrize("facts, modes", [
    (THIS_HOST, ["slirp4netns"]),
    # pasta needs Podman >= 4.4 as well as the binary
    (HostFacts("4.3.1", frozenset({"pasta", "passt"}), "runc", "1.1.5"), ["slirp4netns"]),
    (HostFacts("4.4.0", frozenset({"passt"}), "runc", "1.1.5"), ["pasta", "slirp4netns"]),
    (HostFacts("5.0.1", frozenset(), "crun", "1.8"), ["slirp4netns"]),
    # bypass4netns needs its binary, runc >= 1.1 (seccomp listeners) and its daemon
    (HostFacts("4.3.1", frozenset({"bypass4netns"}), "runc", "1.1.5", True),
     ["bypass4netns", "slirp4netns"]),
    (HostFacts("4.3.1", frozenset({"bypass4netns"}), "runc", "1.0.2", True), ["slirp4netns"]),
    (HostFacts("4.3.1", frozenset({"bypass4netns"}), "crun", "1.8", True), ["slirp4netns"]),
    (HostFacts("4.3.1", frozenset({"bypass4netns"}), "runc", "1.1.5", False), ["slirp4netns"]),
    (HostFacts("4.9.0", frozenset({"bypass4netns", "pasta"}), "runc", "1.1.12", True),
     ["bypass4netns", "pasta", "slirp4netns"]),
])
def test_available_modes(facts, modes):
    assert network.available_modes(facts) == modes


def test_choose():
    all_modes = ["bypass4netns", "pasta", "slirp4netns"]
    assert network.choose("auto", ["slirp4netns"]) == "slirp4netns"
    assert network.choose("auto", ["pasta", "slirp4netns"]) == "pasta"
    assert network.choose("auto", all_modes) == "bypass4netns"
    assert network.choose("slirp4netns", all_modes) == "slirp4netns"
    assert network.choose("pasta", all_modes) == "pasta"
    with pytest.raises(NetworkModeUnavailable, match="pasta"):
        network.choose("pasta", ["slirp4netns"])  # configured but unavailable: an error
    with pytest.raises(NetworkModeUnavailable, match="unknown"):
        network.choose("host", all_modes)
    with pytest.raises(NetworkModeUnavailable):
        network.choose("auto", [])


def test_pod_netns():
    assert network.pod_netns("slirp4netns") == {"nsmode": "slirp4netns"}
    assert network.pod_netns("pasta") == {"nsmode": "pasta"}
    assert network.pod_netns("bypass4netns") == {"nsmode": "slirp4netns"}


def test_probe_this_host_never_picks_pasta():
    facts = network.probe("4.3.1", "runc", "runc version 1.1.5")
    assert "pasta" not in network.available_modes(facts)
    assert network.choose("auto", network.available_modes(facts)) in ("slirp4netns", "bypass4netns")


# --- PodmanRuntime's pure translations ---------------------------------------------------------


def test_pod_body():
    spec = PodSpec("web", (("app", "web"),), ports=(PortMapping("127.0.0.1", 18080, 8080, "tcp"),
                                                     PortMapping("", 5353, 53, "udp")))
    assert podman.pod_body(spec, "slirp4netns") == {
        "name": "web",
        "labels": {"app": "web", "io.beemesh.managed": "true", "io.beemesh.pod": "web"},
        "netns": {"nsmode": "slirp4netns"},
        "portmappings": [
            {"container_port": 8080, "host_port": 18080, "protocol": "tcp", "host_ip": "127.0.0.1"},
            {"container_port": 53, "host_port": 5353, "protocol": "udp"},
        ],
    }


def test_container_body():
    pod = PodSpec("web", (("app", "web"),), volumes=("data",))
    c = ContainerSpec("srv", IMAGE, command=("httpd",), args=("-f",), env=(("A", "1"),),
                      working_dir="/srv", cpu_limit_millis=250, memory_limit_bytes=64 << 20,
                      mounts=(("data", "/data", False), ("data", "/ro", True)))
    assert podman.container_body(pod, c, "podid") == {
        "name": "web-srv",
        "image": IMAGE,
        "pod": "podid",
        "labels": {"app": "web", "io.beemesh.managed": "true", "io.beemesh.pod": "web",
                   "io.beemesh.container": "srv"},
        "stop_timeout": 2,
        "entrypoint": ["httpd"],
        "command": ["-f"],
        "env": {"A": "1"},
        "work_dir": "/srv",
        "resource_limits": {"cpu": {"period": 100_000, "quota": 25_000},
                            "memory": {"limit": 64 << 20}},
        "volumes": [{"Name": "web-data", "Dest": "/data", "Options": ["rw"]},
                    {"Name": "web-data", "Dest": "/ro", "Options": ["ro"]}],
    }
    # Nothing given: the image's entrypoint and cmd apply.
    bare = podman.container_body(pod, ContainerSpec("x", IMAGE), "podid")
    assert "entrypoint" not in bare and "command" not in bare


def test_observe_skips_infra_and_names_containers():
    pod = {"Id": "P", "Name": "web", "Status": "Degraded", "Labels": {"app": "web"}}
    ctrs = [
        {"Id": "I", "Pod": "P", "IsInfra": True, "Names": ["P-infra"], "State": "running"},
        {"Id": "A", "Pod": "P", "Names": ["web-srv"], "State": "exited", "ExitCode": 137,
         "StartedAt": 1700000000, "Image": IMAGE, "Labels": {"io.beemesh.container": "srv"}},
        {"Id": "B", "Pod": "P", "Names": ["web-side"], "State": "created", "ExitCode": 0,
         "StartedAt": 0, "Image": IMAGE, "Labels": {}},
        {"Id": "C", "Pod": "Q", "Names": ["other-x"], "State": "running"},
    ]
    obs = podman.observe(pod, ctrs)
    assert (obs.name, obs.state, obs.labels) == ("web", "degraded", {"app": "web"})
    assert [(c.name, c.state, c.exit_code, c.started_at) for c in obs.containers] == [
        ("srv", "exited", 137, 1700000000.0), ("side", "created", None, None)]


def test_parse_log_frame():
    e = podman.parse_log_frame(2, b"2026-11-26T04:24:02Z GET / 200\n", "web")
    assert (e.container, e.stream, e.line) == ("web", "stderr", "GET / 200")
    assert e.timestamp_usec == 1795667042_000_000
    e = podman.parse_log_frame(1, b"2026-11-26T04:24:02.123456789+00:00 x y\n", "web")
    assert (e.stream, e.line, e.timestamp_usec) == ("stdout", "x y", 1795667042_123456)
    e = podman.parse_log_frame(1, b"no timestamp here\n", "web")
    assert (e.line, e.timestamp_usec) == ("no timestamp here", 0)


def test_socket_path():
    assert podman.socket_path("unix:///run/user/1/podman/podman.sock") == "/run/user/1/podman/podman.sock"
    assert podman.socket_path("tcp://127.0.0.1:8080") is None


def test_read_frames():
    def frame(kind: int, data: bytes) -> bytes:
        return struct.pack(">BxxxL", kind, len(data)) + data

    raw = io.BytesIO(frame(1, b"out\n") + frame(2, b"err\n") + frame(1, b"") + b"\x01\x00")
    assert list(podman.read_frames(raw)) == [(1, b"out\n"), (2, b"err\n"), (1, b"")]
