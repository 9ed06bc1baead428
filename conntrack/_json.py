"""The package's one JSON convention, used by every public result's ``to_dict()``.

``to_dict()`` returns plain values that :func:`json.dumps` takes as they are:

- keys are the attribute names (plus a few derived numbers, such as
  ``free`` next to ``count`` and ``max``); a value that is not known is
  ``None``, never a left-out key (a :class:`~conntrack.FlowTuple` leaves
  out the port or ICMP fields its protocol does not have);
- an enum member is its ``str()``, the word conntrack(8) prints
  (``"tcp"``, ``"ipv4"``, ``"ESTABLISHED"``, ``"NEW"``, ``"ok"``); a set of
  flags (:class:`~conntrack.Status`) is the list of its bit names;
- an address or network is its text (``"10.0.0.1"``, ``"10.0.0.0/24"``);
- a time is ISO 8601 text with its UTC offset;
- a tuple, list or set is a list (a set sorted), a mapping a dict
  (enum keys as their ``str()``), a named tuple a dict.

The CLI's ``--json`` output is these dicts, one a line.
"""

from __future__ import annotations

import datetime as _dt
import enum
import ipaddress
from typing import Any, Dict, Mapping

_ADDRESS_TYPES = (ipaddress.IPv4Address, ipaddress.IPv6Address, ipaddress.IPv4Network, ipaddress.IPv6Network)


def plain(value: Any) -> Any:
    """*value* as a JSON-ready value by the rules above."""
    if isinstance(value, enum.Flag):
        return [m.name for m in type(value) if m & value]
    if isinstance(value, enum.Enum):
        return str(value)
    if value is None or isinstance(value, (bool, str, float)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, _ADDRESS_TYPES):
        return str(value)
    if isinstance(value, _dt.datetime):
        return value.isoformat()
    to_dict = getattr(value, "to_dict", None)
    if to_dict is not None:
        return to_dict()
    if isinstance(value, tuple) and hasattr(value, "_asdict"):
        return plain_dict(value._asdict())
    if isinstance(value, Mapping):
        return plain_dict(value)
    if isinstance(value, (set, frozenset)):
        return sorted(plain(v) for v in value)
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    raise TypeError("no JSON form for %r" % (value,))


def plain_dict(mapping: Mapping[Any, Any]) -> Dict[str, Any]:
    """A mapping with its keys as text (enum members by their ``str()``) and its values plain."""
    return {k if isinstance(k, str) and not isinstance(k, enum.Enum) else str(k): plain(v) for k, v in mapping.items()}
