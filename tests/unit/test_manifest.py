"""Manifest parsing: Kubernetes YAML/JSON/dicts -> beemeshd.model, and every way it says no."""

from __future__ import annotations

import copy
import json
import re

import pytest

from beemeshd.core.manifest import parse_manifest, parse_manifests
from beemeshd.errors import InvalidManifest
from beemeshd.model import (Container, PodTemplate, Port, Probe, Resources, ServicePort, Volume,
                            VolumeMount, Workload)

MI = 1024 * 1024

POD_YAML = """
apiVersion: v1
kind: Pod
metadata:
  name: cache.v2
  labels: {tier: backend, app: cache}
  annotations: {example.com/owner: "team a"}
spec:
  restartPolicy: OnFailure
  terminationGracePeriodSeconds: 5
  nodeSelector: {disk: ssd}
  volumes:
  - name: scratch
    emptyDir: {medium: Memory, sizeLimit: 512Ki}
  containers:
  - name: redis
    image: docker.io/library/redis:7
    command: [redis-server]
    args: ["--port", "6379"]
    workingDir: /data
    env:
    - {name: MODE, value: primary}
    - {name: EMPTY}
    ports:
    - {name: redis, containerPort: 6379, hostPort: 16379, hostIP: 127.0.0.1}
    - {containerPort: 9121, protocol: UDP}
    resources:
      requests: {cpu: 250m, memory: 64Mi}
      limits: {cpu: 1, memory: 1G}
    readinessProbe:
      tcpSocket: {port: redis}
    livenessProbe:
      exec: {command: [redis-cli, ping]}
      initialDelaySeconds: 5
      periodSeconds: 20
      failureThreshold: 6
    volumeMounts:
    - {name: scratch, mountPath: /scratch, readOnly: true}
  - name: sidecar
    image: quay.io/acme/exporter
    readinessProbe:
      httpGet: {path: /healthz, port: 8080}
"""


def deployment(**spec) -> dict:
    """A minimal valid Deployment; keyword arguments replace top-level spec fields."""
    obj = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "api"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "api"}},
            "template": {
                "metadata": {"labels": {"app": "api", "track": "stable"}},
                "spec": {"containers": [{"name": "api", "image": "ghcr.io/acme/api:1.0",
                                         "ports": [{"name": "http", "containerPort": 8080}]}]},
            },
        },
    }
    obj["spec"].update(spec)
    return obj


def statefulset() -> dict:
    obj = deployment(serviceName="web", podManagementPolicy="Parallel", replicas=3)
    obj["kind"], obj["metadata"]["name"] = "StatefulSet", "web"
    return obj


def pod() -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "solo"},
            "spec": {"containers": [{"name": "main", "image": "alpine:3"}]}}


def service() -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "api"},
            "spec": {"selector": {"app": "api"}, "ports": [{"port": 80, "targetPort": "http"}]}}


def edit(obj: dict, path: str, value) -> dict:
    """Set `path` (e.g. "spec.template.spec.containers[0].ports") in obj, creating mappings."""
    *parents, last = re.findall(r"[^.\[\]]+", path)
    target = obj
    for part in parents:
        target = target[int(part)] if part.isdigit() else target.setdefault(part, {})
    if last.isdigit():
        target[int(last)] = value
    else:
        target[last] = value
    return obj


def parse_error(source) -> InvalidManifest:
    with pytest.raises(InvalidManifest) as info:
        parse_manifests(source)
    return info.value


# ------------------------------------------------------------------------ kinds -> model


