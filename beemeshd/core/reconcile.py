"""Desired replicas vs observed pods -> actions (pure: no I/O, time is an argument).

The agent (beemeshd/agent.py) observes the runtime, calls `observe()` to update each replica's
memory, then `plan()` for the actions to take, and `status()` for what clients see. Rules:

- a desired replica without a pod is created (StatefulSet OrderedReady: only once the previous
  ordinal is ready); a pod nobody wants is removed (StatefulSet OrderedReady scale-down: highest
  ordinal first, one at a time) — this is also how a restarted daemon adopts its pods: a pod
  whose labels name a desired replica with the same template is simply kept;
- a pod from an older template is replaced one replica at a time, highest ordinal first, and only
  while every other replica of its workload is ready (a rolling update, maxUnavailable = 1);
- an exited container is restarted as restartPolicy says (Always; OnFailure on non-zero exit),
  a container failing its liveness probe is restarted; both with exponential back-off
  (base, 2·base, 4·base ... cap) that resets after the container ran `reset_after` seconds;
- a failed create is retried with the same back-off.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from beemeshd.core import render
from beemeshd.model import Probe, Workload
from beemeshd.runtime.base import ObservedPod, PodSpec


@dataclass(frozen=True)
class Backoff:
    base: float = 1.0
    cap: float = 60.0
    reset_after: float = 60.0

    def next(self, current: float) -> float:
        return self.base if current <= 0 else min(self.cap, current * 2)


@dataclass(frozen=True)
class Desired:
    workload: Workload
    generation: int
    ordinal: int
    replica: str
    spec: PodSpec
    template_hash: str

    @property
    def pod(self) -> str:
        return self.spec.name


@dataclass
class ProbeState:
    successes: int = 0
    failures: int = 0
    passing: bool = False
    next_due: float = 0.0


@dataclass
class ReplicaMemory:
    """What the agent remembers about one replica between passes (lost on restart: harmless)."""

    restarts: int = 0
    backoff: float = 0.0
    not_before: float = 0.0  # no create/restart before this time
    message: str | None = None
    creating: bool = False
    failed_create: bool = False
    running_since: float | None = None
    probes: dict[tuple[str, str], ProbeState] = field(default_factory=dict)
    container_restarts: dict[str, int] = field(default_factory=dict)
    last_state: str = "pending"


@dataclass(frozen=True)
class Create:
    desired: Desired


@dataclass(frozen=True)
class Remove:
    pod: str
    reason: str


@dataclass(frozen=True)
class Restart:
    pod: str
    container: str
    reason: str


Action = Create | Remove | Restart


def desired_pods(records: Iterable[tuple], host_ip: str, peer_id: str = "") -> dict[str, Desired]:
    """Pods this peer should run. Each record is (workload, generation) — every replica — or
    (workload, generation, replicas) — only those replica names (the ones placed here)."""
    out = {}
    for record in records:
        w, generation = record[0], record[1]
        only = set(record[2]) if len(record) > 2 else None
        if w.template is None:
            continue  # a Service runs nothing
        h = render.template_hash(w)
        for ordinal, replica in enumerate(w.replica_names()):
            if only is not None and replica not in only:
                continue
            # The ordinal picks the publish address (base + ordinal on loopback): stable whatever
            # else runs here, so a replica moving in never collides with one already running.
            spec = render.render(w, ordinal, generation, host_ip=host_ip, local_index=ordinal, peer_id=peer_id)
            out[spec.name] = Desired(w, generation, ordinal, replica, spec, h)
    return out


# -- observation ----------------------------------------------------------------------------------
def observe(mem: ReplicaMemory, pod: ObservedPod | None, now: float, backoff: Backoff) -> None:
    running = pod is not None and bool(pod.containers) and all(c.state == "running" for c in pod.containers)
    if not running:
        mem.running_since = None
    elif mem.running_since is None:
        mem.running_since = now
    elif now - mem.running_since >= backoff.reset_after:
        mem.backoff = 0.0  # it ran long enough: the next failure restarts at once again


def record_probe(mem: ReplicaMemory, container: str, kind: str, probe: Probe, ok: bool, now: float) -> bool:
    """Feed one probe result; returns True when the probe's verdict changed."""
    st = mem.probes.setdefault((container, kind), ProbeState(passing=(kind == "liveness")))
    before = st.passing
    if ok:
        st.successes += 1
        st.failures = 0
        if st.successes >= probe.success_threshold:
            st.passing = True
    else:
        st.failures += 1
        st.successes = 0
        if st.failures >= probe.failure_threshold:
            st.passing = False
    st.next_due = now + probe.period_seconds
    return st.passing != before


