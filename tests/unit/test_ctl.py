"""beemeshctl against the real Varlink server (on a unix socket) with a fake daemon behind it."""

from __future__ import annotations

import io
import json
import shutil
import socket
import tempfile
import threading
import time

import pytest
import trio
import yaml
from yaml import safe_load_all

from beemeshd import ctl, ctl_format as fmt, errors
from beemeshd.api.handlers import stream_list
from beemeshd.api.idl import Interface
from beemeshd.api.server import Final, VarlinkServer
from beemeshd.client import Client, ConnectError, VarlinkCallError

NOW = time.time_ns() // 1000


def _now() -> int:
    return time.time_ns() // 1000
PEER_A = "12D3KooWAAAAAAAAAAAAAAAAAAAApeeraaaa"
PEER_B = "12D3KooWBBBBBBBBBBBBBBBBBBBBpeerbbbb"


# -- canned, interface-valid values ------------------------------------------------------------
def replica(name, ordinal, peer, state="ready", containers=("app",), message=None):
    return {"name": name, "ordinal": ordinal, "peer": peer, "state": state, "ready": state == "ready",
            "restarts": ordinal, "podId": None, "generation": 1, "message": message, "lease": None,
            "containers": [{"name": c, "image": "busybox", "state": "running", "ready": state == "ready",
                            "restarts": 0} for c in containers]}


def workload(name, kind="Deployment", namespace="default", *, spec=None, generation=1, age=300):
    spec = spec if spec is not None else {"replicas": 2, "template": {"spec": {"containers": [
        {"name": "app", "image": "busybox"}]}}}
    n = spec.get("replicas", 1)
    reps = [replica(f"{name}-{i}", i, (PEER_A, PEER_B)[i % 2]) for i in range(n)]
    return {"kind": kind, "name": name, "namespace": namespace, "generation": generation, "replicas": n,
            # relative to the moment of the call, not of the import: the suite may run for minutes
            "readyReplicas": n, "createdUSec": _now() - age * 1_000_000, "updatedUSec": _now() - age * 1_000_000,
            "manifest": {"kind": kind, "metadata": {"name": name, "namespace": namespace}, "spec": spec},
            "replicaStatus": reps, "origin": PEER_A,
            "ports": [{"replica": f"{name}-0", "hostIP": "127.0.0.1", "hostPort": 8080, "containerPort": 80,
                       "protocol": "TCP"}]}


def peer(pid, state):
    cap = {"cpuMillis": 2000, "cpuFreeMillis": 500, "memoryBytes": 2 << 30, "memoryFreeBytes": 512 << 20,
           "pods": 10, "podsFree": 3}
    return {"peerId": pid, "state": state, "addresses": ["/ip4/10.0.0.1/tcp/4001"], "uptimeSeconds": 7200.0,
            "capacity": cap, "lastSeenUSec": NOW, "version": "0.1.0", "runtime": "podman 4.3.1",
            "network": "slirp4netns", "labels": {"zone": "a"}, "trust": None if state == "self" else 0.5}


INFO = {
    "version": "0.1.0", "peerId": PEER_A, "uptimeSeconds": 190.0, "user": "alice", "address": "unix:/x",
    "socketActivated": True, "stateDirectory": "/home/alice/.local/state/beemesh",
    "runtime": {"name": "podman", "version": "4.3.1", "endpoint": "unix:///p.sock", "available": True,
                "startedByBeemesh": False, "network": "slirp4netns", "networksAvailable": ["slirp4netns"],
                "lastError": None},
    "meshAddresses": ["/ip4/10.0.0.1/tcp/4001"], "peersAlive": 1, "peersSuspect": 0, "peersDead": 0,
    "workloads": 2, "localReplicas": 1,
    "counters": {k: 0 for k in ("forgedMessages", "staleMessages", "replayedMessages", "malformedMessages",
                                "refusedPeers", "nonMemberMessages", "badConnections", "forgedPolicies",
                                "stalePolicies", "consensusRejected")},
}

