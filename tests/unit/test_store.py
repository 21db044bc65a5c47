"""Desired state: apply semantics, generations, scale, clashes, atomic persistence."""

from __future__ import annotations

import json
import os
import stat

import pytest

from beemeshd import errors
from beemeshd.core.manifest import parse_manifest
from beemeshd.store import FILE, Store

IMAGE = "localhost/beemesh-busybox:latest"


def dep(name="web", replicas=2, image=IMAGE, kind="Deployment"):
    return parse_manifest({
        "apiVersion": "apps/v1", "kind": kind, "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"containers": [{"name": "app", "image": image}]}}}})


def test_apply_create_unchanged_configured(tmp_path):
    s = Store(tmp_path)
    rec, outcome = s.apply(dep(), 100, "peer")
    assert (outcome, rec.generation, rec.created_usec) == ("created", 1, 100)
    rec, outcome = s.apply(dep(), 200, "peer")
    assert (outcome, rec.generation, rec.updated_usec) == ("unchanged", 1, 100)
    rec, outcome = s.apply(dep(image="localhost/other:1"), 300, "peer")
    assert (outcome, rec.generation, rec.created_usec, rec.updated_usec) == ("configured", 2, 100, 300)


def test_scale_bumps_generation_and_rewrites_manifest(tmp_path):
    s = Store(tmp_path)
    s.apply(dep(), 1, None)
    rec = s.scale("web", "default", 5, 2)
    assert rec.generation == 2 and rec.workload.replicas == 5
    assert rec.workload.manifest["spec"]["replicas"] == 5
    assert s.scale("web", "default", 5, 3).generation == 2  # no change, no new generation
    with pytest.raises(errors.WorkloadNotFound):
        s.scale("nope", "default", 1, 4)


def test_pod_names_cannot_clash_across_kinds(tmp_path):
    s = Store(tmp_path)
    s.apply(dep(), 1, None)
    with pytest.raises(errors.InvalidManifest) as exc:
        s.check_apply([dep(kind="StatefulSet")])
    assert exc.value.field == "metadata.name"
    s.check_apply([dep()])  # re-applying the same kind is fine


def test_persistence_roundtrip_is_atomic_and_private(tmp_path):
    s = Store(tmp_path)
    s.apply(dep(), 1, "p1")
    s.apply(dep("db", kind="StatefulSet", replicas=3), 2, "p1")
    s.save()
    path = tmp_path / FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not (tmp_path / (FILE + ".tmp")).exists()
    again = Store(tmp_path)
    again.load()
    assert again.records.keys() == s.records.keys()
    db = again.find("db", "default")
    assert db.workload == s.find("db", "default").workload and db.generation == 1 and db.origin == "p1"
    # a crash between writing the temporary file and the rename leaves the old state intact
    (tmp_path / (FILE + ".tmp")).write_text("{garbage")
    third = Store(tmp_path)
    third.load()
    assert len(third.records) == 2
    data = json.loads(path.read_text())
    assert data["format"] == 1 and os.path.getsize(path) > 0
