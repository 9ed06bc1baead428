#!/bin/bash
# PID 1 of a test-kernels guest (started by the initramfs /init).  / is the
# host's root, read-only under a tmpfs overlay (writes vanish with the guest);
# /results is the host's results folder for this kernel, with env (written by
# scripts/test-kernels.sh).  Loads conntrack, runs the suite, powers off.
set -u
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8
. /results/env   # TK_PROJ TK_KROOT TK_TOOLS TK_TIMEOUT TK_PYTEST_ARGS TK_CI
note() { echo "test-kernels guest: $*"; echo "$*" >> /results/guest.log; }
off() { lsmod > /results/lsmod.txt 2>&1; dmesg > /results/dmesg.txt 2>&1; sync
        note "poweroff at uptime $(cut -d' ' -f1 /proc/uptime)s"; sync; echo o > /proc/sysrq-trigger; sleep 60; }
trap off EXIT

mount -t tmpfs -o mode=755 tmpfs /run
mkdir -p /dev/pts /dev/shm && mount -t devpts devpts /dev/pts && mount -t tmpfs tmpfs /dev/shm
note "userland up at uptime $(cut -d' ' -f1 /proc/uptime)s, kernel $(uname -r)"
uname -r > /results/uname

# The kernel's own modules, and kmod to load them (the kernel's autoloading
# calls modprobe too: nft, veth and nf_nat load on demand as on a real system).
cp "$TK_TOOLS/bin/kmod" /usr/local/sbin/kmod
cp -P "$TK_TOOLS"/usr/lib/x86_64-linux-gnu/libkmod.so.2* /usr/lib/x86_64-linux-gnu/
for t in modprobe insmod rmmod lsmod depmod modinfo; do ln -sf kmod /usr/local/sbin/$t; done
mkdir -p /usr/lib/modules && mount --bind "$TK_KROOT/lib/modules" /usr/lib/modules
echo /usr/local/sbin/modprobe > /proc/sys/kernel/modprobe
ip link set lo up
modprobe nf_conntrack && modprobe nf_conntrack_netlink || note "modprobe nf_conntrack(_netlink) failed"
note "nf_conntrack_max=$(cat /proc/sys/net/netfilter/nf_conntrack_max 2>/dev/null)"

cd "$TK_PROJ" || { note "no $TK_PROJ in the guest"; exit 1; }
export PYTHONDONTWRITEBYTECODE=1
[ -n "$TK_CI" ] && export CI=$TK_CI
eval "args=($TK_PYTEST_ARGS)"
start=$(date +%s)
timeout -k 10 "$TK_TIMEOUT" .venv/bin/python -m pytest tests -p no:cacheprovider -q -rfEs \
  --junitxml=/results/junit.xml "${args[@]}" > /results/pytest.txt 2>&1
rc=$?
note "pytest rc=$rc in $(( $(date +%s) - start ))s"
