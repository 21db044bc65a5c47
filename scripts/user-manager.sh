#!/bin/sh
# user-manager.sh start|stop — a real `systemd --user` manager for the test user on a machine whose
# PID 1 is not systemd (host-setup.md §6). Run as root. `start` prints the manager's PID.
set -eu
HERE=$(cd "$(dirname "$0")/.." && pwd)
. "$HERE/scripts/lib.sh"
load_user
[ "$(id -u)" = 0 ] || die "run as root"
PIDFILE=$BEEMESH_LIB/user-manager.pid

stop() {
    if [ -f "$PIDFILE" ]; then
        pid=$(cat "$PIDFILE")
        if kill -0 "$pid" 2>/dev/null; then
            asuser systemctl --user exit 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
            i=0; while kill -0 "$pid" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
            kill -KILL "$pid" 2>/dev/null || true
        fi
        rm -f "$PIDFILE"
    fi
    # A stale private socket would make the next start look ready before the manager listens.
    rm -rf "$RUNDIR/systemd"
    for r in unified systemd; do
        d=/sys/fs/cgroup/$r/user.slice
        [ -d "$d" ] && find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null || true
    done
    # While this directory exists, tools think systemd is PID 1; never leave it behind.
    if [ "$(cat /proc/1/comm)" != systemd ]; then rmdir /run/systemd/system 2>/dev/null || true; fi
}

start() {
    stop
    mkdir -p /run/systemd/system
    install -d -m 0700 -o "$UID_" -g "$GID_" "$RUNDIR"
    # The launcher moves itself into the user's cgroups, then execs the manager (same PID).
    sh -c '
        for root in /sys/fs/cgroup/unified /sys/fs/cgroup/systemd; do
            [ -d "$root" ] || continue
            cg="$root/user.slice/user-$1.slice/user@$1.service"
            mkdir -p "$cg"; chown -R "$1:$2" "$cg"; echo $$ > "$cg/cgroup.procs"
        done
        exec setpriv --reuid "$1" --regid "$2" --init-groups env -i HOME="$3" USER="$4" LOGNAME="$4" \
            SHELL=/bin/sh PATH=/usr/local/bin:/usr/bin:/bin XDG_RUNTIME_DIR="$5" /lib/systemd/systemd --user
    ' launcher "$UID_" "$GID_" "$HOME_" "$U" "$RUNDIR" >"$BEEMESH_LIB/user-manager.log" 2>&1 &
    echo $! > "$PIDFILE"
    i=0
    until asuser systemctl --user show-environment >/dev/null 2>&1; do
        i=$((i + 1)); [ $i -lt 100 ] || { cat "$BEEMESH_LIB/user-manager.log" >&2; stop; die "user manager did not start"; }
        sleep 0.1
    done
    cat "$PIDFILE"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    *) die "usage: $0 start|stop" ;;
esac
