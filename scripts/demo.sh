#!/bin/sh
# The main job: start beemeshd as the test user and talk to it with the real varlinkctl.
set -eu
HERE=$(cd "$(dirname "$0")/.." && pwd)
. "$HERE/scripts/lib.sh"
load_user
[ "$(id -u)" = 0 ] || die "run as root (make demo)"
V=$HERE/scripts/varlinkctl
D=$(mktemp -d /tmp/beemesh-demo.XXXXXX); chown "$U" "$D"; chmod 0755 "$D"
ADDR=unix:$D/run/io.beemesh.Mesh
cat > "$D/beemeshd.toml" <<CONF
socket_path = "$D/run/io.beemesh.Mesh"
state_dir = "$HOME_/.local/state/beemesh-demo"
registry_dir = "$D/registry"
CONF
chown "$U" "$D/beemeshd.toml"
step "starting beemeshd as $U"
setpriv --reuid "$UID_" --regid "$GID_" --init-groups env -i HOME="$HOME_" USER="$U" LOGNAME="$U" \
    PATH=/usr/bin:/bin XDG_RUNTIME_DIR="$RUNDIR" "$VENV/bin/beemeshd" --config "$D/beemeshd.toml" \
    > "$D/beemeshd.log" 2>&1 &
PID=$!
trap 'kill -TERM $PID 2>/dev/null; wait $PID 2>/dev/null; rm -rf "$D"' EXIT
i=0; until [ -S "$D/run/io.beemesh.Mesh" ]; do i=$((i+1)); [ $i -lt 200 ] || { cat "$D/beemeshd.log"; die "beemeshd did not start"; }; sleep 0.05; done
step "varlinkctl info $ADDR"
"$V" info "$ADDR"
step "varlinkctl call $ADDR io.beemesh.Mesh.GetInfo '{}'"
"$V" --json=pretty call "$ADDR" io.beemesh.Mesh.GetInfo '{}'
step "varlinkctl call --more $ADDR io.beemesh.Mesh.ListPeers '{}'"
"$V" call --more "$ADDR" io.beemesh.Mesh.ListPeers '{}'
step "varlinkctl call $ADDR io.beemesh.Mesh.Scale '{\"name\":\"web\",\"replicas\":\"two\"}'  (a wrong parameter type)"
"$V" call "$ADDR" io.beemesh.Mesh.Scale '{"name":"web","replicas":"two"}' || true
step "stopping beemeshd (SIGTERM)"
kill -TERM $PID; wait $PID && echo "beemeshd exited 0"
trap 'rm -rf "$D"' EXIT