EVENTS = [
    {"type": "ReplicaRunning", "timestampUSec": NOW, "namespace": "default", "name": "web", "replica": "web-0",
     "peer": PEER_A, "generation": 2},
    {"type": "ReplicaReady", "timestampUSec": NOW, "namespace": "default", "name": "web", "replica": "web-0",
     "peer": PEER_A, "generation": 2, "message": "all probes pass"},
    {"type": "PeerJoined", "timestampUSec": NOW, "peer": PEER_B},
]


class FakeMesh:
    """io.beemesh.Mesh handlers with canned state; records every call."""

    def __init__(self):
        self.calls: list[tuple[str, dict]] = []
        self.workloads = {("default", "web"): workload("web"),
                          ("prod", "db"): workload("db", "StatefulSet", "prod", spec={"replicas": 1})}
        self.hold_watch = False  # Watch: keep the stream open after the events (as a real one does)
        self.watch_sent: trio.Event | None = None

    def _record(self, method, **params):
        self.calls.append((method, {k: v for k, v in params.items() if v is not None}))

    def _find(self, name, namespace):
        if name == "boom":
            raise RuntimeError("kaboom")
        if name == "far":
            raise errors.PeerUnreachable(PEER_B, "no route to peer")
        try:
            return self.workloads[(namespace or "default", name)]
        except KeyError:
            raise errors.WorkloadNotFound(name, namespace or "default") from None

    async def GetInfo(self, call):
        self._record("GetInfo")
        return {"info": INFO}

    async def Deploy(self, call, manifest=None, yaml=None, namespace=None, wait=None, timeoutSeconds=None,
                     dryRun=None):
        self._record("Deploy", manifest=manifest, yaml=yaml, namespace=namespace, wait=wait,
                     timeoutSeconds=timeoutSeconds, dryRun=dryRun)
        if "foo:" in yaml:
            raise errors.InvalidManifest("spec.template.spec.containers[0].foo", 'unsupported field "foo"')
        if wait and "slow" in yaml:
            raise errors.Timeout("Deploy wait", 60, "1 of 2 replicas ready")
        out = []
        for doc in safe_load_all(yaml):
            key = (doc["metadata"].get("namespace") or namespace or "default", doc["metadata"]["name"])
            old = self.workloads.get(key)
            if old and old["manifest"]["spec"] == doc["spec"]:
                w = old
            else:
                w = workload(key[1], doc["kind"], key[0], spec=doc["spec"],
                             generation=old["generation"] + 1 if old else 1, age=300 if old else 0)
                if old:
                    w["updatedUSec"] = NOW
            if not dryRun:
                self.workloads[key] = w
            out.append(w)
        if wait and self.hold_watch:
            with trio.fail_after(5):  # let the client's progress Watch see its events first
                await self.watch_sent.wait()
        return {"workloads": out}

    async def Get(self, call, name, namespace=None, kind=None):
        self._record("Get", name=name, namespace=namespace, kind=kind)
        return {"workload": self._find(name, namespace)}

    async def List(self, call, namespace=None, kind=None):
        self._record("List", namespace=namespace, kind=kind, more=call.more)
        items = [w for (ns, _), w in sorted(self.workloads.items())
                 if namespace in (None, ns) and kind in (None, w["kind"])]
        return await stream_list(call, "workload", "workloads", items)

    async def Delete(self, call, name, namespace=None, kind=None, wait=None, timeoutSeconds=None):
        self._record("Delete", name=name, namespace=namespace, kind=kind, wait=wait, timeoutSeconds=timeoutSeconds)
        if name == "locked":
            raise errors.PolicyDenied("protect-prod", ["deletion of locked workloads is denied"])
        self._find(name, namespace)
        return {"workload": self.workloads.pop((namespace or "default", name))}

    async def Scale(self, call, name, replicas, namespace=None, wait=None, timeoutSeconds=None):
        self._record("Scale", name=name, replicas=replicas, namespace=namespace, wait=wait,
                     timeoutSeconds=timeoutSeconds)
        if replicas < 0:
            raise errors.InvalidParameter("replicas", "must be 0 … 1000")
        if replicas > 10:
            raise errors.NoCapacity(name, [{"peer": PEER_A, "reason": "needs 512Mi memory, 200Mi free"}])
        old = self._find(name, namespace)
        w = workload(name, old["kind"], old["namespace"], spec={**old["manifest"]["spec"], "replicas": replicas},
                     generation=old["generation"] + 1)
        self.workloads[(w["namespace"], name)] = w
        return {"workload": w}

    async def Logs(self, call, name, namespace=None, replica=None, container=None, tail=None, follow=None):
        self._record("Logs", name=name, namespace=namespace, replica=replica, container=container, tail=tail,
                     follow=follow)
        if container == "broken":
            raise errors.RuntimeUnavailable("podman does not answer", "unix:///p.sock")
        w = self._find(name, namespace)
        lines = [{"replica": r["name"], "container": "app", "stream": "stdout", "timestampUSec": NOW,
                  "line": f"hello {i} from {r['name']}"}
                 for r in w["replicaStatus"] if replica in (None, r["name"]) for i in range(2)]
        return await stream_list(call, "line", "lines", lines)

    async def Watch(self, call, namespace=None, name=None, peers=None):
        self._record("Watch", namespace=namespace, name=name, peers=peers)

        async def gen():
            for i, ev in enumerate(EVENTS):
                last = i == len(EVENTS) - 1
                yield Final({"event": ev}) if last and not self.hold_watch else {"event": ev}
            self.watch_sent.set()  # the events are sent by now (the server asked for the next one)
            await trio.sleep_forever()

        return gen()

    async def ListPeers(self, call):
        return await stream_list(call, "peer", "peers", [peer(PEER_A, "self"), peer(PEER_B, "alive")])

    async def Explain(self, call, name, namespace=None):
        w = self._find(name, namespace)
        if name == "web":
            raise errors.NotImplementedYet("Explain", "placement by bids lands with the mesh (issue 6)")
        decision = {"replica": "db-0", "peer": PEER_A, "rule": "highest score", "decidedUSec": NOW,
                    "bids": [{"peer": PEER_A, "score": 2.5, "fit": 1.0, "locality": 0.5, "reliability": 0.5,
                              "trust": 0.5, "verified": True}],
                    "declined": [{"peer": PEER_B, "reason": "needs 512Mi memory, 200Mi free"}]}
        return {"explanation": {"workload": w, "decisions": [decision], "history": [], "group": None}}