def test_pod_parses_to_the_full_model():
    [w] = parse_manifests(POD_YAML)
    redis = Container(
        name="redis", image="docker.io/library/redis:7", command=("redis-server",),
        args=("--port", "6379"), env=(("MODE", "primary"), ("EMPTY", "")),
        ports=(Port(6379, 16379, "TCP", "redis", "127.0.0.1"), Port(9121, None, "UDP", None, None)),
        resources=Resources(cpu_request_millis=250, memory_request_bytes=64 * MI,
                            cpu_limit_millis=1000, memory_limit_bytes=10**9),
        readiness_probe=Probe(kind="tcpSocket", port=6379),  # named port resolved
        liveness_probe=Probe(kind="exec", command=("redis-cli", "ping"), initial_delay_seconds=5,
                             period_seconds=20, failure_threshold=6),
        volume_mounts=(VolumeMount("scratch", "/scratch", True),), working_dir="/data",
        image_pull_policy="IfNotPresent")
    sidecar = Container(name="sidecar", image="quay.io/acme/exporter",
                        readiness_probe=Probe(kind="httpGet", path="/healthz", port=8080),
                        image_pull_policy="Always")  # untagged image: Kubernetes pulls always
    assert w == Workload(
        kind="Pod", api_version="v1", name="cache.v2", namespace="default",
        labels=(("app", "cache"), ("tier", "backend")),
        annotations=(("example.com/owner", "team a"),), replicas=1,
        template=PodTemplate(
            labels=(("app", "cache"), ("tier", "backend")),
            annotations=(("example.com/owner", "team a"),), containers=(redis, sidecar),
            restart_policy="OnFailure", volumes=(Volume("scratch", "emptyDir", "Memory", 512 * 1024),),
            node_selector=(("disk", "ssd"),), termination_grace_period_seconds=5))
    assert w.key == ("default", "Pod", "cache.v2")
    assert w.replica_names() == ("cache.v2",)
    assert not w.is_stateful
    assert w.template.requests() == (250, 64 * MI)  # sidecar has no requests: counts 0
    assert w.manifest["metadata"]["name"] == "cache.v2"


def test_probe_defaults_are_the_kubernetes_ones():
    [w] = parse_manifests(POD_YAML)
    probe = w.template.containers[1].readiness_probe
    assert (probe.scheme, probe.initial_delay_seconds, probe.period_seconds, probe.timeout_seconds,
            probe.success_threshold, probe.failure_threshold) == ("HTTP", 0, 10, 1, 1, 3)
    obj = edit(pod(), "spec.containers[0].readinessProbe", {"httpGet": {"port": 80}})
    assert parse_manifest(obj).template.containers[0].readiness_probe.path == "/"


def test_deployment_parses_with_stable_slot_names():
    w = parse_manifest(deployment(strategy={"type": "RollingUpdate",
                                            "rollingUpdate": {"maxSurge": 1, "maxUnavailable": "50%"}},
                                  minReadySeconds=5, revisionHistoryLimit=3, progressDeadlineSeconds=60))
    assert (w.kind, w.api_version, w.name, w.namespace) == ("Deployment", "apps/v1", "api", "default")
    assert w.replicas == 2
    assert w.selector == (("app", "api"),)
    assert w.template.labels == (("app", "api"), ("track", "stable"))
    assert w.template.restart_policy == "Always"
    assert w.replica_names() == ("api-0", "api-1")
    assert w.pod_management_policy == "" and not w.is_stateful and w.template is not None
    assert w.service_ports == () and w.service_type == ""


def test_statefulset_parses():
    w = parse_manifest(statefulset())
    assert w.is_stateful
    assert w.key == ("default", "StatefulSet", "web")
    assert w.replica_names() == ("web-0", "web-1", "web-2")
    assert w.pod_management_policy == "Parallel"
    obj = statefulset()
    del obj["spec"]["podManagementPolicy"]
    assert parse_manifest(obj).pod_management_policy == "OrderedReady"


def test_replicas_default_to_one_and_zero_is_allowed():
    obj = deployment()
    del obj["spec"]["replicas"]
    assert parse_manifest(obj).replicas == 1
    assert parse_manifest(deployment(replicas=0)).replica_names() == ()


def test_service_parses():
    obj = service()
    obj["spec"].update(type="NodePort", ports=[
        {"name": "http", "port": 80, "targetPort": "http", "nodePort": 30080},
        {"name": "dns", "port": 53, "protocol": "UDP"}])
    w = parse_manifest(obj)
    assert (w.kind, w.replicas, w.template, w.service_type) == ("Service", 0, None, "NodePort")
    assert w.selector == (("app", "api"),)
    assert w.service_ports == (ServicePort("http", 80, "http", "TCP", 30080),
                               ServicePort("dns", 53, 53, "UDP", None))  # targetPort defaults to port
    assert w.replica_names() == ()
    assert parse_manifest(service()).service_type == "ClusterIP"


@pytest.mark.parametrize("cpu, millis", [
    ("500m", 500), ("1", 1000), ("0.5", 500), (2, 2000), (0.25, 250), ("1.5", 1500), ("2k", 2_000_000),
    ("0.0001", 1),  # rounded up, as in Kubernetes
])
def test_cpu_quantities(cpu, millis):
    obj = edit(pod(), "spec.containers[0].resources", {"requests": {"cpu": cpu}})
    assert parse_manifest(obj).template.containers[0].resources.cpu_request_millis == millis


