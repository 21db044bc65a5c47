"""Method handlers of io.beemesh.Mesh: thin, one per method, named exactly as in the interface.

A handler takes the call (beemeshd.api.server.Call) and the call's parameters as keywords, and
returns the reply parameters (dict) or, for `more` streams, an async iterator of replies whose
last one is wrapped in `Final`. Domain errors (beemeshd.errors) are raised as they are; the server
turns them into Varlink errors.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable

from beemeshd import errors
from beemeshd.api import errors as verr
from beemeshd.api.server import Call, Final


async def stream_list(call: Call, item_key: str, list_key: str, items: Iterable[dict]):
    """Reply with a list: one reply per item under `more`, else one reply with all of them."""
    items = list(items)
    if not call.more:
        return {list_key: items}

    async def gen() -> AsyncIterator:
        for i, item in enumerate(items):
            yield Final({item_key: item}) if i == len(items) - 1 else {item_key: item}
        if not items:
            yield Final({})

    return gen()


class MeshHandlers:
    def __init__(self, node):
        # node: beemeshd.daemon.Node — the daemon's state and services.
        self.node = node

    async def GetInfo(self, call: Call) -> dict:
        return {"info": self.node.info()}

    async def ListPeers(self, call: Call):
        return await stream_list(call, "peer", "peers", self.node.peers())

    async def Watch(self, call: Call, namespace=None, name=None, peers=None):
        if not call.more:
            raise verr.expected_more()
        if name is not None and namespace is None:
            namespace = "default"
        return self.node.events.subscribe(namespace=namespace, name=name, peers=peers is not False)

    async def Deploy(self, call: Call, manifest=None, yaml=None, namespace=None, wait=None,
                     timeoutSeconds=None, dryRun=None) -> dict:
        workloads = await self.node.workloads.deploy(manifest=manifest, yaml=yaml, namespace=namespace,
                                                     wait=bool(wait), timeout=timeoutSeconds, dry_run=bool(dryRun),
                                                     user=call.user)
        return {"workloads": workloads}

    async def _prepare(self, *args) -> None:
        """A large mesh: fetch from the holders what this peer does not keep (placement.ensure)."""
        prepare = getattr(self.node.workloads, "prepare", None)
        if prepare is not None:
            await prepare(*args)

    async def Get(self, call: Call, name, namespace=None, kind=None) -> dict:
        await self._prepare(name, namespace, kind)
        stateful = getattr(self.node, "stateful", None)
        if stateful is not None:  # outside a StatefulSet's group: ask a member for its leases
            await stateful.refresh_leases(name, namespace, kind)
        return {"workload": self.node.workloads.get(name, namespace, kind)}

    async def List(self, call: Call, namespace=None, kind=None):
        await self._prepare()
        return await stream_list(call, "workload", "workloads", self.node.workloads.list(namespace, kind))

    async def Delete(self, call: Call, name, namespace=None, kind=None, wait=None, timeoutSeconds=None):
        return {"workload": await self.node.workloads.delete(name, namespace, kind, bool(wait), timeoutSeconds)}

    async def Scale(self, call: Call, name, replicas, namespace=None, wait=None, timeoutSeconds=None):
        return {"workload": await self.node.workloads.scale(name, namespace, int(replicas), bool(wait),
                                                            timeoutSeconds, user=call.user)}

    async def Logs(self, call: Call, name, namespace=None, replica=None, container=None, tail=None,
                   follow=None):
        if tail is not None and tail < 0:
            raise errors.InvalidParameter("tail", "must be ≥ 0")
        if follow and not call.more:
            raise verr.expected_more()
        tail = None if tail is None else int(tail)
        await self._prepare(name, namespace)
        sources = self.node.workloads.log_sources(name, namespace, replica, container)
        everywhere = getattr(self.node.workloads, "all_logs", None)  # mesh on: other peers' too
        if everywhere is None:
            lines = self.node.workloads.logs(sources, tail, bool(follow))
        else:
            lines = everywhere(sources, name, namespace, replica, container, tail, bool(follow))
        if not call.more:
            return {"lines": [line async for line in lines]}

        async def gen():
            # Lookahead of one line, so the last line of a finite stream carries continues=false.
            held = None
            async for line in lines:
                if held is not None:
                    yield {"line": held}
                held = line
                if follow:
                    yield {"line": held}
                    held = None
            yield Final({"line": held} if held is not None else {})

        return gen()

    async def Explain(self, call: Call, name, namespace=None) -> dict:
        explain = getattr(self.node.workloads, "explain", None)
        if explain is None:
            raise errors.NotImplementedYet("Explain", "this daemon runs without the mesh (mesh_enabled = false): "
                                           "every replica runs here")
        await self._prepare(name, namespace)
        stateful = getattr(self.node, "stateful", None)
        if stateful is not None:  # outside a StatefulSet's group: ask a member for its view
            await stateful.refresh_leases(name, namespace, None)
        return {"explanation": explain(name, namespace)}

    # -- policies (beemeshd/policy_store.py) --------------------------------------------------------
    async def ListPolicies(self, call: Call, scope=None) -> dict:
        return {"policies": self.node.policies.list(scope)}

    async def SetPolicy(self, call: Call, name, scope, text) -> dict:
        return {"policy": await self.node.policies.set(name, scope, text)}

    async def RemovePolicy(self, call: Call, name, scope) -> dict:
        return {"policy": await self.node.policies.remove(name, scope)}

    # -- mesh membership (beemeshd/mesh_membership.py) ---------------------------------------------
    async def GetMembership(self, call: Call) -> dict:
        return {"membership": self.node.membership.status()}

    async def CreateMesh(self, call: Call, name=None) -> dict:
        return {"membership": await self.node.membership.create(name)}

    async def Invite(self, call: Call, peer=None, ttlSeconds=None, tokenTtlSeconds=None) -> dict:
        return self.node.membership.invite(peer, ttlSeconds, tokenTtlSeconds)

    async def Join(self, call: Call, invitation) -> dict:
        return {"membership": await self.node.membership.join(invitation)}

    async def Revoke(self, call: Call, peer=None, serial=None) -> dict:
        return {"membership": await self.node.membership.revoke(peer, serial)}
