"""Workload operations behind the Varlink methods: apply, get, list, delete, scale, logs, wait.

Admission happens here (parse, name clashes, runtime reachable) before anything is stored, so a
rejected Deploy changes nothing. Views are built in the interface's own shapes (dicts).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import trio

from beemeshd import errors, logstream
from beemeshd.agent import Agent
from beemeshd.core import render
from beemeshd.core.manifest import parse_manifests
from beemeshd.events import EventBus, make_event, now_usec
from beemeshd.runtime.base import Runtime
from beemeshd.store import Record, Store

log = logging.getLogger("beemeshd.workloads")

DEFAULT_TIMEOUT = 60.0


def parse_request(manifest, yaml, namespace) -> list:
    """Deploy's input (exactly one of a JSON object and YAML text) as workloads; `namespace`
    applies where a manifest names none (kubectl apply -n)."""
    if (manifest is None) == (yaml is None):
        raise errors.InvalidParameter("manifest", "give exactly one of 'manifest' and 'yaml'")
    workloads = parse_manifests(manifest if manifest is not None else yaml)
    if namespace:
        workloads = [logstream.with_namespace(w, namespace) for w in workloads]
    return workloads


def scaled(manifest: dict, replicas: int) -> dict:
    """The manifest as Scale would leave it (what admission policies see)."""
    return {**manifest, "spec": {**manifest.get("spec", {}), "replicas": replicas}}


async def wait_until(agent: Agent, done, timeout, operation: str, detail) -> None:
    """Re-check `done()` after every agent pass (every change pokes the agent) until it holds;
    Timeout with `detail()` after `timeout` seconds (default DEFAULT_TIMEOUT)."""
    timeout = DEFAULT_TIMEOUT if timeout is None else max(0.0, timeout)
    with trio.move_on_after(timeout):
        while not done():
            await agent.changed()
        return
    raise errors.Timeout(operation, timeout, detail())


class Workloads:
    def __init__(self, store: Store, agent: Agent, runtime: Runtime, events: EventBus, peer_id: str,
                 runtime_status=None):
        # runtime_status: async () -> RuntimeStatus; the daemon's, so GetInfo sees what we saw.
        self.runtime_status = runtime_status or runtime.status
        self.store = store
        self.agent = agent
        self.runtime = runtime
        self.events = events
        self.peer_id = peer_id
        # Admission by mesh-wide policies: (manifests, user, operation) -> None or PolicyDenied.
        self.admit = None

    def count(self) -> int:
        return len(self.store.records)

    # -- views -------------------------------------------------------------------------------------
    def view(self, rec: Record) -> dict:
        w = rec.workload
        replicas = self.agent.replicas(rec, self.peer_id) if w.template is not None else []
        ports = []
        for d in self.agent.desired.values():
            if d.workload.key == w.key and d.pod in self.agent.observed:
                ports += [{"replica": d.replica, "hostIP": p.host_ip, "hostPort": p.host_port,
                           "containerPort": p.container_port, "protocol": p.protocol.upper()} for p in d.spec.ports]
        return {
            "kind": w.kind, "name": w.name, "namespace": w.namespace, "generation": rec.generation,
            "replicas": w.replicas if w.template is not None else 0,
            "readyReplicas": sum(1 for r in replicas if r["ready"]),
            "manifest": w.manifest, "createdUSec": rec.created_usec, "updatedUSec": rec.updated_usec,
            "replicaStatus": replicas, "ports": sorted(ports, key=lambda p: (p["replica"], p["hostPort"])),
            "origin": rec.origin,
        }

    def get(self, name: str, namespace: str | None, kind: str | None) -> dict:
        return self.view(self.store.find(name, namespace or "default", kind))

    def list(self, namespace: str | None, kind: str | None) -> list[dict]:
        return [self.view(r) for r in self.store.list(namespace, kind)]

    # -- changes -----------------------------------------------------------------------------------
    async def deploy(self, *, manifest, yaml, namespace, wait, timeout, dry_run, user=None) -> list[dict]:
        workloads = parse_request(manifest, yaml, namespace)
        self.store.check_apply(workloads)
        if self.admit is not None:
            self.admit([w.manifest for w in workloads], user, "Deploy")
        if dry_run:
            return [self.view(Record(w, 0, 0, 0, self.peer_id)) for w in workloads]
        await self._require_runtime()
        now = now_usec()
        results = []
        for w in workloads:
            rec, outcome = self.store.apply(w, now, self.peer_id)
            results.append(rec)
            if outcome != "unchanged":
                log.info("%s %s %s/%s (generation %d)", outcome, w.kind, w.namespace, w.name, rec.generation)
                self.events.publish(make_event("Added" if outcome == "created" else "Updated", namespace=w.namespace,
                                               name=w.name, generation=rec.generation, message=outcome))
        self.store.save()
        self.agent.poke()
        if wait:
            await self.wait_ready([r.key for r in results], timeout, "Deploy wait")
        return [self.view(self.store.records[r.key]) for r in results]

    async def delete(self, name, namespace, kind, wait, timeout) -> dict:
        rec = self.store.find(name, namespace or "default", kind)
        view = self.view(rec)
        self.store.delete(rec.key)
        self.store.save()
        self.events.publish(make_event("Deleted", namespace=rec.workload.namespace, name=rec.workload.name,
                                       generation=rec.generation))
        self.agent.poke()
        if wait:
            await self._wait(lambda: not self.agent.pods_of(rec.key), timeout, "Delete wait",
                             lambda: f"{len(self.agent.pods_of(rec.key))} pod(s) left")
        return view

    async def scale(self, name, namespace, replicas, wait, timeout, user=None) -> dict:
        if not 0 <= replicas <= 1000:
            raise errors.InvalidParameter("replicas", "must be 0 … 1000")
        await self._require_runtime()
        cur = self.store.find(name, namespace or "default").workload
        if self.admit is not None and cur.replicas != replicas and cur.kind in ("Deployment", "StatefulSet"):
            self.admit([scaled(cur.manifest, replicas)], user, "Scale")
        rec = self.store.scale(name, namespace or "default", replicas, now_usec())
        self.store.save()
        self.events.publish(make_event("Updated", namespace=rec.workload.namespace, name=name,
                                       generation=rec.generation, message=f"scaled to {replicas}"))
        self.agent.poke()
        if wait:
            await self.wait_ready([rec.key], timeout, "Scale wait")
        return self.view(self.store.records[rec.key])

    # -- waiting -----------------------------------------------------------------------------------
    async def wait_ready(self, keys, timeout, operation) -> None:
        def done():
            for key in keys:
                if key not in self.store.records:
                    continue
                ready, want, settled = self.agent.ready_count(self.store.records[key])
                if ready < want or not settled:
                    return False
            return True

        def detail():
            parts = []
            for key in keys:
                if key not in self.store.records:
                    continue
                ready, want, _ = self.agent.ready_count(self.store.records[key])
                parts.append(f"{key[1]} {key[0]}/{key[2]}: {ready} of {want} replicas ready")
            return "; ".join(parts)

        await self._wait(done, timeout, operation, detail)

    async def _wait(self, done, timeout, operation, detail) -> None:
        await wait_until(self.agent, done, timeout, operation, detail)

    async def _require_runtime(self) -> None:
        st = await self.runtime_status()
        if not st.available:
            raise errors.RuntimeUnavailable(st.last_error or "the runtime does not answer", st.endpoint)

    # -- logs --------------------------------------------------------------------------------------
    def log_sources(self, name, namespace, replica, container) -> list[tuple[str, str, str]]:
        """(podman pod, replica, container) triples to read, checked before streaming starts."""
        rec = self.store.find(name, namespace or "default")
        if rec.workload.template is None:
            raise errors.InvalidParameter("name", f"{rec.workload.kind} {name} has no pods")
        names = [c.name for c in rec.workload.template.containers]
        if container is not None and container not in names:
            raise errors.InvalidParameter("container", f"{name} has no container {container}")
        out = []
        for d in sorted(self.agent.desired.values(), key=lambda d: d.ordinal):
            if d.workload.key != rec.key or (replica is not None and d.replica != replica):
                continue
            if d.pod in self.agent.observed:
                out += [(d.pod, d.replica, c) for c in names if container in (None, c)]
        if replica is not None and not any(r == replica for _, r, _ in out):
            raise errors.InvalidParameter("replica", f"{replica} is not a running replica of {name}")
        return out

    def logs(self, sources, tail, follow) -> AsyncIterator[dict]:
        return logstream.stream(self.runtime, self.agent.spawn, sources, tail, follow)


__all__ = ["Workloads", "render"]
