#!/bin/sh
# Prepare this machine (Debian 12, as root) for BeeMesh's demo and tests. Idempotent: a second run
# only re-installs the project when its sources changed, and finishes in seconds.
#
#   - Debian packages (podman + runc, slirp4netns, build deps of systemd-python / fastecdsa, rpm,
#     iperf3 and passt for the throughput benchmark, ...)
#   - the unprivileged test user with subuid/subgid, its runtime dir and rootless Podman config
#   - a venv built with the system Python, readable by that user, holding beemesh + dependencies
#   - the real varlinkctl (trixie's systemd, run through its own loader) in .cache/varlinkctl
#   - a local busybox image (no registry is reachable) in the user's Podman store
#
# Settings (environment): BEEMESH_TEST_USER (beemesh-test), BEEMESH_VENV (/var/lib/beemesh/venv).
set -eu
HERE=$(cd "$(dirname "$0")/.." && pwd)
. "$HERE/scripts/lib.sh"

[ "$(id -u)" = 0 ] || die "run as root (it installs packages and creates the test user)"
STAMPS=$BEEMESH_LIB/stamps
# The venv's own stamps (deps, project): a second venv (BEEMESH_VENV) must not skip its
# dependencies because another venv's stamp says they are installed.
VSTAMPS=$STAMPS
[ "$VENV" = /var/lib/beemesh/venv ] || VSTAMPS=$STAMPS/$(basename "$VENV")
mkdir -p "$VSTAMPS"
mkdir -p "$STAMPS"
chmod 0755 "$BEEMESH_LIB"

# A stale /run/systemd/system (left by a user-manager test) makes package scripts expect systemd as
# PID 1; remove it unless PID 1 really is systemd.
if [ -d /run/systemd/system ] && [ "$(cat /proc/1/comm)" != systemd ]; then
    rmdir /run/systemd/system 2>/dev/null || true
fi

# 1. Debian packages --------------------------------------------------------------------------
PKGS="podman runc slirp4netns uidmap busybox-static catatonit fuse-overlayfs curl ca-certificates
      python3-venv python3-dev gcc pkg-config libsystemd-dev libgmp-dev build-essential
      iproute2 procps util-linux make
      rpm rpmlint python3-pip python3-packaging
      iperf3 passt"
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    step "installing Debian packages:$missing"
    apt-get update -q
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing
fi

# 2. The test user ------------------------------------------------------------------------------
if ! id "$U" >/dev/null 2>&1; then
    step "creating user $U"
    useradd --create-home --shell /bin/bash "$U"
fi
grep -q "^$U:" /etc/subuid || usermod --add-subuids 200000-265535 "$U"
grep -q "^$U:" /etc/subgid || usermod --add-subgids 200000-265535 "$U"
load_user
install -d -m 0700 -o "$UID_" -g "$GID_" "$RUNDIR"
# slirp4netns opens /dev/net/tun as the user; the mode resets at boot, so set it every time.
[ -c /dev/net/tun ] || { mkdir -p /dev/net; mknod /dev/net/tun c 10 200; }
chmod 0666 /dev/net/tun

# 3. Rootless Podman configuration (host-setup.md: runc, cgroupfs, file events, k8s-file logs) -----
CONF=$HOME_/.config/containers
asuser mkdir -p "$CONF"
write_if_changed "$CONF/containers.conf" "$UID_" "$GID_" <<'CONF'
# Written by BeeMesh's scripts/setup.sh
[containers]
log_driver = "k8s-file"
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
# Every exec (BeeMesh's exec probes) otherwise leaves two conmon processes waiting 300 s.
exit_command_delay = 5
CONF
write_if_changed "$CONF/storage.conf" "$UID_" "$GID_" <<'CONF'
# Written by BeeMesh's scripts/setup.sh
[storage]
driver = "overlay"
CONF

# 4. The venv ------------------------------------------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
    step "creating venv $VENV"
    /usr/bin/python3 -m venv "$VENV"
fi
deps_hash=$(cat "$HERE/pyproject.toml" | sha256sum | cut -c1-16)
if [ "$(cat "$VSTAMPS/deps" 2>/dev/null)" != "$deps_hash" ]; then
    step "installing Python dependencies into $VENV"
    "$VENV/bin/pip" install -q --upgrade pip
    # Install the dependencies (and test extras) from pyproject, not the project itself.
    "$VENV/bin/python" - "$HERE/pyproject.toml" > "$BEEMESH_LIB/requirements.txt" <<'PY'
import sys, tomllib
p = tomllib.load(open(sys.argv[1], "rb"))["project"]
print("\n".join(p["dependencies"] + [d for ds in p["optional-dependencies"].values() for d in ds]))
PY
    "$VENV/bin/pip" install -q -r "$BEEMESH_LIB/requirements.txt"
    echo "$deps_hash" > "$VSTAMPS/deps"
    rm -f "$VSTAMPS/project"
fi
src_hash=$(cd "$HERE" && find beemeshd interfaces pyproject.toml -type f -not -name '*.pyc' | sort | xargs cat | sha256sum | cut -c1-16)
if [ "$(cat "$VSTAMPS/project" 2>/dev/null)" != "$src_hash" ]; then
    step "installing beemesh into $VENV"
    # Build from a copy: the checkout may not be writable or may hold stale build/ dirs.
    tmp=$(mktemp -d)
    (cd "$HERE" && tar cf - pyproject.toml README.md beemeshd interfaces) | tar xf - -C "$tmp"
    "$VENV/bin/pip" install -q --no-deps --force-reinstall "$tmp"
    rm -rf "$tmp"
    echo "$src_hash" > "$VSTAMPS/project"
fi
chmod -R a+rX "$VENV"
asuser test -x "$VENV/bin/beemeshd" || die "$U cannot run $VENV/bin/beemeshd"

# 5. The real varlinkctl -------------------------------------------------------------------------
if ! "$HERE/scripts/varlinkctl" --version >/dev/null 2>&1; then
    step "fetching varlinkctl (trixie's systemd) into $HERE/.cache/varlinkctl"
    "$HERE/scripts/fetch-varlinkctl.sh" "$HERE/.cache/varlinkctl"
fi

# 6. A local image (no registry is reachable) ----------------------------------------------------
if [ "$(cat "$STAMPS/image" 2>/dev/null)" != "$IMAGE" ] || ! asuser podman image exists "$IMAGE"; then
    step "building $IMAGE from busybox-static"
    "$HERE/scripts/build-image.sh"
    echo "$IMAGE" > "$STAMPS/image"
fi

# 7. journald storage for the RPM test ---------------------------------------------------------
# `journalctl --user` needs persistent storage (host-setup.md section 6). Only where PID 1 is not
# systemd; the test starts and stops journald itself.
if [ "$(cat /proc/1/comm)" != systemd ]; then
    mkdir -p /etc/systemd/journald.conf.d /var/log/journal
    printf '[Journal]\nStorage=persistent\n' | write_if_changed /etc/systemd/journald.conf.d/beemesh.conf 0 0
fi

step "setup done (user $U, venv $VENV)"
