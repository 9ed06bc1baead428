"""The kernel's bounds for nf_conntrack's values, and the two numbers every reader derives.

A leaf module (standard library only): :mod:`conntrack.sysctl`, its
drop-in writer, :mod:`conntrack.health`, :mod:`conntrack.exporter` and the
table handle all take their bounds, fill ratio and per-CPU sums from here.
"""

from __future__ import annotations

import os
import re
from typing import Dict, Iterable, Mapping

INT_MAX = 2**31 - 1
MAX_LIMIT = INT_MAX  # nf_conntrack_max: the kernel takes 0..INT_MAX (0, no limit, is refused here)
MAX_BUCKETS = min(INT_MAX, (2**32 - 1) // 8)  # the kernel refuses more than UINT_MAX / sizeof(pointer)
MAX_TIMEOUT = INT_MAX // 100  # jiffies (seconds * HZ) in an int, for the lowest HZ (100)

TIMEOUT_RE = re.compile(r"nf_conntrack_[a-z0-9_]*timeout[a-z0-9_]*")
"""The sysctl names that are timeouts (in seconds)."""


def path(root: str, *parts: str) -> str:
    """*parts* under *root* (which may be a path-like)."""
    return os.path.join(os.fspath(root), *parts)


def fill(count: int, limit: int) -> float:
    """count / limit (0.0 when the limit is 0, meaning none)."""
    return count / limit if limit else 0.0


def sum_cpus(rows: Iterable[Mapping[str, int]]) -> Dict[str, int]:
    """Per-CPU statistics rows summed by name (the ``cpu`` column, the row's number, left out)."""
    out: Dict[str, int] = {}
    for row in rows:
        for k, v in row.items():
            if k != "cpu":
                out[k] = out.get(k, 0) + v
    return out