# -- the daemon: the real server on a unix socket, in a thread ---------------------------------
class Daemon:
    def __init__(self):
        self.fake = FakeMesh()
        self.server = VarlinkServer(Interface.load(), self.fake, version="t", grace=0.5)
        self.dir = tempfile.mkdtemp(prefix="bmctl")  # short: unix socket paths are limited
        self.address = f"unix:{self.dir}/io.beemesh.Mesh"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(f"{self.dir}/io.beemesh.Mesh")
        self.sock.listen()
        self.token = None
        ready = threading.Event()

        async def run():
            self.token = trio.lowlevel.current_trio_token()
            self.fake.watch_sent = trio.Event()
            async with trio.open_nursery() as nursery:
                await nursery.start(self.server.run, self.sock)
                ready.set()

        self.thread = threading.Thread(target=trio.run, args=(run,), daemon=True)
        self.thread.start()
        assert ready.wait(5)

    def stop(self):
        trio.from_thread.run_sync(self.server.shutdown, trio_token=self.token)
        self.thread.join(5)
        shutil.rmtree(self.dir, ignore_errors=True)

    def calls(self, method):
        return [params for m, params in self.fake.calls if m == method]


@pytest.fixture
def daemon():
    d = Daemon()
    yield d
    d.stop()


@pytest.fixture
def run(daemon, capsys):
    def run(*argv):
        rc = ctl.main(["-a", daemon.address, *argv])
        out, err = capsys.readouterr()
        return rc, out, err

    return run


def rows(out):
    return [line.split() for line in out.splitlines()]


