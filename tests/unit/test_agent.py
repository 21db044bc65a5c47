"""The agent loop + workload operations over the in-memory FakeRuntime, in virtual time."""

from __future__ import annotations

import pytest
import trio

from beemeshd import errors
from beemeshd.agent import Agent
from beemeshd.core.reconcile import Backoff
from beemeshd.events import EventBus
from beemeshd.runtime.fake import FakeRuntime
from beemeshd.store import Store
from beemeshd.workloads import Workloads

IMAGE = "localhost/beemesh-busybox:latest"


def manifest(name="web", replicas=2, probe=True, kind="Deployment", restart="Always"):
    c = {"name": "app", "image": IMAGE, "ports": [{"containerPort": 8080}]}
    if probe:
        c["readinessProbe"] = {"exec": {"command": ["true"]}, "periodSeconds": 1}
    spec = {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [c], "restartPolicy": restart}}}
    return {"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": name}, "spec": spec}


class Env:
    def __init__(self, tmp_path, nursery, runtime=None):
        self.runtime = runtime or FakeRuntime(now=trio.current_time)
        self.store = Store(tmp_path)
        self.store.load()
        self.events = EventBus()
        self.agent = Agent(self.runtime, self.store, self.events, backoff=Backoff(1, 8, 30), interval=0.5)
        self.w = Workloads(self.store, self.agent, self.runtime, self.events, "12D3KooWself")
        self.nursery = nursery

    async def start(self):
        await self.nursery.start(self.agent.run)
        return self

    async def deploy(self, m, **kw):
        kw.setdefault("wait", True)
        return await self.w.deploy(manifest=m, yaml=None, namespace=None, timeout=kw.pop("timeout", 30),
                                   dry_run=False, **kw)


@pytest.fixture
async def env(tmp_path, nursery, autojump_clock):
    return await Env(tmp_path, nursery).start()


async def test_deploy_wait_creates_and_becomes_ready(env, autojump_clock):
    [w] = await env.deploy(manifest(replicas=3))
    assert w["readyReplicas"] == 3 and w["generation"] == 1
    assert env.runtime.pod_names() == ["web-0.default", "web-1.default", "web-2.default"]
    assert [r["state"] for r in w["replicaStatus"]] == ["ready"] * 3
    # applying the same manifest again changes nothing
    [again] = await env.deploy(manifest(replicas=3))
    assert again["generation"] == 1
    assert sum(1 for c in env.runtime.calls if c[0] == "create_pod") == 3


async def test_failing_readiness_times_out_with_detail(env, autojump_clock):
    m = manifest(replicas=1)
    m["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["initialDelaySeconds"] = 5
    await env.deploy(m, wait=False)
    while "web-0.default" not in env.runtime.pod_names():
        await trio.sleep(0.1)
    env.runtime.set_exec_result("web-0.default", "app", 1)  # the probe command fails from now on
    with pytest.raises(errors.Timeout) as exc:
        await env.w.wait_ready([("default", "Deployment", "web")], 20, "Deploy wait")
    assert exc.value.operation == "Deploy wait" and "0 of 1 replicas ready" in exc.value.detail
    assert env.w.get("web", None, None)["replicaStatus"][0]["state"] == "running"


async def test_restart_with_exponential_backoff(env, autojump_clock):
    await env.deploy(manifest(replicas=1, probe=False))
    restarts_at = []
    for _ in range(4):
        env.runtime.kill_container("web-0.default", "app", exit_code=1)
        t0 = trio.current_time()
        while env.runtime._pods["web-0.default"].containers["app"].observed.state != "running":
            await trio.sleep(0.05)
        restarts_at.append(round(trio.current_time() - t0))
    # first restart at the next pass, then waits of 1, 2, 4 s (base 1 s) before each restart
    assert restarts_at[1:] == [1, 2, 4]
    rep = env.w.get("web", None, None)["replicaStatus"][0]
    assert rep["restarts"] == 4


async def test_runtime_outage_changes_nothing_and_recovers(env, autojump_clock):
    await env.deploy(manifest(replicas=2))
    creates = sum(1 for c in env.runtime.calls if c[0] == "create_pod")
    env.runtime.set_available(False)
    await trio.sleep(3)
    with pytest.raises(errors.RuntimeUnavailable):
        await env.deploy(manifest("other"))
    assert "other" not in {r.workload.name for r in env.store.list()}
    env.runtime.set_available(True)
    await trio.sleep(2)
    assert env.runtime.pod_names() == ["web-0.default", "web-1.default"]
    assert sum(1 for c in env.runtime.calls if c[0] in ("create_pod", "remove_pod")) == creates


async def test_create_failure_is_retried_with_backoff(env, autojump_clock):
    env.runtime.fail_next_create("port 8080 already in use")
    [w] = await env.deploy(manifest(replicas=1, probe=False), wait=False)
    await trio.sleep(0.6)
    rep = env.w.get("web", None, None)["replicaStatus"][0]
    assert rep["state"] == "failed" and "already in use" in rep["message"]
    await trio.sleep(2)
    rep = env.w.get("web", None, None)["replicaStatus"][0]
    assert rep["state"] == "ready"


async def test_a_new_agent_adopts_running_pods(tmp_path, nursery, autojump_clock):
    first = await Env(tmp_path, nursery).start()
    await first.deploy(manifest(replicas=2))
    first.store.save()
    # a "restarted daemon": same runtime (pods keep running), state loaded from disk
    second = await Env(tmp_path, nursery, runtime=first.runtime).start()
    first.agent.interval = 1e9  # the old loop goes quiet
    await trio.sleep(3)
    assert sum(1 for c in second.runtime.calls if c[0] == "create_pod") == 2  # only the first agent's
    assert second.w.get("web", None, None)["readyReplicas"] == 2


async def test_delete_wait_and_scale_down(env, autojump_clock):
    await env.deploy(manifest(replicas=3))
    w = await env.w.scale("web", None, 1, True, 10)
    assert w["readyReplicas"] == 1 and env.runtime.pod_names() == ["web-0.default"]
    await env.w.delete("web", None, None, True, 10)
    assert env.runtime.pod_names() == []
    with pytest.raises(errors.WorkloadNotFound):
        env.w.get("web", None, None)


async def test_watch_sees_lifecycle_events(env, autojump_clock):
    events = env.events.subscribe()
    await env.deploy(manifest(replicas=1))
    seen = []
    with trio.move_on_after(1):
        async for item in events:
            seen.append((item["event"]["type"], item["event"].get("replica")))
    assert seen[0] == ("Added", None)
    assert ("ReplicaReady", "web-0") in seen


class SlowListRuntime(FakeRuntime):
    """Once a pod is created, listing pods hangs (a Podman that is slow to list)."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.hold = False

    async def list_pods(self, labels=None):
        if self.hold:
            await trio.sleep_forever()
        return await super().list_pods(labels)

    async def create_pod(self, spec):
        pod = await super().create_pod(spec)
        self.hold = True
        return pod


async def test_deploy_wait_is_answered_from_the_created_pod_without_listing_again(tmp_path, nursery, autojump_clock):
    env = await Env(tmp_path, nursery, SlowListRuntime(now=trio.current_time)).start()
    [w] = await env.deploy(manifest(replicas=1, probe=False), timeout=5)
    assert w["readyReplicas"] == 1 and [r["state"] for r in w["replicaStatus"]] == ["ready"]