@pytest.mark.parametrize("memory, size", [
    ("128Mi", 128 * MI), ("1Gi", 1024 * MI), ("1G", 10**9), ("100M", 10**8), ("1000", 1000),
    ("1e3", 1000), ("1E3", 1000), ("512Ki", 524288), (1024, 1024), ("1.5Gi", 1536 * MI), ("2k", 2000),
])
def test_memory_quantities(memory, size):
    obj = edit(pod(), "spec.containers[0].resources", {"limits": {"memory": memory}})
    resources = parse_manifest(obj).template.containers[0].resources
    assert resources.memory_limit_bytes == size
    assert resources.memory_request_bytes == size  # a missing request defaults to the limit


def test_requests_sum_over_containers():
    obj = pod()
    obj["spec"]["containers"] = [
        {"name": "a", "image": "x:1", "resources": {"requests": {"cpu": "100m", "memory": "1Mi"}}},
        {"name": "b", "image": "x:1", "resources": {"limits": {"cpu": "1"}}},
        {"name": "c", "image": "x:1"}]
    assert parse_manifest(obj).template.requests() == (1100, MI)


@pytest.mark.parametrize("image, policy", [
    ("nginx", "Always"), ("nginx:latest", "Always"), ("nginx:1.25", "IfNotPresent"),
    ("localhost:5000/nginx", "Always"), ("nginx@sha256:" + "a" * 64, "IfNotPresent"),
])
def test_default_image_pull_policy(image, policy):
    obj = edit(pod(), "spec.containers[0].image", image)
    assert parse_manifest(obj).template.containers[0].image_pull_policy == policy


def test_namespace_and_kubectl_server_fields():
    obj = deployment()
    obj["metadata"].update(namespace="prod", uid="1234", resourceVersion="9", generation=3,
                           creationTimestamp="2024-01-01T00:00:00Z", managedFields=[{"manager": "kubectl"}])
    obj["spec"]["template"]["metadata"]["creationTimestamp"] = None
    obj["status"] = {}
    w = parse_manifest(obj)
    assert w.key == ("prod", "Deployment", "api")


def test_equal_manifests_give_equal_hashable_workloads():
    a = parse_manifest(deployment())
    reordered = json.loads(json.dumps(deployment(), sort_keys=True))
    reordered["spec"]["template"]["metadata"]["labels"] = {"track": "stable", "app": "api"}
    b = parse_manifest(reordered)
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert a != parse_manifest(deployment(replicas=3))


def test_manifest_is_a_copy_of_the_input():
    obj = deployment()
    [w] = parse_manifests(obj)
    obj["spec"]["replicas"] = 7
    assert w.manifest == deployment() and w.replicas == 2


# -------------------------------------------------------------------------------- inputs


def test_multi_document_yaml_skips_empty_documents():
    text = "---\n" + POD_YAML + "\n---\n# only a comment\n---\n" + json.dumps(service()) + "\n---\n"
    assert [(w.kind, w.name) for w in parse_manifests(text)] == [("Pod", "cache.v2"), ("Service", "api")]


def test_json_text_with_tabs():
    text = json.dumps(deployment(), indent="\t")
    [w] = parse_manifests(text)
    assert w.name == "api" and w.manifest == deployment()


def test_dict_and_list_inputs():
    assert [w.name for w in parse_manifests(pod())] == ["solo"]
    kinds = [w.kind for w in parse_manifests([pod(), deployment(), service()])]
    assert kinds == ["Pod", "Deployment", "Service"]


@pytest.mark.parametrize("as_text", [False, True])
def test_kind_list(as_text):
    source = {"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""},
              "items": [deployment(), service()]}
    source = json.dumps(source) if as_text else source
    assert [w.kind for w in parse_manifests(source)] == ["Deployment", "Service"]


# ------------------------------------------------------------------------ object errors

D, S, P, SVC = deployment, statefulset, pod, service
C0 = "spec.template.spec.containers[0]"


def dup_containers(obj):
    containers = obj["spec"]["template"]["spec"]["containers"]
    containers.append(dict(containers[0], ports=[]))
    return obj


def two_host_ports(obj):
    ctrs = obj["spec"]["template"]["spec"]["containers"]
    ctrs[0]["ports"] = [{"containerPort": 80, "hostPort": 8080}]
    ctrs.append({"name": "b", "image": "x:1", "ports": [{"containerPort": 81, "hostPort": 8080}]})
    return obj


