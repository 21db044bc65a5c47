"""The pod side of StatefulSets: an ordinal's pod runs here only under this peer's lease.

- `wanted()` filters placement's wishes for the agent: a stateful ordinal is wanted here only
  while this peer may run it (with `Settings.start_headroom` to spare before starting);
- `before_create()` checks again right before the agent's create, refuses a token lower than the
  fence file's (the ordinal ran here under a higher one), writes the new token (fsync'd) and the
  lease file the watchdog reads;
- the enforcement loop (every ENFORCE_INTERVAL) stops at once every stateful pod here whose lease
  is gone or about to go, adopts the pods a previous daemon left (kept only under a lease — a
  valid lease file of the same boot counts until this peer is back in its group), refreshes the
  lease files after renewals, and notes pods that are gone;
- every start (create issued) and stop (pod gone) is logged as `lease history {json}` on
  CLOCK_MONOTONIC, for beemeshd.core.history_check;
- the lease watchdog (beemeshd/lease_watchdog.py) is started with the first stateful pod.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass

import trio

from beemeshd import errors
from beemeshd.core import render
from beemeshd.core.catalog import Key
from beemeshd.runtime.base import FENCE_FILE, RuntimeFailure
from beemeshd.stateful_files import StatefulFiles

log = logging.getLogger("beemeshd.stateful")

ENFORCE_INTERVAL = 0.2


@dataclass
class LocalPod:
    key: Key
    ordinal: int
    token: int | None
    stopping: bool = False
    deadline: float | None = None  # what the lease file says (watchdog)
    adopted: bool = False


class PodGuard:
    def __init__(self, leases, agent, runtime, files: StatefulFiles, watchdog: list[str] | None = None):
        self.leases = leases  # beemeshd.stateful.Stateful: members, settings, clocks
        self.agent, self.runtime, self.files = agent, runtime, files
        self.peer_id = leases.peer_id
        self.settings = leases.settings
        self.holder_clock = leases.holder_clock
        self.members = leases.members
        self.pods: dict[str, LocalPod] = {}  # stateful pods of this peer, by pod name
        self.watchdog = watchdog  # argv of the lease watchdog (None: none, e.g. tests)
        self.stopping = False
        self._watchdog_proc = None
        self._runnable: set[tuple[Key, int]] = set()
        self._removed: set[str] = set()  # pods we removed that the agent may still list
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await self._enforce_loop()

    async def stop_all(self) -> None:
        """Stop every stateful pod here (the daemon is stopping; `stopping` is set)."""
        while self.agent_creating():
            await trio.sleep(0.05)
        self.enforce_once()  # adopts what the agent just created
        for name, p in list(self.pods.items()):
            await self._stop(name, p, "beemeshd is stopping")

    def has_pods(self, key: Key) -> bool:
        return bool(self.agent.pods_of(key)) or any(p.key == key for p in self.pods.values())

    def has_pod(self, key: Key, ordinal: int) -> bool:
        return any(p.key == key and p.ordinal == ordinal for p in self.pods.values())

    def wanted(self, inner):
        """Filter placement's wishes: a stateful ordinal runs only under a lease."""
        for record in inner():
            w, generation, replicas = record
            if not w.is_stateful:
                yield record
                continue
            if self.stopping:
                yield w, generation, []
                continue
            names = w.replica_names()
            keep = [r for r in replicas if r in names and self._may_run(w.key, names.index(r), w.namespace, r)]
            yield w, generation, keep

    def _may_run(self, key: Key, ordinal: int, namespace: str, replica: str) -> bool:
        m = self.members.get(key)
        if m is None:
            return False
        pod = render.pod_name(namespace, replica)
        if pod in self.agent.observed or pod in self.pods:
            return self.token_now(key, ordinal, pod) is not None
        return m.machine.may_run(ordinal, self.settings.start_headroom) is not None

    def token_now(self, key: Key, ordinal: int, pod: str | None = None) -> int | None:
        """The token under which the ordinal may run here now (None: it must not)."""
        m = self.members.get(key)
        token = m.machine.may_run(ordinal) if m is not None else None
        if token is None and pod is not None and m is None:
            # right after a restart, before this peer is back in the group: the lease file the
            # previous daemon wrote (same boot, CLOCK_BOOTTIME) still proves the lease
            doc = self.files.lease(pod)
            if doc is not None and self.holder_clock() < float(doc["deadline"]) - self.settings.lease.stop_margin / 2:
                token = int(doc["token"])
        return token

    async def before_create(self, d) -> None:
        """The last check before the agent creates a pod (RuntimeFailure refuses it)."""
        w = d.workload
        if not w.is_stateful:
            return
        if self.stopping:
            raise RuntimeFailure("beemeshd is stopping")
        m = self.members.get(w.key)
        token = m.machine.may_run(d.ordinal, self.settings.start_headroom) if m is not None else None
        if token is None:
            raise RuntimeFailure(f"{d.replica} holds no lease here (yet)")
        fence = self.files.fence(w.namespace, w.name, d.ordinal)
        in_volumes = await self._volume_fence(d)
        if in_volumes > fence:  # e.g. the state directory was wiped, or the volume brought in:
            # raising the file here raises the floor this peer reports, so the next grant beats it
            await trio.to_thread.run_sync(self.files.set_fence, w.namespace, w.name, d.ordinal, in_volumes)
            fence = in_volumes
        if fence > token:  # the keeper raises the group's floor to it; the next grant beats it
            raise RuntimeFailure(f"{d.replica} is fenced: it last ran here under token {fence}, "
                                 f"the lease now has {token}")
        valid_until = m.machine.holder.valid_until(d.ordinal)
        deadline = valid_until - self.settings.lease.stop_margin / 2
        for _, vol in d.spec.claims:  # the token travels with the data (e.g. `podman volume export`)
            await self.runtime.write_volume_file(vol, FENCE_FILE, f"{int(token)}\n".encode())
        await trio.to_thread.run_sync(self._persist_start, w, d, token, deadline)
        self.pods[d.pod] = LocalPod(w.key, d.ordinal, token, deadline=deadline)
        self._history("start", w.key, d.ordinal, token)
        self._ensure_watchdog()

    async def _volume_fence(self, d) -> int:
        """The highest token in the fence files of the ordinal's claim volumes (created here when
        missing: a fresh volume holds none)."""
        highest = 0
        for claim, vol in d.spec.claims:
            await self.runtime.ensure_volume(vol, d.spec.claim_labels(claim))
            raw = await self.runtime.read_volume_file(vol, FENCE_FILE)
            try:
                highest = max(highest, int((raw or b"0").decode("ascii", "replace").strip() or 0))
            except ValueError:  # the container can write there; a damaged file counts as none
                log.warning("%s: ignoring the unreadable fence file in volume %s", d.replica, vol)
        return highest

    def _persist_start(self, w, d, token: int, deadline: float) -> None:
        self.files.set_fence(w.namespace, w.name, d.ordinal, token)
        self.files.write_lease(d.pod, deadline, token, f"{w.namespace}/{d.replica}", self.peer_id)

    def _history(self, kind: str, key: Key, ordinal: int, token: int | None) -> None:
        line = {"t": time.monotonic(), "ordinal": f"{key[0]}/{key[2]}-{ordinal}", "peer": self.peer_id,
                "token": token, "kind": kind}
        log.info("lease history %s", json.dumps(line))

    # -- enforcement ----------------------------------------------------------------------------------
    async def _enforce_loop(self) -> None:
        while True:
            try:
                self.enforce_once()
            except Exception:  # a bug here must not end enforcement
                log.exception("stateful enforcement failed")
            await trio.sleep(ENFORCE_INTERVAL)

    def enforce_once(self) -> None:
        """Stop every stateful pod here that may not run; refresh the watchdog's lease files;
        note pods that are gone."""
        self._removed &= set(self.agent.observed)  # the agent's list caught up with our removals
        for name, pod in self.agent.observed.items():
            lb = pod.labels
            if lb.get(render.KIND) != "StatefulSet" or name in self.pods or name in self._removed:
                continue
            # A pod this daemon did not start (it ran before a restart: its start is in the
            # previous daemon's log) is adopted, and kept only under a lease.
            key = (lb.get(render.NAMESPACE), "StatefulSet", lb.get(render.WORKLOAD))
            ordinal = int(lb.get(render.ORDINAL, "0") or 0)
            self.pods[name] = LocalPod(key, ordinal, self.token_now(key, ordinal, name), adopted=True)
        runnable = set()
        for name, p in list(self.pods.items()):
            if p.stopping:
                continue
            token = None if self.stopping else self.token_now(p.key, p.ordinal, name)
            if token is None or token != p.token:
                if p.adopted and p.token is None and token is not None:
                    p.token = token  # back in the group and still the holder: keep it running
                    continue
                p.stopping = True
                self._nursery.start_soon(self._stop, name, p, "its lease is gone" if token is None
                                         else f"the lease moved to token {token}")
                continue
            runnable.add((p.key, p.ordinal))
            m = self.members.get(p.key)
            until = m.machine.holder.valid_until(p.ordinal) if m is not None else None
            if until is not None and until - self.settings.lease.stop_margin / 2 != p.deadline:
                p.deadline = until - self.settings.lease.stop_margin / 2
                self.files.write_lease(name, p.deadline, p.token, f"{p.key[0]}/{p.key[2]}-{p.ordinal}", self.peer_id)
        for name, p in list(self.pods.items()):
            if not p.stopping and name not in self.agent.observed and name not in self.agent_creating():
                self._gone(name, p)
        for m in self.members.values():
            for o in m.machine.holder.held:
                if m.machine.may_run(o, self.settings.start_headroom) is not None:
                    runnable.add((m.key, o))
        if runnable != self._runnable:
            self._runnable = runnable
            self.agent.poke()

    def agent_creating(self) -> set[str]:
        return {n for n, mem in self.agent.memory.items() if mem.creating}

    async def _stop(self, name: str, p: LocalPod, why: str) -> None:
        log.info("stopping %s: %s", name, why)
        try:
            await self.runtime.remove_pod(name)
        except (errors.RuntimeUnavailable, RuntimeFailure) as exc:
            log.warning("could not stop %s: %s (the lease watchdog will, at its deadline)", name, exc)
            p.stopping = False
            return
        self._gone(name, p)

    def _gone(self, name: str, p: LocalPod) -> None:
        if self.pods.get(name) is p:
            del self.pods[name]
            self._removed.add(name)
            self.files.drop_lease(name)
            self._history("stop", p.key, p.ordinal, p.token)
            self.agent.poke()

    # -- the lease watchdog ---------------------------------------------------------------------------
    def _ensure_watchdog(self) -> None:
        if self.watchdog is None:
            return
        if self._watchdog_proc is not None and self._watchdog_proc.poll() is None:
            return
        try:  # its own session: a SIGKILL of the daemon (or of its process group) must not reach it
            self._watchdog_proc = subprocess.Popen([*self.watchdog], start_new_session=True, cwd="/",
                                                   stdin=subprocess.DEVNULL)
        except OSError as exc:
            log.error("cannot start the lease watchdog: %s", exc)


def watchdog_argv(state_dir, endpoint: str, podman_args: list[str]) -> list[str]:
    return [sys.executable, "-m", "beemeshd.lease_watchdog", str(state_dir), endpoint, str(os.getpid()),
            *podman_args]
