#!/usr/bin/env bash
# make test-kernels: the test suite under Debian's kernels, each booted in a
# throwaway QEMU guest that sees this machine's / read-only (9p, under a tmpfs
# overlay), so the guest runs this checkout's built .venv, Python,
# libnetfilter_conntrack, ip, nft and conntrack(8); only the kernel and its
# modules come from the Debian package.
#
#   scripts/test-kernels.sh [KERNEL ...]      default: 5.10 6.1 6.12
#     5.10 | bullseye    newest linux-image-5.10.*-amd64 of Debian 11
#     6.1  | bookworm    newest linux-image-6.1.*-amd64 of Debian 12
#     6.12 | trixie      newest linux-image-6.12.*-amd64 of Debian 13
#     path/to/linux-image-*.deb   any amd64 kernel package
#
# Prints one line per kernel at the end:
#   kernel 6.1.0-50-amd64: 220 passed, 0 failed, 0 skipped, 0 errors (tcg, boot 3.1s, tests 540s, wall 560s)
# and leaves pytest.txt, junit.xml, console.log, guest.log, dmesg.txt in OUT/<kernel>/.
#
# Environment: OUT (default /tmp/test-kernels/<time>), ACCEL (auto: kvm when the
# CPU has vmx/svm, /dev/kvm is usable and a guest boots with it, else tcg),
# MEM (MiB, 2048), SMP (2), PYTEST_ARGS (e.g. "-k events"), TIMEOUT (s per
# kernel, 3600), CI (passed on to the guest; default true: a skip is a failure).
# Needs root.  Downloads (Debian indexes, .debs, unpacked kernels) are cached in
# /var/cache/conntrack-test-kernels.  Nothing is mounted on this machine; every
# QEMU started here is killed and every temporary folder removed on any exit.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
proj=$(cd "$here/.." && pwd)
cache=/var/cache/conntrack-test-kernels
OUT=${OUT:-/tmp/test-kernels/$(date +%Y%m%d-%H%M%S)}
ACCEL=${ACCEL:-auto}
MEM=${MEM:-2048}
SMP=${SMP:-2}
TIMEOUT=${TIMEOUT:-3600}
PYTEST_ARGS=${PYTEST_ARGS:-}
GUEST_CI=${CI:-true}
mirror=http://deb.debian.org/debian
suites=(bullseye bookworm trixie)

say() { echo "test-kernels: $*" >&2; }
die() { say "$*"; exit 1; }

