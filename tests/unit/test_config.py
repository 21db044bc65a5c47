"""Settings files: /etc/beemesh/beemeshd.toml, then the user's file on top; --config alone."""

import dataclasses
import tomllib
from pathlib import Path

import pytest

from beemeshd import cli
from beemeshd.config import Config

SHIPPED = Path(__file__).resolve().parents[2] / "packaging" / "beemeshd.toml"


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setattr(cli, "SYSTEM_CONFIG", tmp_path / "etc" / "beemeshd.toml")
    (tmp_path / "etc").mkdir()
    (tmp_path / "config" / "beemesh").mkdir(parents=True)
    return tmp_path


def load(*argv: str) -> Config:
    return cli.load_config(cli.parse_args(list(argv)))


def test_user_file_applies_over_the_system_file(dirs):
    cli.SYSTEM_CONFIG.write_text('max_pods = 50\nlog_level = "debug"\n')
    (dirs / "config" / "beemesh" / "beemeshd.toml").write_text('log_level = "warning"\n')
    config = load()
    assert (config.max_pods, config.log_level) == (50, "warning")
    assert load("--log-level", "error").log_level == "error"  # flags win over both


def test_either_file_alone_or_none(dirs):
    assert load() == Config.default()
    cli.SYSTEM_CONFIG.write_text("max_connections = 8\n")
    assert load().max_connections == 8
    cli.SYSTEM_CONFIG.unlink()
    (dirs / "config" / "beemesh" / "beemeshd.toml").write_text("max_connections = 9\n")
    assert load().max_connections == 9


def test_explicit_config_replaces_both(dirs):
    cli.SYSTEM_CONFIG.write_text("max_pods = 50\n")
    (dirs / "config" / "beemesh" / "beemeshd.toml").write_text("max_connections = 9\n")
    only = dirs / "only.toml"
    only.write_text("max_message_bytes = 1024\n")
    config = load("--config", str(only))
    assert (config.max_pods, config.max_connections, config.max_message_bytes) == (110, 512, 1024)


def test_unknown_key_in_the_system_file_is_an_error(dirs):
    cli.SYSTEM_CONFIG.write_text("max_podz = 1\n")
    with pytest.raises(SystemExit, match="beemeshd.toml: unknown setting 'max_podz'"):
        load()


def test_shipped_default_documents_every_key_and_changes_nothing(dirs):
    text = SHIPPED.read_text()
    assert tomllib.loads(text) == {}  # comments only
    cli.SYSTEM_CONFIG.write_text(text)
    assert load() == Config.default()
    documented = {}
    for line in text.splitlines():
        key, eq, value = line.removeprefix("# ").partition(" = ")
        if line.startswith("# ") and eq and key.isidentifier():
            documented[key] = value
    assert set(documented) == {f.name for f in dataclasses.fields(Config)}
    for f in dataclasses.fields(Config):
        if f.default is not dataclasses.MISSING:  # paths depend on the user; the rest must match
            value = tomllib.loads(f"v = {documented[f.name]}")["v"]
            assert type(f.default)(value) == f.default, f.name  # as Config.with_values converts


def test_a_view_too_small_for_a_table_is_refused_at_start(dirs):
    from beemeshd.mesh import make_mesh

    cli.SYSTEM_CONFIG.write_text("mesh_view_max = 10\n")
    with pytest.raises(SystemExit, match="view_max"):
        make_mesh(load(), b"\0" * 32)
