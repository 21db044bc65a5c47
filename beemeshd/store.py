"""Desired state: the workloads this peer is asked to run, persisted atomically.

One JSON file (STATE_DIR/workloads.json) holds every record: the manifest as applied, its
generation and timestamps. Each change is written to a temporary file, fsynced and renamed over
the old one, so a crash (even kill -9) leaves either the old or the new state, never a mix.
Workloads are re-parsed from their manifests on load, so the file format is just Kubernetes JSON.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path

from beemeshd import errors
from beemeshd.core.manifest import parse_manifest
from beemeshd.model import Workload

log = logging.getLogger("beemeshd.store")

FILE = "workloads.json"
FORMAT = 1
# Kinds whose pods share one name space per namespace (their replica names would collide).
POD_KINDS = ("Pod", "Deployment", "StatefulSet")


@dataclass(frozen=True)
class Record:
    workload: Workload
    generation: int
    created_usec: int
    updated_usec: int
    origin: str | None = None

    @property
    def key(self) -> tuple[str, str, str]:
        return self.workload.key


def _spec_equal(a: Workload, b: Workload) -> bool:
    # Dataclass equality skips `manifest` (server-set metadata may differ); labels, template,
    # replicas, selector ... are all compared.
    return a == b


class Store:
    def __init__(self, state_dir: Path):
        self.path = state_dir / FILE
        self.records: dict[tuple[str, str, str], Record] = {}

    # -- persistence ---------------------------------------------------------------------------
    def load(self) -> None:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return
        if data.get("format") != FORMAT:
            raise SystemExit(f"beemeshd: {self.path}: unknown format {data.get('format')!r}")
        for item in data["workloads"]:
            try:
                w = parse_manifest(item["manifest"])
            except errors.InvalidManifest as exc:  # e.g. written by a newer version
                log.error("skipping stored workload that no longer parses: %s", exc)
                continue
            self.records[w.key] = Record(w, item["generation"], item["createdUSec"], item["updatedUSec"],
                                         item.get("origin"))

    def save(self) -> None:
        data = {
            "format": FORMAT,
            "workloads": [
                {"manifest": r.workload.manifest, "generation": r.generation, "createdUSec": r.created_usec,
                 "updatedUSec": r.updated_usec, "origin": r.origin}
                for r in sorted(self.records.values(), key=lambda r: r.key)
            ],
        }
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_name(FILE + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, separators=(",", ":"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        dfd = os.open(self.path.parent, os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    # -- queries -------------------------------------------------------------------------------
    def find(self, name: str, namespace: str, kind: str | None = None) -> Record:
        matches = [r for (ns, k, n), r in self.records.items()
                   if ns == namespace and n == name and (kind is None or k == kind)]
        if not matches:
            raise errors.WorkloadNotFound(name, namespace)
        # A Service may share its name with the workload it fronts: the workload wins.
        matches.sort(key=lambda r: r.workload.kind == "Service")
        return matches[0]

    def list(self, namespace: str | None = None, kind: str | None = None) -> list[Record]:
        return [r for key, r in sorted(self.records.items())
                if (namespace is None or key[0] == namespace) and (kind is None or key[1] == kind)]

    # -- changes (pure in memory; the caller saves) ---------------------------------------------
    def check_apply(self, workloads: list[Workload]) -> None:
        """Refuse a pod-running workload whose name another pod-running kind already uses."""
        for i, w in enumerate(workloads):
            if w.kind not in POD_KINDS:
                continue
            for other in POD_KINDS:
                key = (w.namespace, other, w.name)
                if other != w.kind and key in self.records:
                    raise errors.InvalidManifest(
                        "metadata.name",
                        f"{other} {w.namespace}/{w.name} already exists; its pods would share names",
                        i if len(workloads) > 1 else None,
                    )

    def apply(self, w: Workload, now_usec: int, origin: str | None) -> tuple[Record, str]:
        """Create or update; returns the record and "created", "configured" or "unchanged"."""
        old = self.records.get(w.key)
        if old is None:
            rec = Record(w, 1, now_usec, now_usec, origin)
            outcome = "created"
        elif _spec_equal(old.workload, w):
            return old, "unchanged"
        else:
            rec = Record(w, old.generation + 1, old.created_usec, now_usec, origin)
            outcome = "configured"
        self.records[w.key] = rec
        return rec, outcome

    def scale(self, name: str, namespace: str, replicas: int, now_usec: int) -> Record:
        rec = self.find(name, namespace)
        if rec.workload.kind not in ("Deployment", "StatefulSet"):
            raise errors.InvalidParameter("name", f"{rec.workload.kind} cannot be scaled")
        if rec.workload.replicas == replicas:
            return rec
        manifest = json.loads(json.dumps(rec.workload.manifest))
        manifest.setdefault("spec", {})["replicas"] = replicas
        w = replace(rec.workload, replicas=replicas, manifest=manifest)
        new = Record(w, rec.generation + 1, rec.created_usec, now_usec, rec.origin)
        self.records[w.key] = new
        return new

    def delete(self, key: tuple[str, str, str]) -> Record:
        return self.records.pop(key)
