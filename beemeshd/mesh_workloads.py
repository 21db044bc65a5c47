"""Workload operations behind the Varlink methods: apply, get, list, delete, scale, logs, wait.

Any peer answers any of them: changes become placement decisions (beemeshd/placement.py) that
the whole mesh sees; views join the decision with the replica status each runner reports (this
peer's own replicas come straight from its agent). Admission (parse, name clashes) happens before
anything is decided, so a refused Deploy changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from types import SimpleNamespace

import trio

from beemeshd import errors, logstream
from beemeshd.agent import Agent, replica_row
from beemeshd.core import reconcile as rc
from beemeshd.core import render
from beemeshd.core.catalog import Decision
from beemeshd.events import EventBus
from beemeshd.placement import Placement, STATUS_REFRESH
from beemeshd.runtime.base import Runtime
from beemeshd.workloads import parse_request, scaled, wait_until

log = logging.getLogger("beemeshd.workloads")

PROTO_LOGS = "/beemesh/logs/1"
STATUS_REFRESH_SCALE = 50  # workloads whose reports are refreshed every STATUS_REFRESH seconds
MAX_REMOTE_LINES = 10000
FOLLOW_POLL = 0.5  # seconds between asks for new lines of a followed replica on another peer


class Workloads:
    def __init__(self, placement: Placement, agent: Agent, runtime: Runtime, events: EventBus, peer_id: str,
                 runtime_status=None):
        # runtime_status: async () -> RuntimeStatus; the daemon's, so GetInfo sees what we saw.
        self.runtime_status = runtime_status or runtime.status
        self.placement = placement
        self.agent = agent
        self.runtime = runtime
        self.events = events
        self.peer_id = peer_id
        # Admission by mesh-wide policies: (manifests, user, operation) -> None or PolicyDenied.
        self.admit = None
        # StatefulSet leases and groups (beemeshd/stateful.py): Replica.lease, Explain's group.
        self.stateful = None
        placement.mesh.handle(PROTO_LOGS, self._handle_logs)

    def count(self) -> int:
        return len(self.placement.catalog.live())

    # -- views -------------------------------------------------------------------------------------
    def rows(self, d: Decision) -> list[dict]:
        """Replica rows (interface type Replica) by ordinal, wherever they run."""
        w = self.placement.workload(d)
        local = {r["name"]: r for r in self.agent.replicas(SimpleNamespace(workload=w), self.peer_id)}
        remote = self.placement.status.get(d.key, {})
        up = self.placement.up  # (a partial view: a runner it does not hold is not taken for dead)
        rows = []
        for ordinal, (replica, peer) in enumerate(d.assignments):
            row = None
            if peer == self.peer_id:
                row = local.get(replica)
            elif up(peer) and replica in remote and remote[replica][0] == peer:
                row = {k: v for k, v in remote[replica][1].items() if k != "ports"}
            if row is None:
                if peer is None:
                    message = "no peer can run it: " + "; ".join(f"{p[-8:]}: {r}" for p, r in d.declined)[:400]
                elif not up(peer) and w.is_stateful:
                    message = f"its peer {peer} is dead; the ordinal moves once its lease has run out"
                elif peer == self.peer_id and w.is_stateful and self.stateful is not None:
                    message = self.stateful.pending_message(d.key, ordinal)
                elif not up(peer):
                    message = f"its peer {peer} is dead; being placed again"
                else:
                    message = f"placed on {peer}; waiting for its status"
                row = {"name": replica, "ordinal": ordinal, "peer": peer, "state": "pending", "ready": False,
                       "restarts": 0, "podId": None, "generation": d.generation, "message": message,
                       "containers": [], "lease": None}
            rows.append(row)
        return self._with_leases(d.key, rows)

    def _with_leases(self, key, rows: list[dict]) -> list[dict]:
        """Fill Replica.lease from this peer's view of the group, when it is a member."""
        if key[1] != "StatefulSet" or self.stateful is None:
            return rows
        out = []
        for row in rows:
            lease = self.stateful.lease_of(key, int(row["ordinal"]))
            out.append({**row, "lease": lease} if lease is not None else row)
        return out

    def view(self, d: Decision) -> dict:
        w = self.placement.workload(d)
        rows = self.rows(d) if w.template is not None else []
        ports = []
        for dp in self.agent.desired.values():
            if dp.workload.key == w.key and dp.pod in self.agent.observed:
                ports += [_port(dp.replica, p.host_ip, p.host_port, p.container_port, p.protocol) for p in dp.spec.ports]
        for replica, (peer, row, _) in self.placement.status.get(d.key, {}).items():
            if d.peer_of(replica) == peer and peer != self.peer_id:
                ports += [dict(p) for p in row.get("ports", ())]
        return {
            "kind": w.kind, "name": w.name, "namespace": w.namespace, "generation": d.generation,
            "replicas": w.replicas if w.template is not None else 0,
            "readyReplicas": sum(1 for r in rows if r["ready"] and r.get("generation") == d.generation),
            "manifest": w.manifest, "createdUSec": d.created_usec, "updatedUSec": d.decided_usec,
            "replicaStatus": rows, "ports": sorted(ports, key=lambda p: (p["replica"], p["hostPort"])),
            "origin": d.origin,
        }

    async def prepare(self, name: str | None = None, namespace: str | None = None, kind: str | None = None) -> None:
        """Before a Get/Explain/Logs (a name) or a List (none): in a large mesh, fetch what the
        holders keep and this peer does not (beemeshd/placement.py, "Large meshes")."""
        if name is None:
            await self.placement.list_all()
        else:
            await self.placement.ensure(namespace or "default", name, kind)

    def get(self, name: str, namespace: str | None, kind: str | None) -> dict:
        return self.view(self.placement.find(name, namespace or "default", kind))

    def list(self, namespace: str | None, kind: str | None) -> list[dict]:
        ds = sorted(self.placement.catalog.live(), key=lambda d: d.key)
        return [self.view(d) for d in ds if (namespace is None or d.key[0] == namespace)
                and (kind is None or d.key[1] == kind)]

    def explain(self, name: str, namespace: str | None) -> dict:
        d = self.placement.find(name, namespace or "default")
        history = [x for x in self.placement.catalog.history.get(d.key, []) if x is not d]
        out = {"workload": self.view(d), "decisions": _decisions(d),
               "history": [p for x in history if not x.deleted for p in _decisions(x)]}
        if d.key[1] == "StatefulSet" and self.stateful is not None:
            out["group"] = self.stateful.group_of(d.key)
        return out

    # -- changes -----------------------------------------------------------------------------------
    async def deploy(self, *, manifest, yaml, namespace, wait, timeout, dry_run, user=None) -> list[dict]:
        workloads = parse_request(manifest, yaml, namespace)
        if self.admit is not None:
            self.admit([w.manifest for w in workloads], user, "Deploy")
        if dry_run:
            return [self.view(Decision(w.key, 0, w.manifest, tuple((r, None) for r in w.replica_names()),
                                       origin=self.peer_id)) for w in workloads]
        await self.runtime_status()  # fresh availability for our own bid
        results = []
        for w in workloads:
            d = await self._apply(w, "apply", user)
            results.append(d)
        if wait:
            await self.wait_ready([d.key for d in results], timeout, "Deploy wait")
        return [self.view(self.placement.catalog.entries[d.key]) for d in results]

    async def _apply(self, w, reason: str, user: str | None = None) -> Decision:
        try:
            d, outcome = await self.placement.apply(w, reason=reason, user=user)
        except errors.NoCapacity:
            st = await self.runtime_status()
            if not st.available and self.placement.alive() == [self.peer_id]:
                # Alone, and our own runtime is down: that is the whole story.
                raise errors.RuntimeUnavailable(st.last_error or "the runtime does not answer", st.endpoint) from None
            raise
        if outcome != "unchanged":
            log.info("%s %s %s/%s (generation %d)", outcome, w.kind, w.namespace, w.name, d.generation)
        return d

    async def delete(self, name, namespace, kind, wait, timeout) -> dict:
        await self.prepare(name, namespace, kind)
        d = self.placement.find(name, namespace or "default", kind)
        view = self.view(d)
        await self.placement.delete(d)
        def gone():
            return not self.agent.pods_of(d.key) and not any(
                self.placement.up(peer) for peer, _, _ in self.placement.status.get(d.key, {}).values())

        if wait:
            await self._wait(gone,
                             timeout, "Delete wait",
                             lambda: f"{len(self.agent.pods_of(d.key)) + len(self.placement.status.get(d.key, {}))} "
                                     "pod(s) left")
        return view

    async def scale(self, name, namespace, replicas, wait, timeout, user=None) -> dict:
        if not 0 <= replicas <= 1000:
            raise errors.InvalidParameter("replicas", "must be 0 … 1000")
        await self.prepare(name, namespace)
        d = self.placement.find(name, namespace or "default")
        w = self.placement.workload(d)
        if w.kind not in ("Deployment", "StatefulSet"):
            raise errors.InvalidParameter("name", f"{w.kind} cannot be scaled")
        if w.replicas != replicas:
            manifest = scaled(w.manifest, replicas)
            if self.admit is not None:
                self.admit([manifest], user, "Scale")
            await self.runtime_status()
            d = await self._apply(replace(w, replicas=replicas, manifest=manifest), "scale", user)
        if wait:
            await self.wait_ready([d.key], timeout, "Scale wait")
        return self.view(self.placement.catalog.entries[d.key])

    # -- waiting -----------------------------------------------------------------------------------
    def _progress(self, key) -> tuple[int, int, bool]:
        d = self.placement.catalog.entries.get(key)
        if d is None or d.deleted:
            return 0, 0, True
        rows = self.rows(d)
        ready = sum(1 for r in rows if r["ready"] and r.get("generation") == d.generation)
        # settled: no pod of it left over anywhere (scaled away, replaced, or on a peer it left)
        assigned = dict(d.assignments)
        up = self.placement.up  # a dead peer's last report says nothing any more
        settled = all(n in self.agent.desired for n in self.agent.pods_of(key)) and all(
            assigned.get(replica) == peer for replica, (peer, _, _) in self.placement.status.get(key, {}).items()
            if up(peer))
        return ready, len(rows), settled

    async def wait_ready(self, keys, timeout, operation) -> None:
        def done():
            return all(r >= n and settled for r, n, settled in map(self._progress, keys))

        def detail():
            return "; ".join(f"{k[1]} {k[0]}/{k[2]}: {r} of {n} replicas ready"
                             for k, (r, n, _) in zip(keys, map(self._progress, keys)))

        await self._wait(done, timeout, operation, detail)

    async def _wait(self, done, timeout, operation, detail) -> None:
        await wait_until(_Changes(self.agent, self.placement), done, timeout, operation, detail)

    # -- status reports (runner side) --------------------------------------------------------------
    async def status_loop(self) -> None:
        """Tell the mesh how this peer's replicas are doing: on every change, and every
        STATUS_REFRESH seconds; an empty report once a workload's pods here are gone. Each
        refresh reaches every peer, so beyond STATUS_REFRESH_SCALE workloads the period grows
        with the catalog (a peer then hears O(1) refreshes a second, not O(workloads)), up to
        half the trust ledger's deliver_within."""
        last: dict = {}
        sent_at: dict = {}
        while True:
            await self.agent.changed()
            now = trio.current_time()
            # but well within the trust ledger's deliver_within: a peer that joined since the
            # last report learns the replica runs from the next refresh, or counts it undelivered
            refresh = min(STATUS_REFRESH * max(1.0, len(self.placement.catalog.entries) / STATUS_REFRESH_SCALE),
                          max(STATUS_REFRESH, self.placement.trust.deliver_within / 2))
            mine = {d.key: d for d, _ in self.placement.catalog.mine()}
            keys = set(mine) | {k for k in last if last[k]} | self._keys_with_pods()
            for key in sorted(keys):
                d = mine.get(key) or self.placement.catalog.entries.get(key)
                rows = self._local_rows(key, d)
                if rows == last.get(key) and now - sent_at.get(key, -1e9) < refresh:
                    continue
                try:
                    await self.placement.publish_status(key, d.generation if d else 0, rows)
                except Exception as exc:  # the mesh may be down; the next pass retries
                    log.debug("status report failed: %s", exc)
                    continue
                last[key], sent_at[key] = rows, now

    def _keys_with_pods(self) -> set:
        return {(p.labels.get(render.NAMESPACE), p.labels.get(render.KIND), p.labels.get(render.WORKLOAD))
                for p in self.agent.observed.values()}

    def _local_rows(self, key, d) -> list[dict]:
        if d is None or d.deleted:
            w = SimpleNamespace(key=key)
        else:
            w = self.placement.workload(d)
        rows = self.agent.replicas(SimpleNamespace(workload=w), self.peer_id)
        ports = {}
        for dp in self.agent.desired.values():
            if dp.workload.key == key and dp.pod in self.agent.observed:
                ports[dp.replica] = [_port(dp.replica, p.host_ip, p.host_port, p.container_port, p.protocol)
                                     for p in dp.spec.ports]
        if d is not None and (why := self.placement.refusal(d)):  # node-local policy: not here
            for ordinal, (replica, peer) in enumerate(d.assignments):
                if peer == self.peer_id:
                    rows.append(replica_row(replica, ordinal, d.generation, "refused", False, why, None,
                                            rc.ReplicaMemory(), self.peer_id))
        # No lease here: its expiry moves with every renewal, and a report is re-sent on any change
        # (members of the group show leases from their own table, see rows()).
        return [{**r, "ports": ports.get(r["name"], [])} for r in rows]

    # -- logs --------------------------------------------------------------------------------------
    def log_sources(self, name, namespace, replica, container) -> list[tuple[str, str, str]]:
        """(podman pod, replica, container) triples to read, checked before streaming starts.
        Only replicas running on this peer; others are named in the error."""
        d = self.placement.find(name, namespace or "default")
        w = self.placement.workload(d)
        if w.template is None:
            raise errors.InvalidParameter("name", f"{w.kind} {name} has no pods")
        names = [c.name for c in w.template.containers]
        if replica is not None and d.peer_of(replica) not in (None, self.peer_id):
            return []  # it runs elsewhere: remote_logs() fetches it
        if container is not None and container not in names:
            raise errors.InvalidParameter("container", f"{name} has no container {container}")
        out = []
        for d in sorted(self.agent.desired.values(), key=lambda d: d.ordinal):
            if d.workload.key != w.key or (replica is not None and d.replica != replica):
                continue
            if d.pod in self.agent.observed:
                out += [(d.pod, d.replica, c) for c in names if container in (None, c)]
        if replica is not None and not any(r == replica for _, r, _ in out):
            raise errors.InvalidParameter("replica", f"{replica} is not a running replica of {name}")
        return out

    def _remote_peers(self, d: Decision, replica) -> list[str]:
        return sorted({p for r, p in d.assignments if p is not None and p != self.peer_id
                       and (replica is None or r == replica)})

    async def remote_logs(self, name, namespace, replica, container, tail, follow,
                          followed_here: frozenset = frozenset()) -> AsyncIterator[dict]:
        """Lines of the replicas that run on other peers, asked of those peers. Followed, each
        peer is asked every FOLLOW_POLL seconds for lines newer than the last it sent, and the
        peers are re-read from the current decision each time — a replica that moves is followed
        to its new peer; a peer that stops answering is skipped until it does (or loses it).
        Replicas that come to this peer after `followed_here` was taken are read the same way."""
        d = self.placement.find(name, namespace or "default")
        body = {"namespace": d.key[0], "name": d.key[2], "replica": replica, "container": container, "tail": tail}
        if not follow:
            for peer in self._remote_peers(d, replica):
                reply = await self.placement.mesh.request(peer, PROTO_LOGS, body, 10.0)
                for line in reply.get("lines", ())[:MAX_REMOTE_LINES]:
                    yield _log_line(line)
            return
        since: dict[str, int] = {}
        while True:
            try:
                await self.prepare(d.key[2], d.key[0], d.key[1])
                d = self.placement.find(d.key[2], d.key[0], d.key[1])
            except errors.WorkloadNotFound:
                return  # deleted: the stream ends, as a followed log ends when its container goes
            peers = self._remote_peers(d, replica)
            if any(p == self.peer_id and r not in followed_here and replica in (None, r) for r, p in d.assignments):
                peers.append(self.peer_id)
            for peer in peers:
                ask = dict(body, tail=tail if peer not in since else None, sinceUSec=since.get(peer))
                try:
                    if peer == self.peer_id:
                        reply = await self._local_lines(ask, skip=followed_here)
                    else:
                        reply = await self.placement.mesh.request(peer, PROTO_LOGS, ask, 5.0)
                except Exception as exc:  # unreachable or failing: ask again next round
                    log.debug("following logs on %s: %s", peer, exc)
                    continue
                since.setdefault(peer, 0)
                for line in reply.get("lines", ())[:MAX_REMOTE_LINES]:
                    out = _log_line(line)
                    since[peer] = max(since[peer], int(out["timestampUSec"]))
                    yield out
            await trio.sleep(FOLLOW_POLL)

    async def _handle_logs(self, env) -> dict:
        return await self._local_lines(env.payload)

    async def _local_lines(self, p: dict, skip: frozenset = frozenset()) -> dict:
        try:
            sources = self.log_sources(str(p["name"]), str(p["namespace"]), p.get("replica"), p.get("container"))
            sources = [s for s in sources if s[1] not in skip]
        except errors.InvalidParameter:
            if p.get("sinceUSec") is None:
                raise
            return {"lines": []}  # a followed replica not (yet, or no longer) running here
        tail, since = p.get("tail"), p.get("sinceUSec")
        lines = [x async for x in self.logs(sources, None if tail is None else int(tail), False)]
        if since is not None:
            lines = [x for x in lines if x["timestampUSec"] > int(since)]
        return {"lines": lines[-MAX_REMOTE_LINES:]}

    def logs(self, sources, tail, follow) -> AsyncIterator[dict]:
        return logstream.stream(self.runtime, self.agent.spawn, sources, tail, follow)

    def all_logs(self, sources, name, namespace, replica, container, tail, follow) -> AsyncIterator[dict]:
        """This peer's lines and the other peers' (merged as they come when followed)."""
        local = self.logs(sources, tail, follow)
        far = self.remote_logs(name, namespace, replica, container, tail, follow,
                               followed_here=frozenset(r for _, r, _ in sources))
        if follow:
            return logstream.merge(self.agent.spawn, [local, far])
        return logstream.chain([local, far])


def _log_line(line: dict) -> dict:
    return {k: line[k] for k in ("replica", "container", "stream", "timestampUSec", "line")}


class _Changes:
    """What a wait re-checks after: an agent pass (replicas here) or a placement change
    (decisions, remote status — those poke the agent only when they concern this peer)."""

    def __init__(self, agent: Agent, placement: Placement):
        self.agent, self.placement = agent, placement

    async def changed(self) -> None:
        placed = self.placement.changed()
        async with trio.open_nursery() as nursery:
            async def first(wait) -> None:
                await wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(first, self.agent.changed)
            nursery.start_soon(first, placed.wait)


def _port(replica, host_ip, host_port, container_port, protocol) -> dict:
    return {"replica": replica, "hostIP": host_ip, "hostPort": host_port, "containerPort": container_port,
            "protocol": protocol.upper()}


def _decisions(d: Decision) -> list[dict]:
    rules = dict(d.rules)
    declined = [{"peer": p, "reason": r} for p, r in d.declined]
    return [{"replica": r, "peer": p, "rule": rules.get(r, ""), "bids": list(d.bids), "declined": declined,
             "decidedUSec": d.decided_usec} for r, p in d.assignments]
