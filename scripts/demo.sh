#!/bin/sh
# The main job (one peer for now): start beemeshd as the test user, check it with the real
# varlinkctl, deploy a 2-replica web Deployment with beemeshctl, show its pages, clean up.
set -eu
HERE=$(cd "$(dirname "$0")/.." && pwd)
. "$HERE/scripts/lib.sh"
load_user
[ "$(id -u)" = 0 ] || die "run as root (make demo)"
V=$HERE/scripts/varlinkctl
D=$(mktemp -d /tmp/beemesh-demo.XXXXXX); chmod 0755 "$D"
ADDR=unix:$D/run/io.beemesh.Mesh
cat > "$D/beemeshd.toml" <<CONF
socket_path = "$D/run/io.beemesh.Mesh"
state_dir = "$D/state"
registry_dir = "$D/registry"
CONF
cp "$HERE/examples/web.yaml" "$D/web.yaml"
chown -R "$U" "$D"
ctl() { asuser env BEEMESH_ADDRESS="$ADDR" "$VENV/bin/beemeshctl" "$@"; }

step "starting beemeshd as $U"
setpriv --reuid "$UID_" --regid "$GID_" --init-groups env -i -C "$D" HOME="$HOME_" USER="$U" LOGNAME="$U" \
    PATH=/usr/bin:/bin XDG_RUNTIME_DIR="$RUNDIR" "$VENV/bin/beemeshd" --config "$D/beemeshd.toml" \
    > "$D/beemeshd.log" 2>&1 &
PID=$!
cleanup() {
    ctl delete web --wait >/dev/null 2>&1 || true
    kill -TERM $PID 2>/dev/null && wait $PID 2>/dev/null
    rm -rf "$D"
}
trap cleanup EXIT
i=0; until [ -S "$D/run/io.beemesh.Mesh" ]; do i=$((i+1)); [ $i -lt 200 ] || { cat "$D/beemeshd.log"; die "beemeshd did not start"; }; sleep 0.05; done
step "varlinkctl info $ADDR"
"$V" info "$ADDR"
step "varlinkctl call $ADDR io.beemesh.Mesh.GetInfo '{}'"
i=0; until "$V" call "$ADDR" io.beemesh.Mesh.GetInfo '{}' | grep -q '"available":true'; do
    i=$((i+1)); [ $i -lt 100 ] || { cat "$D/beemeshd.log"; die "Podman runtime not available"; }; sleep 0.1; done
"$V" --json=pretty call "$ADDR" io.beemesh.Mesh.GetInfo '{}'
step "beemeshctl apply -f web.yaml --wait"
ctl apply -f "$D/web.yaml" --wait
step "beemeshctl get web"
ctl get web
for ip in 127.0.0.1 127.0.0.2; do
    step "curl http://$ip:18080/"
    curl -sS --max-time 5 "http://$ip:18080/"
done
step "podman pod ps (as $U)"
asuser podman pod ps --filter label=io.beemesh.managed=true
step "beemeshctl logs web --tail 2"
ctl logs web --tail 2
step "varlinkctl call $ADDR io.beemesh.Mesh.Scale '{\"name\":\"web\",\"replicas\":\"two\"}'  (a wrong parameter type)"
"$V" call "$ADDR" io.beemesh.Mesh.Scale '{"name":"web","replicas":"two"}' || true
step "beemeshctl delete web --wait"
ctl delete web --wait
step "stopping beemeshd (SIGTERM)"
kill -TERM $PID; wait $PID && echo "beemeshd exited 0"
trap 'rm -rf "$D"' EXIT

step "a mesh of three peers: deploy, serve from all three, kill one, watch it heal"
cd "$HERE" && "$VENV/bin/python" scripts/demo_mesh.py