@pytest.mark.parametrize("make, path, value, field, reason", [
    # fields BeeMesh does not support are named, never ignored
    (D, f"{C0}.foo", 1, f"{C0}.foo", "unsupported field (BeeMesh supports: name, image, command"),
    (D, "spec.selector.matchExpressions", [], "spec.selector.matchExpressions", "unsupported field"),
    (D, "spec.template.spec.volumes", [{"name": "h", "hostPath": {"path": "/"}}],
     "spec.template.spec.volumes[0].hostPath", "emptyDir volumes only"),
    (D, f"{C0}.env", [{"name": "A", "valueFrom": {"secretKeyRef": {}}}], f"{C0}.env[0].valueFrom",
     "no Secrets or ConfigMaps"),
    (D, f"{C0}.readinessProbe", {"httpGet": {"port": 80, "host": "x"}}, f"{C0}.readinessProbe.httpGet.host",
     "unsupported field"),
    (D, "spec.template.spec.hostNetwork", True, "spec.template.spec.hostNetwork", "unsupported field"),
    (D, "metadata.generateName", "api-", "metadata.generateName", "unsupported field"),
    (D, "kubectl", 1, "kubectl", "unsupported field"),
    (D, "status", {"replicas": 2}, "status", "remove it"),
    (D, "spec.volumeClaimTemplates", [], "spec.volumeClaimTemplates", "only a StatefulSet"),
    (SVC, "spec.clusterIP", "None", "spec.clusterIP", "unsupported field"),
    # types
    (D, "spec.replicas", "3", "spec.replicas", "expected integer, found string '3'"),
    (D, "spec.replicas", True, "spec.replicas", "expected integer, found boolean true"),
    (D, f"{C0}.args", "--verbose", f"{C0}.args", "expected a list"),
    (D, "metadata.labels", {"version": 1}, "metadata.labels", "must be a string, found integer 1"),
    # values
    (D, "spec.replicas", -1, "spec.replicas", "between 0 and 1000"),
    (D, "spec.replicas", 1001, "spec.replicas", "between 0 and 1000"),
    (D, f"{C0}.resources.requests.cpu", "lots", f"{C0}.resources.requests.cpu", "invalid quantity 'lots'"),
    (D, f"{C0}.resources.limits.memory", "-1Mi", f"{C0}.resources.limits.memory", "negative"),
    (D, f"{C0}.resources", {"requests": {"cpu": 2}, "limits": {"cpu": 1}}, f"{C0}.resources.requests.cpu",
     "less than or equal to the cpu limit"),
    (D, f"{C0}.ports[0].containerPort", 0, f"{C0}.ports[0].containerPort", "between 1 and 65535"),
    (D, f"{C0}.ports[0].containerPort", 70000, f"{C0}.ports[0].containerPort", "between 1 and 65535"),
    (D, f"{C0}.ports[0].hostPort", 65536, f"{C0}.ports[0].hostPort", "between 1 and 65535"),
    (D, f"{C0}.ports[0].protocol", "SCTP", f"{C0}.ports[0].protocol", "SCTP is not supported"),
    (D, f"{C0}.ports[0].name", "HTTP", f"{C0}.ports[0].name", "invalid name 'HTTP'"),
    (D, f"{C0}.ports[0].name", "my--port", f"{C0}.ports[0].name", "'--'"),
    (D, f"{C0}.ports[0].name", "a-very-long-port", f"{C0}.ports[0].name", "no more than 15"),
    (D, f"{C0}.ports[0].name", "8080", f"{C0}.ports[0].name", "at least one letter"),
    (D, f"{C0}.ports[0].hostIP", "localhost", f"{C0}.ports[0].hostIP", "IP address"),
    (D, f"{C0}.image", "", f"{C0}.image", "required"),
    (D, f"{C0}.image", None, f"{C0}.image", "required"),
    (D, f"{C0}.imagePullPolicy", "Sometimes", f"{C0}.imagePullPolicy", "'Always', 'IfNotPresent', 'Never'"),
    (D, f"{C0}.name", "API", f"{C0}.name", "DNS-1123 label"),
    (D, f"{C0}.env", [{"name": "1X", "value": "a"}], f"{C0}.env[0].name", "invalid variable name"),
    (D, f"{C0}.readinessProbe", {"httpGet": {"port": "metrics"}}, f"{C0}.readinessProbe.httpGet.port",
     "no port named 'metrics' in this container (declared: http)"),
    (D, f"{C0}.readinessProbe", {"httpGet": {"port": 80, "scheme": "HTTPS"}},
     f"{C0}.readinessProbe.httpGet.scheme", "unsupported value 'HTTPS'"),
    (D, f"{C0}.readinessProbe", {"periodSeconds": 5}, f"{C0}.readinessProbe", "must specify one handler"),
    (D, f"{C0}.readinessProbe", {"exec": {"command": ["true"]}, "tcpSocket": {"port": 80}},
     f"{C0}.readinessProbe.tcpSocket", "more than one handler"),
    (D, f"{C0}.livenessProbe", {"exec": {"command": ["true"]}, "successThreshold": 2},
     f"{C0}.livenessProbe.successThreshold", "must be 1"),
    (D, f"{C0}.volumeMounts", [{"name": "data", "mountPath": "/data"}], f"{C0}.volumeMounts[0].name",
     "no volume named 'data'"),
    (D, "spec.template.spec.containers", [], "spec.template.spec.containers", "required"),
    (D, "spec.template.spec.restartPolicy", "Never", "spec.template.spec.restartPolicy",
     "must be 'Always' for a Deployment"),
    (S, "spec.template.spec.restartPolicy", "OnFailure", "spec.template.spec.restartPolicy",
     "must be 'Always' for a StatefulSet"),
    (P, "spec.restartPolicy", "Sometimes", "spec.restartPolicy", "unsupported value"),
    (D, "spec.selector", {"matchLabels": {"app": "other"}}, "spec.template.metadata.labels",
     "`selector` does not match template `labels`"),
    (D, "spec.selector", None, "spec.selector", "required"),
    (D, "spec.selector", {"matchLabels": {}}, "spec.selector.matchLabels", "required"),
    (D, "spec.strategy", {"type": "Recreate", "rollingUpdate": {}}, "spec.strategy.rollingUpdate",
     "may not be set"),
    (D, "spec.strategy", {"rollingUpdate": {"maxSurge": 0, "maxUnavailable": "0%"}},
     "spec.strategy.rollingUpdate.maxUnavailable", "may not be 0"),
    (D, "spec.template", None, "spec.template", "required"),
    # names
    (D, "metadata.name", "Api", "metadata.name", "invalid name 'Api'"),
    (D, "metadata.name", "my.api", "metadata.name", "DNS-1123 label"),
    (D, "metadata.name", "a" * 60, "metadata.name", "no more than 59 characters"),
    (D, "metadata.name", None, "metadata.name", "required"),
    (P, "metadata.name", "a" * 254, "metadata.name", "no more than 253 characters"),
    (P, "metadata.name", "-solo", "metadata.name", "DNS-1123 subdomain"),
    (SVC, "metadata.name", "1api", "metadata.name", "DNS-1035 label"),
    (D, "metadata.namespace", "Prod", "metadata.namespace", "invalid name 'Prod'"),
    (D, "metadata.labels", {"bad key": "x"}, "metadata.labels", "invalid key 'bad key'"),
    (D, "metadata.labels", {"app": "x" * 64}, "metadata.labels", "no more than 63"),
    (D, "metadata.annotations", {"example.com/": "x"}, "metadata.annotations", "name part must not be empty"),
    # Service
    (SVC, "spec.type", "LoadBalancer", "spec.type", "'ClusterIP', 'NodePort'"),
    (SVC, "spec.ports", [], "spec.ports", "required"),
    (SVC, "spec.ports[0].nodePort", 30080, "spec.ports[0].nodePort", "only be set when spec.type is"),
    (SVC, "spec.ports[0].protocol", "SCTP", "spec.ports[0].protocol", "SCTP"),
    (SVC, "spec.ports[0].targetPort", 0, "spec.ports[0].targetPort", "between 1 and 65535"),
    # kind and apiVersion
    (D, "apiVersion", "extensions/v1beta1", "apiVersion", "Deployment needs apiVersion 'apps/v1'"),
    (P, "apiVersion", "apps/v1", "apiVersion", "Pod needs apiVersion 'v1'"),
    (D, "kind", "CronJob", "kind", "unsupported kind: found string 'CronJob' (BeeMesh supports: Pod, "),
    (D, "kind", None, "kind", "required"),
])
def test_object_errors_name_the_field(make, path, value, field, reason):
    error = parse_error(edit(make(), path, value))
    assert (error.field, error.document) == (field, None)
    assert reason in error.reason


