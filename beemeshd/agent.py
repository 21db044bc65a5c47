"""The local agent: a trio loop that makes this peer's runtime match the desired state.

Each pass observes the runtime, lets the pure core (core/reconcile.py) decide, and carries out its
actions in the background (bounded). Probes run here too; their results feed the core. When the
runtime does not answer, the agent changes nothing — an empty observation must never be mistaken
for "all pods are gone" — and retries on the next pass.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from beemeshd import errors
from beemeshd.core import reconcile as rc
from beemeshd.core import render
from beemeshd.events import EventBus, make_event
from beemeshd.model import Probe
from beemeshd.runtime.base import ObservedPod, Runtime, RuntimeFailure
from beemeshd.store import Record, Store

log = logging.getLogger("beemeshd.agent")

EVENT_FOR_STATE = {"running": "ReplicaRunning", "ready": "ReplicaReady", "failed": "ReplicaFailed"}


class Agent:
    def __init__(self, runtime: Runtime, store: Store, events: EventBus, *, host_ip: str = "127.0.0.1",
                 backoff: rc.Backoff = rc.Backoff(), interval: float = 1.0, max_parallel: int = 4,
                 clock: Callable[[], float] = trio.current_time, peer_id: str = "", wanted=None):
        # wanted: () -> iterable of (workload, generation[, replicas]) this peer should run;
        # default: every replica of every stored workload (a single peer).
        self.peer_id = peer_id
        self.remote_ready = lambda key, replica: False  # set by the placement layer
        # async (Desired) -> None, run right before a create; RuntimeFailure refuses it (set by
        # beemeshd/stateful.py: a StatefulSet ordinal starts only under a lease, past its fence)
        self.before_create = None
        self.wanted = wanted or (lambda: ((r.workload, r.generation) for r in self.store.list()))
        self.runtime = runtime
        self.store = store
        self.events = events
        self.host_ip = host_ip
        self.backoff = backoff
        self.interval = interval
        self.clock = clock
        self.limiter = trio.CapacityLimiter(max_parallel)
        self.desired: dict[str, rc.Desired] = {}
        self.observed: dict[str, ObservedPod] = {}
        self.memory: dict[str, rc.ReplicaMemory] = {}
        self.available: bool | None = None  # None until the first pass
        self.last_error: str | None = None
        self.passes = 0
        self._busy: set = set()  # actions and probes in flight, so a pass never repeats them
        self._wake = trio.Event()
        self._changed = trio.Event()
        self._nursery: trio.Nursery | None = None

    # -- loop ------------------------------------------------------------------------------------
    def spawn(self, fn, *args) -> None:
        """Run a background task in the agent's nursery (it lives as long as the daemon)."""
        assert self._nursery is not None, "agent not running"
        self._nursery.start_soon(fn, *args)

    def poke(self) -> None:
        """Run a pass now (after a Deploy, a finished action, ...)."""
        self._wake.set()

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            while True:
                try:
                    await self.reconcile_once()
                except Exception:  # a bug in one pass must not stop the agent
                    log.exception("reconcile pass failed")
                with trio.move_on_after(self.interval):
                    await self._wake.wait()
                self._wake = trio.Event()

    async def reconcile_once(self) -> None:
        now = self.clock()
        self.desired = rc.desired_pods(self.wanted(), self.host_ip, self.peer_id)
        try:
            pods = await self.runtime.list_pods({render.PEER: self.peer_id} if self.peer_id else None)
        except errors.RuntimeUnavailable as exc:
            if self.available is not False:
                log.warning("container runtime unavailable: %s (pods are left as they are)", exc.reason)
            self.available, self.last_error = False, exc.reason
            self._signal()
            return
        if self.available is False:
            log.info("container runtime is back")
        self.available, self.last_error = True, None
        self.observed = {p.name: p for p in pods}
        for name, d in self.desired.items():
            rc.observe(self._mem(name), self.observed.get(name), now, self.backoff)
        for action in rc.plan(self.desired, self.observed, self.memory, now, self.remote_ready):
            self._spawn(action)
        self._schedule_probes(now)
        self._publish_transitions(now)
        for name in list(self.memory):  # forget replicas that are neither wanted nor present
            if name not in self.desired and name not in self.observed and name not in self._busy:
                del self.memory[name]
        self.passes += 1
        self._signal()

    def _signal(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def changed(self) -> None:
        """Wait for the end of the next pass (or of a pod's creation)."""
        await self._changed.wait()

    def _mem(self, pod: str) -> rc.ReplicaMemory:
        return self.memory.setdefault(pod, rc.ReplicaMemory())

    # -- actions ---------------------------------------------------------------------------------
    def _spawn(self, action: rc.Action) -> None:
        # One create-or-remove per pod at a time: a remove racing a create of the same replica
        # (a decision that changed meanwhile) would otherwise undo it half-way.
        pod = action.desired.pod if isinstance(action, rc.Create) else action.pod
        key = ("restart", pod, action.container) if isinstance(action, rc.Restart) else ("pod", pod)
        if key in self._busy or self._nursery is None:
            return
        self._busy.add(key)
        now = self.clock()
        if isinstance(action, rc.Create):
            self._mem(action.desired.pod).creating = True
        elif isinstance(action, rc.Restart):
            rc.after_restart(self._mem(action.pod), action.container, now, self.backoff)
        self._nursery.start_soon(self._run_action, action, key)

    async def _run_action(self, action: rc.Action, key) -> None:
        try:
            async with self.limiter:
                if isinstance(action, rc.Create):
                    await self._create(action.desired)
                elif isinstance(action, rc.Remove):
                    log.info("removing pod %s: %s", action.pod, action.reason)
                    await self.runtime.remove_pod(action.pod)
                else:
                    log.info("restarting %s/%s: %s", action.pod, action.container, action.reason)
                    await self.runtime.restart_container(action.pod, action.container)
        except errors.RuntimeUnavailable as exc:
            log.warning("%s: runtime unavailable: %s", key, exc.reason)
        except RuntimeFailure as exc:
            log.warning("%s failed: %s", key, exc.reason)
            if isinstance(action, rc.Restart):
                self._mem(action.pod).message = exc.reason
        except Exception:  # a bug in one action must not take the daemon down
            log.exception("%s failed", key)
        finally:
            self._busy.discard(key)
            self.poke()

    async def _create(self, d: rc.Desired) -> None:
        m = self._mem(d.pod)
        try:
            if self.before_create is not None:
                await self.before_create(d)
            log.info("creating pod %s (%s %s/%s generation %d)", d.pod, d.workload.kind, d.workload.namespace,
                     d.workload.name, d.generation)
            pod = await self.runtime.create_pod(d.spec)
            m.failed_create, m.message = False, None
            # Seen as Podman reported it: a Deploy waiting for it is answered now, not one list
            # of every pod later (≈ 5 ms on Podman); the pass this action pokes lists them all.
            self.observed[pod.name] = pod
            rc.observe(m, pod, self.clock(), self.backoff)
            self._signal()
        except RuntimeFailure as exc:
            log.warning("creating pod %s failed: %s", d.pod, exc.reason)
            rc.after_create_failure(m, exc.reason, self.clock(), self.backoff)
            self.events.publish(make_event("ReplicaFailed", namespace=d.workload.namespace, name=d.workload.name,
                                           replica=d.replica, generation=d.generation, message=exc.reason))
        finally:
            m.creating = False

    # -- probes ----------------------------------------------------------------------------------
    def _schedule_probes(self, now: float) -> None:
        for name, d in self.desired.items():
            pod = self.observed.get(name)
            m = self._mem(name)
            if pod is None or pod.labels.get(render.TEMPLATE_HASH) != d.template_hash:
                continue
            for c in d.workload.template.containers:
                oc = pod.container(c.name)
                if oc is None or oc.state != "running":
                    continue
                for kind, probe in (("readiness", c.readiness_probe), ("liveness", c.liveness_probe)):
                    key = ("probe", name, c.name, kind)
                    if probe is None or key in self._busy:
                        continue
                    if rc.probe_due(m, c.name, kind, probe, m.running_since, now):
                        self._busy.add(key)
                        self._nursery.start_soon(self._probe, d, c.name, kind, probe, key)

    async def _probe(self, d: rc.Desired, container: str, kind: str, probe: Probe, key) -> None:
        try:
            ok = await self._check(d, container, probe)
        except errors.RuntimeUnavailable:
            return  # no verdict while the runtime is away
        except RuntimeFailure:
            ok = False  # e.g. exec into a container that just stopped
        except Exception:
            log.exception("probe of %s/%s failed", d.pod, container)
            return
        finally:
            self._busy.discard(key)
        if rc.record_probe(self._mem(d.pod), container, kind, probe, ok, self.clock()):
            log.info("%s probe of %s/%s now %s", kind, d.pod, container, "passing" if ok else "failing")
            self.poke()

    async def _check(self, d: rc.Desired, container: str, probe: Probe) -> bool:
        timeout = probe.timeout_seconds
        if probe.kind == "exec":
            return await self.runtime.exec(d.pod, container, list(probe.command), timeout) == 0
        published = next((p for p in d.spec.ports if p.container_port == probe.port and p.protocol == "tcp"), None)
        if published is not None:  # reachable from here: check from the outside, as a client would
            with trio.move_on_after(timeout):
                try:
                    stream = await trio.open_tcp_stream(published.host_ip or "127.0.0.1", published.host_port)
                except OSError:
                    return False
                async with stream:
                    if probe.kind == "tcpSocket":
                        return True
                    await stream.send_all(f"GET {probe.path} HTTP/1.0\r\nHost: localhost\r\n\r\n".encode())
                    head = b""
                    while b"\r\n" not in head and len(head) < 4096:
                        data = await stream.receive_some(4096)
                        if not data:
                            break
                        head += data
                    parts = head.split(b" ", 2)
                    return len(parts) >= 2 and parts[1].isdigit() and 200 <= int(parts[1]) < 400
            return False
        # Not published: pods have their own network namespace, so probe from inside the container
        # with the image's own tools (busybox wget / nc).
        if probe.kind == "tcpSocket":
            cmd = ["nc", "-z", "-w", str(timeout), "127.0.0.1", str(probe.port)]
        else:
            cmd = ["wget", "-q", "-T", str(timeout), "-O", "/dev/null", f"http://127.0.0.1:{probe.port}{probe.path}"]
        return await self.runtime.exec(d.pod, container, cmd, timeout + 1) == 0

    # -- status and events -----------------------------------------------------------------------
    def _publish_transitions(self, now: float) -> None:
        for name, d in self.desired.items():
            m = self._mem(name)
            state, _, message = rc.status(d, self.observed.get(name), m, now)
            if state != m.last_state:
                m.last_state = state
                if state in EVENT_FOR_STATE:
                    self.events.publish(make_event(EVENT_FOR_STATE[state], namespace=d.workload.namespace,
                                                   name=d.workload.name, replica=d.replica,
                                                   generation=d.generation, message=message))

    def replicas(self, rec: Record, peer_id: str | None) -> list[dict]:
        """Replica rows (interface type Replica) of a workload, by ordinal; pods being removed last."""
        now = self.clock()
        rows = []
        w = rec.workload
        for name, d in sorted(self.desired.items(), key=lambda kv: kv[1].ordinal):
            if d.workload.key != w.key:
                continue
            pod = self.observed.get(name)
            m = self._mem(name)
            state, ready, message = rc.status(d, pod, m, now)
            if self.available is False:
                message = f"runtime unavailable: {self.last_error}"
            probed = {c.name for c in d.workload.template.containers if c.readiness_probe is not None}
            rows.append(replica_row(d.replica, d.ordinal, d.generation, state, ready, message, pod, m,
                                     peer_id if pod is not None else None, probed))
        for name, pod in sorted(self.observed.items()):
            lb = pod.labels
            if name in self.desired or (lb.get(render.NAMESPACE), lb.get(render.KIND), lb.get(render.WORKLOAD)) != w.key:
                continue
            rows.append(replica_row(lb.get(render.REPLICA, name), int(lb.get(render.ORDINAL, "0")),
                                     int(lb.get(render.GENERATION, "0")), "stopping", False, "being removed",
                                     pod, self._mem(name), peer_id))
        return rows

    def ready_count(self, rec: Record) -> tuple[int, int, bool]:
        """(ready, wanted, settled) for a workload at its stored generation; settled means no pod
        of it is left over (scaled away or being replaced). Replicas count only once a pass has
        seen this generation, so a wait right after a Deploy cannot pass early."""
        key = rec.workload.key
        names = [render.pod_name(rec.workload.namespace, r) for r in rec.workload.replica_names()]
        ready = 0
        for name in names:
            d = self.desired.get(name)
            if d is not None and d.generation == rec.generation and rc.is_ready(d, self.observed.get(name), self._mem(name)):
                ready += 1
        leftovers = any(
            (p.labels.get(render.NAMESPACE), p.labels.get(render.KIND), p.labels.get(render.WORKLOAD)) == key
            and n not in names for n, p in self.observed.items())
        return ready, len(names), not leftovers

    def pods_of(self, key) -> list[str]:
        return [n for n, p in self.observed.items()
                if (p.labels.get(render.NAMESPACE), p.labels.get(render.KIND), p.labels.get(render.WORKLOAD)) == key]


def replica_row(replica, ordinal, generation, state, ready, message, pod, m, peer_id, probed=frozenset()) -> dict:
    containers = []
    if pod is not None:
        for oc in pod.containers:
            # Without a readiness probe a running container is ready; with one, only once it passes.
            verdict = m.probes.get((oc.name, "readiness"))
            probe_ok = verdict.passing if verdict is not None else oc.name not in probed
            containers.append({
                "name": oc.name, "image": oc.image, "state": oc.state,
                "ready": oc.state == "running" and probe_ok,
                "restarts": m.container_restarts.get(oc.name, 0),
                "exitCode": oc.exit_code if oc.state != "running" else None,
            })
    return {
        "name": replica, "ordinal": ordinal, "peer": peer_id, "state": state, "ready": ready,
        "restarts": m.restarts, "podId": pod.id if pod is not None else None, "generation": generation,
        "message": message, "containers": containers, "lease": None,
    }
