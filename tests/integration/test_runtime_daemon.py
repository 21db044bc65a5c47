"""Workloads on real rootless Podman, driven through beemeshd with the real varlinkctl."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest

from tests.conftest import IMAGE
from tests.integration.daemons import PodmanNode, free_port, labelled_pods, wait_for


def web(name="web", replicas=1, port=None, kind="Deployment", probe=True, extra_container=None):
    c = {"name": "httpd", "image": IMAGE, "command": ["httpd", "-f", "-v", "-p", "8080", "-h", "/var/www"],
         "ports": [{"containerPort": 8080, "hostPort": port or free_port()}]}
    if probe:
        c["readinessProbe"] = {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1}
    containers = [c] + ([extra_container] if extra_container else [])
    spec = {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": containers}}}
    return {"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": name}, "spec": spec}


def test_deploy_serves_http_with_slirp4netns_and_delete_leaves_nothing(node):
    port = free_port()
    r = node.call("Deploy", {"manifest": web(replicas=2, port=port), "wait": True, "timeoutSeconds": 60})
    assert r.rc == 0, r.err
    w = r.json["workloads"][0]
    assert (w["generation"], w["readyReplicas"]) == (1, 2)
    assert node.call("GetInfo").json["info"]["runtime"]["network"] == "slirp4netns"
    hosts = sorted(p["hostIP"] for p in w["ports"])
    assert hosts == ["127.0.0.1", "127.0.0.2"]  # two local replicas, one loopback address each
    for host in hosts:
        assert node.http(host, port) == "hello from beemesh busybox\n"
    pods = labelled_pods(node)
    assert sorted(p["Name"] for p in pods) == ["web-0.default", "web-1.default"]
    assert all(p["Labels"]["io.beemesh.workload"] == "web" for p in pods)

    r = node.call("Delete", {"name": "web", "wait": True, "timeoutSeconds": 60})
    assert r.rc == 0, r.err
    assert labelled_pods(node) == []
    assert node.podman("ps", "-aq").stdout.strip() == ""
    assert node.podman("volume", "ls", "-q").stdout.strip() == ""
    assert node.http("127.0.0.1", port) is None
    r = node.call("Get", {"name": "web"})
    assert r.error == "io.beemesh.Mesh.WorkloadNotFound"


def test_killed_container_is_restarted(node):
    port = free_port()
    assert node.call("Deploy", {"manifest": web(port=port), "wait": True}).rc == 0
    p = node.podman("kill", "web-0.default-httpd")
    assert p.returncode == 0, p.stderr

    def restarted():
        w = node.call("Get", {"name": "web"}).json["workload"]
        rep = w["replicaStatus"][0]
        return rep["restarts"] >= 1 and rep["ready"] and w

    wait_for(restarted, what="restart")
    assert node.http("127.0.0.1", port) == "hello from beemesh busybox\n"


def test_kill9_daemon_readopts_without_duplicates(node, user):
    port = free_port()
    assert node.call("Deploy", {"manifest": web(replicas=2, port=port), "wait": True}).rc == 0
    before = {p["Name"]: p["Id"] for p in labelled_pods(node)}
    node.stop(signal.SIGKILL)
    again = PodmanNode(user, node.home, node.extra_config).start()
    try:
        w = wait_for(lambda: (x := again.call("Get", {"name": "web"}).json["workload"])["readyReplicas"] == 2 and x,
                     what="re-adoption")
        after = {p["Name"]: p["Id"] for p in labelled_pods(node)}
        assert after == before  # same pods: adopted, none recreated, none duplicated
        assert {r["podId"] for r in w["replicaStatus"]} == set(before.values())
        time.sleep(2)  # a few more passes change nothing
        assert {p["Name"]: p["Id"] for p in labelled_pods(node)} == before
    finally:
        node.proc = again.proc


@pytest.mark.parametrize("manifest, field", [
    ({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "bad"},
      "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {"metadata": {"labels": {"a": "b"}},
               "spec": {"containers": [{"name": "c", "image": IMAGE, "foo": 1}]}}}},
     "spec.template.spec.containers[0].foo"),
    ({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "Bad_Name"},
      "spec": {"containers": [{"name": "c", "image": IMAGE}]}}, "metadata.name"),
    ({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
      "spec": {"containers": [{"name": "c", "image": IMAGE}], "volumes": [{"name": "h", "hostPath": {"path": "/"}}]}},
     "spec.volumes[0].hostPath"),
])
def test_bad_manifests_are_refused_and_create_nothing(node, manifest, field):
    r = node.call("Deploy", {"manifest": manifest})
    assert r.error == "io.beemesh.Mesh.InvalidManifest", r.err
    assert r.json["field"] == field
    assert node.call("List").json["workloads"] == []
    assert labelled_pods(node) == []


def test_yaml_syntax_error_is_invalid_manifest(node):
    r = node.call("Deploy", {"yaml": "kind: Pod\nmetadata: [unclosed\n"})
    assert r.error == "io.beemesh.Mesh.InvalidManifest"
    assert "line" in r.json["reason"]


def test_runtime_outage_is_reported_and_pods_survive(user, user_tmp, varlinkctl):
    node = PodmanNode(user, user_tmp).prepare()
    sock = node.store / "podman.sock"
    # The Podman API service is started outside beemeshd, so it is not beemeshd's to restart.
    service = user.popen(["podman", *node.podman_args(), "system", "service", "--time=0", f"unix://{sock}"])
    try:
        wait_for(lambda: sock.exists(), what="podman service socket")
        node.start()
        wait_for(lambda: node.call("GetInfo").json["info"]["runtime"]["available"], what="runtime")
        assert node.call("GetInfo").json["info"]["runtime"]["startedByBeemesh"] is False
        port = free_port()
        assert node.call("Deploy", {"manifest": web(port=port), "wait": True}).rc == 0
        pod_id = labelled_pods(node)[0]["Id"]
        service.terminate()
        service.wait(10)
        r = wait_for(lambda: (x := node.call("Deploy", {"manifest": web("other")})).rc and x, what="outage noticed")
        assert r.error == "io.beemesh.Mesh.RuntimeUnavailable"
        assert r.json["endpoint"] == f"unix://{sock}"
        assert node.call("Get", {"name": "other"}).error == "io.beemesh.Mesh.WorkloadNotFound"  # nothing stored
        assert node.http("127.0.0.1", port) == "hello from beemesh busybox\n"  # the pod keeps serving
        assert node.call("GetInfo").json["info"]["runtime"]["available"] is False
        service = user.popen(["podman", *node.podman_args(), "system", "service", "--time=0", f"unix://{sock}"])
        wait_for(lambda: node.call("Deploy", {"manifest": web("other", probe=False)}).rc == 0, what="recovery")
        assert labelled_pods(node) and pod_id in {p["Id"] for p in labelled_pods(node)}  # untouched
    finally:
        node.stop()
        service.terminate()
        service.wait(10)
        node.cleanup()


def test_statefulset_ordered_names_and_order(node):
    watch = subprocess.Popen([str(node.address and __import__("tests.conftest", fromlist=["VARLINKCTL"]).VARLINKCTL),
                              "call", "--more", node.address, "io.beemesh.Mesh.Watch", '{"peers": false}'],
                             stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)  # let the Watch subscribe before the Deploy
    try:
        r = node.call("Deploy", {"manifest": web("db", replicas=3, kind="StatefulSet"), "wait": True,
                                 "timeoutSeconds": 60})
        assert r.rc == 0, r.err
        w = r.json["workloads"][0]
        assert [x["name"] for x in w["replicaStatus"]] == ["db-0", "db-1", "db-2"]
    finally:
        watch.terminate()
        out, _ = watch.communicate(10)
    events = [json.loads(line)["event"] for line in out.splitlines() if line.strip()]
    order = [(e["type"], e.get("replica")) for e in events if e["type"] in ("ReplicaRunning", "ReplicaReady")]
    # OrderedReady: db-1 only starts once db-0 is ready, db-2 once db-1 is
    assert order.index(("ReplicaReady", "db-0")) < order.index(("ReplicaRunning", "db-1"))
    assert order.index(("ReplicaReady", "db-1")) < order.index(("ReplicaRunning", "db-2"))
    assert events[0]["type"] == "Added"


def test_scale_logs_and_list(node):
    port = free_port()
    assert node.call("Deploy", {"manifest": web(port=port), "wait": True}).rc == 0
    r = node.call("Scale", {"name": "web", "replicas": 3, "wait": True, "timeoutSeconds": 60})
    assert r.rc == 0, r.err
    assert (r.json["workload"]["generation"], r.json["workload"]["readyReplicas"]) == (2, 3)
    assert node.http("127.0.0.3", port) == "hello from beemesh busybox\n"
    r = node.call("Logs", {"name": "web", "replica": "web-2"}, "--more")
    assert r.rc == 0, r.err
    lines = [x["line"] for x in r.lines if "line" in x]
    assert lines and all(x["replica"] == "web-2" and x["container"] == "httpd" for x in lines)
    assert any("response:200" in x["line"] for x in lines)  # httpd -v logged the probe's requests
    r = node.call("List", {}, "--more")
    assert [x["workload"]["name"] for x in r.lines] == ["web"]
    r = node.call("Scale", {"name": "web", "replicas": 1, "wait": True})
    assert r.rc == 0 and len(labelled_pods(node)) == 1
    r = node.call("Logs", {"name": "web", "replica": "web-9"})
    assert r.error == "org.varlink.service.InvalidParameter" and r.json == {"parameter": "replica"}


def test_deploy_wait_times_out_with_detail(node):
    never_ready = web("slow", probe=False)
    never_ready["spec"]["template"]["spec"]["containers"][0]["readinessProbe"] = {
        "exec": {"command": ["false"]}, "periodSeconds": 1}
    r = node.call("Deploy", {"manifest": never_ready, "wait": True, "timeoutSeconds": 3})
    assert r.error == "io.beemesh.Mesh.Timeout"
    assert r.json["operation"] == "Deploy wait" and "0 of 1 replicas ready" in r.json["detail"]
    # what was done stays done: the workload exists and its pod runs
    assert node.call("Get", {"name": "slow"}).json["workload"]["replicaStatus"][0]["state"] == "running"


def test_liveness_failure_restarts_the_container(node):
    m = web("live", probe=False)
    c = m["spec"]["template"]["spec"]["containers"][0]
    c["command"] = ["sh", "-c", "touch /tmp/alive && exec httpd -f -p 8080 -h /var/www"]
    c["livenessProbe"] = {"exec": {"command": ["test", "-f", "/tmp/alive"]}, "periodSeconds": 1,
                          "failureThreshold": 2}
    assert node.call("Deploy", {"manifest": m, "wait": True}).rc == 0
    assert node.podman("exec", "live-0.default-httpd", "rm", "/tmp/alive").returncode == 0
    rep = wait_for(lambda: (x := node.call("Get", {"name": "live"}).json["workload"]["replicaStatus"][0])["restarts"] >= 1
                   and x["ready"] and x, what="liveness restart")
    assert rep["containers"][0]["restarts"] == 1
    # the restarted container recreated its file: it stays alive, no further restarts
    time.sleep(3)
    assert node.call("Get", {"name": "live"}).json["workload"]["replicaStatus"][0]["restarts"] == 1


def test_logs_follow_streams_new_lines(node):
    from tests.conftest import VARLINKCTL

    port = free_port()
    assert node.call("Deploy", {"manifest": web(port=port, probe=False), "wait": True}).rc == 0
    p = subprocess.Popen([str(VARLINKCTL), "call", "--more", node.address, "io.beemesh.Mesh.Logs",
                          json.dumps({"name": "web", "follow": True, "tail": 0})], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1)
        for _ in range(3):
            assert node.http("127.0.0.1", port)
        line = p.stdout.readline()
        assert line, p.stderr.read() if p.poll() is not None else "no line"
        assert "response:200" in json.loads(line.strip())["line"]["line"]  # --more output is JSON-SEQ (\x1e)
    finally:
        p.terminate()
        p.wait(10)


def test_started_from_a_directory_the_user_cannot_enter(user, user_tmp, varlinkctl, tmp_path):
    """beemeshd starts the Podman API service itself; that must not inherit an unreadable cwd
    (make demo runs from a clone under /root, mode 0700)."""
    import os

    node = PodmanNode(user, user_tmp).prepare()
    conf = node.home / "beemeshd.toml"
    conf.write_text(node.config_text())
    os.chown(conf, user.uid, user.gid)
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o700)  # root's: the test user cannot enter it
    from tests.conftest import VENV

    node.proc = subprocess.Popen(user.argv([str(VENV / "bin" / "beemeshd"), "--config", str(conf)]),
                                 env=user.env(), cwd=locked, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: node.socket_path.exists(), what="socket")
        wait_for(lambda: node.call("GetInfo").rc == 0
                 and node.call("GetInfo").json["info"]["runtime"]["available"], what="runtime available")
        assert node.call("GetInfo").json["info"]["runtime"]["startedByBeemesh"] is True
    finally:
        node.stop()
        node.cleanup()
