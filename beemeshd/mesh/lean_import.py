"""Import py-libp2p without the parts BeeMesh never uses (≈ 7 MB less RSS per daemon).

`import libp2p` imports every transport, security protocol and service it has, whether a host
uses them or not. BeeMesh's hosts use TCP + Noise + Yamux only (beemeshd/mesh/host.py), so QUIC
(aioquic, pylsqpack and, through its TLS, pyOpenSSL and service_identity), WebSocket
(trio_websocket), AutoTLS's ACME client (httpx), UPnP (miniupnpc) and the resource manager's
Prometheus exporter (off unless asked for) are never reached. While the mesh module is imported
those packages are replaced by stand-ins: every name looked up on one is a placeholder class,
and whatever is built from a placeholder raises MissingFeature as soon as it is used, so a code
path we did not expect fails loudly instead of doing nothing. Afterwards the stand-ins leave
sys.modules, so a later import gets the real package.

Not left out although they cost ≈ 8.5 MB more: zeroconf (a peer may turn mDNS on when it joins a
mesh at run time) and dnspython (bootstrap addresses may be /dns4 names).
Only for the py-libp2p versions this was tested with; any other version is imported whole.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.metadata
import sys
import types
from collections.abc import Iterable

TESTED_LIBP2P = ("0.8.1",)
# Used by no host BeeMesh builds: QUIC and its TLS, WebSocket, AutoTLS (ACME over httpx), UPnP,
# the resource manager's Prometheus exporter.
NEVER_USED = ("aioquic", "pylsqpack", "OpenSSL", "service_identity", "httpx", "prometheus_client",
              "trio_websocket", "miniupnpc")


class MissingFeature(RuntimeError):
    """A py-libp2p feature whose package beemeshd did not load was used."""


class _Missing:
    """What calling a placeholder returns: unusable (but attributes may be set on it, as module
    code does at import), and says why."""

    def __init__(self, name: str):
        object.__setattr__(self, "_name", name)

    def _fail(self, *args, **kwargs):
        raise MissingFeature(f"{self._name} was not loaded: beemeshd imports py-libp2p without "
                             f"{self._name.split('.')[0]} (beemeshd/mesh/lean_import.py)")

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        self._fail()

    __call__ = __await__ = __iter__ = __aiter__ = __bool__ = _fail  # setting attributes is harmless

    def __repr__(self) -> str:
        return f"<not loaded: {self._name}>"


class _Placeholder(type):
    """Metaclass of placeholder classes: attributes are placeholders, calls build _Missing.
    Placeholders are exception classes, so `except placeholder:` clauses stay valid."""

    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return placeholder(f"{cls.standin}.{name}")

    def __getitem__(cls, _item):  # Generic[...] in annotations evaluated at import
        return cls

    def __call__(cls, *args, **kwargs):
        return _Missing(cls.standin)  # a subclass defined on a placeholder: the placeholder's name


def placeholder(qualname: str) -> type:
    cls = _Placeholder(qualname.rsplit(".", 1)[-1], (Exception,), {"standin": qualname})
    cls.__qualname__ = qualname
    return cls


class _StandIn(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        value = placeholder(f"{self.__name__}.{name}")
        setattr(self, name, value)  # one placeholder per name: `is` and isinstance stay consistent
        return value


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, packages: Iterable[str]):
        self.packages = frozenset(packages)
        self.made: list[str] = []

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in self.packages:
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _StandIn(spec.name)
        module.__path__ = []
        self.made.append(spec.name)
        return module

    def exec_module(self, module):
        pass


def import_libp2p() -> types.ModuleType:
    """`import libp2p`, leaving NEVER_USED out if this libp2p version was tested that way."""
    try:
        tested = importlib.metadata.version("libp2p") in TESTED_LIBP2P
    except importlib.metadata.PackageNotFoundError:
        tested = False
    return import_without("libp2p", NEVER_USED if tested else ())


def import_without(module: str, packages: Iterable[str]) -> types.ModuleType:
    """Import `module` with `packages` replaced by stand-ins during the import. A module already
    imported stays as it is; a package already imported is not replaced."""
    if module in sys.modules:
        return sys.modules[module]
    finder = _Finder(p for p in packages if p not in sys.modules)
    sys.meta_path.insert(0, finder)
    try:
        return importlib.import_module(module)
    finally:
        sys.meta_path.remove(finder)
        for name in finder.made:
            sys.modules.pop(name, None)
