"""`beemeshctl`: the command-line client of beemeshd (habits of kubectl and podman).

Exit codes: 0 success, 1 an error reply (one line on stderr), 2 bad usage, 3 beemeshd cannot be
reached, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from contextlib import nullcontext
from pathlib import Path

import yaml

from beemeshd import __version__
from beemeshd import ctl_format as fmt
from beemeshd.client import Client, ConnectError, VarlinkCallError

PROG = "beemeshctl"
KINDS = ("Pod", "Deployment", "StatefulSet", "Service")
KIND_ALIASES = {
    "pod": "Pod", "pods": "Pod", "po": "Pod",
    "deployment": "Deployment", "deployments": "Deployment", "deploy": "Deployment",
    "statefulset": "StatefulSet", "statefulsets": "StatefulSet", "sts": "StatefulSet",
    "service": "Service", "services": "Service", "svc": "Service",
}


class CtlError(Exception):
    """A local failure (unreadable file, bad YAML): one line on stderr, exit 1."""


class UsageError(Exception):
    """Arguments argparse cannot check itself: exit 2."""


def kind_of(word: str) -> str | None:
    """'deploy', 'Deployment', 'deployments.apps' → 'Deployment'; None if not a kind."""
    return KIND_ALIASES.get(word.split(".", 1)[0].lower())


def split_ref(text: str, kind: str | None = None) -> tuple[str | None, str]:
    """'web' or 'deployment/web' → (kind, name)."""
    if "/" in text:
        word, _, text = text.partition("/")
        kind = kind_of(word)
        if kind is None or not text:
            raise UsageError(f"unknown kind in {word}/{text} (expected one of: {', '.join(KINDS)})")
    return kind, text


def read_text(filename: str) -> str:
    if filename == "-":
        return sys.stdin.read()
    try:
        return Path(filename).read_text()
    except OSError as exc:
        raise CtlError(f"cannot read {filename}: {exc.strerror or exc}") from None


def load_objects(text: str) -> list[dict]:
    """The objects of YAML/JSON text: documents, JSON arrays and {"kind": "List"} unpacked."""
    out: list[dict] = []

    def add(doc):
        if isinstance(doc, list):
            for item in doc:
                add(item)
        elif isinstance(doc, dict) and doc.get("kind") == "List":
            add(doc.get("items") or [])
        elif isinstance(doc, dict):
            out.append(doc)

    for doc in yaml.safe_load_all(text):
        add(doc)
    return out


def object_ref(obj: dict, namespace: str | None) -> tuple[str, str, str]:
    """(kind, namespace, name) of a manifest object."""
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    return str(obj.get("kind", "")), meta.get("namespace") or namespace or "default", str(meta.get("name", ""))


def dump(value, output: str) -> None:
    if output == "json":
        print(json.dumps(value, indent=2, ensure_ascii=False))
    else:
        print(yaml.safe_dump(value, sort_keys=False, allow_unicode=True), end="")


# -- waiting with progress ---------------------------------------------------------------------
class Progress:
    """While a --wait call runs, print the replica events of the concerned workloads on stderr,
    from a Watch stream on a second connection. Any failure just makes it silent."""

    def __init__(self, address: str, targets: set[tuple[str, str]] | None, namespace: str | None):
        self.address = address
        self.targets = targets  # {(namespace, name)}; None: every workload (of `namespace`)
        self.namespace = namespace
        self.client: Client | None = None
        self.thread: threading.Thread | None = None

    def __enter__(self) -> "Progress":
        params = {"namespace": self.namespace, "peers": False}
        if self.targets:
            namespaces = {ns for ns, _ in self.targets}
            params["namespace"] = next(iter(namespaces)) if len(namespaces) == 1 else None
            if len(self.targets) == 1:
                params["name"] = next(iter(self.targets))[1]
        try:
            self.client = Client(self.address)
            events = self.client.stream("Watch", params)  # sent before the waiting call
        except (ConnectError, VarlinkCallError, OSError):
            return self
        self.thread = threading.Thread(target=self._run, args=(events,), daemon=True)
        self.thread.start()
        return self

    def _run(self, events) -> None:
        try:
            for reply in events:
                ev = reply.get("event") or {}
                if self.targets and (ev.get("namespace") or "default", ev.get("name")) not in self.targets:
                    continue
                line = fmt.progress_line(ev) if ev.get("type") else None
                if line:
                    print(line, file=sys.stderr, flush=True)
        except Exception:  # noqa: BLE001 - progress is best effort
            pass

    def __exit__(self, *exc) -> None:
        if self.client is None:
            return
        self.client.hangup()  # the daemon ends the stream; what it already sent is still printed
        if self.thread is not None:
            self.thread.join(2)
        self.client.close()


def progress(args, targets, namespace):
    return Progress(args.address_resolved, targets, namespace) if args.wait else nullcontext()


# -- commands ----------------------------------------------------------------------------------
def cmd_apply(c: Client, args) -> int:
    texts = [read_text(f) for f in args.filename]
    text = texts[0] if len(texts) == 1 else "\n---\n".join(texts)
    try:
        targets = {object_ref(o, args.namespace)[1:] for o in load_objects(text)} or None
    except yaml.YAMLError:
        targets = None  # the daemon will say what is wrong
    try:  # generations before the call, to tell created / configured / unchanged
        before = {(w["kind"], w["namespace"], w["name"]): w["generation"]
                  for w in c.call("List", {}).get("workloads") or []}
    except VarlinkCallError:
        before = None
    params = {"yaml": text, "namespace": args.namespace, "wait": args.wait or None,
              "timeoutSeconds": args.timeout, "dryRun": args.dry_run or None}
    with progress(args, targets, args.namespace):
        workloads = c.call("Deploy", params)["workloads"]
    suffix = " (dry run)" if args.dry_run else ""
    for w in workloads:
        if before is None:
            fresh = w["generation"] == 1 and w["createdUSec"] == w["updatedUSec"]
            verdict = "created" if fresh else f"configured (generation {w['generation']})"
        else:
            old = before.get((w["kind"], w["namespace"], w["name"]))
            verdict = ("created" if old is None else "unchanged" if old == w["generation"]
                       else f"configured (generation {w['generation']})")
        print(f"{fmt.ref(w)} {verdict}{suffix}")
    return 0


def get_target(words: list[str]) -> tuple[str | None, str | None]:
    if len(words) == 2:
        kind = kind_of(words[0])
        if kind is None:
            raise UsageError(f"unknown kind {words[0]!r} (expected one of: {', '.join(KINDS)})")
        return kind, words[1]
    if len(words) == 1:
        word = words[0]
        if "/" in word:
            return split_ref(word)
        if word.lower() == "all":
            return None, None
        kind = kind_of(word)
        return (kind, None) if kind else (None, word)
    return None, None


def cmd_get(c: Client, args) -> int:
    kind, name = get_target([w for w in (args.kind, args.name) if w])
    namespace = args.namespace or "default"
    wide = args.output == "wide"
    if name is not None:
        w = c.call("Get", {"name": name, "namespace": namespace, "kind": kind})["workload"]
        if args.output in ("json", "yaml"):
            dump(w, args.output)
        elif args.output == "name":
            print(fmt.ref(w))
        else:
            print(fmt.workload_table([w], wide=wide))
            if w.get("replicaStatus"):
                print()
                print(fmt.replica_table(w))
        return 0
    params = {"namespace": None if args.all_namespaces else namespace, "kind": kind}
    items = []
    for reply in c.stream("List", params):
        items += [reply["workload"]] if reply.get("workload") else reply.get("workloads") or []
    items.sort(key=lambda w: (w["namespace"], w["kind"], w["name"]))
    if args.output in ("json", "yaml"):
        dump(items, args.output)
    elif not items:
        where = "" if args.all_namespaces else f" in {namespace} namespace"
        print(f"No resources found{where}.", file=sys.stderr)
    elif args.output == "name":
        print("\n".join(fmt.ref(w) for w in items))
    else:
        print(fmt.workload_table(items, wide=wide, namespaces=args.all_namespaces))
    return 0


def cmd_delete(c: Client, args) -> int:
    if bool(args.filename) == bool(args.name):
        raise UsageError("delete needs either NAME or -f FILE")
    if args.name:
        kind, name = split_ref(args.name, kind_of(args.kind) if args.kind else None)
        if args.kind and kind is None:
            raise UsageError(f"unknown kind {args.kind!r} (expected one of: {', '.join(KINDS)})")
        targets = [(kind, args.namespace or "default", name)]
    else:
        try:
            objects = [o for f in args.filename for o in load_objects(read_text(f))]
        except yaml.YAMLError as exc:
            raise CtlError(f"cannot parse {', '.join(args.filename)}: {' '.join(str(exc).split())}") from None
        targets = [object_ref(o, args.namespace) for o in objects]
    rc = 0
    for kind, namespace, name in targets:
        if kind is not None and kind not in KINDS or not name:
            print(f"{PROG}: {kind or '?'}/{name or '?'}: not a BeeMesh object, skipped", file=sys.stderr)
            rc = 1
            continue
        params = {"name": name, "namespace": namespace, "kind": kind, "wait": args.wait or None,
                  "timeoutSeconds": args.timeout}
        try:
            w = c.call("Delete", params)["workload"]
        except VarlinkCallError as exc:
            if len(targets) == 1:
                raise
            print(f"{PROG}: {exc}", file=sys.stderr)
            rc = 1
            continue
        print(f"{fmt.ref(w)} deleted")
    return rc


def cmd_scale(c: Client, args) -> int:
    _, name = split_ref(args.name)
    namespace = args.namespace or "default"
    params = {"name": name, "namespace": namespace, "replicas": args.replicas, "wait": args.wait or None,
              "timeoutSeconds": args.timeout}
    with progress(args, {(namespace, name)}, namespace):
        w = c.call("Scale", params)["workload"]
    print(f"{fmt.ref(w)} scaled to {w['replicas']} (generation {w['generation']})")
    return 0


def log_prefix_needed(c: Client, args, name: str, namespace: str) -> bool:
    """True when the lines may come from more than one replica or container."""
    if args.replica and args.container:
        return False
    try:
        w = c.call("Get", {"name": name, "namespace": namespace})["workload"]
    except VarlinkCallError as exc:
        if exc.short_name == "WorkloadNotFound":
            raise
        return True
    spec = (w.get("manifest") or {}).get("spec") or {}
    if w["kind"] != "Pod":
        spec = (spec.get("template") or {}).get("spec") or {}
    replicas = 1 if args.replica else max(len(w.get("replicaStatus") or []), w["replicas"])
    containers = 1 if args.container else len(spec.get("containers") or []) or 1
    return replicas * containers > 1


def cmd_logs(c: Client, args) -> int:
    _, name = split_ref(args.name)
    namespace = args.namespace or "default"
    prefix = log_prefix_needed(c, args, name, namespace)
    params = {"name": name, "namespace": namespace, "replica": args.replica, "container": args.container,
              "tail": args.tail, "follow": args.follow or None}
    for reply in c.stream("Logs", params):
        for line in [reply["line"]] if reply.get("line") else reply.get("lines") or []:
            text = f"[{line['replica']}/{line['container']}] {line['line']}" if prefix else line["line"]
            print(text, flush=args.follow)
    return 0


def cmd_watch(c: Client, args) -> int:
    namespace = (args.namespace or "default") if args.name else args.namespace
    params = {"namespace": namespace, "name": args.name, "peers": False if args.no_peers else None}
    for reply in c.stream("Watch", params):
        if reply.get("event"):
            ev = reply["event"]
            print(json.dumps(ev) if args.output == "json" else fmt.event_line(ev), flush=True)
    return 0


def cmd_info(c: Client, args) -> int:
    info = c.call("GetInfo", {})["info"]
    if args.output in ("json", "yaml"):
        dump(info, args.output)
    else:
        print(fmt.info_lines(info))
    return 0


def cmd_peers(c: Client, args) -> int:
    peers = []
    for reply in c.stream("ListPeers", {}):
        peers += [reply["peer"]] if reply.get("peer") else reply.get("peers") or []
    if args.output in ("json", "yaml"):
        dump(peers, args.output)
    else:
        print(fmt.peer_table(peers, wide=args.output == "wide"))
    return 0


def cmd_explain(c: Client, args) -> int:
    _, name = split_ref(args.name)
    result = c.call("Explain", {"name": name, "namespace": args.namespace or "default"})["explanation"]
    dump(result, args.output)
    return 0


def cmd_policy(c: Client, args) -> int:
    if args.action == "list":
        policies = c.call("ListPolicies", {"scope": args.scope})["policies"]
        if args.output in ("json", "yaml"):
            dump(policies, args.output)
        elif not policies:
            print("No policies.", file=sys.stderr)
        else:
            print(fmt.policy_table(policies))
        return 0
    if args.action == "set":
        text = read_text(args.filename)
        try:
            p = c.call("SetPolicy", {"name": args.name, "scope": args.scope, "text": text})["policy"]
        except VarlinkCallError as exc:
            if exc.short_name == "InvalidPolicy" and exc.parameters.get("line") is not None:
                # compiler style, so editors can jump to it
                where = f"{args.filename}:{exc.parameters['line']}:{exc.parameters.get('column', 1)}"
                raise CtlError(f"{where}: {exc.parameters.get('message', '')}") from None
            raise
        version = f", version {p['version']}" if p["scope"] == "mesh" else ""
        print(f"policy/{p['name']} set ({p['scope']}{version})")
        return 0
    p = c.call("RemovePolicy", {"name": args.name, "scope": args.scope})["policy"]
    print(f"policy/{p['name']} removed ({p['scope']})")
    return 0


UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}


def duration(text: str) -> float:
    """'90', '90s', '15m', '12h', '30d', '2w', '1y' → seconds (argparse type)."""
    t = text.strip().lower()
    unit = UNITS.get(t[-1:], None)
    try:
        value = float(t[:-1] if unit else t) * (unit or 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (e.g. 3600, 90m, 12h, 30d, 1y)") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("a duration must be positive")
    return value


def cmd_mesh(c: Client, args) -> int:
    if args.action == "init":
        m = c.call("CreateMesh", {"name": args.name})["membership"]
        print(f"created mesh {m['meshName']} ({m['meshId']}); this peer holds its key")
        return 0
    if args.action == "invite":
        r = c.call("Invite", {"peer": args.peer, "ttlSeconds": args.ttl, "tokenTtlSeconds": args.token_ttl})
        print(r["invitation"])  # alone on stdout: TOKEN=$(beemeshctl mesh invite)
        until = fmt.event_time_full(r["expiresUSec"])
        if r["kind"] == "token":
            print(f"one-time join token, redeemable until {until}: on the joining peer run "
                  "`beemeshctl mesh join TOKEN` (keep it secret)", file=sys.stderr)
        else:
            print(f"credential {r['serial']} for {args.peer}, valid until {until}: on that peer run "
                  "`beemeshctl mesh join CREDENTIAL`", file=sys.stderr)
        return 0
    if args.action == "join":
        text = sys.stdin.read() if args.invitation == "-" else args.invitation
        m = c.call("Join", {"invitation": text.strip()})["membership"]
        print(f"joined mesh {m['meshName']} ({m['meshId']}); credential valid until "
              f"{fmt.event_time_full(m['expiresUSec'])}")
        return 0
    if args.action == "revoke":
        if bool(args.peer) == bool(args.serial):
            raise UsageError("revoke needs PEER_ID or --serial S")
        m = c.call("Revoke", {"peer": args.peer, "serial": args.serial})["membership"]
        print(f"revoked {args.peer or 'credential ' + args.serial} (revocation list version {m['revocationVersion']})")
        return 0
    m = c.call("GetMembership", {})["membership"]
    if args.output in ("json", "yaml"):
        dump(m, args.output)
    else:
        print(fmt.membership_lines(m))
    return 0


# -- command line ------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    def common(parser, default):
        # -a and -n are accepted before or after the command (kubectl style); after it, they
        # must not reset what was given before (hence SUPPRESS there).
        parser.add_argument("-a", "--address", default=default,
                            help="Varlink address of beemeshd (default $BEEMESH_ADDRESS or the user socket)")
        parser.add_argument("-n", "--namespace", default=default, help="namespace (default: default)")

    p = argparse.ArgumentParser(prog=PROG, description="Command-line client of beemeshd (io.beemesh.Mesh).")
    common(p, None)
    p.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name, func, help_text):
        sp = sub.add_parser(name, help=help_text, description=help_text)
        common(sp, argparse.SUPPRESS)
        sp.set_defaults(func=func, parser=sp)
        return sp

    def waiting(sp):
        sp.add_argument("--wait", action="store_true", help="wait until done")
        sp.add_argument("--timeout", type=float, metavar="S", help="how long to wait (daemon default 60)")

    sp = command("apply", cmd_apply, "create or update workloads from a manifest")
    sp.add_argument("-f", "--filename", action="append", required=True, metavar="FILE",
                    help="YAML or JSON file, - for stdin (repeatable)")
    sp.add_argument("--dry-run", action="store_true", help="validate and place, change nothing")
    waiting(sp)

    sp = command("get", cmd_get, "list workloads, or show one with its replicas")
    sp.add_argument("kind", nargs="?", metavar="KIND", help="deployment, statefulset, pod, service (or KIND/NAME)")
    sp.add_argument("name", nargs="?", metavar="NAME")
    sp.add_argument("-o", "--output", choices=["table", "wide", "json", "yaml", "name"], default="table")
    sp.add_argument("-A", "--all-namespaces", action="store_true", help="list every namespace")

    sp = command("delete", cmd_delete, "delete a workload, or every object of a file")
    sp.add_argument("name", nargs="?", metavar="NAME", help="NAME or KIND/NAME")
    sp.add_argument("-f", "--filename", action="append", metavar="FILE", help="delete the objects of FILE")
    sp.add_argument("--kind", help="kind, when a name is used by several kinds")
    waiting(sp)

    sp = command("scale", cmd_scale, "change the number of replicas")
    sp.add_argument("name", metavar="NAME")
    sp.add_argument("--replicas", type=int, required=True, metavar="N")
    waiting(sp)

    sp = command("logs", cmd_logs, "print container output of a workload")
    sp.add_argument("name", metavar="NAME")
    sp.add_argument("-f", "--follow", action="store_true", help="keep streaming new lines")
    sp.add_argument("--tail", type=int, metavar="N", help="only the last N lines of each container")
    sp.add_argument("-c", "--container", help="only this container")
    sp.add_argument("--replica", metavar="POD", help="only this replica (pod name)")

    sp = command("watch", cmd_watch, "stream events")
    sp.add_argument("name", nargs="?", metavar="NAME", help="only events of this workload")
    sp.add_argument("--no-peers", action="store_true", help="leave out peer events")
    sp.add_argument("-o", "--output", choices=["text", "json"], default="text")

    sp = command("info", cmd_info, "facts about this daemon and peer")
    sp.add_argument("-o", "--output", choices=["text", "json", "yaml"], default="text")

    sp = command("peers", cmd_peers, "the peers of the mesh")
    sp.add_argument("-o", "--output", choices=["table", "wide", "json", "yaml"], default="table")

    sp = command("explain", cmd_explain, "why a workload's replicas run where they do")
    sp.add_argument("name", metavar="NAME")
    sp.add_argument("-o", "--output", choices=["yaml", "json"], default="yaml")

    sp = command("policy", cmd_policy, "list, set or remove Rego policies")
    actions = sp.add_subparsers(dest="action", metavar="ACTION", required=True)

    def action(name, help_text, **kw):
        ap = actions.add_parser(name, help=help_text, description=help_text, **kw)
        common(ap, argparse.SUPPRESS)
        ap.set_defaults(parser=ap)
        return ap

    scopes = ["node", "mesh"]
    ap = action("list", "the policies this peer knows (node-local and mesh-wide)")
    ap.add_argument("--scope", choices=scopes, help="only this scope")
    ap.add_argument("-o", "--output", choices=["table", "json", "yaml"], default="table")
    ap = action("set", "create or replace a policy from a Rego file (compiled first: an error changes nothing)")
    ap.add_argument("name", metavar="NAME")
    ap.add_argument("filename", metavar="FILE", help="Rego file, - for stdin")
    ap.add_argument("--scope", choices=scopes, default="node",
                    help="node: this peer, before it bids; mesh: every peer, at admission (needs the mesh key)")
    ap = action("rm", "remove a policy (a mesh policy everywhere)", aliases=["remove"])
    ap.add_argument("name", metavar="NAME")
    ap.add_argument("--scope", choices=scopes, default="node")

    sp = command("mesh", cmd_mesh, "mesh membership: create a mesh, invite, join, revoke, status")
    actions = sp.add_subparsers(dest="action", metavar="ACTION", required=True)
    ap = action("init", "create a mesh (its key pair) with this peer as its first member")
    ap.add_argument("--name", help="the mesh's name (a label; default: the setting mesh_name, else beemesh)")
    ap = action("invite", "a one-time join token, or with --peer a credential for that peer (needs the mesh key)")
    ap.add_argument("--peer", metavar="PEER_ID", help="the joining peer's id (its `beemeshctl info` Peer ID)")
    ap.add_argument("--ttl", type=duration, metavar="DURATION", help="how long the credential lasts (default 1y)")
    ap.add_argument("--token-ttl", type=duration, metavar="DURATION",
                    help="how long the token can be redeemed (default 1d)")
    ap = action("join", "join a mesh (or renew this peer's credential) with a token or credential")
    ap.add_argument("invitation", metavar="TOKEN-or-CREDENTIAL", help="what `mesh invite` printed; - for stdin")
    ap = action("revoke", "revoke a peer (or one credential) mesh-wide (needs the mesh key)")
    ap.add_argument("peer", nargs="?", metavar="PEER_ID")
    ap.add_argument("--serial", help="revoke only this credential (16 hex digits)")
    ap = action("status", "this peer's mesh, credential and revocations")
    ap.add_argument("-o", "--output", choices=["text", "json", "yaml"], default="text")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # usage error (2) or --help/--version (0)
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 2
    try:
        client = Client(args.address)
    except ValueError as exc:  # an address that is not unix:PATH
        parser.print_usage(sys.stderr)
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    args.address_resolved = client.address
    try:
        with client:
            return args.func(client, args)
    except UsageError as exc:
        args.parser.print_usage(sys.stderr)
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except (VarlinkCallError, CtlError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    except ConnectError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # stdout closed early (| head): no traceback, no error at exit
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 141


if __name__ == "__main__":
    sys.exit(main())
