"""The pure reconcile core: desired vs observed -> actions, status and back-off."""

from __future__ import annotations

from dataclasses import replace

import pytest

from beemeshd.core import reconcile as rc
from beemeshd.core import render
from beemeshd.core.manifest import parse_manifest
from beemeshd.runtime.base import ObservedContainer, ObservedPod

IMAGE = "localhost/beemesh-busybox:latest"


def deployment(name="web", replicas=2, restart="Always", args=("httpd", "-f"), probe=None, kind="Deployment",
               policy=None):
    container = {"name": "app", "image": IMAGE, "args": list(args), "ports": [{"containerPort": 8080, "hostPort": 18080}]}
    if probe:
        container["readinessProbe"] = probe
    spec = {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                         "spec": {"containers": [container], "restartPolicy": restart}}}
    if policy:
        spec["podManagementPolicy"] = policy
    return parse_manifest({"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": name}, "spec": spec})


def pod_for(d: rc.Desired, state="running", exit_code=None, template_hash=None) -> ObservedPod:
    labels = dict(d.spec.labels)
    if template_hash:
        labels[render.TEMPLATE_HASH] = template_hash
    return ObservedPod(d.pod, f"id-{d.pod}", labels, state,
                       [ObservedContainer(c.name, f"c-{d.pod}-{c.name}", c.image, state, exit_code)
                        for c in d.spec.containers])


def desired(*workloads, generation=1):
    return rc.desired_pods([(w, generation) for w in workloads], "127.0.0.1")


def test_render_names_labels_and_loopback_spread():
    d = desired(deployment(replicas=3))
    assert sorted(d) == ["web-0.default", "web-1.default", "web-2.default"]
    labels = dict(d["web-1.default"].spec.labels)
    assert labels["io.beemesh.managed"] == "true"
    assert (labels[render.WORKLOAD], labels[render.REPLICA], labels[render.ORDINAL]) == ("web", "web-1", "1")
    # each local replica publishes hostPort 18080 on its own loopback address
    assert [d[f"web-{i}.default"].spec.ports[0].host_ip for i in range(3)] == ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
    assert render.publish_ip("192.0.2.10", 2) == "192.0.2.10"  # not loopback: no spreading


def test_template_hash_ignores_replicas_but_not_the_template():
    a, b = deployment(replicas=1), deployment(replicas=5)
    assert render.template_hash(a) == render.template_hash(b)
    assert render.template_hash(a) != render.template_hash(deployment(args=("sleep", "9")))


def test_missing_pods_are_created_and_present_ones_adopted():
    d = desired(deployment(replicas=2))
    observed = {"web-0.default": pod_for(d["web-0.default"])}
    actions = rc.plan(d, observed, {}, now=0)
    assert actions == [rc.Create(d["web-1.default"])]


def test_creating_or_backed_off_replicas_are_not_created_twice():
    d = desired(deployment(replicas=2))
    memory = {"web-0.default": rc.ReplicaMemory(creating=True), "web-1.default": rc.ReplicaMemory(not_before=10)}
    assert rc.plan(d, {}, memory, now=5) == []
    assert rc.plan(d, {}, memory, now=10) == [rc.Create(d["web-1.default"])]


def test_unwanted_pods_are_removed_statefulset_highest_first_one_at_a_time():
    old = desired(deployment(replicas=3, kind="StatefulSet"))
    observed = {n: pod_for(x) for n, x in old.items()}
    new = desired(deployment(replicas=1, kind="StatefulSet"))
    memory = {}
    actions = rc.plan(new, observed, memory, now=0)
    assert actions == [rc.Remove("web-2.default", "no longer desired")]
    parallel = desired(deployment(replicas=1, kind="StatefulSet", policy="Parallel"))
    removed = {a.pod for a in rc.plan(parallel, observed, {}, now=0)}
    assert removed == {"web-1.default", "web-2.default"}


def test_orderedready_waits_for_previous_ordinal():
    d = desired(deployment(replicas=3, kind="StatefulSet"))
    actions = rc.plan(d, {}, {}, now=0)
    assert actions == [rc.Create(d["web-0.default"])]  # web-1 waits for web-0
    observed = {"web-0.default": pod_for(d["web-0.default"])}
    actions = rc.plan(d, observed, {}, now=0)
    assert actions == [rc.Create(d["web-1.default"])]


@pytest.mark.parametrize("policy, code, restarts", [
    ("Always", 0, True), ("Always", 1, True), ("OnFailure", 1, True), ("OnFailure", 0, False), ("Never", 1, False)])
