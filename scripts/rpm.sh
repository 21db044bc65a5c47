#!/bin/sh
# rpm.sh — build the beemesh RPM from this working tree (committed or not) into rpmbuild/
# (git-ignored) and print the path of the binary RPM. Works on Fedora/RHEL and, with the spec's
# fallback macros, on Debian (rpm, python3-pip; python3-packaging lets rpm generate the Python
# Requires). Settings: BEEMESH_RPMBUILD (topdir).
set -eu
HERE=$(cd "$(dirname "$0")/.." && pwd)
. "$HERE/scripts/lib.sh"
TOP=${BEEMESH_RPMBUILD:-$HERE/rpmbuild}
SPEC=$HERE/beemesh.spec
cd "$HERE"

NV=$(rpmspec -q --srpm --qf '%{name}-%{version}' "$SPEC")
mkdir -p "$TOP/SOURCES"
rm -rf "$TOP/BUILD" "$TOP/BUILDROOT" "$TOP/RPMS" "$TOP/SRPMS"

# Source0: the files git knows about plus untracked, non-ignored ones, as they are on disk now
# (`git archive HEAD` would miss uncommitted work). Tracked files deleted on disk are skipped.
git ls-files -z -co --exclude-standard | xargs -0 sh -c 'for f; do [ -f "$f" ] && printf "%s\0" "$f"; done' - |
    tar --null -T - --sort=name --owner=0 --group=0 --numeric-owner --transform "s,^,$NV/,S" \
        -czf "$TOP/SOURCES/$NV.tar.gz"

# Source1 and the like: remote sources, fetched once (pip honours the site's index settings).
for url in $(rpmspec -P "$SPEC" | sed -n 's/^Source[1-9][0-9]*: *\(http.*\)/\1/p'); do
    file=$TOP/SOURCES/${url##*/}
    [ -f "$file" ] && continue
    step "fetching ${url##*/}" >&2
    case $url in
        *.whl) spec=$(basename "$url" | cut -d- -f1,2 | sed 's/-/==/')
               python3 -m pip download -q --no-deps --only-binary=:all: -d "$TOP/SOURCES" "$spec" ;;
        *.tar.gz) spec=$(basename "$url" .tar.gz | sed 's/-\([0-9][^-]*\)$/==\1/')
               python3 -m pip download -q --no-deps --no-binary=:all: -d "$TOP/SOURCES" "$spec" ;;
        *) curl -fsSL -o "$file" "$url" ;;
    esac
    [ -f "$file" ] || die "could not fetch $url"
done

# Off RPM-based systems the BuildRequires are Debian packages rpm cannot see: skip that check.
nodeps=""
rpm -q rpm >/dev/null 2>&1 || nodeps=--nodeps
# shellcheck disable=SC2086
rpmbuild -bb $nodeps --define "_topdir $TOP" "$SPEC" >"$TOP/build.log" 2>&1 ||
    { tail -n 40 "$TOP/build.log" >&2; die "rpmbuild failed (log: $TOP/build.log)"; }
ls "$TOP"/RPMS/noarch/"$NV"-*.noarch.rpm
