"""`beemeshd`: the daemon's command line."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import trio

from beemeshd import __version__


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="beemeshd",
        description="BeeMesh peer daemon: serves io.beemesh.Mesh over Varlink for the current user.",
    )
    p.add_argument("--version", action="version", version=f"beemeshd {__version__}")
    p.add_argument("--config", type=Path, help="TOML settings file (default: $XDG_CONFIG_HOME/beemesh/beemeshd.toml)")
    p.add_argument("--socket", type=Path, dest="socket_path", help="Varlink socket path when not socket-activated")
    p.add_argument("--state-dir", type=Path, dest="state_dir", help="desired state and identity")
    p.add_argument("--log-level", dest="log_level", choices=["debug", "info", "warning", "error"])
    return p.parse_args(argv)


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
    from beemeshd.config import Config
    from beemeshd.daemon import Daemon

    config = Config.default()
    config_file = args.config or config.config_dir / "beemeshd.toml"
    if args.config or config_file.exists():
        config = config.with_file(config_file)
    config = config.with_values(
        {k: getattr(args, k) for k in ("socket_path", "state_dir", "log_level")}, source="command line"
    )
    systemd.setup_logging(config.log_level)
    trio.run(Daemon(config).run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