def test_restart_policy(policy, code, restarts):
    w = parse_manifest({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
                        "spec": {"restartPolicy": policy, "containers": [{"name": "app", "image": IMAGE}]}})
    d = desired(w)
    observed = {"p.default": pod_for(d["p.default"], state="exited", exit_code=code)}
    actions = rc.plan(d, observed, {}, now=0)
    assert actions == ([rc.Restart("p.default", "app", f"exited with code {code}")] if restarts else [])
    state, ready, _ = rc.status(d["p.default"], observed["p.default"], rc.ReplicaMemory(), now=0)
    expected = "succeeded" if (code == 0 and policy != "Always") else "failed"
    assert (state, ready) == (expected, False)


def test_exponential_backoff_and_reset():
    b = rc.Backoff(base=1, cap=8, reset_after=30)
    m = rc.ReplicaMemory()
    delays = []
    for t in range(6):
        rc.after_restart(m, "app", now=100.0, backoff=b)
        delays.append(m.not_before - 100.0)
    assert delays == [1, 2, 4, 8, 8, 8]
    assert m.restarts == 6 and m.container_restarts == {"app": 6}
    d = desired(deployment(replicas=1))["web-0.default"]
    pod = pod_for(d)
    rc.observe(m, pod, now=200, backoff=b)
    rc.observe(m, pod, now=229, backoff=b)
    assert m.backoff == 8
    rc.observe(m, pod, now=230, backoff=b)
    assert m.backoff == 0  # ran 30 s: the next failure restarts at once


def test_exited_container_waits_out_backoff():
    d = desired(deployment(replicas=1))
    observed = {"web-0.default": pod_for(d["web-0.default"], state="exited", exit_code=1)}
    memory = {"web-0.default": rc.ReplicaMemory(not_before=50)}
    assert rc.plan(d, observed, memory, now=49) == []
    state, _, message = rc.status(d["web-0.default"], observed["web-0.default"], memory["web-0.default"], now=49)
    assert state == "failed" and "back-off" in message
    assert len(rc.plan(d, observed, memory, now=50)) == 1


def test_readiness_and_liveness_probes():
    probe = {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 2, "failureThreshold": 2}
    w = deployment(replicas=1, probe=probe)
    w = replace(w, template=replace(w.template, containers=(replace(
        w.template.containers[0], liveness_probe=w.template.containers[0].readiness_probe),)))
    d = desired(w)["web-0.default"]
    pod = pod_for(d)
    m = rc.ReplicaMemory()
    assert rc.status(d, pod, m, 0)[0] == "running"  # no readiness verdict yet
    p = w.template.containers[0].readiness_probe
    rc.observe(m, pod, now=0, backoff=rc.Backoff())
    assert rc.probe_due(m, "app", "readiness", p, m.running_since, now=0)
    assert rc.record_probe(m, "app", "readiness", p, True, now=0)
    assert not rc.probe_due(m, "app", "readiness", p, m.running_since, now=1)
    assert rc.status(d, pod, m, 0)[:2] == ("ready", True)
    # liveness: one failure is tolerated, the second (failureThreshold 2) restarts
    rc.record_probe(m, "app", "liveness", p, False, now=2)
    assert rc.plan({d.pod: d}, {d.pod: pod}, {d.pod: m}, now=2) == []
    rc.record_probe(m, "app", "liveness", p, False, now=4)
    assert rc.plan({d.pod: d}, {d.pod: pod}, {d.pod: m}, now=4) == [rc.Restart(d.pod, "app", "liveness probe failed")]


def test_template_change_rolls_one_replica_at_a_time():
    old = desired(deployment(replicas=3))
    new = desired(deployment(replicas=3, args=("httpd", "-f", "-v")), generation=2)
    observed = {n: pod_for(x) for n, x in old.items()}
    actions = rc.plan(new, observed, {}, now=0)
    assert actions == [rc.Remove("web-2.default", "template changed (rolling update)")]
    del observed["web-2.default"]
    actions = rc.plan(new, observed, {}, now=0)
    assert actions == [rc.Create(new["web-2.default"])]  # and no further removal until it is ready


def test_pod_with_missing_container_is_replaced():
    d = desired(deployment(replicas=1))
    pod = pod_for(d["web-0.default"])
    pod.containers.clear()
    assert rc.plan(d, {"web-0.default": pod}, {}, now=0) == [rc.Remove("web-0.default", "container app is missing")]
