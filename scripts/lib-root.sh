# Sourced by fresh-root.sh and test-wheel.sh: cached Debian root filesystems
# (debootstrap) and throwaway chroots on top of them.
#
# A cached root is made once under $ROOTS_CACHE/<name> and never written to
# again: each run mounts an overlay (the cached root below, a scratch folder
# above) so every run starts from the same fresh root and its changes vanish.
# The caller runs in its own mount namespace (ctpy_private_mounts), so the
# mounts never show on the host; a trap also undoes them on every exit path.
# The chroot has its own /run (so its /run/netns is private to it) and shares
# the host's kernel: its tests make their own network namespaces like `make test`.

ROOTS_CACHE=${ROOTS_CACHE:-/var/cache/pyconntrack-roots}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
CHROOT_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# Re-run the calling script in a private mount namespace (once).
ctpy_private_mounts() {
    if [ -z "${CTPY_PRIVATE_MOUNTS:-}" ]; then
        [ "$(id -u)" = 0 ] || { echo "$0: needs root (debootstrap, mount, chroot)" >&2; exit 1; }
        export CTPY_PRIVATE_MOUNTS=1
        exec unshare --mount --propagation private -- "$@"
    fi
}

# ctpy_root NAME SUITE PKG,PKG,...: print the cached root's path, making it first if needed.
ctpy_root() {
    local name=$1 suite=$2 pkgs=$3 dir="$ROOTS_CACHE/$1"
    mkdir -p "$ROOTS_CACHE/debs"
    (
        flock 9
        if [ -f "$dir/.ctpy-root" ] && [ "$(cat "$dir/.ctpy-root")" = "$suite $pkgs" ]; then
            exit 0
        fi
        command -v debootstrap >/dev/null || { echo "needs debootstrap (apt-get install debootstrap)" >&2; exit 1; }
        echo "== making $dir (debootstrap $suite minbase + $pkgs)" >&2
        rm -rf --one-file-system "$dir" "$dir.tmp"
        local t0=$SECONDS
        debootstrap --variant=minbase --include="$pkgs" --cache-dir="$ROOTS_CACHE/debs" \
            "$suite" "$dir.tmp" "$MIRROR" >"$ROOTS_CACHE/$name.log" 2>&1 \
            || { tail -20 "$ROOTS_CACHE/$name.log" >&2; exit 1; }
        rm -rf "$dir.tmp"/var/cache/apt/archives/*.deb
        echo "$suite $pkgs" >"$dir.tmp/.ctpy-root"
        mv "$dir.tmp" "$dir"
        echo "== made $dir in $((SECONDS - t0)) s" >&2
    ) 9>"$ROOTS_CACHE/$name.lock" || return 1
    echo "$dir"
}

# ctpy_mount BASE: overlay BASE into a scratch chroot, with /proc, /sys, /dev and
# a private /run; sets CHROOT. ctpy_umount undoes it (installed as the EXIT trap).
CTPY_MOUNTS=()
CTPY_SCRATCH=()
ctpy_umount() {
    local i
    for ((i = ${#CTPY_MOUNTS[@]} - 1; i >= 0; i--)); do
        umount -R "${CTPY_MOUNTS[i]}" 2>/dev/null || umount -Rl "${CTPY_MOUNTS[i]}" 2>/dev/null || true
    done
    CTPY_MOUNTS=()
    for d in "${CTPY_SCRATCH[@]}"; do
        # only the overlay's upper and work folders: never a folder that had mounts on it
        if ! grep -q " $d/merged[ /]" /proc/self/mounts; then
            rm -rf --one-file-system "$d/upper" "$d/work"
            rmdir "$d/merged" "$d" 2>/dev/null || true
        fi
    done
    CTPY_SCRATCH=()
}

ctpy_mount() {
    local base=$1 s
    s=$(mktemp -d /var/tmp/ctpy-chroot.XXXXXX)
    CTPY_SCRATCH+=("$s")
    mkdir "$s/upper" "$s/work" "$s/merged"
    CHROOT=$s/merged
    # the chroot's / is a mount point (the overlay): `ip netns exec` needs that
    mount -t overlay overlay -o "lowerdir=$base,upperdir=$s/upper,workdir=$s/work" "$CHROOT"
    CTPY_MOUNTS+=("$CHROOT")
    mount -t proc proc "$CHROOT/proc"
    mount -t sysfs sysfs "$CHROOT/sys"
    mount --rbind /dev "$CHROOT/dev"
    mount -t tmpfs -o mode=755 tmpfs "$CHROOT/run"
    mount -t tmpfs -o mode=1777 tmpfs "$CHROOT/tmp"
    cp -L /etc/resolv.conf "$CHROOT/etc/resolv.conf"
    # this network's own certificate authorities (an egress proxy), if the host has some
    if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
        mkdir -p "$CHROOT/usr/local/share/ca-certificates"
        cp /usr/local/share/ca-certificates/*.crt "$CHROOT/usr/local/share/ca-certificates/"
        if [ -x "$CHROOT/usr/sbin/update-ca-certificates" ]; then
            chroot "$CHROOT" /usr/sbin/update-ca-certificates >/dev/null 2>&1
        fi
    fi
    # no daemons started by package scripts inside the chroot
    printf '#!/bin/sh\nexit 101\n' >"$CHROOT/usr/sbin/policy-rc.d"
    chmod 755 "$CHROOT/usr/sbin/policy-rc.d"
}

# ctpy_chroot CMD...: run CMD in the root as root with a clean environment
# (but for CI and the host's certificate settings, which pip needs behind a proxy).
# The root is entered with pivot_root in a mount namespace of its own, not with
# chroot(2): the kernel refuses a user namespace to a chrooted process (EPERM;
# tests/test_safety.py makes one), and a fresh machine is not chrooted either.
ctpy_chroot() {
    local pass=() v
    for v in CI PIP_CERT SSL_CERT_FILE REQUESTS_CA_BUNDLE GIT_SSL_CAINFO PIP_DEFAULT_TIMEOUT; do
        [ -n "${!v:-}" ] && pass+=("$v=${!v}")
    done
    unshare --mount --propagation private -- /bin/sh -c \
        'cd "$1" && mkdir -p .host && pivot_root . .host && cd / && umount -l /.host && rmdir /.host \
         && shift && exec "$@"' ctpy-enter "$CHROOT" \
        env -i PATH="$CHROOT_PATH" HOME=/root LANG=C.UTF-8 TERM="${TERM:-dumb}" "${pass[@]}" "$@"
}
