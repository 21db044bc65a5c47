"""Where an idle beemeshd's RSS goes: what each import costs, measured in fresh interpreters.

Steps, cumulative, as the daemon imports them: Python itself, trio, beemeshd's daemon module
(core, Varlink server, systemd, PyNaCl), the policy engine (regopy: rego-cpp), podman-py
(+ requests), then the mesh module (py-libp2p)
— once as beemeshd imports it (beemeshd/mesh/lean_import.py leaves QUIC, WebSocket, AutoTLS and
UPnP out) and once whole. Then the top-level packages that cost the most RSS inside the lean
mesh import, each counted without the packages it imports itself. One sample per figure (RSS of
an import is deterministic to within ≈ 0.2 MB); run from the checkout with the venv's Python.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

STEPS = ["trio", "beemeshd.daemon", "beemeshd.policy", "podman", "beemeshd.mesh.host"]

_STEPS_CODE = """
import importlib, json, sys
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20
if sys.argv[1] == "whole":
    import beemeshd.mesh.lean_import as lean
    lean.import_libp2p = lambda: importlib.import_module("libp2p")
out = [("python", rss())]
for m in sys.argv[2:]:
    try:
        importlib.import_module(m)
    except ModuleNotFoundError as exc:
        if exc.name != m:
            raise
        continue  # a module this checkout does not have (yet)
    out.append((m, rss()))
print(json.dumps(out))
"""

# Own RSS of each module's execution (its nested imports excluded), summed per top-level package.
_PACKAGES_CODE = """
import collections, importlib, importlib.abc, json, sys
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20
nested, own = [], collections.Counter()
class Loader(importlib.abc.Loader):
    def __init__(self, inner): self.inner = inner
    def __getattr__(self, name): return getattr(self.inner, name)
    def create_module(self, spec): return self.inner.create_module(spec)
    def exec_module(self, module):
        nested.append(0.0); t0 = rss()
        try:
            self.inner.exec_module(module)
        finally:
            total = rss() - t0; inner = nested.pop()
            own[module.__name__.partition(".")[0]] += total - inner
            if nested: nested[-1] += total
class Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        for f in sys.meta_path:
            if f is self or not hasattr(f, "find_spec"): continue
            spec = f.find_spec(name, path, target)
            if spec is not None:
                if spec.loader is not None and not isinstance(spec.loader, Loader):
                    spec.loader = Loader(spec.loader)
                return spec
for m in ("trio", "beemeshd.daemon", "podman"):
    importlib.import_module(m)
try:
    import beemeshd.policy
except ModuleNotFoundError:
    pass
sys.meta_path.insert(0, Finder())
importlib.import_module("beemeshd.mesh.host")
print(json.dumps(own.most_common(12)))
"""


def _run(code: str, *args: str) -> object:
    p = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT,
                       timeout=120)
    if p.returncode:
        raise RuntimeError(p.stderr[-2000:])
    return json.loads(p.stdout)


def main() -> dict:
    lean = _run(_STEPS_CODE, "lean", *STEPS)
    whole = _run(_STEPS_CODE, "whole", *STEPS)
    packages = _run(_PACKAGES_CODE)
    prev = 0.0
    print("RSS after each import (fresh interpreter, cumulative):")
    for name, mb in lean:
        print(f"  {name:22s} {mb:6.1f} MB  (+{mb - prev:5.1f})")
        prev = mb
    print(f"  py-libp2p whole (before lean_import): {whole[-1][1]:.1f} MB; as beemeshd imports it: {lean[-1][1]:.1f} MB")
    print("largest packages inside the mesh import (own RSS, nested imports excluded):")
    for name, mb in packages:
        print(f"  {mb:5.1f} MB  {name}")
    return {"lean": lean, "whole": whole, "packages": packages}


if __name__ == "__main__":
    main()
