#!/usr/bin/env bash
# Build the extension against Debian 13's libnetfilter_conntrack (1.1.0) on
# this Debian 12 machine and run the core kernel tests with that library.
# Nothing is installed: the .debs are unpacked under a scratch folder and
# used through PKG_CONFIG_PATH and LD_LIBRARY_PATH.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
py=${PY:-$top/.venv/bin/python}
case $py in /*) ;; *) py="$top/$py" ;; esac  # it runs from a scratch folder
work=$(mktemp -d /tmp/ctpy-trixie.XXXXXX)
trap 'rm -rf "$work"' EXIT
chmod 755 "$work"  # the privilege test runs a child as nobody
mkdir -p "$work/lists/partial" "$work/deb" "$work/root"
echo "deb [trusted=yes] http://deb.debian.org/debian trixie main" > "$work/sources.list"
apt_opts=(-o "Dir::Etc::sourcelist=$work/sources.list" -o "Dir::Etc::sourceparts=-"
          -o "Dir::State::Lists=$work/lists" -o "APT::Get::List-Cleanup=0")
apt-get "${apt_opts[@]}" update -qq
(cd "$work/deb" && apt-get "${apt_opts[@]}" download -qq \
    libnetfilter-conntrack-dev libnetfilter-conntrack3 libnfnetlink-dev 2>/dev/null)
for d in "$work"/deb/*.deb; do dpkg -x "$d" "$work/root"; done
lib="$work/root/usr/lib/$(gcc -dumpmachine)"
sed -i "s#^prefix=/usr#prefix=$work/root/usr#" "$lib"/pkgconfig/*.pc
mkdir "$work/src"
cp -r "$top/csrc" "$top/build_ffi.py" "$top/conntrack" "$top/tests" "$work/src/"
rm -f "$work"/src/conntrack/_nfct*
cd "$work/src"
PKG_CONFIG_PATH="$lib/pkgconfig" "$py" build_ffi.py
export LD_LIBRARY_PATH="$lib"
"$py" -c 'import conntrack; v = conntrack.nfct_version(); print("built against libnetfilter_conntrack", v); assert v.startswith("1.1")'
"$py" -c 'from conntrack import _binding; assert _binding.BPF_ZONE, "1.1.0 filters events by zone: not detected"'
"$py" -m pytest -q -p no:cacheprovider tests/test_flow.py tests/test_table.py tests/test_reference.py tests/test_traffic.py \
    tests/test_events.py tests/test_events_bpf.py
