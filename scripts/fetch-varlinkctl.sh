#!/bin/sh
# fetch-varlinkctl.sh DEST — put the real varlinkctl (from Debian trixie's systemd 257) under DEST.
# Bookworm's systemd 252 has no varlinkctl. Trixie's binary runs unchanged through trixie's own
# dynamic loader; only libc, libssl and systemd's shared library come from trixie. A private APT
# configuration keeps the host's sources, lists and dpkg status untouched.
set -eu
DEST=$(realpath -m "$1")
A=$DEST/apt
rm -rf "$DEST"
mkdir -p "$A/lists/partial" "$A/archives/partial" "$A/etc/apt.conf.d" "$A/etc/preferences.d" "$DEST/debs" "$DEST/root"
# Use the Debian mirror the host already uses.
MIRROR=$(grep -hoE '^(URIs:|deb) +[^ ]+' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
         | awk '{print $2}' | grep -v security | head -n1)
[ -n "$MIRROR" ] || MIRROR=http://deb.debian.org/debian
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $MIRROR trixie main" > "$A/etc/sources.list"
: > "$A/status"
cat > "$A/apt.conf" <<CONF
Dir::Etc "$A/etc"; Dir::Etc::sourcelist "$A/etc/sources.list"; Dir::Etc::sourceparts "-";
Dir::State::lists "$A/lists"; Dir::State::status "$A/status"; Dir::Cache "$A"; Dir::Cache::archives "$A/archives";
Acquire::Languages "none"; APT::Sandbox::User "root";
CONF
export APT_CONFIG="$A/apt.conf"
apt-get -q -o Debug::NoLocking=1 update >/dev/null
(cd "$DEST/debs" && apt-get -q download systemd libsystemd-shared libc6 libssl3t64 >/dev/null)
for d in "$DEST"/debs/*.deb; do dpkg -x "$d" "$DEST/root"; done
rm -rf "$A/lists" "$A/archives" "$DEST/debs"     # 60 MB we no longer need
"$DEST/root/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" --library-path \
    "$DEST/root/usr/lib/x86_64-linux-gnu:$DEST/root/usr/lib/x86_64-linux-gnu/systemd" \
    "$DEST/root/usr/bin/varlinkctl" --version | head -n1