# -- apply -------------------------------------------------------------------------------------
WEB_V2 = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  template: {spec: {containers: [{name: app, image: busybox:2}]}}
---
apiVersion: v1
kind: Pod
metadata: {name: solo}
spec: {containers: [{name: app, image: busybox}]}
"""


def test_apply_from_file_sends_the_text_and_reports_each_object(run, daemon, tmp_path):
    f = tmp_path / "web.yaml"
    f.write_text(WEB_V2)
    rc, out, err = run("apply", "-f", str(f))
    assert (rc, err) == (0, "")
    assert out == "deployment/web configured (generation 2)\npod/solo created\n"
    assert daemon.calls("Deploy") == [{"yaml": WEB_V2}]
    rc, out, _ = run("-n", "prod", "apply", "-f", str(f), "--dry-run")
    assert out == "deployment/web created (dry run)\npod/solo created (dry run)\n"
    assert daemon.calls("Deploy")[-1] == {"yaml": WEB_V2, "namespace": "prod", "dryRun": True}


def test_apply_from_stdin_unchanged(run, daemon, monkeypatch):
    text = yaml.safe_dump(daemon.fake.workloads[("default", "web")]["manifest"])
    monkeypatch.setattr("sys.stdin", io.StringIO(text))
    rc, out, err = run("apply", "-f", "-")
    assert (rc, out, err) == (0, "deployment/web unchanged\n", "")
    assert daemon.calls("Deploy") == [{"yaml": text}]


def test_apply_wait_shows_progress_on_stderr(run, daemon, tmp_path):
    daemon.fake.hold_watch = True
    f = tmp_path / "web.yaml"
    f.write_text(WEB_V2.split("---")[0])
    rc, out, err = run("apply", "-f", str(f), "--wait", "--timeout", "30")
    assert (rc, out) == (0, "deployment/web configured (generation 2)\n")
    assert err == "web-0: running on peeraaaa\nweb-0: ready on peeraaaa (all probes pass)\n"
    assert daemon.calls("Deploy")[0]["wait"] is True and daemon.calls("Deploy")[0]["timeoutSeconds"] == 30
    assert daemon.calls("Watch") == [{"namespace": "default", "name": "web", "peers": False}]


# -- get ---------------------------------------------------------------------------------------
def test_get_tables(run, daemon):
    rc, out, _ = run("get")
    assert rc == 0 and rows(out) == [["NAME", "READY", "GENERATION", "AGE"], ["deployment/web", "2/2", "1", "5m"]]
    assert daemon.calls("List")[-1] == {"namespace": "default", "more": True}
    rc, out, _ = run("get", "-A", "-o", "wide")
    assert rows(out) == [
        ["NAMESPACE", "NAME", "READY", "GENERATION", "AGE", "PEERS", "PORTS"],
        ["default", "deployment/web", "2/2", "1", "5m", "peeraaaa,peerbbbb", "127.0.0.1:8080->80/TCP"],
        ["prod", "statefulset/db", "1/1", "1", "5m", "peeraaaa", "127.0.0.1:8080->80/TCP"]]
    run("get", "sts", "-n", "prod")
    assert daemon.calls("List")[-1] == {"namespace": "prod", "kind": "StatefulSet", "more": True}
    rc, out, err = run("-n", "empty", "get", "deployments")
    assert (rc, out, err) == (0, "", "No resources found in empty namespace.\n")


def test_get_one_shows_its_replicas(run, daemon):
    rc, out, _ = run("get", "deployment/web")
    assert rc == 0 and rows(out) == [
        ["NAME", "READY", "GENERATION", "AGE"], ["deployment/web", "2/2", "1", "5m"], [],
        ["NAME", "STATE", "READY", "RESTARTS", "PEER", "MESSAGE"],
        ["web-0", "ready", "1/1", "0", "peeraaaa"], ["web-1", "ready", "1/1", "1", "peerbbbb"]]
    assert daemon.calls("Get") == [{"name": "web", "namespace": "default", "kind": "Deployment"}]


@pytest.mark.parametrize("output, load", [("json", json.loads), ("yaml", yaml.safe_load)])
def test_get_one_as_json_or_yaml_is_the_workload(run, daemon, output, load):
    rc, out, _ = run("get", "web", "-o", output)
    assert rc == 0 and load(out) == daemon.fake.workloads[("default", "web")]


# -- delete, scale -----------------------------------------------------------------------------
def test_delete_by_name_and_from_file(run, daemon, tmp_path):
    rc, out, _ = run("delete", "web", "--wait", "--timeout", "5")
    assert (rc, out) == (0, "deployment/web deleted\n")
    assert daemon.calls("Delete") == [{"name": "web", "namespace": "default", "wait": True, "timeoutSeconds": 5}]
    f = tmp_path / "all.json"
    f.write_text(json.dumps({"kind": "List", "items": [
        {"kind": "StatefulSet", "metadata": {"name": "db", "namespace": "prod"}},
        {"kind": "Deployment", "metadata": {"name": "gone"}}]}))
    rc, out, err = run("delete", "-f", str(f))
    assert (rc, out, err) == (1, "statefulset/db deleted\n", "beemeshctl: WorkloadNotFound: default/gone\n")
    assert daemon.calls("Delete")[1] == {"name": "db", "namespace": "prod", "kind": "StatefulSet"}


def test_scale(run, daemon):
    rc, out, _ = run("scale", "web", "--replicas", "3")
    assert (rc, out) == (0, "deployment/web scaled to 3 (generation 2)\n")
    assert daemon.calls("Scale") == [{"name": "web", "namespace": "default", "replicas": 3}]


# -- logs, watch -------------------------------------------------------------------------------
def test_logs_prefix_when_several_sources(run, daemon):
    rc, out, _ = run("logs", "web", "--tail", "5")
    assert rc == 0 and out.splitlines() == [
        "[web-0/app] hello 0 from web-0", "[web-0/app] hello 1 from web-0",
        "[web-1/app] hello 0 from web-1", "[web-1/app] hello 1 from web-1"]
    assert daemon.calls("Logs") == [{"name": "web", "namespace": "default", "tail": 5}]
    rc, out, _ = run("logs", "web", "--replica", "web-1")
    assert out == "hello 0 from web-1\nhello 1 from web-1\n"


def test_watch_prints_one_line_per_event(run, daemon):
    rc, out, _ = run("watch", "--no-peers")
    t = fmt.event_time(NOW)
    assert rc == 0 and rows(out) == [
        [t, "ReplicaRunning", "default/web", "web-0", "peeraaaa"],
        [t, "ReplicaReady", "default/web", "web-0", "peeraaaa", "all", "probes", "pass"],
        [t, "PeerJoined", "-", "-", "peerbbbb"]]
    assert daemon.calls("Watch") == [{"peers": False}]
    run("watch", "web")
    assert daemon.calls("Watch")[-1] == {"namespace": "default", "name": "web"}


def test_ctrl_c_during_a_stream_exits_130_quietly(run, daemon, monkeypatch):
    daemon.fake.hold_watch = True

    def interrupt(ev):
        raise KeyboardInterrupt

    monkeypatch.setattr(fmt, "event_line", interrupt)
    assert run("watch") == (130, "", "")


# -- info, peers, explain ----------------------------------------------------------------------
def test_info(run, daemon, monkeypatch, capsys):
    rc, out, _ = run("info")
    lines = dict(line.split(":", 1) for line in out.splitlines())
    assert rc == 0 and lines["Version"].strip() == "0.1.0" and lines["Uptime"].strip() == "3m"
    assert lines["Peers"].strip() == "1 alive, 0 suspect, 0 dead"
    monkeypatch.setenv("BEEMESH_ADDRESS", daemon.address)  # the default address
    assert ctl.main(["info", "-o", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == INFO


def test_peers_table(run):
    rc, out, _ = run("peers")
    assert rc == 0 and rows(out)[1:] == [
        ["peeraaaa", "self", "/ip4/10.0.0.1/tcp/4001", "2h", "500m/2", "512Mi/2Gi", "3/10"],
        ["peerbbbb", "alive", "/ip4/10.0.0.1/tcp/4001", "2h", "500m/2", "512Mi/2Gi", "3/10"]]
    assert out.startswith("PEER ID ")


def test_explain_prints_yaml(run):
    rc, out, _ = run("-n", "prod", "explain", "db")
    doc = yaml.safe_load(out)
    assert rc == 0 and doc["decisions"][0]["rule"] == "highest score" and doc["workload"]["name"] == "db"


# -- errors and exit codes ---------------------------------------------------------------------
@pytest.mark.parametrize("argv, line", [
    (["apply", "-f", "-"], 'InvalidManifest: spec.template.spec.containers[0].foo: unsupported field "foo"'),
    (["get", "missing"], "WorkloadNotFound: default/missing"),
    (["apply", "-f", "-", "--wait"], "Timeout: Deploy wait did not finish in 60 s (1 of 2 replicas ready)"),
    (["explain", "web"], "NotImplemented: Explain: placement by bids lands with the mesh (issue 6)"),
    (["scale", "web", "--replicas", "50"], "NoCapacity: no peer can run web: peeraaaa: needs 512Mi memory, 200Mi free"),
    (["delete", "locked"], "PolicyDenied: protect-prod: deletion of locked workloads is denied"),
    (["logs", "web", "--replica", "web-0", "-c", "broken"],
     "RuntimeUnavailable: podman does not answer (endpoint unix:///p.sock)"),
    (["get", "far"], f"PeerUnreachable: {PEER_B}: no route to peer"),
    (["get", "boom"], "InternalError: RuntimeError: kaboom"),
    (["scale", "web", "--replicas", "-1"], "InvalidParameter: replicas"),
])
def test_error_replies_exit_1_with_one_line(run, monkeypatch, argv, line):
    body = "kind: Pod\nmetadata: {name: slow}\nspec: {containers: [{name: a, image: b, foo: 1}]}\n"
    monkeypatch.setattr("sys.stdin", io.StringIO(body if "--wait" not in argv else body.replace("foo", "x")))
    assert run(*argv) == (1, "", f"beemeshctl: {line}\n")


def test_unreachable_daemon_exits_3(capsys, tmp_path):
    address = f"unix:{tmp_path}/nothing"
    assert ctl.main(["-a", address, "get"]) == 3
    err = capsys.readouterr().err
    assert err.startswith(f"beemeshctl: cannot reach beemeshd at {address}: No such file or directory")
    assert "systemctl --user start beemeshd.socket" in err and err.count("\n") == 1


@pytest.mark.parametrize("argv", [
    [], ["frobnicate"], ["scale", "web"], ["get", "a", "b", "c"], ["get", "nokind", "web"], ["delete"],
    ["apply"], ["-a", "tcp:localhost:1", "info"], ["get", "-o", "xml"],
])
def test_bad_usage_exits_2(run, argv, capsys):
    rc, out, err = run(*argv) if argv[:1] != ["-a"] else (ctl.main(argv), *capsys.readouterr())
    assert rc == 2 and out == "" and "usage:" in err


def test_missing_file_exits_1(run):
    rc, _, err = run("apply", "-f", "/nonexistent.yaml")
    assert (rc, err) == (1, "beemeshctl: cannot read /nonexistent.yaml: No such file or directory\n")


# -- client and formatting ---------------------------------------------------------------------
def test_client_reuses_its_connection_and_survives_an_abandoned_stream(daemon):
    with Client(daemon.address) as c:
        assert c.call("GetInfo", {})["info"]["user"] == "alice"
        sock = c._sock
        assert c.call("io.beemesh.Mesh.Get", {"name": "web"})["workload"]["name"] == "web"
        assert c._sock is sock
        replies = c.stream("ListPeers")
        next(replies)  # abandoned with one reply left
        assert c.call("GetInfo")["info"]["version"] == "0.1.0"
        with pytest.raises(VarlinkCallError) as exc:
            c.call("Get", {"name": "missing", "namespace": "x"})
        assert exc.value.name == "io.beemesh.Mesh.WorkloadNotFound"
        assert str(exc.value) == "WorkloadNotFound: x/missing"
    with pytest.raises(ConnectError):
        Client(f"unix:{daemon.dir}/nope").call("GetInfo")


def test_formatting_helpers():
    assert [fmt.age(s) for s in (5, 59, 180, 7300, 4 * 86400 + 5)] == ["5s", "59s", "3m", "2h", "4d"]
    assert [fmt.size(n) for n in (1000, 512 << 20, int(2.3 * (1 << 30)), 2 << 30)] == ["1000", "512Mi", "2.3Gi", "2Gi"]
    assert [fmt.cpu(m) for m in (2000, 1500, 250)] == ["2", "1500m", "250m"]
    assert fmt.short_peer(PEER_A) == "peeraaaa" and fmt.short_peer(None) == "<none>"