def probe_due(mem: ReplicaMemory, container: str, kind: str, probe: Probe, running_since: float | None,
              now: float) -> bool:
    if running_since is None or now < running_since + probe.initial_delay_seconds:
        return False
    st = mem.probes.get((container, kind))
    return st is None or now >= st.next_due


def after_restart(mem: ReplicaMemory, container: str, now: float, backoff: Backoff) -> None:
    mem.restarts += 1
    mem.container_restarts[container] = mem.container_restarts.get(container, 0) + 1
    mem.backoff = backoff.next(mem.backoff)
    mem.not_before = now + mem.backoff
    mem.running_since = None
    for (c, _kind), st in list(mem.probes.items()):
        if c == container:  # a restarted container starts its probes from scratch
            del mem.probes[(c, _kind)]


def after_create_failure(mem: ReplicaMemory, reason: str, now: float, backoff: Backoff) -> None:
    mem.failed_create = True
    mem.message = reason
    mem.backoff = backoff.next(mem.backoff)
    mem.not_before = now + mem.backoff


# -- decisions ------------------------------------------------------------------------------------
def is_ready(d: Desired, pod: ObservedPod | None, mem: ReplicaMemory) -> bool:
    if pod is None or pod.labels.get(render.TEMPLATE_HASH) != d.template_hash:
        return False
    for c in d.workload.template.containers:
        oc = pod.container(c.name)
        if oc is None or oc.state != "running":
            return False
        if c.readiness_probe is not None:
            st = mem.probes.get((c.name, "readiness"))
            if st is None or not st.passing:
                return False
    return True


def _serving(pod: ObservedPod, m: ReplicaMemory) -> bool:
    """Whether a pod of an older template still serves: all running, no readiness verdict failing."""
    running = bool(pod.containers) and all(c.state == "running" for c in pod.containers)
    return running and all(st.passing for (_, kind), st in m.probes.items() if kind == "readiness")


def _should_restart(policy: str, exit_code: int | None) -> bool:
    return policy == "Always" or (policy == "OnFailure" and exit_code != 0)