# ------------------------------------------------------------------ cleanup
qemu_pid=
scratch=
cleanup() {
  if [ -n "$qemu_pid" ] && kill -0 "$qemu_pid" 2>/dev/null; then
    kill "$qemu_pid" 2>/dev/null || true
    sleep 1
    kill -9 "$qemu_pid" 2>/dev/null || true
  fi
  [ -z "$scratch" ] || rm -rf "$scratch"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

[ "$(id -u)" = 0 ] || die "needs root (QEMU exports / to the guest)"
[ -x "$proj/.venv/bin/python" ] && ls "$proj"/conntrack/_nfct*.so >/dev/null 2>&1 \
  || die "$proj is not built: run make build first"

# ------------------------------------------------------------------ host packages
need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
command -v xz >/dev/null || need+=(xz-utils)
command -v zstd >/dev/null || need+=(zstd)
if [ ${#need[@]} -gt 0 ]; then
  say "apt-get install --no-install-recommends ${need[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# ------------------------------------------------------------------ Debian indexes (scratch, never the host's)
apt_opts=(-o "Dir::Etc::sourcelist=$cache/apt/sources.list" -o "Dir::Etc::sourceparts=-"
          -o "Dir::State::Lists=$cache/apt/lists" -o "Dir::Cache=$cache/apt/cache"
          -o "APT::Get::List-Cleanup=0" -o "APT::Sandbox::User=root" -o "Debug::NoLocking=1")
mkdir -p "$cache/apt/lists/partial" "$cache/apt/cache/archives/partial" "$cache/debs" "$cache/k"
printf 'deb [trusted=yes] %s %s main\n' "$mirror" bullseye "$mirror" bookworm "$mirror" trixie \
  > "$cache/apt/sources.list"
indexes_fresh() { [ -n "$(find "$cache/apt/lists/.updated" -mmin -1440 2>/dev/null)" ]; }
if ! indexes_fresh; then
  say "reading Debian's package indexes (cached for a day)"
  apt-get "${apt_opts[@]}" update -qq >/dev/null 2>&1 || die "apt-get update of $mirror failed"
  touch "$cache/apt/lists/.updated"
fi
newest_kernel() {  # suite, version prefix -> package name of the newest generic amd64 image
  local f
  for f in "$cache"/apt/lists/*_dists_"$1"_main_binary-amd64_Packages*; do
    /usr/lib/apt/apt-helper cat-file "$f"
  done | awk -v pre="linux-image-$2." '/^Package: / { p = $2 }
      /^$/ { if (index(p, pre) == 1 && p ~ /-amd64$/ && p !~ /-(cloud|rt)-amd64$/) print p; p = "" }' \
    | sort -V | tail -1
}
fetch() {  # package[/suite] -> path of the cached .deb
  local name=${1%/*} deb
  deb=$(ls "$cache"/debs/"${name}"_*.deb 2>/dev/null | sort -V | tail -1 || true)
  if [ -z "$deb" ]; then
    (cd "$cache/debs" && apt-get "${apt_opts[@]}" download -qq "$1" >/dev/null) || die "cannot download $1"
    deb=$(ls "$cache"/debs/"${name}"_*.deb | sort -V | tail -1)
  fi
  echo "$deb"
}

# busybox (initramfs) and kmod (depmod here, modprobe in the guest): unpacked, never installed
tools=$cache/tools
if [ ! -e "$tools/.done" ]; then
  rm -rf "$tools" && mkdir -p "$tools"
  for p in busybox-static/bookworm kmod/bookworm libkmod2/bookworm; do dpkg -x "$(fetch "$p")" "$tools"; done
  mkdir -p "$tools/kbin" && for t in depmod modprobe; do ln -sf ../bin/kmod "$tools/kbin/$t"; done
  touch "$tools/.done"
fi
kmod() {  # kmod picks the tool by the name it is called with: kmod depmod ... runs kbin/depmod
  local t=$1; shift
  LD_LIBRARY_PATH=$tools/usr/lib/x86_64-linux-gnu "$tools/kbin/$t" "$@"
}

unpack_kernel() {  # .deb -> sets abi and kroot (unpacked once, with depmod's output)
  local deb=$1 pkg
  pkg=$(dpkg-deb -f "$deb" Package)
  case $pkg in linux-image-*) ;; *) die "$deb is not a linux-image package ($pkg)" ;; esac
  abi=${pkg#linux-image-}
  abi=${abi%-unsigned}
  kroot=$cache/k/$abi
  [ -e "$kroot/.done" ] && return 0
  say "unpacking $(basename "$deb")"
  rm -rf "$kroot" && mkdir -p "$kroot"
  dpkg -x "$deb" "$kroot"
  if [ ! -d "$kroot/lib/modules/$abi" ] && [ -d "$kroot/usr/lib/modules/$abi" ]; then
    mkdir -p "$kroot/lib" && ln -sfn ../usr/lib/modules "$kroot/lib/modules"  # trixie: /usr/lib/modules
  fi
  [ -e "$kroot/boot/vmlinuz-$abi" ] || die "no boot/vmlinuz-$abi in $deb"
  kmod depmod -b "$kroot" "$abi"
  touch "$kroot/.done"
}

make_initramfs() {  # -> $1
  local st=$scratch/initramfs f m n=0
  rm -rf "$st" && mkdir -p "$st/bin" "$st/ko"
  cp "$tools/bin/busybox" "$st/bin/busybox"
  cp "$here/kernels/init" "$st/init" && chmod 755 "$st/init"
  : > "$st/modules"
  # virtio, 9p and overlay with what they depend on, in load order (built-ins print nothing)
  for f in $(kmod modprobe -d "$kroot" -S "$abi" --show-depends -a virtio_pci 9pnet_virtio 9p overlay 2>/dev/null \
             | awk '$1 == "insmod" && !seen[$2]++ { print $2 }'); do
    n=$((n + 1)); m=$(printf '%02d-%s' "$n" "$(basename "$f")"); m=${m%.xz}; m=${m%.zst}; m=${m%.gz}
    case $f in
      *.xz) xz -dc "$f" > "$st/ko/$m" ;;
      *.zst) zstd -qdc "$f" > "$st/ko/$m" ;;
      *.gz) gzip -dc "$f" > "$st/ko/$m" ;;
      *) cp "$f" "$st/ko/$m" ;;
    esac
    echo "$m" >> "$st/modules"
  done
  (cd "$st" && find . | "$tools/bin/busybox" cpio -o -H newc 2>/dev/null | gzip -1 > "$1")
}

kvm_usable() {
  grep -qwE 'vmx|svm' /proc/cpuinfo && [ -r /dev/kvm ] && [ -w /dev/kvm ]
}

boot() {  # accel -> runs the guest for $abi into $res; returns 1 when it never reached userland
  local accel=$1 opts t0 deadline
  case $accel in
    kvm) opts=(-accel kvm -cpu host) ;;
    tcg) opts=(-accel tcg,thread=multi,tb-size=256 -cpu max) ;;
    *) die "ACCEL must be auto, kvm or tcg" ;;
  esac
  rm -f "$res"/{junit.xml,pytest.txt,guest.log,uname,console.log}
  echo "$accel" > "$res/accel"
  say "booting $abi ($accel, $MEM MiB, $SMP CPUs): console in $res/console.log"
  t0=$(date +%s)
  qemu-system-x86_64 -nodefaults -no-user-config -machine q35 "${opts[@]}" -smp "$SMP" -m "$MEM" \
    -display none -vga none -no-reboot \
    -kernel "$kroot/boot/vmlinuz-$abi" -initrd "$scratch/initramfs.gz" \
    -append "console=ttyS0 panic=-1 loglevel=4" \
    -chardev "file,id=con,path=$res/console.log" -serial chardev:con \
    -virtfs local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap \
    -virtfs "local,path=$res,mount_tag=results,security_model=none,multidevs=remap" \
    -device virtio-rng-pci > "$res/qemu.log" 2>&1 &
  qemu_pid=$!
  deadline=$((t0 + TIMEOUT + 300))
  while kill -0 "$qemu_pid" 2>/dev/null; do
    if [ "$accel" = kvm ] && ! grep -q "userland up" "$res/guest.log" 2>/dev/null \
         && [ $(($(date +%s) - t0)) -gt 180 ]; then
      say "no userland after 180 s with KVM: stopping this guest"
      kill "$qemu_pid"; wait "$qemu_pid" 2>/dev/null || true; qemu_pid=
      return 1
    fi
    if [ "$(date +%s)" -gt "$deadline" ]; then
      say "guest still running after $((TIMEOUT + 300)) s: stopping it"
      kill "$qemu_pid"
    fi
    sleep 2
  done
  wait "$qemu_pid" 2>/dev/null || true
  qemu_pid=
  echo $(($(date +%s) - t0)) > "$res/wall"
}

# ------------------------------------------------------------------ main
[ $# -gt 0 ] || set -- 5.10 6.1 6.12
debs=()
for k in "$@"; do
  case $k in
    5.10|bullseye|debian11) s=bullseye; v=5.10 ;;
    6.1|bookworm|debian12) s=bookworm; v=6.1 ;;
    6.12|trixie|debian13) s=trixie; v=6.12 ;;
    *.deb) [ -r "$k" ] || die "cannot read $k"; debs+=("$(cd "$(dirname "$k")" && pwd)/$(basename "$k")"); continue ;;
    *) die "unknown kernel $k (5.10, 6.1, 6.12 or a linux-image .deb)" ;;
  esac
  pkg=$(newest_kernel "$s" "$v")
  [ -n "$pkg" ] || die "no linux-image-$v.*-amd64 in $s"
  debs+=("$(fetch "$pkg/$s")")
done

if [ "$ACCEL" = auto ]; then
  if kvm_usable; then ACCEL=kvm; else ACCEL=tcg; fi
  say "accelerator: $ACCEL$([ "$ACCEL" = tcg ] && echo " (no vmx/svm in /proc/cpuinfo or /dev/kvm unusable: emulation, 10-25x slower)")"
fi
mkdir -p "$OUT"
scratch=$(mktemp -d /tmp/test-kernels.XXXXXX)
folders=()
for deb in "${debs[@]}"; do
  unpack_kernel "$deb"
  res=$OUT/$abi
  rm -rf "$res" && mkdir -p "$res"
  folders+=("$res")
  make_initramfs "$scratch/initramfs.gz"
  cp "$here/kernels/guest.sh" "$res/guest.sh"
  printf 'TK_%s=%q\n' PROJ "$proj" KROOT "$kroot" TOOLS "$tools" TIMEOUT "$TIMEOUT" \
    PYTEST_ARGS "$PYTEST_ARGS" CI "$GUEST_CI" > "$res/env"
  if ! boot "$ACCEL"; then
    say "KVM cannot boot this kernel here: falling back to TCG for the rest"
    ACCEL=tcg
    boot tcg || true
  fi
  python3 "$here/kernels/summary.py" --detail "$res" >&2 || true
done
echo
for res in "${folders[@]}"; do python3 "$here/kernels/summary.py" "$res" || true; done
