# Shared by the shell scripts (sourced). Settings can be overridden from the environment.
U=${BEEMESH_TEST_USER:-beemesh-test}
VENV=${BEEMESH_VENV:-/var/lib/beemesh/venv}
BEEMESH_LIB=$(dirname "$VENV")
IMAGE=${BEEMESH_IMAGE:-localhost/beemesh-busybox:latest}

die() { echo "error: $*" >&2; exit 1; }
step() { echo "==> $*"; }

load_user() {
    UID_=$(id -u "$U"); GID_=$(id -g "$U")
    HOME_=$(getent passwd "$U" | cut -d: -f6)
    RUNDIR=/run/user/$UID_
}

# Run a command as the test user with a clean environment (root's PATH may hold pyenv shims).
asuser() {
    runuser -u "$U" -- env -i -C "$HOME_" HOME="$HOME_" USER="$U" LOGNAME="$U" \
        PATH=/usr/local/bin:/usr/bin:/bin XDG_RUNTIME_DIR="$RUNDIR" "$@"
}

# write_if_changed FILE UID GID < content
write_if_changed() {
    _tmp=$(mktemp)
    cat > "$_tmp"
    if ! cmp -s "$_tmp" "$1" 2>/dev/null; then
        install -m 0644 -o "$2" -g "$3" "$_tmp" "$1"
    fi
    rm -f "$_tmp"
}
