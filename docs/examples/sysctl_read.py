"""Read the nf_conntrack sysctls, like ``cat /proc/sys/net/netfilter/nf_conntrack_*``."""

import sys
from typing import Optional

from conntrack import sysctl


def read_limits(netns: Optional[str] = None) -> sysctl.Settings:
    # netns: None for this namespace, a name under /run/netns, a path or an fd
    settings = sysctl.read(netns=netns)  # every nf_conntrack_* value, typed
    print(f"{settings.count} of {settings.max} entries ({settings.fill:.1%}),"
          f" {settings.buckets} hash buckets")
    print("ESTABLISHED TCP entries expire after",
          settings.timeouts["tcp_timeout_established"], "s without traffic")
    usage = sysctl.usage(netns=netns)  # only nf_conntrack_count and nf_conntrack_max
    print(usage.free, "entries free")
    return settings


if __name__ == "__main__":
    read_limits(sys.argv[1] if len(sys.argv) > 1 else None)
