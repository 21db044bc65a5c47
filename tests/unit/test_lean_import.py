"""beemeshd.mesh.lean_import: stand-ins during one import, loud at use, gone afterwards."""

import subprocess
import sys
import textwrap

import pytest

from beemeshd.mesh.lean_import import NEVER_USED, MissingFeature, import_without


@pytest.fixture
def packages(tmp_path, monkeypatch):
    """`heavy` (a package with a submodule) and `user`, which imports it the ways libp2p does."""
    (tmp_path / "heavy").mkdir()
    (tmp_path / "heavy" / "__init__.py").write_text("LOADED = True\nclass Engine:\n    pass\n")
    (tmp_path / "heavy" / "tls.py").write_text("class Context:\n    pass\nclass Error(Exception):\n    pass\n")
    (tmp_path / "user.py").write_text(textwrap.dedent("""
        import heavy.tls
        from heavy import Engine
        from heavy.tls import Context

        class Stream(Engine):          # subclassing a placeholder
            pass

        DEFAULT = Context()            # built at import time
        DEFAULT.verify = False         # and configured there
        ERRORS = (heavy.tls.Error,)

        def guarded():
            try:
                DEFAULT.connect()
            except ERRORS:             # a placeholder in an except clause is still valid
                return "caught"
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    for name in ("user", "heavy", "heavy.tls"):
        sys.modules.pop(name, None)


def test_left_out_package_is_a_stand_in_that_fails_loudly_when_used(packages):
    user = import_without("user", ["heavy"])
    assert "heavy" not in sys.modules and "heavy.tls" not in sys.modules
    assert repr(user.DEFAULT) == "<not loaded: heavy.tls.Context>"
    assert user.DEFAULT.verify is False
    with pytest.raises(MissingFeature, match=r"heavy\.tls\.Context was not loaded"):
        user.DEFAULT.connect()
    with pytest.raises(MissingFeature):
        user.guarded()
    with pytest.raises(MissingFeature, match=r"heavy\.Engine was not loaded"):
        user.Stream().read()
    import heavy  # afterwards: the real package

    assert heavy.LOADED is True and heavy.Engine is not user.Stream.__mro__[1]


def test_a_package_already_loaded_is_not_replaced(packages):
    import heavy.tls

    user = import_without("user", ["heavy"])
    assert isinstance(user.DEFAULT, heavy.tls.Context)


def test_the_mesh_module_imports_without_the_unused_packages_and_runs():
    """In a fresh interpreter: beemeshd.mesh.host imports, none of NEVER_USED is loaded, and a
    libp2p host still starts, listens and stops (TCP + Noise + Yamux)."""
    code = textwrap.dedent(f"""
        import os, sys, trio
        from beemeshd.mesh.host import LibP2PMesh
        loaded = sorted({{m.split(".")[0] for m in sys.modules}} & set({list(NEVER_USED)!r}))
        assert not loaded, loaded

        async def main():
            a = LibP2PMesh(os.urandom(32), listen=["/ip4/127.0.0.1/tcp/0"])
            async with trio.open_nursery() as n:
                await n.start(a.run)
                b = LibP2PMesh(os.urandom(32), listen=["/ip4/127.0.0.1/tcp/0"], bootstrap=[a.addresses()[0]])
                await n.start(b.run)
                with trio.fail_after(20):
                    while not any(p.state == "alive" for p in a.peers()):
                        await trio.sleep(0.05)
                n.cancel_scope.cancel()
            print("ok")

        trio.run(main)
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.strip().endswith("ok"), p.stderr[-3000:]
