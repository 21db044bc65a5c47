"""Where policies live, and the two decisions they take: admission (mesh-wide) and bidding (node).

- Node-local policies: CONFIG_DIR/policies/NAME.rego, the user's own files. Read at start, on
  SetPolicy/RemovePolicy and on ListPolicies (so a file edited by hand takes effect at the next
  `beemeshctl policy list`, which also shows why it did not, if it does not compile: then the
  version compiled before stays in force).
- Mesh-wide policies: signed documents (beemeshd/core/policy_doc.py) in
  STATE_DIR/policies/mesh/NAME.json (mode 0600), tombstones included. Only a peer holding the mesh
  key may sign one; every peer verifies them with the mesh's public key. beemeshd/policy_sync.py
  spreads them.

Fail closed: a policy that is in force but cannot be evaluated — a file that never compiled, a
signed document this peer's engine rejects — denies, with the reason as its message.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from beemeshd import errors, mesh_keys
from beemeshd.core import policy_doc as pd
from beemeshd.files import write_private
from beemeshd.policy import (SCOPE_MESH, SCOPE_NODE, Denial, Policy, PolicySet, check_name, compile_policy,
                             make_input)

log = logging.getLogger("beemeshd.policy")

NODE_SUFFIX = ".rego"


class PolicyStore:
    def __init__(self, config_dir: Path, state_dir: Path, peer_id: str,
                 keys: Callable[[], object | None] | None = None):
        self.node_dir = Path(config_dir) / "policies"
        self.mesh_dir = Path(state_dir) / "policies" / "mesh"
        self.peer_id = peer_id
        # The mesh key pair (beemeshd.mesh_keys.MeshKeys), read when needed: `beemeshctl mesh
        # init/join` may create it while the daemon runs.
        self._keys = keys or (lambda: _load_keys(config_dir))
        self.node = PolicySet()
        self.mesh = PolicySet()
        self.docs: dict[str, pd.PolicyDoc] = {}  # mesh documents held, tombstones included
        # name -> (mtime_ns, size) of the node file last read, and why it did not compile
        self._node_seen: dict[str, tuple[int, int]] = {}
        self.node_errors: dict[str, str] = {}
        self.mesh_errors: dict[str, str] = {}
        self._logged: set[tuple[str, int]] = set()
        self.counters = {"forgedPolicies": 0, "stalePolicies": 0}
        # set by PolicySync: spreads a document this peer signed
        self.publish: Callable[[pd.PolicyDoc], Awaitable[None]] | None = None

    # -- loading -----------------------------------------------------------------------------------
    def load(self) -> None:
        self.scan_node()
        keys = self._keys()
        for f in sorted(self.mesh_dir.glob("*.json")) if self.mesh_dir.is_dir() else ():
            try:
                doc = pd.PolicyDoc.from_wire(json.loads(f.read_text()))
            except (OSError, ValueError) as exc:
                log.error("ignoring %s: %s", f, exc)
                continue
            if doc.name != f.stem or pd.judge(None, doc, keys) != pd.NEW:
                log.error("ignoring %s: not signed by this peer's mesh key", f)
                continue
            self._install(doc, persist=False)

    def scan_node(self) -> None:
        """(Re)compile the node-local files that changed since the last scan."""
        present = {}
        if self.node_dir.is_dir():
            for f in self.node_dir.glob(f"*{NODE_SUFFIX}"):
                name = f.name[:-len(NODE_SUFFIX)]
                try:
                    st = f.stat()
                    check_name(name)
                except (OSError, errors.InvalidParameter):
                    continue
                present[name] = (st.st_mtime_ns, st.st_size)
        for name in set(self._node_seen) - set(present):
            self.node.drop(name)
            self.node_errors.pop(name, None)
            del self._node_seen[name]
        for name, stamp in present.items():
            if self._node_seen.get(name) == stamp:
                continue
            self._node_seen[name] = stamp
            try:
                self.node.put(compile_policy(name, SCOPE_NODE, (self.node_dir / f"{name}{NODE_SUFFIX}").read_text()))
                self.node_errors.pop(name, None)
            except (OSError, UnicodeDecodeError, errors.InvalidPolicy) as exc:
                kept = " (the version compiled before stays in force)" if name in self.node.policies else ""
                self.node_errors[name] = str(exc)
                log.error("node policy %s: %s%s", name, exc, kept)

    # -- changes -----------------------------------------------------------------------------------
    async def set(self, name: str, scope: str, text: str) -> dict:
        """Compile first: an invalid text changes nothing (InvalidPolicy names line and column)."""
        check_name(name)
        if scope == SCOPE_NODE:
            policy = compile_policy(name, SCOPE_NODE, text)
            self.node_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            path = self.node_dir / f"{name}{NODE_SUFFIX}"
            write_private(path, text.encode(), 0o600)
            st = path.stat()
            self.node.put(policy)
            self.node_errors.pop(name, None)
            self._node_seen[name] = (st.st_mtime_ns, st.st_size)
            self.scan_node()
            return self.view_node(name)
        if scope != SCOPE_MESH:
            raise errors.InvalidParameter("scope", "node or mesh")
        keys = self._signing_keys("SetPolicy")
        doc = await self._sign_and_spread(keys, name, text, compile_policy(name, SCOPE_MESH, text))
        return self.view_mesh(doc)

    async def remove(self, name: str, scope: str) -> dict:
        check_name(name)
        if scope == SCOPE_NODE:
            self.scan_node()
            path = self.node_dir / f"{name}{NODE_SUFFIX}"
            if not path.exists():
                raise errors.PolicyNotFound(name, scope)
            view = self.view_node(name)
            path.unlink()
            self.scan_node()
            return view
        if scope != SCOPE_MESH:
            raise errors.InvalidParameter("scope", "node or mesh")
        cur = self.docs.get(name)
        if cur is None or cur.removed:
            raise errors.PolicyNotFound(name, scope)
        keys = self._signing_keys("RemovePolicy")
        view = self.view_mesh(cur)
        await self._sign_and_spread(keys, name, None)
        return view

    def _signing_keys(self, operation: str):
        keys = self._keys()
        if keys is None:
            raise errors.MeshKeyRequired(operation, "this peer belongs to no mesh (beemeshctl mesh init creates one)")
        if not keys.can_sign:
            raise errors.MeshKeyRequired(operation, f"this peer does not hold the private key of mesh {keys.name}; "
                                         "set mesh-wide policies on the peer that does")
        return keys

    async def _sign_and_spread(self, keys, name: str, text: str | None,
                               compiled: Policy | None = None) -> pd.PolicyDoc:
        cur = self.docs.get(name)
        version = cur.version + 1 if cur is not None else 1
        doc = pd.sign(keys, name, version, text, self.peer_id, time.time_ns() // 1000)
        self._install(doc, compiled)
        if self.publish is not None:
            try:
                await self.publish(doc)
            except Exception as exc:  # noqa: BLE001 - peers catch up by PROTO_POLICIES anyway
                log.warning("could not gossip policy %s: %s", name, exc)
        return doc

    def receive(self, wire) -> bool:
        """A document from the mesh; True when it changed what this peer enforces. Unsigned,
        forged and older documents are dropped and counted."""
        try:
            doc = pd.PolicyDoc.from_wire(wire)
        except ValueError:
            self.counters["forgedPolicies"] += 1
            return False
        verdict = pd.judge(self.docs.get(doc.name), doc, self._keys())
        if verdict == pd.FORGED:
            self.counters["forgedPolicies"] += 1
            log.debug("dropped a policy document %s v%d: bad signature", doc.name, doc.version)
            return False
        if verdict == pd.STALE:
            self.counters["stalePolicies"] += 1
            return False
        if verdict == pd.SAME:
            return False
        compiled = None
        if not doc.removed:
            try:
                compiled = compile_policy(doc.name, SCOPE_MESH, doc.text)
            except (errors.InvalidPolicy, errors.InvalidParameter) as exc:
                # Signed, but this peer's engine rejects it (another version of beemeshd): keep
                # what we enforce; catch-up will offer it again, the log says why it is refused.
                if (doc.name, doc.version) not in self._logged:
                    self._logged.add((doc.name, doc.version))
                    log.error("mesh policy %s version %d does not compile here: %s", doc.name, doc.version, exc)
                self.mesh_errors[doc.name] = f"version {doc.version} does not compile here: {exc}"
                return False
        self._install(doc, compiled)
        log.info("mesh policy %s %s (version %d, set by %s)", doc.name, "removed" if doc.removed else "set",
                 doc.version, doc.set_by)
        return True

    def _install(self, doc: pd.PolicyDoc, compiled: Policy | None = None, persist: bool = True) -> None:
        if persist:
            self.mesh_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_private(self.mesh_dir / f"{doc.name}.json", json.dumps(doc.to_wire()).encode(), 0o600)
        self.docs[doc.name] = doc
        self.mesh_errors.pop(doc.name, None)
        if doc.removed:
            self.mesh.drop(doc.name)
            return
        try:
            self.mesh.put(compiled or compile_policy(doc.name, SCOPE_MESH, doc.text))
        except (errors.InvalidPolicy, errors.InvalidParameter) as exc:  # only from files on disk
            self.mesh.drop(doc.name)
            self.mesh_errors[doc.name] = str(exc)

    # -- catch-up ----------------------------------------------------------------------------------
    def digest(self) -> dict:
        return {name: [d.version, d.signature] for name, d in self.docs.items()}

    def newer_than(self, digest: dict, limit: int = 256) -> list[dict]:
        """Documents the holder of `digest` lacks (its version is older, or absent)."""
        out = []
        for name, d in sorted(self.docs.items()):
            theirs = digest.get(name) if isinstance(digest, dict) else None
            try:
                have = (int(theirs[0]), str(theirs[1])) if theirs is not None else None
            except (TypeError, ValueError, IndexError):
                have = None
            if have is None or have < d.order():
                out.append(d.to_wire())
        return out[:limit]

    # -- decisions ---------------------------------------------------------------------------------
    def admit(self, manifests: list[dict], *, user: str | None, peer: dict, operation: str) -> None:
        """Mesh-wide policies on each object of a Deploy or Scale; PolicyDenied for the first
        policy (in name order) that denies the first object it denies."""
        broken = {n: e for n, e in self.mesh_errors.items() if n not in self.mesh.policies
                  and n in self.docs and not self.docs[n].removed}
        if broken:
            name = min(broken)
            raise errors.PolicyDenied(name, [f"policy {name} cannot be evaluated on this peer: {broken[name]}"])
        if not self.mesh.policies:
            return
        for manifest in manifests:
            doc = make_input(manifest, request_peer=self.peer_id, user=user, peer=peer, operation=operation)
            denials = self.mesh.denials(doc)
            if denials:
                raise errors.PolicyDenied(denials[0].policy, denials[0].messages)

    def bid_denials(self, manifest: dict, origin: str, peer: dict, user: str | None = None) -> list[Denial]:
        """Node-local policies on a task this peer was asked to bid on."""
        broken = [Denial(n, [f"policy {n} does not compile: {e}"]) for n, e in sorted(self.node_errors.items())
                  if n not in self.node.policies]
        if not self.node.policies:
            return broken
        doc = make_input(manifest, request_peer=origin, user=user, peer=peer, operation="Bid")
        return broken + self.node.denials(doc)

    def bid_gate(self, peer_record: Callable[[], dict]) -> Callable[[dict, str, str | None], str | None]:
        """The Placement hook: (manifest, origin peer, user there) -> why this peer does not bid, or None."""
        def gate(manifest: dict, origin: str, user: str | None = None) -> str | None:
            if not self.node.policies and not self.node_errors:
                return None
            denials = self.bid_denials(manifest, origin, peer_record(), user)
            if not denials:
                return None
            d = denials[0]
            return f"policy {d.policy} denied: " + "; ".join(d.messages)
        return gate

    # -- views -------------------------------------------------------------------------------------
    def list(self, scope: str | None = None) -> list[dict]:
        out = []
        if scope in (None, SCOPE_NODE):
            self.scan_node()
            out += [self.view_node(n) for n in sorted(set(self.node.policies) | set(self.node_errors))]
        if scope in (None, SCOPE_MESH):
            out += [self.view_mesh(d) for _, d in sorted(self.docs.items()) if not d.removed]
        return out

    def view_node(self, name: str) -> dict:
        p: Policy | None = self.node.policies.get(name)
        path = self.node_dir / f"{name}{NODE_SUFFIX}"
        try:
            text = path.read_text()
            mtime = path.stat().st_mtime_ns // 1000
        except (OSError, UnicodeDecodeError):
            text, mtime = (p.text if p else ""), 0
        view = {"name": name, "scope": SCOPE_NODE, "version": 0, "setBy": None, "setUSec": mtime,
                "inForce": p is not None, "text": text}
        if name in self.node_errors:
            view["error"] = self.node_errors[name]
        return view

    def view_mesh(self, doc: pd.PolicyDoc) -> dict:
        view = {"name": doc.name, "scope": SCOPE_MESH, "version": doc.version, "setBy": doc.set_by,
                "setUSec": doc.set_usec, "inForce": doc.name in self.mesh.policies, "text": doc.text or ""}
        if doc.name in self.mesh_errors:
            view["error"] = self.mesh_errors[doc.name]
        return view


def _load_keys(config_dir: Path):
    try:
        return mesh_keys.load(config_dir)
    except mesh_keys.MeshKeyError as exc:
        log.error("mesh key: %s", exc)
        return None


