#!/bin/sh
# Build the local image BeeMesh's tests and demo use (no registry is reachable): busybox-static
# with an HTTP server, imported into the test user's Podman store. Usage: build-image.sh [podman args]
# Extra args (e.g. --root DIR --runroot DIR) select another store (several nodes on one machine).
set -eu
HERE=$(cd "$(dirname "$0")/.." && pwd)
. "$HERE/scripts/lib.sh"
load_user
R=$(mktemp -d)
trap 'rm -rf "$R"' EXIT
mkdir -p "$R/bin" "$R/etc" "$R/tmp" "$R/var/www" "$R/proc" "$R/sys" "$R/dev" "$R/root" "$R/data"
cp /bin/busybox "$R/bin/busybox"
for a in sh ash cat echo env ls mkdir rm sleep true false httpd wget nc ps kill id hostname date \
         printf grep sed uname head tail wc touch test expr seq; do
    ln -s busybox "$R/bin/$a"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n' > "$R/etc/passwd"
printf 'root:x:0:\nnobody:x:65534:\n' > "$R/etc/group"
echo 'hello from beemesh busybox' > "$R/var/www/index.html"
chmod 1777 "$R/tmp"
tar -C "$R" --numeric-owner --owner=0 --group=0 -cf "$R.tar" .
chmod 0644 "$R.tar"
# An imported image has no PATH; pods created from a manifest need one (host-setup.md).
asuser podman "$@" import -q --change 'ENV PATH=/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/sh"]' "$R.tar" "$IMAGE" >/dev/null
rm -f "$R.tar"