@pytest.mark.parametrize("mutate, field, reason", [
    (dup_containers, "spec.template.spec.containers[1].name", "duplicate container name 'api'"),
    (two_host_ports, "spec.template.spec.containers[1].ports[0].hostPort",
     "duplicate hostPort 8080/TCP (also used by container 'api')"),
])
def test_pod_level_uniqueness(mutate, field, reason):
    error = parse_error(mutate(deployment()))
    assert (error.field, reason in error.reason) == (field, True)


def test_names_at_the_limits_are_accepted():
    longest = parse_manifest(edit(deployment(), "metadata.name", "a" * 59))
    assert longest.replica_names()[-1] == "a" * 59 + "-1"
    assert parse_manifest(edit(pod(), "metadata.name", "a" * 253)).name == "a" * 253
    assert parse_manifest(edit(pod(), "metadata.labels", {"example.com/app": "", "x": "a_b.c-d"}))


def test_status_may_be_empty_or_null():
    for status in ({}, None):
        assert parse_manifest(dict(pod(), status=status)).name == "solo"


# ------------------------------------------------------------------------- input errors


def test_document_index_points_at_the_bad_object():
    bad = edit(deployment(), f"{C0}.foo", 1)
    text = "\n---\n".join(["", json.dumps(pod()), "# empty", json.dumps(bad)])
    error = parse_error(text)
    assert (error.field, error.document) == (f"{C0}.foo", 1)
    assert parse_error([pod(), service(), bad]).document == 2
    listed = parse_error({"apiVersion": "v1", "kind": "List", "items": [pod(), bad]})
    assert (listed.field, listed.document) == (f"{C0}.foo", 1)
    with pytest.raises(InvalidManifest) as info:
        parse_manifest(bad, document=4)
    assert info.value.parameters() == {"field": f"{C0}.foo", "reason": info.value.reason, "document": 4}


