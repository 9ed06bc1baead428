"""What the running kernel can filter for us, detected once per handle.

ctnetlink grew kernel-side filters over the years.  A dump filter the
kernel ignores only costs speed (the C layer re-checks every record), but a
flush filter the kernel ignores would delete too much, so flush features
are only used on kernels known to have them.  ``KernelFeatures.none()``
forces the portable path everywhere (the tests use it to prove both paths
give the same answer).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, fields
from typing import Optional, Tuple


def kernel_version(release: Optional[str] = None) -> Tuple[int, int]:
    """(major, minor) of the running kernel, from ``uname -r``."""
    m = re.match(r"(\d+)\.(\d+)", release or os.uname().release)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


@dataclass(frozen=True)
class KernelFeatures:
    """Kernel-side filters the library may use."""

    dump_mark: bool = False
    """Dump filtered by mark/mask (CTA_MARK, CTA_MARK_MASK)."""
    dump_status: bool = False
    """Dump filtered by status/mask (CTA_STATUS_MASK, 5.15)."""
    dump_zone: bool = False
    """Dump filtered by zone (CTA_ZONE on dump, 6.8)."""
    dump_tuple: bool = False
    """Dump filtered by exact tuple parts (CTA_FILTER, 5.8)."""
    flush_family: bool = False
    """Flush of one family honoured (nfgenmsg version 1); conservative: 6.12."""
    flush_mark: bool = False
    """Flush filtered by mark/mask."""
    flush_status: bool = False
    """Flush filtered by status/mask (5.15)."""
    flush_zone: bool = False
    """Flush filtered by zone (6.8)."""
    flush_tuple: bool = False
    """Flush filtered by exact tuple parts (CTA_FILTER on delete, 6.12)."""
    events_bpf: bool = False
    """Event streams filtered in the kernel by a socket filter (classic BPF with
    SKF_AD_NLATTR_NEST, 2.6.29; built by libnetfilter_conntrack's nfct_filter)."""
    tuple_ipv6_addresses: bool = False
    """IPv6 addresses in CTA_FILTER.  Off on every kernel detected so far:
    ctnetlink_filter_match_tuple inverts the IPv6 address comparison (seen
    on 6.18: a filter for one address returns every other one), which on a
    flush would delete the wrong entries.  IPv6 addresses are checked in C."""

    @classmethod
    def detect(cls, release: Optional[str] = None) -> KernelFeatures:
        """Features of the running kernel (or of *release*, e.g. ``"6.1.0"``)."""
        v = kernel_version(release)
        return cls(
            dump_mark=v >= (3, 0),
            dump_status=v >= (5, 15),
            dump_zone=v >= (6, 8),
            dump_tuple=v >= (5, 8),
            flush_family=v >= (6, 12),
            flush_mark=v >= (5, 8),
            flush_status=v >= (5, 15),
            flush_zone=v >= (6, 8),
            flush_tuple=v >= (6, 12),
            events_bpf=v >= (2, 6),
        )

    @classmethod
    def none(cls) -> KernelFeatures:
        """No kernel-side filtering at all: the portable path."""
        return cls()

    def __str__(self) -> str:
        on = [f.name for f in fields(self) if getattr(self, f.name)]
        return "KernelFeatures(%s)" % (", ".join(on) or "none")
