"""beemeshctl as the test user against a real beemeshd on real Podman."""

from __future__ import annotations

import shutil

from tests.conftest import ROOT, VENV
from tests.integration.daemons import labelled_pods


def ctl(node, *args, **kw):
    env = node.user.env(BEEMESH_ADDRESS=node.address)
    return node.user.run([str(VENV / "bin" / "beemeshctl"), *args], env=env, **kw)


def test_apply_get_logs_delete(node):
    manifest = node.home / "web.yaml"
    shutil.copy(ROOT / "examples" / "web.yaml", manifest)
    # a port of its own, so the test does not depend on 18080 being free
    text = manifest.read_text().replace("hostPort: 18080", "hostPort: 18481")
    manifest.write_text(text)
    p = ctl(node, "apply", "-f", str(manifest), "--wait", "--timeout", "60")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "deployment/web created"
    assert ctl(node, "apply", "-f", str(manifest)).stdout.strip() == "deployment/web unchanged"
    for ip in ("127.0.0.1", "127.0.0.2"):
        assert node.http(ip, 18481) == "hello from beemesh busybox\n"
    p = ctl(node, "get", "web")
    assert p.returncode == 0 and "2/2" in p.stdout and "web-1" in p.stdout
    p = ctl(node, "logs", "web", "--replica", "web-0", "--tail", "1")
    assert p.returncode == 0 and "response:200" in p.stdout
    p = ctl(node, "delete", "web", "--wait")
    assert p.returncode == 0, p.stderr
    assert labelled_pods(node) == []


def test_errors_are_one_line_with_exit_codes(node, user):
    bad = node.home / "bad.yaml"
    bad.write_text("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n"
                   "  - {name: c, image: x, privileged: true}\n")
    p = ctl(node, "apply", "-f", str(bad))
    assert p.returncode == 1
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("beemeshctl: InvalidManifest: spec.containers[0].privileged")
    p = ctl(node, "get", "nope")
    assert p.returncode == 1 and p.stderr.strip() == "beemeshctl: WorkloadNotFound: default/nope"
    p = user.run([str(VENV / "bin" / "beemeshctl"), "info"],
                 env=user.env(BEEMESH_ADDRESS=f"unix:{node.home}/absent.sock"))
    assert p.returncode == 3 and "cannot reach beemeshd" in p.stderr