def test_yaml_syntax_error_reports_line_and_column():
    error = parse_error("apiVersion: v1\nkind: Pod\nmetadata: {name: [x\n")
    assert error.field == "" and error.document is None
    assert re.search(r"invalid YAML at line \d+, column \d+", error.reason)


@pytest.mark.parametrize("source", ["", "   \n", "---\n---\n", "# nothing\n", [],
                                    {"apiVersion": "v1", "kind": "List", "items": []}])
def test_empty_input(source):
    error = parse_error(source)
    assert (error.field, error.reason, error.document) == ("", "no Kubernetes object in input", None)


@pytest.mark.parametrize("source, document", [
    ("just a string", None), ("- 1\n- 2\n", None), ("42", None), ([pod(), "x"], 1),
])
def test_not_an_object(source, document):
    error = parse_error(source)
    assert (error.field, error.document) == ("", document)
    assert error.reason.startswith("expected a Kubernetes object")


def test_input_of_a_wrong_type():
    assert parse_error(42).field == ""


def test_size_and_count_limits():
    assert "larger than 1048576 bytes" in parse_error("#" * (1 << 20) + "\n").reason
    too_many = [edit(pod(), "metadata.name", f"p{i}") for i in range(101)]
    assert "more than 100 objects" in parse_error(too_many).reason
    assert len(parse_manifests(too_many[:100])) == 100


def test_yaml_alias_bomb_is_stopped():
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 8)]
    error = parse_error("apiVersion: v1\nkind: Pod\nmetadata:\n  name: x\n" + "\n".join(lines))
    assert "more than" in error.reason and "values" in error.reason


def test_non_json_yaml_values_are_rejected():
    error = parse_error("apiVersion: v1\nkind: Pod\nmetadata:\n  name: x\n"
                        "  annotations:\n    at: 2024-01-01\n")
    assert error.field == "metadata.annotations.at" and "quote it" in error.reason


def test_duplicate_objects_are_rejected():
    error = parse_error([pod(), service(), pod()])
    assert (error.field, error.document) == ("metadata.name", 2)
    assert "first as document 0" in error.reason
    assert len(parse_manifests([pod(), edit(pod(), "metadata.namespace", "other")])) == 2


def test_list_items_must_not_nest_lists():
    inner = {"apiVersion": "v1", "kind": "List", "items": [pod()]}
    error = parse_error({"apiVersion": "v1", "kind": "List", "items": [inner]})
    assert error.field == "kind" and "not nested" in error.reason


def test_parse_manifest_does_not_keep_the_callers_dict():
    obj = pod()
    w = parse_manifest(obj)
    obj["metadata"]["name"] = "changed"
    assert w.manifest["metadata"]["name"] == "solo"
    assert copy.deepcopy(w) == w
