#!/bin/sh
# cibuildwheel's before-all step (runs once in each manylinux/musllinux container):
# the C libraries the wheel bundles, and their licence files for wheel-licenses.py.
# Not run on this project's machines (no container runtime); see docs/releasing.rst.
set -eu
LICENSES=/usr/local/share/pyconntrack-licenses
mkdir -p "$LICENSES"
if command -v apk >/dev/null 2>&1; then
    # musllinux (Alpine): the distribution's own packages
    apk add --no-cache pkgconf linux-headers libmnl-dev libnfnetlink-dev libnetfilter_conntrack-dev
    apk add --no-cache libmnl-doc libnfnetlink-doc libnetfilter_conntrack-doc || true
    for p in libmnl libnfnetlink libnetfilter_conntrack; do
        echo "$p: Alpine package $(apk info -e -v "$p")" >>"$LICENSES/README"
        found=
        for f in /usr/share/licenses/"$p"/*; do
            [ -f "$f" ] && cp "$f" "$LICENSES/$p.$(basename "$f")" && found=1
        done
        [ -n "$found" ] || { echo "no licence file for $p under /usr/share/licenses" >&2; exit 1; }
    done
    exit 0
fi
# manylinux2014 (CentOS 7): its libnetfilter_conntrack is 1.0.6, older than the 1.0.9 this
# library needs, so build the upstream releases the Debian 12 wheel bundles. The sha256
# sums are those of Debian 12's orig tarballs of the same releases (from its .dsc files).
yum install -y -q bzip2 pkgconfig
cd /tmp
build() {  # name version sha256 [configure args]
    n=$1 v=$2 sum=$3; shift 3
    curl -fsSLo "$n-$v.tar.bz2" "https://www.netfilter.org/projects/$n/files/$n-$v.tar.bz2"
    echo "$sum  $n-$v.tar.bz2" | sha256sum -c -
    tar -xjf "$n-$v.tar.bz2"
    (cd "$n-$v" && ./configure -q --prefix=/usr/local --disable-static "$@" && make -s -j"$(nproc)" && make -s install)
    cp "$n-$v/COPYING" "$LICENSES/$n.COPYING"
    echo "$n $v: upstream release https://www.netfilter.org/projects/$n/files/$n-$v.tar.bz2 (sha256 $sum)" \
        >>"$LICENSES/README"
}
build libmnl 1.0.4 171f89699f286a5854b72b91d06e8f8e3683064c5901fb09d954a9ab6f551f81
build libnfnetlink 1.0.2 b064c7c3d426efb4786e60a8e6859b82ee2f2c5e49ffeea640cfe4fe33cbc376
PKG_CONFIG_PATH=/usr/local/lib/pkgconfig \
    build libnetfilter_conntrack 1.0.9 01b94beb40bc3afa3a55ae87dd2b5971c90c811dfa7c4b6e1eaf9fe0725d16ec
