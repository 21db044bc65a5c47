"""StatefulSet volumeClaimTemplates: parsing and its errors, rendering to named Podman volumes, and
the fake runtime keeping them across pods (the stateful side is in test_stateful.py)."""

from __future__ import annotations

import pytest
import trio

from beemeshd.core import render
from beemeshd.core.manifest import parse_manifest, parse_manifests
from beemeshd.errors import InvalidManifest
from beemeshd.runtime.base import CLAIM_LABEL, MANAGED_LABEL, POD_LABEL, RuntimeFailure, validate
from beemeshd.runtime.fake import FakeRuntime
from beemeshd.runtime.podman_specs import container_body

GI = 1 << 30


def claim(name="data", modes=("ReadWriteOnce",), storage="1Gi", **spec):
    return {"metadata": {"name": name},
            "spec": {"accessModes": list(modes), "resources": {"requests": {"storage": storage}}, **spec}}


def statefulset(claims=None, mounts=None, kind="StatefulSet", volumes=None):
    c = {"name": "app", "image": "busybox",
         "volumeMounts": mounts if mounts is not None else [{"name": "data", "mountPath": "/data"}]}
    spec = {"replicas": 2, "selector": {"matchLabels": {"app": "db"}},
            "template": {"metadata": {"labels": {"app": "db"}}, "spec": {"containers": [c]}}}
    if volumes is not None:
        spec["template"]["spec"]["volumes"] = volumes
    if claims is not None:
        spec["volumeClaimTemplates"] = claims
    return {"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": "db", "namespace": "shop"},
            "spec": spec}


def error(obj) -> InvalidManifest:
    with pytest.raises(InvalidManifest) as info:
        parse_manifests(obj)
    return info.value


def test_claims_parse_and_storage_class_is_ignored():
    w = parse_manifest(statefulset([claim(storageClassName="fast"), claim("logs", storage="500Mi")],
                                   mounts=[{"name": "data", "mountPath": "/data"},
                                           {"name": "logs", "mountPath": "/logs", "readOnly": True}]))
    assert [(c.name, c.access_modes, c.storage_bytes) for c in w.volume_claims] == [
        ("data", ("ReadWriteOnce",), GI), ("logs", ("ReadWriteOnce",), 500 << 20)]


@pytest.mark.parametrize("claims, field, reason", [
    ([claim(modes=())], "spec.volumeClaimTemplates[0].spec.accessModes", "required"),
    ([claim(modes=("ReadWriteMany",))], "spec.volumeClaimTemplates[0].spec.accessModes[0]", "one peer"),
    ([claim(modes=("Sometimes",))], "spec.volumeClaimTemplates[0].spec.accessModes[0]", "unknown access mode"),
    ([claim(storage=None)], "spec.volumeClaimTemplates[0].spec.resources.requests.storage", "required"),
    ([claim(storage="lots")], "spec.volumeClaimTemplates[0].spec.resources.requests.storage", ""),
    ([claim(storage="0")], "spec.volumeClaimTemplates[0].spec.resources.requests.storage", "greater than zero"),
    ([claim(), claim()], "spec.volumeClaimTemplates[1].metadata.name", "duplicate claim name"),
    ([claim("Data")], "spec.volumeClaimTemplates[0].metadata.name", ""),
    ([{"spec": claim()["spec"]}], "spec.volumeClaimTemplates[0].metadata", "required"),
    ([claim(volumeMode="Block")], "spec.volumeClaimTemplates[0].spec.volumeMode", "Filesystem"),
    ([claim(selector={"matchLabels": {"a": "b"}})], "spec.volumeClaimTemplates[0].spec.selector",
     "never bound"),
    ([claim("other")], "spec.template.spec.containers[0].volumeMounts[0].name", "declared: other"),
])
def test_claim_errors_name_the_field(claims, field, reason):
    e = error(statefulset(claims))
    assert e.field == field and reason in e.reason


def test_a_claim_and_a_pod_volume_may_not_share_a_name():
    e = error(statefulset([claim()], volumes=[{"name": "data", "emptyDir": {}}]))
    assert e.field == "spec.template.spec.volumes[0].name" and "volumeClaimTemplates" in e.reason


def test_only_retain_is_supported():
    obj = statefulset([claim()])
    obj["spec"]["persistentVolumeClaimRetentionPolicy"] = {"whenDeleted": "Retain", "whenScaled": "Retain"}
    parse_manifest(obj)
    obj["spec"]["persistentVolumeClaimRetentionPolicy"] = {"whenDeleted": "Delete"}
    e = error(obj)
    assert e.field == "spec.persistentVolumeClaimRetentionPolicy.whenDeleted" and "Retain" in e.reason


def test_deployments_cannot_have_claim_templates():
    e = error(statefulset([claim()], kind="Deployment"))
    assert e.field == "spec.volumeClaimTemplates" and "only a StatefulSet" in e.reason


def test_render_maps_the_mount_to_the_ordinals_named_volume():
    w = parse_manifest(statefulset([claim()], mounts=[{"name": "data", "mountPath": "/data"},
                                                      {"name": "tmp", "mountPath": "/tmp"}],
                                   volumes=[{"name": "tmp", "emptyDir": {}}]))
    spec = render.render(w, 1, 1, host_ip="127.0.0.1", peer_id="p1")
    assert spec.claims == (("data", "data-db-1.shop"),) and spec.volumes == ("tmp",)
    validate(spec)
    body = container_body(spec, spec.containers[0], "podid")
    assert [v["Name"] for v in body["volumes"]] == ["data-db-1.shop", "db-1.shop-tmp"]
    labels = spec.claim_labels("data")
    assert labels[MANAGED_LABEL] == "true" and labels[CLAIM_LABEL] == "data"
    assert labels[render.WORKLOAD] == "db" and labels[render.NAMESPACE] == "shop"
    assert labels[render.ORDINAL] == "1" and POD_LABEL not in labels  # removing the pod keeps it


async def test_fake_runtime_keeps_claim_volumes_and_their_files_across_pods():
    w = parse_manifest(statefulset([claim()]))
    spec = render.render(w, 0, 1, host_ip="127.0.0.1")
    rt = FakeRuntime()
    await rt.create_pod(spec)
    assert "data-db-0.shop" in rt.volumes
    await rt.write_volume_file("data-db-0.shop", "file", b"kept")
    await rt.remove_pod(spec.name)
    await rt.create_pod(spec)  # re-created (restart, scale 0 -> 1): the same volume, same data
    assert await rt.read_volume_file("data-db-0.shop", "file") == b"kept"
    assert await rt.read_volume_file("data-db-0.shop", "absent") is None
    with pytest.raises(RuntimeFailure):
        await rt.read_volume_file("no-such-volume", "file")
    await rt.ensure_volume("data-db-0.shop", {"other": "labels"})  # exists: left as it is
    assert rt.volumes["data-db-0.shop"][0][CLAIM_LABEL] == "data"
    await trio.lowlevel.checkpoint()
