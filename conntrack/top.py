"""Top talkers: who is filling the table, counted in C during one dump.

:meth:`conntrack.Conntrack.top` groups the matching entries by a key and
returns the most frequent keys.  A key is one field of the original
direction or a tuple of up to four:

=============  ==========================================================
``src``        source address (:class:`ipaddress.IPv4Address` / ``IPv6Address``)
``src/24``     source network: ``/N`` up to 32 applies to IPv4 (IPv6 stays
               whole), above 32 to IPv6 (IPv4 stays whole); ``src/24/64``
               gives both (:class:`ipaddress.IPv4Network` / ``IPv6Network``)
``dst``        destination address or, with ``/N``, network
``sport``      source port (None for protocols without ports)
``dport``      destination port (None for protocols without ports)
``proto``      :class:`~conntrack.Proto`
``state``      TCP, SCTP or DCCP state enum (None for other protocols)
``zone``       conntrack zone (int)
``mark``       connection mark (int)
``family``     :class:`~conntrack.Family`
=============  ==========================================================

The C side keeps one counter per distinct key (a hash table), never one
object per entry, so memory is bounded by the distinct keys.
"""

from __future__ import annotations

import enum
import ipaddress
import re
import struct
from typing import Any, Dict, List, Sequence, Tuple, Union

from ._binding import TOP_MAXPARTS, TOP_PARTS, TopPart
from ._json import plain
from .enums import STATE_ENUMS, Family, Proto

By = Union[str, Sequence[str]]
"""A key: one part name such as ``"src/24"``, or a tuple of them."""

_PART_RE = re.compile(r"^(src|dst)(?:/(\d{1,3})(?:/(\d{1,3}))?)?$")
_LEN = {"src": 17, "dst": 17, "sport": 3, "dport": 3, "state": 3, "proto": 1, "family": 1, "zone": 2, "mark": 4}


class Top(List[Tuple[Any, int]]):
    """``(key, count)`` pairs, most frequent first (ties in key order).

    A key is typed (an address, a network, an int, an enum member or None),
    a tuple of those when grouped by several fields.
    """

    by: Tuple[str, ...]
    """The key's parts as given (normalised to a tuple)."""
    total: int
    """Entries that matched (and were counted)."""
    distinct: int
    """Distinct keys among them (the list holds at most ``n``)."""

    def __repr__(self) -> str:
        return "Top(by=%r, total=%d, distinct=%d, %s)" % (self.by, self.total, self.distinct, list.__repr__(self))

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready values (:ref:`json`), what ``pyconntrack top --json`` prints: ``by``,
        ``total``, ``distinct`` and ``top``, a list of ``{"key": ..., "count": ...}`` (a key
        grouped by several fields is a list)."""
        return {"by": list(self.by), "total": self.total, "distinct": self.distinct,
                "top": [{"key": plain(key), "count": n} for key, n in self]}


def parse_by(by: By) -> Tuple[Tuple[str, ...], List[TopPart]]:
    """Normalise *by* and turn it into the key's parts."""
    names: Tuple[str, ...] = (by,) if isinstance(by, str) else tuple(by)
    if not names:
        raise ValueError("by: give at least one field")
    if len(names) > TOP_MAXPARTS:
        raise ValueError("by: at most %d fields, got %d" % (TOP_MAXPARTS, len(names)))
    parts: List[TopPart] = []
    for name in names:
        if not isinstance(name, str):
            raise TypeError("by: expected field names, got %r" % (name,))
        key = name.strip().lower()
        m = _PART_RE.match(key)
        if m is not None:
            plen4, plen6 = 32, 128
            if m.group(3) is not None:
                plen4, plen6 = int(m.group(2)), int(m.group(3))
            elif m.group(2) is not None:
                n = int(m.group(2))
                if n <= 32:
                    plen4 = n
                else:
                    plen6 = n
            if plen4 > 32 or plen6 > 128:
                raise ValueError("by: %r: prefix lengths are at most 32 (IPv4) and 128 (IPv6)" % name)
            parts.append(TopPart(m.group(1), plen4, plen6))
        elif key in TOP_PARTS and key not in ("src", "dst"):
            parts.append(TopPart(key))
        else:
            raise ValueError("by: unknown field %r (expected src, dst, src/N, dst/N, sport, dport, proto, "
                             "state, zone, mark or family)" % name)
    return names, parts


def _decode_part(part: TopPart, raw: bytes) -> Any:
    name = part.name
    if name in ("src", "dst"):
        family = raw[0]
        if family == Family.IPV4:
            a4 = ipaddress.IPv4Address(raw[1:5])
            return a4 if part.plen4 == 32 else ipaddress.IPv4Network((a4, part.plen4))
        a6 = ipaddress.IPv6Address(raw[1:17])
        return a6 if part.plen6 == 128 else ipaddress.IPv6Network((a6, part.plen6))
    if name in ("sport", "dport"):
        return struct.unpack("=H", raw[1:3])[0] if raw[0] else None
    if name == "proto":
        return Proto(raw[0])
    if name == "family":
        return Family(raw[0])
    if name == "state":
        cls = STATE_ENUMS.get(Proto(raw[0]))
        if cls is None or not raw[1]:
            return None
        try:
            return cls(raw[2])
        except ValueError:  # a state newer than this build's headers
            return int(raw[2])
    if name == "zone":
        return struct.unpack("=H", raw)[0]
    return struct.unpack("=I", raw)[0]  # mark


def decode(names: Tuple[str, ...], parts: List[TopPart], rows: List[Tuple[bytes, int]],
           total: int, distinct: int) -> Top:
    """The typed result from the C side's key bytes."""
    out = Top()
    out.by, out.total, out.distinct = names, total, distinct
    single = len(parts) == 1
    for raw, count in rows:
        values = []
        off = 0
        for part in parts:
            n = _LEN[part.name]
            values.append(_decode_part(part, raw[off:off + n]))
            off += n
        out.append((values[0] if single else tuple(values), count))
    return out


def key_text(key: Any) -> str:
    """A key as text: enum members by name, tuples joined by spaces, None as ``-``."""
    if isinstance(key, tuple):
        return " ".join(key_text(k) for k in key)
    if key is None:
        return "-"
    if isinstance(key, enum.Enum):
        return key.name
    return str(key)


def key_json(key: Any) -> Any:
    """A key as a JSON-ready value (a list for tuples), as :meth:`Top.to_dict` gives it."""
    return plain(key)


__all__ = ["By", "Top", "decode", "key_json", "key_text", "parse_by"]
