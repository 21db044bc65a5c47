"""systemd integration: socket activation fds, sd_notify, journald logging.

All of it degrades to a no-op outside systemd, so the daemon runs the same by hand.
"""

from __future__ import annotations

import logging
import os
import socket
import sys

try:  # systemd-python; optional at runtime so a bare venv still starts
    from systemd import daemon as _sd_daemon
    from systemd import journal as _sd_journal
except ImportError:  # pragma: no cover - dependency is declared
    _sd_daemon = _sd_journal = None


def listen_fds(name: str) -> list[socket.socket]:
    """Sockets systemd passed us under FileDescriptorName=`name`.

    The LISTEN_* variables are removed from os.environ (systemd-python only unsets them in C,
    and child processes such as the Podman service must not inherit them)."""
    env_pid = os.environ.pop("LISTEN_PID", None)
    env_fds = os.environ.pop("LISTEN_FDS", None)
    env_names = os.environ.pop("LISTEN_FDNAMES", "")
    if env_pid is None or env_fds is None or int(env_pid) != os.getpid():
        return []
    names = env_names.split(":") if env_names else []
    out = []
    for i in range(int(env_fds)):
        fd = 3 + i
        if (names[i] if i < len(names) else "unknown") == name:
            out.append(socket.socket(fileno=fd))
        else:
            os.set_inheritable(fd, False)
    return out


def notify(state: str) -> bool:
    """sd_notify; False when not running under systemd."""
    if _sd_daemon is None or not os.environ.get("NOTIFY_SOCKET"):
        return False
    return bool(_sd_daemon.notify(state))


def under_journal() -> bool:
    """True when stderr is connected to the journal (systemd sets JOURNAL_STREAM=dev:inode)."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    if not stream or _sd_journal is None:
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return stream == f"{st.st_dev}:{st.st_ino}"


def setup_logging(level: str) -> None:
    root = logging.getLogger()
    root.handlers.clear()
    if under_journal():
        handler: logging.Handler = _sd_journal.JournalHandler(SYSLOG_IDENTIFIER="beemeshd")
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level.upper())
    # libp2p logs every stream at INFO; keep it quiet unless asked.
    for noisy in ("libp2p", "urllib3", "multiaddr", "async_service", "aioquic", "zeroconf"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
