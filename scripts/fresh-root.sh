#!/usr/bin/env bash
# The README's two commands on a fresh Debian 12 machine: a debootstrap minbase
# root (plus git, make, python3, ca-certificates; cached under /var/cache and
# reused), a clone of this checkout's committed HEAD in /root, then
# `make demo` and `CI=true make test` inside it, as root; then `make wheel` there.
# Usage (root): scripts/fresh-root.sh   (or `make test-fresh-root`)
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
. "$top/scripts/lib-root.sh"
ctpy_private_mounts bash "$0" "$@"

t0=$SECONDS
base=$(ctpy_root bookworm-fresh bookworm git,make,python3,ca-certificates)
trap ctpy_umount EXIT
trap 'exit 130' INT TERM
ctpy_mount "$base"
git clone -q "$top" "$CHROOT/root/conntrack"
echo "== fresh root ready ($((SECONDS - t0)) s): $(git -C "$top" log -1 --format='%h %s')"

t1=$SECONDS
ctpy_chroot sh -c 'cd /root/conntrack && make demo'
echo "== make demo passed in $((SECONDS - t1)) s"
t1=$SECONDS
CI=true ctpy_chroot sh -c 'cd /root/conntrack && make test'
echo "== CI=true make test passed in $((SECONDS - t1)) s"
t1=$SECONDS  # and the wheel, from the same fresh clone
ctpy_chroot sh -c 'cd /root/conntrack && make wheel && ls dist'
echo "== make wheel passed in $((SECONDS - t1)) s"
echo "== fresh-root test passed in $((SECONDS - t0)) s"