def plan(desired: dict[str, Desired], observed: dict[str, ObservedPod], memory: dict[str, ReplicaMemory],
         now: float, remote_ready=lambda key, replica: False) -> list[Action]:
    """remote_ready(workload key, replica name): whether a replica running on another peer is
    ready (StatefulSet OrderedReady spans peers)."""
    actions: list[Action] = []
    mem = lambda pod: memory.setdefault(pod, ReplicaMemory())  # noqa: E731

    # Pods nobody wants.
    extras: dict[tuple, list[tuple[int, str]]] = defaultdict(list)
    for name, pod in observed.items():
        if name not in desired:
            key = (pod.labels.get(render.NAMESPACE), pod.labels.get(render.KIND), pod.labels.get(render.WORKLOAD))
            extras[key].append((int(pod.labels.get(render.ORDINAL, "0") or 0), name))
    ordered = {d.workload.key for d in desired.values()
               if d.workload.is_stateful and d.workload.pod_management_policy != "Parallel"}
    for key, pods in extras.items():
        pods.sort(reverse=True)
        chosen = pods[:1] if key in ordered else pods
        actions += [Remove(name, "no longer desired") for _, name in chosen]

    by_workload: dict[tuple, list[Desired]] = defaultdict(list)
    for d in desired.values():
        by_workload[d.workload.key].append(d)

    for key, replicas in by_workload.items():
        replicas.sort(key=lambda d: d.ordinal)
        outdated = []
        for d in replicas:
            m = mem(d.pod)
            pod = observed.get(d.pod)
            if pod is None:
                if m.creating or now < m.not_before:
                    continue
                w = d.workload
                if w.is_stateful and w.pod_management_policy != "Parallel" and d.ordinal > 0:
                    prev_name = w.replica_names()[d.ordinal - 1]
                    prev = next((x for x in replicas if x.replica == prev_name), None)
                    ok = (is_ready(prev, observed.get(prev.pod), mem(prev.pod)) if prev is not None
                          else remote_ready(w.key, prev_name))
                    if not ok:
                        m.message = f"waiting for {prev_name} to be ready (OrderedReady)"
                        continue
                actions.append(Create(d))
                continue
            if pod.labels.get(render.TEMPLATE_HASH) != d.template_hash:
                outdated.append(d)
                continue
            actions += _container_actions(d, pod, m, now)
        if outdated:
            others_ready = all(is_ready(d, observed.get(d.pod), mem(d.pod)) for d in replicas if d not in outdated)
            not_ready = [d for d in outdated if not _serving(observed[d.pod], mem(d.pod))]
            if not_ready:  # they serve nothing: replace them all at once
                actions += [Remove(d.pod, "template changed") for d in not_ready]
            elif others_ready:
                actions.append(Remove(outdated[-1].pod, "template changed (rolling update)"))
    return actions


def _container_actions(d: Desired, pod: ObservedPod, m: ReplicaMemory, now: float) -> list[Action]:
    out: list[Action] = []
    policy = d.workload.template.restart_policy
    for c in d.workload.template.containers:
        oc = pod.container(c.name)
        if oc is None:
            return [Remove(d.pod, f"container {c.name} is missing")]
        if oc.state == "running":
            st = m.probes.get((c.name, "liveness"))
            if c.liveness_probe is not None and st is not None and not st.passing and now >= m.not_before:
                out.append(Restart(d.pod, c.name, "liveness probe failed"))
        elif oc.state in ("exited", "stopped", "dead"):
            if _should_restart(policy, oc.exit_code) and now >= m.not_before:
                out.append(Restart(d.pod, c.name, f"exited with code {oc.exit_code}"))
    return out


def status(d: Desired, pod: ObservedPod | None, m: ReplicaMemory, now: float) -> tuple[str, bool, str | None]:
    """(ReplicaState, ready, message) as the interface defines them."""
    if pod is None:
        if m.creating:
            return "creating", False, None
        if m.failed_create:
            return "failed", False, m.message
        return "pending", False, m.message
    if is_ready(d, pod, m):
        return "ready", True, None
    states = [pod.container(c.name) for c in d.workload.template.containers]
    if all(oc is not None and oc.state == "running" for oc in states):
        return "running", False, "readiness probe not passing yet"
    if any(oc is not None and oc.state in ("created", "configured", "initialized") for oc in states):
        return "creating", False, None
    exited = [oc for oc in states if oc is not None and oc.state != "running"]
    policy = d.workload.template.restart_policy
    if exited and all(oc.exit_code == 0 for oc in exited) and policy != "Always":
        return "succeeded", False, None
    codes = ", ".join(f"{oc.name} exited {oc.exit_code}" for oc in exited if oc.exit_code is not None)
    if any(_should_restart(policy, oc.exit_code) for oc in exited) and m.not_before > now:
        return "failed", False, f"{codes}; restarting in {m.not_before - now:.0f} s (back-off)"
    return "failed", False, codes or None
