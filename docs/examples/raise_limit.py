"""Raise nf_conntrack_max, like ``sysctl -w net.netfilter.nf_conntrack_max=524288``,
and keep it after a reboot (a drop-in under /etc/sysctl.d)."""

import sys
import warnings

from conntrack import sysctl
from conntrack.errors import ReadOnlyInNamespace


def raise_limit(new_max: int = 524288, root: str = "/") -> int:
    # root: "/" for this machine; another directory stands in for / (tests, images)
    current = sysctl.usage(root).max
    if current >= new_max:
        print(f"nf_conntrack_max is already {current}")  # never lower it by accident
        return current
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # Proxmox, or a later drop-in that wins at boot
        previous = sysctl.set_max(new_max, persist=True, root=root)  # raises ReadOnlyInNamespace
    print(f"nf_conntrack_max: {previous} -> {new_max}, kept in",
          f"{root.rstrip('/')}/etc/sysctl.d/{sysctl.DEFAULT_DROPIN}")
    for warning in caught:
        print("warning:", warning.message)
    return previous


if __name__ == "__main__":
    try:
        raise_limit(int(sys.argv[1]) if len(sys.argv) > 1 else 524288)
    except ReadOnlyInNamespace as exc:  # not the host's namespace: the limit is global
        sys.exit(f"cannot: {exc}")
