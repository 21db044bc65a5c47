"""Placement over the mesh: announce, bid, decide, spread the decision, heal (no control plane).

- A Deploy/Scale/Delete on any peer becomes a `Decision` (core/catalog.py). For replicas that
  need a peer, that peer sends the `Task` (manifest included, for bid policies) to the live peers
  (signed direct requests, in parallel) — all of them in a small mesh, a random sample of
  `fanout` in a large one (power of d choices, as Sparrow and Nomad do: a placement costs O(d)
  messages, not O(n); the rest are asked only if the sample cannot place every replica); each
  evaluates it against its own state and policies (core/scheduler.py, `bid_gate`) and answers a
  signed bid or decline; after all answered (or `window` seconds) the asking peer runs `choose()` and
  gossips the decision on beemesh/events, bids and rules included (Explain shows them). Every peer merges decisions into
  its catalog in one deterministic order; the peers a replica is assigned to run it.
- Runners gossip their replicas' status, so Get/List/Watch answer from any peer.
- Large meshes (more than `broadcast_max` healthy peers): a Deployment's or Pod's decisions and
  status no longer reach every peer — that made every placement cost O(n) at every peer (the
  simulator measured 0.6 ms of CPU per Deployment per peer, so a 1,000-peer mesh paid 0.6 s for
  each). They are pushed to the workload's k holders (closest by XOR distance), its runners (before
  and after) and, for status, the peer that made the current decision. A peer that is neither
  holder nor runner asks the holders when it needs the workload (`ensure`, `list_all`);
  anti-entropy hands each workload to its new holders as the mesh changes. StatefulSets and
  Services still go to everyone (their groups and routes need them).
- Healing: when the failure detector suspects a peer (or, with `heal_on_suspect` off, declares it
  dead), the workload's healer (its closest live holder) places that peer's stateless replicas
  again among the others. Healing on suspicion halves failover; a peer that was only slow loses
  its stateless replicas once (they are duplicates for a moment, which stateless work tolerates). StatefulSet
  replicas are not moved (they wait for leases, issue 9) and say so.
- Anti-entropy: every SYNC_INTERVAL a peer swaps catalog digests with a random live peer, so a
  restarted or partitioned peer catches up on decisions it missed.
- Partial views (a mesh beyond the membership's view_max, core/routing.py): a peer no longer
  knows every peer, so before it pushes a workload's news to its holders it looks them up
  (`locate`: a Kademlia lookup, cached LOCATE_TTL); a holder knows its co-holders (they are in
  its neighbourhood) and pins the workload's runners in its view, so it notices their death
  and heals. A peer the view does not hold is not taken for dead. Anti-entropy there goes to a
  neighbour (the co-holders are neighbours; a random table peer shares nothing with us), and a
  peer whose catalog is empty does it IDLE_SYNC times less often (most peers of a large mesh
  hold nothing; hand-over gives a new holder its workloads).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import replace

import trio

from beemeshd import errors
from beemeshd.core import scheduler as sch
from beemeshd.core.catalog import DECISION_DOMAIN, Catalog, Decision, Key, holders, point_of
from beemeshd.core.manifest import parse_manifest
from beemeshd.core.protocol import MAX_ENVELOPE, TOPIC_EVENTS, Rejected, canonical
from beemeshd.core.trust import INVALID, TrustBook
from beemeshd.events import EventBus, make_event
from beemeshd.model import Workload

log = logging.getLogger("beemeshd.placement")

PROTO_CATALOG = "/beemesh/catalog/1"
PROTO_BID = "/beemesh/bid/1"
PROTO_PUSH = "/beemesh/event/1"
SYNC_INTERVAL = 3.0
IDLE_SYNC = 10  # a partial view with an empty catalog: anti-entropy every IDLE_SYNC × SYNC_INTERVAL
HEAL_INTERVAL = 1.0
HEAL_SWEEP = 5.0  # without news, a full healing pass this often (it costs O(peers + workloads))
HEAL_RETRY, HEAL_RETRY_MAX = 2.0, 60.0  # the same failed re-placement is tried again after this (doubling)
STATUS_REFRESH = 10.0
SCOPED_KINDS = ("Deployment", "Pod")  # kinds whose news goes to holders and runners only in a large mesh
FETCH_TIMEOUT = 2.0
LOCATE_TTL = 30.0  # a partial view: how long a lookup of a workload's holders is trusted
LIST_DEADLINE = 5.0  # a List in a large mesh answers with what came back by then


def now_usec() -> int:
    return time.time_ns() // 1000


def key_str(key: Key) -> str:
    return "/".join(key)


class Placement:
    def __init__(self, mesh, catalog: Catalog, events: EventBus, *, self_state: Callable[[], sch.PeerState],
                 window: float = 0.25, on_change: Callable[[], None] = lambda: None,
                 persist: Callable[[Catalog], None] = lambda c: None,
                 bid_gate: Callable[[dict, str, str | None], str | None] | None = None,
                 fanout: int = 16, heal_on_suspect: bool = True, rng: random.Random | None = None,
                 trust: TrustBook | None = None, broadcast_max: int = 64):
        self.mesh = mesh
        self.catalog = catalog
        self.events = events
        self.self_state = self_state
        self.window = window
        self.on_change = on_change  # e.g. poke the agent
        self.persist = persist
        # (manifest, origin peer, user there) -> a reason not to bid (node-local policy), or None.
        self.bid_gate = bid_gate
        self.fanout = fanout
        self.heal_on_suspect = heal_on_suspect
        self.rng = rng or random.Random()
        self.trust = trust or TrustBook()
        self.trust.runs_elsewhere = self._runs_elsewhere
        self.trust.judges = self._judges
        # key -> {(replica, peer)} promised and not delivered in time: healing moves them
        self._overdue: dict[Key, set[tuple[str, str]]] = {}
        # key -> ((generation, revision, signature), why or None): the node-local policies' verdict
        # on the replicas a decision hands this peer (refusal())
        self._verdicts: dict[Key, tuple[tuple, str | None]] = {}
        self._own_rows: dict[Key, list[dict]] = {}  # our replicas' last status report, per workload
        self._own_gen: dict[Key, int] = {}  # ... and the generation it was about
        self.peer_id = catalog.self_id
        self._nursery: trio.Nursery | None = None
        # remote replica status: key -> replica -> (peer, row, generation)
        self.status: dict[Key, dict[str, tuple[str, dict, int]]] = {}
        self._changed = trio.Event()
        self._parsed: dict[tuple[Key, int], Workload] = {}
        self._heal_tried: dict[Key, tuple] = {}
        self._status_seq: dict[tuple, int] = {}
        self._heal_now = trio.Event()
        self._stuck = False  # the last healing pass left replicas nobody could take
        self._seq = 0
        # Beyond this many healthy peers, scoped kinds' news goes to holders and runners only.
        self.broadcast_max = broadcast_max
        self._holders: dict[Key, list[str]] = {}  # cache, valid until the next peer event
        self._size: int | None = None  # healthy peers, likewise cached
        self._handed: dict[Key, frozenset[str]] = {}  # the holders each held workload was last pushed to
        self._borrowed: set[Key] = set()  # copies taken while this peer kept nothing of them
        self._located: dict[Key, tuple[float, list[str]]] = {}  # partial views: key -> (until, holders)

    # -- lifecycle ---------------------------------------------------------------------------------
    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        self.mesh.handle(PROTO_CATALOG, self._handle_catalog)
        self.mesh.handle(PROTO_BID, self._handle_bid)
        self.mesh.handle(PROTO_PUSH, self._handle_push)
        events = self.mesh.subscribe(TOPIC_EVENTS)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._consume, events, self._on_event)
            nursery.start_soon(self._heal_loop)
            nursery.start_soon(self._sync_loop)
            task_status.started()

    async def _consume(self, stream, handler) -> None:
        async for env in stream:
            await self._guarded(handler, env)

    async def _guarded(self, handler, env) -> bool:
        try:
            await handler(env)
            return True
        except (ValueError, KeyError, TypeError) as exc:  # well signed, badly shaped
            self._malformed(env.sender)
            log.debug("dropped %s from %s: %s", env.topic, env.sender, exc)
            return False

    def _malformed(self, sender: str, blame: bool = True) -> None:
        """Count a well-signed but badly shaped message; held against its sender unless told not."""
        self.mesh.counters["malformedMessages"] = self.mesh.counters.get("malformedMessages", 0) + 1
        if blame:
            self.trust.record(sender, INVALID, trio.current_time())

    def changed(self) -> trio.Event:
        return self._changed

    def _signal(self, local: bool = True) -> None:
        """Wake whoever waits on changed(); poke the agent (on_change) only when the change
        concerns replicas of this peer — in a large mesh nearly every change is about others."""
        self._changed.set()
        self._changed = trio.Event()
        if local:
            self.on_change()

    def _runs_here(self, d: Decision | None) -> bool:
        return d is not None and any(p == self.peer_id for _, p in d.assignments)

    # -- queries -----------------------------------------------------------------------------------
    def alive(self) -> list[str]:
        return sorted([self.peer_id, *self.mesh.peer_ids(("alive", "suspect"))])

    def healthy(self) -> list[str]:
        """Peers whose replicas stay put: alive ones, and suspects unless we heal on suspicion."""
        ok = ("alive",) if self.heal_on_suspect else ("alive", "suspect")
        return sorted([self.peer_id, *self.mesh.peer_ids(ok)])

    def size(self) -> int:
        """Healthy peers, this one included (cached until the next peer event); in a partial
        view, the mesh's size as the view suggests it."""
        if self._size is None:
            self._size = round(self.mesh.size_estimate()) if self.partial() else len(self.healthy())
        return self._size

    def partial(self) -> bool:
        """Whether this peer's view holds only part of the mesh (core/routing.py)."""
        return getattr(getattr(self.mesh, "membership", None), "partial", False)

    def up(self, peer: str | None) -> bool:
        """Whether a replica on `peer` stays put: it is healthy here — or, in a partial view,
        not held here at all (not tracked is not dead: its holders watch it)."""
        state = self.mesh.peer_state(peer) if peer else "none"
        return state in ("self", "alive", "suspect") or (state is None and self.partial())

    def scoped(self, key: Key) -> bool:
        """Whether this workload's news goes to its holders and runners only (a large mesh)."""
        return key[1] in SCOPED_KINDS and self.size() > self.broadcast_max

    def holders_of(self, key: Key) -> list[str]:
        """The workload's k holders among the healthy peers (cached until the next peer event:
        a computation walks every peer)."""
        hs = self._holders.get(key)
        if hs is None:
            if len(self._holders) > 4096:
                self._holders.clear()
            hs = holders(key, self.healthy(), self.catalog.k)
            found = self._located.get(key)
            if found is not None and found[0] > trio.current_time():  # a partial view: looked up
                hs = self._not_down(found[1])[:self.catalog.k] or hs
            self._holders[key] = hs
        return hs

    def _not_down(self, peers: list[str]) -> list[str]:
        """Looked-up peers, less those this view holds as down (one it does not hold may be up)."""
        ok = set(self.healthy())
        return [p for p in peers if p in ok or self.mesh.peer_state(p) is None]

    async def locate(self, key: Key) -> list[str]:
        """The workload's holders, looked up across the mesh when this peer's view is partial
        (cached LOCATE_TTL); holders_of otherwise."""
        await self._look_up(key, self.catalog.k)
        return self.holders_of(key)

    async def nearest(self, key: Key, k: int) -> list[str]:
        """The k healthy peers nearest to the workload's point (e.g. a StatefulSet's group, which
        may be larger than its holders); in a partial view looked up (sharing locate's cache),
        less those known to be down."""
        if not self.partial():
            return holders(key, self.healthy(), k)
        await self._look_up(key, k)
        return self._not_down(self._located[key][1])[:k]

    async def _look_up(self, key: Key, k: int) -> None:
        now = trio.current_time()
        found = self._located.get(key)
        if self.partial() and (found is None or found[0] <= now or len(found[1]) < k):
            hs = await self.mesh.lookup(point_of(key), max(k, self.catalog.k))
            if len(self._located) > 4096:
                self._located.clear()
            self._located[key] = (now + LOCATE_TTL, hs)
            self._holders.pop(key, None)

    def _pins(self) -> set[str]:
        """Peers a partial view must keep watching: the runners of the workloads this peer holds
        (it heals them), and those of the StatefulSets it runs a replica of (their consensus
        group talks peer to peer; a Deployment's runners need nothing of each other)."""
        out: set[str] = set()
        for key, d in self.catalog.entries.items():
            if not d.deleted and (self.peer_id in self.holders_of(key)
                                  or (key[1] == "StatefulSet" and self._runs_here(d))):
                out.update(p for _, p in d.assignments if p)
        return out

    def keeper(self, key: Key) -> bool:
        """A holder of the workload or a peer that runs it: every change reaches it."""
        return self.peer_id in self.holders_of(key) or self._runs_here(self.catalog.entries.get(key))

    def knows(self, key: Key) -> bool:
        """Whether this peer's copy of a workload is kept current: always in a small mesh; in a
        large one on its keepers, unless the copy came while this peer was none (it may be stale
        — e.g. the peer that took the Deploy, later made a holder by peers leaving)."""
        return not self.scoped(key) or (self.keeper(key) and key not in self._borrowed)

    def _judges(self, key: Key) -> bool:
        """Whether this peer still judges promises about a workload (see _hears_status): a peer
        that saw a small mesh (a newcomer's view fills up over seconds) or held a workload it no
        longer holds would otherwise count every replica as undelivered."""
        d = self.catalog.entries.get(key)
        return d is not None and not d.deleted and self._hears_status(d)

    def _hears_status(self, d: Decision) -> bool:
        """Whether status reports for this workload reach this peer (so its promises can be
        judged here): everywhere in a small mesh; holders and the deciding peer in a large one."""
        return not self.scoped(d.key) or d.origin == self.peer_id or self.peer_id in self.holders_of(d.key)

    def workload(self, d: Decision) -> Workload:
        """The parsed manifest of a decision (cached per generation)."""
        k = (d.key, d.generation)
        w = self._parsed.get(k)
        if w is None:
            w = self._parsed[k] = parse_manifest(d.manifest)
            for old in [x for x in self._parsed if x[0] == d.key and x[1] < d.generation]:
                del self._parsed[old]
        return w

    def wanted(self):
        """What the local agent should run: (workload, generation, replica names). Not what this
        peer's node-local policies refuse (see refusal)."""
        mine = list(self.catalog.mine())
        keys = {d.key for d, _ in mine}
        for key in [k for k in self._verdicts if k not in keys]:
            del self._verdicts[key]
        for d, replicas in mine:
            if self.refusal(d):
                continue
            try:
                yield self.workload(d), d.generation, replicas
            except errors.InvalidManifest as exc:  # a peer with a newer schema sent it
                log.error("cannot run %s: %s", key_str(d.key), exc)

    def refusal(self, d: Decision) -> str | None:
        """Why this peer will not run the replicas `d` hands it (a node-local policy denies
        them), or None. Bids are checked when asked, but a decision can hand a peer a replica it
        was never asked about: one kept where it runs across a new generation (a new image, say),
        or one a member placed without an auction. So the runner asks its policies again, once
        per decision, with the user the decision names. What it refuses it reports as "refused"
        and the healer places elsewhere; no trust is held against it."""
        if self.bid_gate is None or d.deleted or all(p != self.peer_id for _, p in d.assignments):
            return None
        mark = (d.generation, d.revision, d.signature)
        seen = self._verdicts.get(d.key)
        if seen is not None and seen[0] == mark:
            return seen[1]
        try:
            why = self.bid_gate(d.manifest, d.origin, d.user)
        except Exception as exc:  # a broken policy must not let anything through
            why = f"node-local policy failed: {exc}"
        self._verdicts[d.key] = (mark, why)
        if why:
            log.warning("not running %s (generation %d, placed here by %s): %s", key_str(d.key), d.generation,
                        d.origin, why)
        return why

    def remote_ready(self, key: Key, replica: str) -> bool:
        """Whether a replica on another peer reported itself ready at the current generation."""
        d = self.catalog.entries.get(key)
        entry = self.status.get(key, {}).get(replica)
        return (d is not None and entry is not None and entry[0] == d.peer_of(replica)
                and entry[1].get("ready") is True and entry[2] == d.generation)

    def find(self, name: str, namespace: str, kind: str | None = None) -> Decision:
        matches = [d for d in self.catalog.live()
                   if d.key[0] == namespace and d.key[2] == name and (kind is None or d.key[1] == kind)]
        if not matches:
            raise errors.WorkloadNotFound(name, namespace)
        matches.sort(key=lambda d: d.key[1] == "Service")  # the workload wins over its Service
        return matches[0]

    # -- changes (on the peer that took the call) --------------------------------------------------
    async def apply(self, w: Workload, *, reason: str = "apply", user: str | None = None) -> tuple[Decision, str]:
        """Place (or re-place) a workload; `user` is who asked, on this peer (bid policies see it)."""
        await self.ensure(w.namespace, w.name)  # a large mesh: the current generation is on its holders
        cur = self.catalog.entries.get(w.key)
        if cur is not None and cur.deleted:
            cur_w = None
        else:
            cur_w = self.workload(cur) if cur is not None else None
        if cur_w is not None and cur_w == w:
            return cur, "unchanged"
        for other in ("Pod", "Deployment", "StatefulSet"):
            if w.kind in ("Pod", "Deployment", "StatefulSet") and other != w.kind:
                clash = self.catalog.entries.get((w.namespace, other, w.name))
                if clash is not None and not clash.deleted:
                    raise errors.InvalidManifest("metadata.name", f"{other} {w.namespace}/{w.name} already exists; "
                                                 "its pods would share names")
        generation = cur.generation + 1 if cur is not None else 1
        keep = {r: p for r, p in (cur.assignments if cur is not None and cur_w is not None else ())
                if self.up(p)}
        replicas = list(w.replica_names())
        keep = {r: p for r, p in keep.items() if r in replicas}
        todo = [r for r in replicas if r not in keep]
        placed, rules, bids, declined = {}, {}, [], []
        if todo:
            held: dict[str, int] = {}
            for p in keep.values():
                held[p] = held.get(p, 0) + 1
            placed, rules, bids, declined = await self._auction(w, todo, held, user=user)
            if not keep and not any(placed.values()):
                raise errors.NoCapacity(w.name, [{"peer": p, "reason": r} for p, r in declined]
                                        or [{"peer": self.peer_id, "reason": "no peer answered"}])
        for r in keep:
            rules[r] = "kept: already runs there"
        created = cur.created_usec if cur is not None and cur_w is not None else now_usec()
        d = Decision(w.key, generation, w.manifest, tuple((r, keep.get(r) or placed.get(r)) for r in replicas),
                     tuple((r, rules.get(r, "")) for r in replicas), tuple(bids), tuple(declined), self.peer_id,
                     now_usec(), created, reason, user=user)
        await self.commit(d)
        return d, "created" if cur_w is None else "configured"

    async def delete(self, d: Decision) -> Decision:
        tomb = Decision(d.key, d.generation + 1, None, (), origin=self.peer_id, decided_usec=now_usec(),
                        created_usec=d.created_usec, reason="delete")
        await self.commit(tomb)
        return tomb

    async def commit(self, d: Decision) -> None:
        d = replace(d, origin=self.peer_id)  # (signed_part leaves any old signature out)
        d = replace(d, signature=self.mesh.signer.sign_detached(DECISION_DOMAIN, d.signed_part()))
        before = self.catalog.entries.get(d.key)
        self._merge(d)
        payload = {"type": "decision", "decision": d.to_wire()}
        if self.scoped(d.key):  # its holders, and whoever ran or now runs a replica
            runners = {p for _, p in d.assignments} | {p for _, p in (before.assignments if before else ())}
            self._push_to(set(await self.locate(d.key)) | runners, payload)
            self._handed[d.key] = frozenset(self.holders_of(d.key))
        else:
            await self._announce(payload)

    def _push_to(self, peers, payload: dict) -> None:
        for peer in sorted(p for p in peers if p and p != self.peer_id):
            if self._nursery is not None:
                self._nursery.start_soon(self._push, peer, payload)

    async def _announce(self, payload: dict) -> None:
        """Gossip an event; in a small mesh also push it to every live peer directly. GossipSub
        (py-libp2p 0.8) now and then loses a message right after a peer dies — a lost status
        report then waited STATUS_REFRESH (10 s) and failover p99 went from 2 s to 13 s. Receivers
        dedupe (decisions merge idempotently, status carries a sequence number)."""
        await self.mesh.publish(TOPIC_EVENTS, payload)
        others = [p for p in self.healthy() if p != self.peer_id]
        if self._nursery is not None and len(others) <= self.fanout:
            for peer in others:
                self._nursery.start_soon(self._push, peer, payload)

    async def _push(self, peer: str, payload: dict) -> None:
        try:
            await self.mesh.request(peer, PROTO_PUSH, payload, 2.0)
        except Exception as exc:  # gossip and anti-entropy still carry it
            log.debug("push to %s failed: %s", peer, exc)

    async def _handle_push(self, env) -> dict:
        if not await self._guarded(self._on_event, env):
            raise ValueError("malformed event")
        return {}

    # -- the auction -------------------------------------------------------------------------------
    async def _auction(self, w: Workload, replicas: list[str], elsewhere: dict[str, int] | None = None,
                       avoid: frozenset[str] = frozenset(), user: str | None = None):
        cpu, mem = w.template.requests()
        ports = tuple(sorted({(p.host_port, p.protocol.lower()) for c in w.template.containers
                              for p in c.ports if p.host_port}))
        task = sch.Task(f"{self.rng.getrandbits(128):032x}", key_str(w.key), 0, tuple(replicas), cpu, mem, ports,
                        w.template.node_selector, tuple(sorted({c.image for c in w.template.containers})),
                        self.peer_id)
        answers = {} if self.peer_id in avoid else {self.peer_id: self._evaluate(task, w.manifest, self.peer_id, user)}
        others = sorted(set(self.healthy()) - {self.peer_id} - avoid)
        wire = dict(_task_wire(task), manifest=w.manifest, user=user)
        # A large mesh: ask a random sample first, everyone else only if the sample falls short.
        first = others if len(others) <= self.fanout else self.rng.sample(others, max(self.fanout, 2 * len(replicas)))
        expected = set(first)
        await self._ask_all(task, wire, first, answers)
        if len(first) < len(others) and sum(isinstance(a, sch.Bid) for a in answers.values()) < len(replicas):
            rest = [p for p in others if p not in expected]
            expected.update(rest)
            await self._ask_all(task, wire, rest, answers)
        answers = {pid: self._judge(a) for pid, a in answers.items()}
        bids = [a for a in answers.values() if isinstance(a, sch.Bid)]
        declined = sorted((a.peer_id, a.reason) for a in answers.values() if isinstance(a, sch.Decline))
        declined += [(p, "did not answer in time") for p in sorted(expected - answers.keys())]
        decision = sch.choose(task, bids, elsewhere=elsewhere)
        placed = decision.peers()
        rules = {p.replica: p.rule for p in decision.placements}
        # Explain how trust moved it: the winners by every other part of the score alone.
        neutral = sch.choose(task, [replace(b, trust=0.5) for b in bids], elsewhere=elsewhere).peers()
        for r, peer in placed.items():
            if neutral.get(r) != peer and neutral.get(r) is not None:
                rules[r] += f"; trust moved it (without trust: {neutral[r]})"
        bid_views = [_bid_view(b, verified=True) for b in sch.rank(task.task_id, bids)]
        return placed, rules, bid_views, declined

    def _judge(self, a: sch.Bid | sch.Decline) -> sch.Bid | sch.Decline:
        """A bid as we see it: its trust part is ours, not its claim; an untrusted peer gets no work."""
        if not isinstance(a, sch.Bid):
            return a
        now = trio.current_time()
        score = self.trust.score(a.peer_id, now)
        if score < self.trust.threshold:
            bad = {k: v for k, v in self.trust.receipts(a.peer_id).items() if v and k != "delivered"}
            why = ", ".join(f"{v} {k}" for k, v in bad.items())
            return sch.Decline(a.peer_id, a.task_id, f"untrusted: trust {score:.2f} < {self.trust.threshold:.2f}"
                               + (f" ({why})" if why else ""))
        return replace(a, trust=round(score, 6))

    def _evaluate(self, task: sch.Task, manifest: dict, origin: str, user: str | None) -> sch.Bid | sch.Decline:
        """This peer's answer: node-local policy first (a deny means no bid), then capacity."""
        if self.bid_gate is not None:
            reason = self.bid_gate(manifest, origin, user)
            if reason:
                return sch.Decline(self.peer_id, task.task_id, reason)
        return sch.evaluate(task, self.self_state())

    async def _ask_all(self, task: sch.Task, wire: dict, peers: list[str], answers: dict) -> None:
        async def ask(peer: str) -> None:
            try:
                reply = await self.mesh.request(peer, PROTO_BID, {"task": wire}, self.window)
                answers[peer] = _answer_from_wire(peer, task.task_id, reply)
            except (ValueError, KeyError, TypeError):
                self._malformed(peer)
            except Exception as exc:  # unreachable, timed out, refused: it simply did not bid
                log.debug("no bid from %s: %s", peer, exc)

        async with trio.open_nursery() as nursery:
            for peer in peers:
                nursery.start_soon(ask, peer)

    async def _handle_bid(self, env) -> dict:
        """A peer asks for our bid on a task: evaluate it against our own state and answer.
        (Bids travel as signed direct request/reply: announcing on GossipSub and bidding there
        made 1–5 of 9 bids miss a 250 ms window under py-libp2p 0.8, see the README.)"""
        t = env.payload["task"]
        if t["origin"] != env.sender:
            raise ValueError("a task can only be announced by its origin")
        manifest = t.get("manifest")
        if not isinstance(manifest, dict):
            raise ValueError("a task carries its manifest")
        user = t.get("user")
        if user is not None and not isinstance(user, str):
            raise ValueError("user must be a string")
        answer = self._evaluate(_task_from_wire(t), manifest, env.sender, user)
        if isinstance(answer, sch.Bid):
            return {"type": "bid", "taskId": answer.task_id, "capacity": answer.capacity, "fit": answer.fit,
                    "locality": answer.locality, "reliability": answer.reliability, "trust": answer.trust}
        return {"type": "decline", "taskId": answer.task_id, "reason": answer.reason}

    # -- decisions and status ----------------------------------------------------------------------
    async def _on_event(self, env) -> None:
        p = env.payload
        if p.get("type") == "decision":
            # its envelope proves the sender, but the signature inside must hold too: we pass it on
            d = signed(p["decision"])
            if d.origin != env.sender:
                raise ValueError("decision not sent by its origin")
            if env.sender != self.peer_id:
                self._merge(d)
        elif p.get("type") == "handover":
            # a peer that keeps a workload hands it to a new holder: vouched for by that member,
            # as an anti-entropy reply is (decisions from their origins come as "decision")
            self._merge_passed_on(p["decision"], env.sender)
        elif p.get("type") == "status" and env.sender != self.peer_id:
            key = tuple(p["key"])
            # Gossip does not keep order: a report older than one already applied is stale.
            seq = int(p["seq"])
            if seq <= self._status_seq.get((key, env.sender), -1):
                return
            self._status_seq[(key, env.sender)] = seq
            table = self.status.setdefault(key, {})
            before = {r: row.get("state") for r, (peer, row, _) in table.items() if peer == env.sender}
            for name in before:
                del table[name]  # the sender's report replaces all it said before
            for row in p["rows"]:
                table[str(row["name"])] = (env.sender, dict(row), int(p["generation"]))
                self._row_event(key, env.sender, row, before.get(str(row["name"])))
                self._receipt(key, str(row["name"]), env.sender, str(row.get("state")))
            self._signal(self._runs_here(self.catalog.entries.get(key)))

    def _receipt(self, key: Key, replica: str, peer: str, state: str) -> None:
        """Trust evidence from a status row (judged in the heal loop, see core/trust.py). A
        replica its peer refuses (node-local policy) moves at once, without blame."""
        self.trust.reported(key, replica, peer, state, trio.current_time())
        if state in ("running", "ready"):
            self._overdue.get(key, set()).discard((replica, peer))
        elif state == "refused":
            d = self.catalog.entries.get(key)
            if d is not None and d.peer_of(replica) == peer:
                self._overdue.setdefault(key, set()).add((replica, peer))
                self._heal_now.set()

    def _runs_elsewhere(self, key: Key, peer: str) -> bool:
        """Whether a peer other than `peer` reports this workload running (so a failure on
        `peer` is that peer's, not the manifest's)."""
        d = self.catalog.entries.get(key)
        if d is None:
            return False
        return any(who != peer and row.get("state") in ("running", "ready") and d.peer_of(str(row.get("name"))) == who
                   for who, row in self._reports(key))

    def _reports(self, key: Key) -> list[tuple[str, dict]]:
        """(peer, status row) for a workload: what runners reported, and our own replicas'."""
        rows = [(who, row) for who, row, _ in self.status.get(key, {}).values()]
        return rows + [(self.peer_id, row) for row in self._own_rows.get(key, ())]

    def _promises(self, before: Decision | None, d: Decision) -> None:
        """Keep the trust ledger's promises in step with the catalog."""
        now = trio.current_time()
        if d.deleted:
            self.trust.released(d.key)
            self._overdue.pop(d.key, None)
            return
        if not self._hears_status(d):  # no report would reach us: no promise to judge here
            return
        now_assigned = dict(d.assignments)
        for r in (dict(before.assignments) if before is not None else {}):
            if r not in now_assigned:
                self.trust.released(d.key, r)
        reported = self.status.get(d.key, {})
        for r, peer in d.assignments:
            if peer is not None:
                self.trust.assigned(d.key, r, peer, d.generation, now)
                seen = reported.get(r)
                if seen is not None and seen[0] == peer and seen[2] == d.generation:
                    # its report overtook the decision (gossip keeps no order): settle it now
                    self.trust.reported(d.key, r, peer, str(seen[1].get("state")), now)

    def _merge(self, d: Decision, quiet: bool = False) -> None:
        before = self.catalog.entries.get(d.key)
        merged = self.catalog.merge(d)
        if self.scoped(d.key) and (merged or before.order() == d.order()):
            if self.keeper(d.key):
                self._borrowed.discard(d.key)  # news to a keeper: current
            elif merged:
                self._borrowed.add(d.key)
        if not merged:
            return
        if quiet and not self.knows(d.key):  # fetched to answer a question: nothing to act on
            self._signal(False)
            return
        self._promises(before, d)
        self.persist(self.catalog)
        ns, _, name = d.key
        if d.deleted:
            self.events.publish(make_event("Deleted", namespace=ns, name=name, generation=d.generation))
        elif before is None or before.deleted:
            self.events.publish(make_event("Added", namespace=ns, name=name, generation=d.generation,
                                           message=f"by {d.origin}"))
        elif before.generation != d.generation:
            self.events.publish(make_event("Updated", namespace=ns, name=name, generation=d.generation,
                                           message=d.reason))
        old = dict(before.assignments) if before is not None else {}
        for replica, peer in d.assignments:
            if peer is not None and old.get(replica) != peer:
                self.events.publish(make_event("ReplicaPlaced", namespace=ns, name=name, replica=replica, peer=peer,
                                               generation=d.generation, message=dict(d.rules).get(replica)))
        self._signal(self._runs_here(before) or self._runs_here(d))
        if not d.deleted and any(not self.up(p) for _, p in d.assignments):
            self._heal_now.set()  # decided with an older view, or a replica nobody could take

    async def publish_status(self, key: Key, generation: int, rows: list[dict]) -> None:
        self._seq = max(self._seq + 1, time.time_ns() // 1000)  # increasing across restarts too
        self._own_rows[key] = rows
        self._own_gen[key] = generation
        for row in rows:  # our own promises settle too (we hear our gossip from no one)
            self._receipt(key, str(row["name"]), self.peer_id, str(row.get("state")))
        payload = {"type": "status", "key": list(key), "generation": generation, "seq": self._seq, "rows": rows}
        if self.scoped(key):  # to the holders, and to the peer that decided (a Deploy may wait on it)
            d = self.catalog.entries.get(key)
            self._push_to(set(await self.locate(key)) | ({d.origin} if d is not None else set()), payload)
        else:
            await self._announce(payload)

    def _row_event(self, key: Key, peer: str, row: dict, before: str | None) -> None:
        """Watch events for a remote replica's state changes (local ones come from the agent)."""
        names = {"running": "ReplicaRunning", "ready": "ReplicaReady", "failed": "ReplicaFailed"}
        ev = names.get(row.get("state"))
        if ev and row.get("state") != before:
            self.events.publish(make_event(ev, namespace=key[0], name=key[2], replica=str(row["name"]), peer=peer,
                                           generation=row.get("generation"), message=row.get("message")))

    # -- healing and anti-entropy ------------------------------------------------------------------
    def peer_event(self, kind: str, peer: str) -> None:
        """The failure detector's news: heal at once instead of at the next tick (a join only
        matters if replicas wait for a peer: every peer checking on every join costs O(n²))."""
        self._holders.clear()
        self._size = None
        if (kind == "PeerLeft" or (kind == "PeerSuspect" and self.heal_on_suspect)
                or (kind == "PeerJoined" and self._stuck)):
            self._heal_now.set()

    async def _heal_loop(self) -> None:
        """Heal at once on news that may orphan a replica (a peer event, a decision naming a
        peer that is not healthy, a promise that fell due); without news only every HEAL_SWEEP
        seconds: a pass costs O(peers + workloads), which every peer of a large mesh paying
        every second made the mesh's idle cost O(n²)."""
        swept = trio.current_time()
        while True:
            with trio.move_on_after(HEAL_INTERVAL):
                await self._heal_now.wait()
            news = self._heal_now.is_set()
            self._heal_now = trio.Event()
            now = trio.current_time()
            for p in self.trust.tick(now):
                log.warning("%s did not deliver %s of %s in time", p.peer, p.replica, key_str(p.key))
                self._overdue.setdefault(p.key, set()).add((p.replica, p.peer))
                news = True
            if not news and now - swept < HEAL_SWEEP:
                continue
            swept = now
            try:
                await self.heal_once()
            except (errors.BeeMeshError, trio.BrokenResourceError) as exc:
                log.warning("healing failed: %s", exc)

    async def heal_once(self) -> None:
        now = trio.current_time()
        healthy = self.healthy()
        if self.trust.trusted("", now):  # a peer without receipts is trusted: judge only the others
            distrusted = {p for p in self.trust.ledgers if not self.trust.trusted(p, now)}
            alive = [p for p in healthy if p not in distrusted]
        else:
            alive = [p for p in healthy if self.trust.trusted(p, now)]
        up = set(alive)
        if self.partial():  # runners this view does not hold are not orphans (their holders watch them)
            up.update(p for d in self.catalog.live() for _, p in d.assignments
                      if p and self.mesh.peer_state(p) is None)
        orphans = self.catalog.orphaned(up)
        self._stuck = False
        for key, late in list(self._overdue.items()):  # promised, never delivered: move them too
            d = self.catalog.entries.get(key)
            if d is None or d.deleted:
                del self._overdue[key]
                continue
            current = dict(d.assignments)
            late = {(r, p) for r, p in late if current.get(r) == p}
            self._overdue[key] = late
            extra = [r for r, _ in sorted(late) if r not in orphans.get(key, [])]
            if extra:
                orphans[key] = orphans.get(key, []) + extra
        for key, lost in orphans.items():
            d = self.catalog.entries[key]
            if key[1] == "StatefulSet" or self.catalog.healer(key, alive) != self.peer_id:
                continue
            attempt = (d.order(), tuple(alive))
            tried = self._heal_tried.get(key)
            same = tried is not None and tried[0] == attempt
            if same and now < tried[1] + tried[2]:
                self._stuck = True
                continue  # nothing changed since the last try (e.g. still no capacity): later
            # the same try again only after a back-off: bids can miss their window for a moment
            # (peers busy starting pods), and a PeerJoined is not the only thing that frees room
            wait = min(2 * tried[2], HEAL_RETRY_MAX) if same else HEAL_RETRY
            self._heal_tried[key] = (attempt, now, wait)
            w = self.workload(d)
            held: dict[str, int] = {}
            for r, p in d.assignments:
                if r not in lost:
                    held[p] = held.get(p, 0) + 1
            failed_here = frozenset(p for r, p in self._overdue.get(key, ()) if r in lost)
            placed, rules, bids, declined = await self._auction(w, lost, held, avoid=failed_here, user=d.user)
            if not all(placed.get(r) for r in lost):
                self._stuck = True
            if not any(placed.values()):
                log.info("could not re-place %s of %s (%s); trying again in %g s", ", ".join(lost), key_str(key),
                         "; ".join(f"{p}: {why}" for p, why in declined) or "no bids", wait)
                continue
            old = dict(d.assignments)
            assignments = tuple((r, placed.get(r) if r in lost else old[r]) for r, _ in d.assignments)
            all_rules = dict(d.rules)
            refused = {str(row.get("name")): (who, row.get("message")) for who, row in self._reports(key)
                       if row.get("state") == "refused"}
            for r in lost:
                was = old.get(r)
                why = ("was unplaced" if not was
                       else f"peer {was} refused it: {refused[r][1]}" if refused.get(r, ("",))[0] == was
                       else f"peer {was} did not deliver it" if was in failed_here
                       else f"peer {was} is untrusted" if was in healthy else f"peer {was} is unreachable")
                all_rules[r] = f"re-placed ({why}): {rules.get(r, '')}"
            healed = replace(d, assignments=assignments, rules=tuple(all_rules.items()), bids=tuple(bids),
                             declined=tuple(declined), origin=self.peer_id, decided_usec=now_usec(),
                             reason="heal", revision=d.revision + 1)
            log.info("re-placing %s of %s: %s", ", ".join(lost), key_str(key),
                     ", ".join(f"{r}->{placed.get(r)}" for r in lost))
            await self.commit(healed)

    # -- large meshes: workloads live on their holders --------------------------------------------
    async def ensure(self, namespace: str, name: str, kind: str | None = None) -> None:
        """Before answering about a workload this peer does not keep current (a large mesh, not
        a holder, not a runner): fetch it, with its replicas' status, from its holders."""
        kinds = (kind,) if kind is not None else SCOPED_KINDS
        keys = [(namespace, k, name) for k in kinds if k in SCOPED_KINDS]
        # (a peer that just became a holder may not have been handed the workload yet)
        keys = [k for k in keys if not self.knows(k) or (self.scoped(k) and k not in self.catalog.entries)]
        if keys:
            await self._fetch(keys)

    async def _fetch(self, keys: list[Key]) -> None:
        asks: dict[str, list[Key]] = {}
        for key in keys:
            for h in await self.locate(key):
                if h != self.peer_id:
                    asks.setdefault(h, []).append(key)

        async def ask(peer: str, ks: list[Key]) -> None:
            try:
                self._take(await self.mesh.request(peer, PROTO_CATALOG, {"get": [list(k) for k in ks]},
                                                   FETCH_TIMEOUT), peer)
            except Exception as exc:  # another holder may answer; else we answer from what we have
                log.debug("fetching from %s failed: %s", peer, exc)

        async with trio.open_nursery() as n:
            for peer, ks in asks.items():
                n.start_soon(ask, peer, ks)

    def _merge_passed_on(self, wire, sender: str, quiet: bool = False) -> None:
        """A decision another peer passed on: merged if its origin signed it; else dropped,
        counted and held against the peer that passed it on (an honest one checks too)."""
        try:
            d = signed(wire)
        except ValueError as exc:
            # one with no signature at all may predate them, kept by an honest peer since: not blamed
            self._malformed(sender, blame=not (isinstance(wire, dict) and wire.get("signature", "") == ""))
            log.warning("dropped a decision passed on by %s: %s", sender, exc)
            return
        self._merge(d, quiet=quiet)

    def _take(self, reply: dict, sender: str) -> None:
        """Merge what a holder sent (decisions and its status table) without Watch events: this
        peer learns of old news, nothing changed."""
        for wire in reply.get("decisions", ()):
            self._merge_passed_on(wire, sender, quiet=True)
        for key, rows in reply.get("status", ()):
            key = tuple(key)
            if len(key) != 3 or self.knows(key):
                continue
            self.status[key] = {str(r): (str(peer), dict(row), int(gen)) for r, peer, row, gen in rows}

    async def list_all(self) -> None:
        """Before a List in a large mesh: gather the workloads every peer holds (32 asked at a time,
        FETCH_TIMEOUT each, LIST_DEADLINE in all; a workload is missing only if none of its
        holders answered in time)."""
        if self.size() <= self.broadcast_max:
            return
        peers = [p for p in self.healthy() if p != self.peer_id]
        limit = trio.Semaphore(32)

        async def ask(peer: str) -> None:
            async with limit:
                try:
                    self._take(await self.mesh.request(peer, PROTO_CATALOG, {"held": True}, FETCH_TIMEOUT), peer)
                except Exception as exc:
                    log.debug("listing at %s failed: %s", peer, exc)

        with trio.move_on_after(LIST_DEADLINE):  # a mesh full of silent peers must not hold a List for minutes
            async with trio.open_nursery() as n:
                for peer in peers:
                    n.start_soon(ask, peer)

    def _status_rows(self, key: Key) -> list:
        """The status table as a holder shares it: what runners reported, and our own replicas'."""
        rows = {r: [r, peer, row, gen] for r, (peer, row, gen) in self.status.get(key, {}).items()}
        for row in self._own_rows.get(key, ()):
            rows[str(row["name"])] = [str(row["name"]), self.peer_id, row, self._own_gen.get(key, 0)]
        return list(rows.values())

    def _hand_over(self) -> None:
        """Push each scoped workload to holders it has not been pushed to by us: the holder set
        moves as peers come and go, and a new holder must have it before the old ones leave."""
        for key, d in list(self.catalog.entries.items()):
            if not self.scoped(key):
                continue
            hs = frozenset(self.holders_of(key))
            was = self._handed.get(key, frozenset())
            if key in self._borrowed:
                if self.keeper(key) and self._nursery is not None:
                    # made a holder (peers left) with a copy that may be stale: take the current
                    # one from the other holders before handing it on
                    self._nursery.start_soon(self._fetch, [key])
                continue
            if not self.keeper(key) and self.peer_id not in was:
                continue
            if hs != was:
                self._handed[key] = hs
                self._push_to(hs - was, {"type": "handover", "decision": d.to_wire()})

    async def _sync_loop(self) -> None:
        while True:
            self._hand_over()
            partial = self.partial()
            if partial:
                self.mesh.pin(self._pins())
            others = self.mesh.neighbours() if partial else [p for p in self.alive() if p != self.peer_id]
            if others:
                peer = others[int(trio.current_time() * 1000) % len(others)]
                try:
                    reply = await self.mesh.request(peer, PROTO_CATALOG, {"have": self._digest()}, 5.0)
                    for wire in reply.get("decisions", ()):
                        self._merge_passed_on(wire, peer)
                except (errors.PeerUnreachable, ValueError) as exc:
                    log.debug("catalog sync with %s failed: %s", peer, exc)
                except Exception as exc:  # RemoteError and transport errors: try another peer later
                    log.debug("catalog sync with %s failed: %s", peer, exc)
            if partial and not self.catalog.entries:  # but pin the runners as soon as we hold something
                with trio.move_on_after(SYNC_INTERVAL * IDLE_SYNC):
                    await self.changed().wait()
            else:
                await trio.sleep(SYNC_INTERVAL)

    def _digest(self) -> dict:
        return {key_str(k): list(d.order()[:3]) for k, d in self.catalog.entries.items()}

    async def _handle_catalog(self, env) -> dict:
        """Three questions: `have` (a digest: send what is newer or missing — in a large mesh only
        what the asker holds or runs), `get` (these workloads, with status), `held` (every
        workload this peer holds, with status: a List in a large mesh)."""
        p = env.payload
        if "get" in p:
            keys = p["get"]
            if not isinstance(keys, list) or len(keys) > 64:
                raise ValueError("bad get")
            found = [self.catalog.entries.get(tuple(k)) for k in keys if isinstance(k, list) and len(k) == 3]
            return self._reply([d for d in found if d is not None], with_status=True)
        if p.get("held") is True:
            return self._reply([d for k, d in self.catalog.entries.items()
                                if self.scoped(k) and self.peer_id in self.holders_of(k)], with_status=True)
        have = p.get("have", {})
        if not isinstance(have, dict):
            raise ValueError("bad digest")
        asker = env.sender
        out = []
        for k, d in self.catalog.entries.items():
            theirs = have.get(key_str(k))
            if not isinstance(theirs, list) or tuple(theirs) < d.order()[:3]:
                if self.scoped(k) and not self.knows(k):
                    continue  # a large mesh: our copy may be stale (we neither hold nor run it)
                if (theirs is None and self.scoped(k) and asker not in self.holders_of(k)
                        and not any(r == asker for _, r in d.assignments)):
                    continue  # a large mesh: not theirs to keep
                out.append(d)
        return self._reply(out)

    def _reply(self, ds: list[Decision], with_status: bool = False) -> dict:
        """What fits one envelope (a few hundred decisions with their bids did not: the reply
        failed and a peer that missed them never caught up); the rest next round."""
        out, status, size = [], [], 0
        for d in ds:
            wire = d.to_wire()
            rows = self._status_rows(d.key) if with_status else []
            size += len(canonical(wire)) + (len(canonical(rows)) if rows else 0) + 1
            if size > MAX_ENVELOPE // 2 or len(out) == 500:
                break
            out.append(wire)
            if rows:
                status.append([list(d.key), rows])
        return {"decisions": out, "status": status} if with_status else {"decisions": out}


def signed(wire) -> Decision:
    """A decision from the wire whose origin signed it (whoever passed it on); ValueError
    otherwise, so the message carrying it counts as malformed against its sender."""
    d = Decision.from_wire(wire)
    try:
        d.verify()
    except Rejected as exc:
        raise ValueError(f"decision {key_str(d.key)}: {exc}") from None
    return d


def _answer_from_wire(peer: str, task_id: str, p: dict) -> sch.Bid | sch.Decline:
    """A bid or decline from `peer` (authenticated by its reply's signature), strictly checked."""
    if p["taskId"] != task_id:
        raise ValueError("answer for another task")
    if p["type"] == "bid":
        parts = [float(p[k]) for k in ("fit", "locality", "reliability", "trust")]
        if not all(0.0 <= x <= 1.0 for x in parts) or int(p["capacity"]) < 0:
            raise ValueError("bid out of range")
        return sch.Bid(peer, task_id, int(p["capacity"]), *parts)
    if p["type"] == "decline":
        return sch.Decline(peer, task_id, str(p["reason"])[:300])
    raise ValueError("neither bid nor decline")


def _task_wire(t: sch.Task) -> dict:
    return {"taskId": t.task_id, "workload": t.workload, "replicas": list(t.replicas), "cpuMillis": t.cpu_millis,
            "memoryBytes": t.memory_bytes, "hostPorts": [list(p) for p in t.host_ports],
            "nodeSelector": [list(p) for p in t.node_selector], "images": list(t.images), "origin": t.origin}


def _task_from_wire(d: dict) -> sch.Task:
    return sch.Task(str(d["taskId"]), str(d["workload"]), 0, tuple(str(r) for r in d["replicas"]),
                    int(d["cpuMillis"]), int(d["memoryBytes"]),
                    tuple((int(p), str(proto)) for p, proto in d["hostPorts"]),
                    tuple((str(k), str(v)) for k, v in d["nodeSelector"]), tuple(str(i) for i in d["images"]),
                    str(d["origin"]))


def _bid_view(b: sch.Bid, verified: bool) -> dict:
    return {"peer": b.peer_id, "score": round(b.score, 6), "fit": b.fit, "locality": b.locality,
            "reliability": b.reliability, "trust": b.trust, "verified": verified}


def local_state(placement: Placement, *, cpu_total: int, memory_total: int, max_pods: int, uptime: float,
                runtime_available: bool = True, loopback: bool = True,
                labels: tuple[tuple[str, str], ...] = (), trust: float = 0.5) -> sch.PeerState:
    """This peer as a bidder: capacity left after the requests of the replicas placed here
    (scheduling by requests, as Kubernetes does, not by momentary usage)."""
    cpu = mem = pods = 0
    ports = set()
    for d, replicas in placement.catalog.mine():
        try:
            t = placement.workload(d).template
        except errors.InvalidManifest:
            continue
        c, m = t.requests()
        cpu, mem, pods = cpu + c * len(replicas), mem + m * len(replicas), pods + len(replicas)
        ports |= {(p.host_port, p.protocol.lower(), key_str(d.key)) for c_ in t.containers for p in c_.ports
                  if p.host_port}
    return sch.PeerState(placement.peer_id, cpu_total - cpu, cpu_total, memory_total - mem, memory_total,
                         max_pods - pods, max_pods, uptime, labels, trust=trust, host_ports_in_use=frozenset(ports),
                         loopback_publishing=loopback, runtime_available=runtime_available)
