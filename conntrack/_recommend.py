"""A recommended nf_conntrack_max for this machine's RAM, with the reasoning.

Private: use it as :func:`conntrack.sysctl.recommend_max`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Tuple

from ._limits import MAX_BUCKETS, MAX_LIMIT
from ._limits import path as _path
from ._proxmox import is_proxmox
from .errors import ConntrackError

BYTES_PER_ENTRY = 320  # struct nf_conn from its slab plus its share of the hash table (conntrack.sysctl says more)


@dataclass(frozen=True)
class Recommendation:
    """A suggested ``nf_conntrack_max`` with the reasoning behind it."""

    value: int
    """The suggested nf_conntrack_max."""
    buckets: int
    """The suggested hash size (one bucket per entry keeps the average chain at 2)."""
    memory_bytes: int
    """Kernel memory a full table of ``value`` entries takes (approximately)."""
    mem_total: int
    """RAM the reasoning started from (MemTotal, bytes)."""
    explanation: str
    """The reasoning, one step a line."""

    def __str__(self) -> str:
        return self.explanation

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready values (:ref:`json`), what ``pyconntrack limits --recommend --json`` prints.

        ``value`` is under ``"max"``, the sysctl it is for (as in ``limits --json``), and
        ``explanation`` is a list of its lines.
        """
        return {"max": self.value, "buckets": self.buckets, "memory_bytes": self.memory_bytes,
                "mem_total": self.mem_total, "explanation": self.explanation.splitlines()}


def mem_total(root: str = "/") -> int:
    """MemTotal from <root>/proc/meminfo, in bytes."""
    path = _path(root, "proc/meminfo")
    with open(path) as f:
        for line in f:
            if line.startswith("MemTotal:"):
                parts = line.split()
                return int(parts[1]) * (1024 if len(parts) > 2 and parts[2] == "kB" else 1)
    raise ConntrackError("%s has no MemTotal line" % path)


def kernel_default(mem: int) -> Tuple[int, int]:
    """(buckets, max) the kernel picks by itself for *mem* bytes of RAM (64-bit)."""
    buckets = mem // 16384 // 8
    if mem > 4 * 2**30:
        buckets = 262144
    elif mem > 2**30:
        buckets = 65536
    buckets = max(buckets, 1024)
    return buckets, buckets


def _mib(n: int) -> str:
    return "%.0f MiB" % (n / 2**20)


def recommend_max(root: str = "/", *, memory_fraction: float = 0.02) -> Recommendation:
    """A limit that spends at most *memory_fraction* of RAM on conntrack, with the reasoning.

    Never below the kernel's own default or twice today's entries; one hash
    bucket per entry (each entry is hashed twice, so chains average 2).
    """
    from .sysctl import read  # sysctl imports this module: import it when called

    if not 0 < memory_fraction <= 0.5:
        raise ValueError("memory_fraction: %r is not in (0, 0.5]" % (memory_fraction,))
    mem = mem_total(root)
    now = read(root)
    budget = int(mem * memory_fraction)
    by_memory = budget // BYTES_PER_ENTRY // 1024 * 1024
    _default_buckets, default_max = kernel_default(mem)
    floor = max(default_max, 2 * now.count)
    value = min(max(by_memory, floor), MAX_LIMIT)
    buckets = min(value, MAX_BUCKETS)
    lines = [
        "RAM: %s (MemTotal in %s)." % (_mib(mem), _path(root, "proc/meminfo")),
        "Each entry costs about %d bytes of kernel memory (struct nf_conn plus its hash bucket)." % BYTES_PER_ENTRY,
        "Budget: %.1f%% of RAM = %s, room for %d entries (rounded down to a multiple of 1024)."
        % (100 * memory_fraction, _mib(budget), by_memory),
        "Floor: the kernel's own default for this RAM (%d) and twice today's %d entries: %d."
        % (default_max, now.count, floor),
        "Recommended nf_conntrack_max: %d (a full table uses about %s)." % (value, _mib(value * BYTES_PER_ENTRY)),
        "Today: max %d (about %s when full), %d buckets: %.1f entries per bucket when full%s."
        % (now.max, _mib(now.max * BYTES_PER_ENTRY), now.buckets, now.max / max(now.buckets, 1),
           "; long chains slow every lookup" if now.max > 4 * now.buckets else ""),
        "Recommended buckets (hashsize): %d, one per entry, so chains average 2 (each entry is hashed "
        "twice, once per direction)." % buckets,
    ]
    if is_proxmox(root):
        lines.append("Proxmox VE: set nf_conntrack_max in the node's host.fw, or pve-firewall resets it.")
    return Recommendation(value, buckets, value * BYTES_PER_ENTRY, mem, "\n".join(lines))

