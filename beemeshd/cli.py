"""`beemeshd`: the daemon's command line."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from beemeshd import __version__

if TYPE_CHECKING:
    from beemeshd.config import Config

# Site-wide settings (the RPM ships a commented-out default); the user's own file applies on top.
SYSTEM_CONFIG = Path("/etc/beemesh/beemeshd.toml")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="beemeshd",
        description="BeeMesh peer daemon: serves io.beemesh.Mesh over Varlink for the current user.",
    )
    p.add_argument("--version", action="version", version=f"beemeshd {__version__}")
    p.add_argument("--config", type=Path, help="TOML settings file, used alone (default: /etc/beemesh/beemeshd.toml "
                   "and then $XDG_CONFIG_HOME/beemesh/beemeshd.toml, each if present)")
    p.add_argument("--socket", type=Path, dest="socket_path", help="Varlink socket path when not socket-activated")
    p.add_argument("--state-dir", type=Path, dest="state_dir", help="desired state and identity")
    p.add_argument("--log-level", dest="log_level", choices=["debug", "info", "warning", "error"])
    return p.parse_args(argv)


def config_files(explicit: Path | None, user_config_dir: Path) -> list[Path]:
    """Settings files to apply, in order: `--config` alone, else the system's then the user's."""
    if explicit:
        return [explicit]
    return [f for f in (SYSTEM_CONFIG, user_config_dir / "beemeshd.toml") if f.exists()]


def load_config(args: argparse.Namespace) -> Config:
    """Defaults < settings files < command line."""
    from beemeshd.config import Config

    config = Config.default()
    for config_file in config_files(args.config, config.config_dir):
        config = config.with_file(config_file)
    return config.with_values(
        {k: getattr(args, k) for k in ("socket_path", "state_dir", "log_level")}, source="command line"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() == 0:
        print(
            "beemeshd: refusing to run as root. BeeMesh is a rootless, per-user service: run it as an "
            "unprivileged user (systemctl --user start beemeshd).",
            file=sys.stderr,
        )
        return 1
    from beemeshd import systemd
    from beemeshd.daemon import Daemon

    config = load_config(args)
    systemd.setup_logging(config.log_level)
    try:
        trio.run(Daemon(config).run)
    except BaseExceptionGroup as group:  # trio wraps a SystemExit raised inside the nursery
        exits = group.subgroup(SystemExit)
        if exits is not None:
            raise _first(exits) from None
        raise
    return 0


def _first(group: BaseExceptionGroup) -> BaseException:
    exc = group.exceptions[0]
    return _first(exc) if isinstance(exc, BaseExceptionGroup) else exc


if __name__ == "__main__":
    sys.exit(main())
