"""Below the object layer: the C helper through conntrack._nfct (no stability promise)."""

import os
from collections import Counter
from typing import Optional

from conntrack._nfct import ffi, lib


def raw_udp_ports(netns_path: Optional[str] = None) -> Counter:
    fd = os.open(netns_path, os.O_RDONLY) if netns_path else -1  # -1: this namespace
    err = ffi.new("int *")
    try:
        sock = lib.ctpy_open(fd, 1 << 20, err)
    finally:
        if fd >= 0:
            os.close(fd)
    if sock == ffi.NULL:
        raise OSError(err[0], "ctpy_open failed")
    sock = ffi.gc(sock, lib.ctpy_close)  # freed with the Python object

    flt = ffi.new("struct ctpy_filter *")  # the C-side filter: UDP only
    flt.fields = lib.CTPY_F_PROTO
    flt.proto = lib.IPPROTO_UDP
    rc = lib.ctpy_dump_start(sock, lib.AF_UNSPEC, ffi.NULL)  # no kernel-side filter
    if rc < 0:
        raise OSError(-rc, os.strerror(-rc))

    recs = ffi.new("struct ctpy_record[]", 256)
    pool = ffi.new("char[]", 64 * 1024)
    ports: Counter = Counter()
    while not lib.ctpy_dump_done(sock):
        n = lib.ctpy_dump_next(sock, flt, recs, 256, pool, 64 * 1024)
        if n < 0:
            raise OSError(-n, os.strerror(-n))
        for i in range(n):
            ports[recs[i].orig.dport] += 1  # host byte order, copied out of the record
    print(ports.most_common(3))
    return ports


if __name__ == "__main__":
    raw_udp_ports()
